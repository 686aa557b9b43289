"""``tvm-sparse-rnn run OUT.so --inputs IN.npz -o OUT.npz``: run a compiled model on arrays."""

from __future__ import annotations

import argparse
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ModelError
from .options import check_output

if TYPE_CHECKING:  # ..compile imports onnx and the frontend: loaded when `run` runs
    from ..compile import CompiledModel


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``run`` subcommand."""
    parser = subparsers.add_parser(
        "run",
        help="run a compiled model on inputs from an .npz keyed by ONNX input names",
        description="Run OUT.so (from `compile`) on IN.npz, whose arrays are named like the "
        "model's ONNX inputs (a single .npy is accepted for a one-input model); write the "
        "outputs, named like the ONNX outputs, to OUT.npz (.npz is appended when missing).",
    )
    parser.add_argument("library", type=Path, metavar="OUT.so")
    parser.add_argument("--inputs", type=Path, required=True, metavar="IN.npz|IN.npy")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.npz")
    parser.set_defaults(func=run)
    return parser


def npz_path(path: Path) -> Path:
    """The file :func:`numpy.savez` writes for ``path`` (it appends ``.npz`` when missing)."""
    return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")


def load_inputs(path: Path, model: CompiledModel) -> dict[str, np.ndarray]:
    """Arrays by ONNX input name from an ``.npz``, or from one ``.npy`` for a one-input model.

    Raises
    ------
    ModelError
        If the file is missing or not a readable ``.npz``/``.npy``, or a ``.npy`` is given for
        a model with several inputs.
    """
    if not path.is_file():
        reason = "is a directory" if path.is_dir() else "does not exist"
        raise ModelError(f"inputs file {str(path)!r} {reason}")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ModelError(
            f"inputs {str(path)!r} are not a readable .npz or .npy file: {err}"
        ) from err
    if isinstance(loaded, np.ndarray):
        names = [spec.name for spec in model.inputs]
        if len(names) != 1:
            raise ModelError(
                f"inputs {str(path)!r} hold one array (.npy) but the model has {len(names)} "
                f"inputs {names}; give an .npz keyed by those names"
            )
        return {names[0]: loaded}
    try:
        with loaded as npz:
            return {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise ModelError(f"inputs {str(path)!r} are not a readable .npz file: {err}") from err


def run(args: argparse.Namespace) -> int:
    """Load, check inputs, run, save."""
    from ..compile import load_compiled, signature_path

    output = npz_path(args.output)
    check_output(
        "-o",
        output,
        {
            "the compiled model": args.library,
            "its signature": signature_path(args.library),
            "the inputs": args.inputs,
        },
    )
    model = load_compiled(args.library)
    outputs = model.run(load_inputs(args.inputs, model))
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "wb") as f:
        np.savez(f, **outputs)
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in outputs.items())
    print(f"wrote {output}: {shapes}")
    return 0
