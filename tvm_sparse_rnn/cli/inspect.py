"""``tvm-sparse-rnn inspect MODEL.onnx``: the kernel decisions ``compile`` takes, per layer."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..transform.dispatch import DECISION_HEADER, KernelDecision
from .options import add_compile_options, dispatch_kwargs
from .table import format_table


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``inspect`` subcommand."""
    parser = subparsers.add_parser(
        "inspect",
        help="per layer: which kernel compile would run (sparse or dense, persistent or per "
        "step), its config and why",
        description="Run the import and the dispatch pass of `compile` without building, and "
        "print its decision for every layer: the kernel variant, the weight's sparsity, block "
        "size and fill (dense layers), the packing or persistent geometry (recurrent layers, on "
        "the target's GPU), where the kernel's config comes from, and why.",
    )
    parser.add_argument("model", type=Path, metavar="MODEL.onnx")
    add_compile_options(parser)
    parser.set_defaults(func=run)
    return parser


def decision_table(decisions: list[KernelDecision]) -> str:
    """The decisions as the table ``inspect`` and ``compile`` print."""
    return format_table(DECISION_HEADER, [d.row() for d in decisions])


def run(args: argparse.Namespace) -> int:
    """Plan the model and print the decisions."""
    from ..compile import plan_onnx  # onnx loads when a command runs, not on --help

    decisions = plan_onnx(args.model, target=args.target, **dispatch_kwargs(args))
    print(f"{args.model} (target {args.target}): {len(decisions)} kernel decision(s)")
    print(decision_table(decisions))
    return 0
