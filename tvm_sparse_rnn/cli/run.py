"""``tvm-sparse-rnn run OUT.so --inputs IN.npz -o OUT.npz``: run a compiled model on arrays."""

from __future__ import annotations

import argparse
import zipfile
from pathlib import Path

import numpy as np

from ..compile import load_compiled
from ..errors import ModelError


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``run`` subcommand."""
    parser = subparsers.add_parser(
        "run",
        help="run a compiled model on inputs from an .npz keyed by ONNX input names",
        description="Run OUT.so (from `compile`) on IN.npz, whose arrays are named like the "
        "model's ONNX inputs; write the outputs, named like the ONNX outputs, to OUT.npz.",
    )
    parser.add_argument("library", type=Path, metavar="OUT.so")
    parser.add_argument("--inputs", type=Path, required=True, metavar="IN.npz")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.npz")
    parser.set_defaults(func=run)
    return parser


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise ModelError(f"inputs {str(path)!r} are not a readable .npz file: {err}") from err


def run(args: argparse.Namespace) -> int:
    """Load, check inputs, run, save."""
    model = load_compiled(args.library)
    outputs = model.run(_load_npz(args.inputs))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.output, **outputs)
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in outputs.items())
    print(f"wrote {args.output}: {shapes}")
    return 0
