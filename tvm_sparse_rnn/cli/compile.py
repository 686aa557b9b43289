"""``tvm-sparse-rnn compile MODEL.onnx -o OUT.so``: import, rewrite sparse layers, build, export."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UsageError
from .options import (
    add_compile_options,
    add_fold_option,
    check_output,
    dispatch_kwargs,
    existing_dir,
)


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``compile`` subcommand."""
    parser = subparsers.add_parser(
        "compile",
        help="compile an ONNX model with sparse kernels into a self-contained .so",
        description="Compile MODEL.onnx for llvm or cuda. Writes OUT.so (load it with "
        "tvm.runtime.load_module + relax.VirtualMachine, or `tvm-sparse-rnn run`) and OUT.json "
        "(input/output names and shapes).",
    )
    parser.add_argument("model", type=Path, metavar="MODEL.onnx")
    add_compile_options(parser)
    add_fold_option(parser)
    parser.add_argument(
        "--no-cuda-graph",
        dest="cuda_graph",
        action="store_false",
        help="cuda: launch every kernel on each call instead of replaying the model's kernel "
        "sequences as CUDA graphs (for callers that capture the calls in a graph of their own)",
    )
    parser.add_argument(
        "--tuning-logs",
        type=existing_dir,
        metavar="DIR",
        help="tuning database (from `tune`): kernels use its best records, else shipped configs",
    )
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.so")
    parser.set_defaults(func=run)
    return parser


def signature_path(library: Path) -> Path:
    """The signature beside ``library`` (as :func:`tvm_sparse_rnn.compile.signature_path`,
    without importing onnx and the frontend for ``--help``)."""
    from ..compile import signature_path as _signature_path

    return _signature_path(library)


def check_outputs(model: Path, output: Path) -> None:
    """Refuse ``-o`` paths whose library or signature would overwrite the model or each other.

    Raises
    ------
    UsageError
        For ``-o X.json`` (the library and its signature ``X.json`` would be one file), an
        ``-o`` that is a directory, or a library or signature path that is the input model.
    """
    signature = signature_path(output)
    if output.suffix == ".json":
        raise UsageError(
            f"-o {str(output)!r}: the signature is written to OUT with suffix .json, which "
            "would overwrite the library; give OUT.so"
        )
    check_output("-o", output, {"the input model": model})
    check_output(f"the signature of -o {str(output)!r}", signature, {"the input model": model})


def run(args: argparse.Namespace) -> int:
    """Compile and report the written files."""
    from ..compile import compile_onnx
    from .inspect import decision_table

    check_outputs(args.model, args.output)
    out, decisions = compile_onnx(
        args.model,
        args.output,
        target=args.target,
        cuda_graph=args.cuda_graph,
        **dispatch_kwargs(args),
    )
    print(decision_table(decisions))
    print(f"wrote {out} and {signature_path(out)} ({args.target})")
    return 0
