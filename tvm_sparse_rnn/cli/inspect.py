"""``tvm-sparse-rnn inspect MODEL.onnx``: what ``compile`` would do with each layer."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..frontend.onnx import analyze_onnx, load_onnx, model_signature
from ..kernels.cuda.persistent.packing import unit_major
from ..kernels.cuda.persistent.planner import plan_persistent
from .options import add_compile_options, shape_dict
from .table import format_table


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``inspect`` subcommand."""
    parser = subparsers.add_parser(
        "inspect",
        help="per layer: shape, sparsity, chosen block size and fill, sparse or dense",
        description="Print, per dense layer, the weight shape, sparsity, the block size the "
        "cost rule picks and its fill (explicit zeros stored), and whether it becomes sparse; "
        "per recurrent layer, its sparsity.",
    )
    parser.add_argument("model", type=Path, metavar="MODEL.onnx")
    add_compile_options(parser)
    parser.set_defaults(func=run)
    return parser


#: Gates per recurrent op (rows of ``W``/``R`` per direction = gates * hidden).
_GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


def recurrent_rows(
    model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]] | None
) -> list[list[str]]:
    """One table row per ``RNN``/``GRU``/``LSTM`` node: sizes, sparsity, H100 on-chip fit.

    The fit is :func:`tvm_sparse_rnn.rnn.planner.plan_persistent` on ``R`` of the first
    direction (all gates, unit-major), fp32, for the batch of the graph input ``X``.
    """
    inits = {i.name: i for i in model.graph.initializer}
    inputs, _ = model_signature(model, shapes)
    batch_of = {s.name: s.shape[1] for s in inputs if len(s.shape) == 3}
    rows = []
    for index, node in enumerate(model.graph.node):
        if node.op_type not in _GATES or len(node.input) < 3 or node.input[2] not in inits:
            continue
        w = numpy_helper.to_array(inits[node.input[1]]) if node.input[1] in inits else None
        r = numpy_helper.to_array(inits[node.input[2]])
        hidden = r.shape[-1]
        batch = batch_of.get(node.input[0])
        if isinstance(batch, int):
            gates = _GATES[node.op_type]
            plan = plan_persistent(unit_major(r[0], gates), batch=batch, gates=gates)
            fit = "yes" if plan.kind == "persistent" else "no"
            detail = plan.describe()
        else:
            fit, detail = "?", "batch unknown (give --shape)"
        rows.append(
            [
                node.name or f"{node.op_type}#{index}",
                node.op_type,
                str(hidden),
                f"{1 - np.count_nonzero(w) / w.size:.1%}" if w is not None else "-",
                f"{1 - np.count_nonzero(r) / r.size:.1%}",
                fit,
                detail,
            ]
        )
    return rows


def run(args: argparse.Namespace) -> int:
    """Analyze the model and print the tables."""
    model = load_onnx(args.model)
    layers = analyze_onnx(
        model,
        target=args.target,
        shape_dict=shape_dict(args),
        sparsity_threshold=args.sparsity_threshold,
        block_size=args.block_size,
    )
    rows = []
    for name, layer in layers:
        plan, stats = layer.plan, layer.plan.choice
        rows.append(
            [
                name,
                "x".join(map(str, plan.shape)),
                f"{plan.sparsity:.1%}",
                "x".join(map(str, stats.block_size)) if stats else "-",
                f"{stats.fill:.1%}" if stats else "-",
                f"{stats.stored_fraction:.1%}" if stats else "-",
                "sparse" if plan.sparse else "dense",
                plan.reason,
            ]
        )
    print(f"{args.model} (target {args.target}): {len(layers)} dense layer(s)")
    header = ["layer", "W (NxK)", "sparsity", "block", "fill", "stored", "kernel", "why"]
    print(format_table(header, rows))
    recurrent = recurrent_rows(model, shape_dict(args))
    if recurrent:
        print(f"\n{len(recurrent)} recurrent layer(s); on-chip = persistent GPU kernel fits (H100)")
        header = ["layer", "op", "hidden", "W sparsity", "R sparsity", "on-chip", "plan"]
        print(format_table(header, recurrent))
    return 0
