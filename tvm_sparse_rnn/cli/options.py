"""Options shared by several subcommands, validated by argparse (bad values exit with code 2)."""

from __future__ import annotations

import argparse

from ..transform.dispatch.cost_model import parse_block_size


def unit_fraction(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _block_size(text: str) -> str | tuple[int, int]:
    if text == "auto":
        return text
    try:
        return parse_block_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _shape(text: str) -> tuple[str, tuple[int, ...]]:
    name, sep, dims = text.rpartition("=")
    try:
        shape = tuple(int(d) for d in dims.split(","))
    except ValueError:
        shape = ()
    if not sep or not name or not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected NAME=D1,D2,... with dims >= 1, got {text!r}")
    return name, shape


def add_compile_options(parser: argparse.ArgumentParser) -> None:
    """``--target``, ``--sparsity-threshold``, ``--block-size``, ``--shape``."""
    parser.add_argument("--target", choices=("llvm", "cuda"), default="llvm", help="default llvm")
    parser.add_argument(
        "--sparsity-threshold",
        type=unit_fraction,
        default=0.5,
        metavar="S",
        help="minimum zero fraction of a weight to consider it for sparse (default 0.5)",
    )
    parser.add_argument(
        "--block-size",
        type=_block_size,
        default="auto",
        metavar="auto|RxC",
        help="BSR block size: chosen per layer (auto, default) or fixed, e.g. 1x16",
    )
    parser.add_argument(
        "--shape",
        type=_shape,
        action="append",
        default=[],
        metavar="NAME=D1,D2,...",
        help="static shape of an input with symbolic dims (repeatable)",
    )


def shape_dict(args: argparse.Namespace) -> dict[str, tuple[int, ...]] | None:
    """The ``--shape`` options as a dict, ``None`` when none were given."""
    return dict(args.shape) or None


def dispatch_kwargs(args: argparse.Namespace) -> dict:
    """The keyword options of :func:`tvm_sparse_rnn.compile.plan_onnx` / ``build_onnx`` that
    :func:`add_compile_options` parsed (and ``--tuning-logs`` where the command has it)."""
    return {
        "shape_dict": shape_dict(args),
        "sparsity_threshold": args.sparsity_threshold,
        "block_size": args.block_size,
        "tuning_logs": getattr(args, "tuning_logs", None),
    }
