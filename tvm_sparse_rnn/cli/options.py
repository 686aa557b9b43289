"""Options shared by several subcommands, validated by argparse (bad values exit with code 2)."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from ..errors import UsageError
from ..transform.dispatch.cost_model import parse_block_size
from ..transform.to_float16 import Precision

logger = logging.getLogger(__name__)


def unit_fraction(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def existing_dir(text: str) -> Path:
    """argparse type: a directory that exists."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"directory {text!r} does not exist")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is not a directory")
    return path


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file (resolved paths equal, or one inode when both exist)."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    try:
        return a.samefile(b)
    except OSError:  # one of them does not exist (yet)
        return False


def check_output(option: str, output: Path, protected: Mapping[str, Path | None]) -> None:
    """Refuse an output path that is a directory or would overwrite a ``protected`` file.

    Parameters
    ----------
    option : str
        The option that named ``output`` (for the message), e.g. ``"-o"``.
    output : Path
        The file about to be written.
    protected : mapping of str to Path
        What must survive, by description (``"the input model"``); ``None`` values are skipped.

    Raises
    ------
    UsageError
        Naming the option, the path and the file it would overwrite.
    """
    if output.is_dir():
        raise UsageError(f"{option} {str(output)!r} is a directory; give a file path")
    for what, path in protected.items():
        if path is not None and same_file(output, path):
            raise UsageError(f"{option} {str(output)!r} would overwrite {what} ({str(path)!r})")


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
    """``--target``, ``--dtype``, ``--sparsity-threshold``, ``--block-size``,
    ``--sequential-directions``, ``--float32-accumulation``, ``--shape``."""
    parser.add_argument("--target", choices=("llvm", "cuda"), default="llvm", help="default llvm")
    parser.add_argument(
        "--dtype",
        choices=[p.value for p in Precision],
        default=Precision.FLOAT32.value,
        help="compute dtype: float16 runs matmuls and what follows them in half precision "
        "(float32 accumulation; inputs and outputs stay float32); default float32",
    )
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
        "--sequential-directions",
        dest="concurrent_directions",
        action="store_false",
        help="cuda: run the two directions of a bidirectional recurrent layer one after the "
        "other (default: both in one persistent launch, each on half of the SMs, where they fit)",
    )
    parser.add_argument(
        "--float32-accumulation",
        dest="half_accumulation",
        action="store_false",
        help="cuda, --dtype float16: persistent recurrences multiply and add every product in "
        "float32 (default: chunks of 16 in packed halves first: faster; the tanh RNN's error "
        "grew from 0.7e-3 to 1.0-1.3e-3, GRU / LSTM unchanged)",
    )
    parser.add_argument(
        "--shape",
        type=_shape,
        action="append",
        default=[],
        metavar="NAME=D1,D2,...",
        help="static shape of an input with symbolic dims (repeatable)",
    )


def add_fold_option(parser: argparse.ArgumentParser) -> None:
    """``--no-fold``: skip :func:`tvm_sparse_rnn.frontend.fold.fold_constants` before import."""
    parser.add_argument(
        "--no-fold",
        dest="fold",
        action="store_false",
        help="do not fix input shapes and fold constant shape subgraphs (Shape -> Gather -> "
        "Concat -> Pad) before import",
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
        "fold": getattr(args, "fold", True),
        "dtype": args.dtype,
        "concurrent_directions": args.concurrent_directions,
        "half_accumulation": args.half_accumulation,
    }
