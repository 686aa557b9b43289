"""Entry point of ``tvm-sparse-rnn``: argument parsing, logging, exit codes.

Each subcommand lives in its own module of this package exposing
``register(subparsers) -> argparse.ArgumentParser``; the parser's ``func`` default is called with
the parsed arguments and returns an exit code. Adding a subcommand = adding its module name to
:data:`SUBCOMMANDS`.

Exit codes: 0 success, 1 a failed check (e.g. ``demo`` mismatch vs onnxruntime), 2 usage error,
and one code per typed error (:data:`EXIT_CODES`), printed as a one-line ``error:`` message.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ..errors import (
    BSRFormatError,
    CapacityError,
    ModelError,
    SparseRNNError,
    TuningError,
    UnsupportedError,
)

logger = logging.getLogger(__name__)

#: Subcommand modules of this package, in ``--help`` order.
SUBCOMMANDS = ("inspect", "compile", "run", "bench", "tune", "demo")

#: Exit code per error class (the first matching class in order wins).
EXIT_CODES: tuple[tuple[type[Exception], int], ...] = (
    (ModelError, 3),
    (UnsupportedError, 4),
    (CapacityError, 5),
    (TuningError, 6),
    (BSRFormatError, 7),
    (SparseRNNError, 8),
)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="tvm-sparse-rnn",
        description="Compile pruned ONNX models with block-sparse TVM kernels, run and bench them.",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="-v for info, -vv for debug logging"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"{__package__}.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger(__package__.partition(".")[0]).setLevel(level)
    try:
        return int(args.func(args))
    except SparseRNNError as err:
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        logger.debug("traceback", exc_info=err)
        return next(code for cls, code in EXIT_CODES if isinstance(err, cls))


if __name__ == "__main__":
    raise SystemExit(main())
