"""Entry point of ``tvm-sparse-rnn``: argument parsing, logging, exit codes.

Each subcommand lives in its own module of this package exposing
``register(subparsers) -> argparse.ArgumentParser``; the parser's ``func`` default is called with
the parsed arguments and returns an exit code. Adding a subcommand = adding its module name to
:data:`SUBCOMMANDS`.

Every failure is one line on stderr, ``error: ...``, and an exit code:

* 0 success, 1 a failed check (e.g. ``demo`` mismatch vs onnxruntime);
* 2 a usage error (bad or conflicting arguments, :class:`~tvm_sparse_rnn.errors.UsageError`);
* one code per typed error (:data:`EXIT_CODES`);
* :data:`EXIT_OS_ERROR` a file that cannot be read or written (:class:`OSError`);
* :data:`EXIT_INTERNAL` any other exception (a bug: ``-vv`` logs the traceback);
* :data:`EXIT_INTERRUPTED` (130) Ctrl-C, also when a library turned the interrupt into another
  exception (XGBoost raises ``RuntimeError`` from an interrupted callback).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import signal
import sys
from collections.abc import Callable, Iterator

from ..errors import (
    BSRFormatError,
    CapacityError,
    ModelError,
    SparseRNNError,
    TuningError,
    UnsupportedError,
    UsageError,
)

logger = logging.getLogger(__name__)

#: Subcommand modules of this package, in ``--help`` order.
SUBCOMMANDS = ("inspect", "compile", "run", "bench", "tune", "demo")

EXIT_USAGE = 2
EXIT_OS_ERROR = 9
EXIT_INTERNAL = 10
EXIT_INTERRUPTED = 130

#: Exit code per error class (the first matching class in order wins).
EXIT_CODES: tuple[tuple[type[Exception], int], ...] = (
    (UsageError, EXIT_USAGE),
    (ModelError, 3),
    (UnsupportedError, 4),
    (CapacityError, 5),
    (TuningError, 6),
    (BSRFormatError, 7),
    (SparseRNNError, 8),
    (OSError, EXIT_OS_ERROR),
)

#: Longest error line printed (the rest of a long message is cut).
MAX_MESSAGE = 600


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one :class:`UsageError` line, not usage + message."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered."""
    parser = _Parser(
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


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` with its non-empty lines joined by `` | ``, cut to ``limit`` characters."""
    line = " | ".join(part.strip() for part in str(text).splitlines() if part.strip())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def describe_os_error(err: OSError) -> str:
    """``cannot access 'PATH': No such file or directory`` (the path and the reason)."""
    reason = err.strerror or str(err) or type(err).__name__
    if err.filename is None:
        return f"{type(err).__name__}: {reason}"
    return f"cannot access {str(err.filename)!r}: {reason}"


def _message_and_code(err: BaseException, interrupted: bool) -> tuple[str, int]:
    if interrupted or isinstance(err, KeyboardInterrupt):
        return "interrupted", EXIT_INTERRUPTED
    if isinstance(err, UsageError):
        return str(err), EXIT_USAGE
    if isinstance(err, SparseRNNError):
        code = next(code for cls, code in EXIT_CODES if isinstance(err, cls))
        return f"{type(err).__name__}: {err}", code
    if isinstance(err, OSError):
        return describe_os_error(err), EXIT_OS_ERROR
    first = one_line(str(err)) or "(no message)"
    return f"internal error: {type(err).__name__}: {first} (-vv logs the traceback)", EXIT_INTERNAL


@contextlib.contextmanager
def _interrupt_flag() -> Iterator[Callable[[], bool]]:
    """Record Ctrl-C while still raising KeyboardInterrupt; yield "was it pressed?".

    Libraries that catch the KeyboardInterrupt and raise something else (XGBoost) still end
    as an interrupt. Outside the main thread (no signal handlers there) nothing is recorded.
    """
    state = {"hit": False}

    def handler(signum: int, frame: object) -> None:
        state["hit"] = True
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread
        previous = None
    try:
        yield lambda: state["hit"]
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _configure_logging(verbose: int) -> None:
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger(__package__.partition(".")[0]).setLevel(level)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    with _interrupt_flag() as interrupted:
        try:
            args = build_parser().parse_args(argv)
            _configure_logging(args.verbose)
            return int(args.func(args))
        except SystemExit as exit_:  # --help, --version
            return exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
        except (Exception, KeyboardInterrupt) as err:
            message, code = _message_and_code(err, interrupted())
            print(f"error: {one_line(message)}", file=sys.stderr)
            logger.debug("traceback", exc_info=err)
            return code


if __name__ == "__main__":
    raise SystemExit(main())
