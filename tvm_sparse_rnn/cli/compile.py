"""``tvm-sparse-rnn compile MODEL.onnx -o OUT.so``: import, rewrite sparse layers, build, export."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..compile import compile_onnx, signature_path
from .inspect import decision_table
from .options import add_compile_options, dispatch_kwargs


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
    parser.add_argument(
        "--tuning-logs",
        type=Path,
        metavar="DIR",
        help="tuning database (from `tune`): kernels use its best records, else shipped configs",
    )
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.so")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Compile and report the written files."""
    out, decisions = compile_onnx(
        args.model, args.output, target=args.target, **dispatch_kwargs(args)
    )
    print(decision_table(decisions))
    print(f"wrote {out} and {signature_path(out)} ({args.target})")
    return 0
