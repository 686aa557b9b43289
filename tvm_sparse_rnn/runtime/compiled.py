"""Load and run a library written by :func:`tvm_sparse_rnn.compile.compile_onnx`, with the
runtime alone.

Nothing here needs TVM's compiler library or onnx: a deployment runs compiled models with
``TVM_USE_RUNTIME_LIB=1`` (TVM loads ``libtvm_runtime`` only) and this module::

    from tvm_sparse_rnn.runtime.compiled import load_compiled
    outputs = load_compiled("OUT.so").run({"x": x})

(``import tvm`` then takes ~90 MiB instead of ~200 MiB resident on the 2-core VM.)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tvm
from tvm.runtime.vm import VirtualMachine

from ..errors import ModelError
from ..signature import TensorSpec, signature_path
from . import checks  # noqa: F401  (registers the callbacks compiled models call)
from .host_copy import copy_into, to_numpy


@dataclass
class CompiledModel:
    """A compiled model loaded with its signature, callable with arrays keyed by ONNX name.

    Attributes
    ----------
    inputs, outputs : list of TensorSpec
        The ONNX signature, inputs in the VM's parameter order.
    target_kind : str
        ``"llvm"`` or ``"cuda"``.
    vm : tvm.runtime.vm.VirtualMachine
        The loaded VM.
    device : tvm.runtime.Device
        Where inputs are copied.
    """

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    target_kind: str
    vm: VirtualMachine
    device: tvm.runtime.Device
    _staging: dict[int, tvm.runtime.Tensor] = field(default_factory=dict, repr=False)

    def check_inputs(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Validate names, shapes and dtypes; return the arrays in parameter order.

        Raises
        ------
        ModelError
            On a missing or unknown input name, a wrong rank or static dim, or a dtype that
            cannot be cast safely.
        """
        if len(feeds) == len(self.inputs):  # arrays as the model takes them: no checks to run
            given = [_as_declared(feeds.get(spec.name), spec) for spec in self.inputs]
            if all(a is not None for a in given):
                return given
        names = [s.name for s in self.inputs]
        unknown = sorted(set(feeds) - set(names))
        missing = [n for n in names if n not in feeds]
        if unknown or missing:
            raise ModelError(
                f"input names do not match the model: unknown {unknown}, missing {missing}; "
                f"the model expects {names}"
            )
        arrays = []
        for spec in self.inputs:
            arr = np.asarray(feeds[spec.name])
            ok = arr.ndim == len(spec.shape) and all(
                not isinstance(d, int) or d == a for d, a in zip(spec.shape, arr.shape, strict=True)
            )
            if not ok:
                raise ModelError(
                    f"input {spec.name!r} has shape {arr.shape}, the model expects "
                    f"{tuple(spec.shape)}"
                )
            if not np.can_cast(arr.dtype, spec.dtype, casting="same_kind"):
                raise ModelError(
                    f"input {spec.name!r} has dtype {arr.dtype}, the model expects {spec.dtype}"
                )
            arrays.append(np.asarray(arr, dtype=spec.dtype, order="C"))  # keeps 0-d inputs
        return arrays

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run ``main`` on ``feeds`` (ONNX input name -> array); return outputs by ONNX name.

        The returned arrays are the caller's own (copies, never views of the model's memory).
        """
        args = [self._stage(i, a) for i, a in enumerate(self.check_inputs(feeds))]
        result = self.vm["main"](*args)
        values = [result] if isinstance(result, tvm.runtime.Tensor) else list(result)
        return {s.name: to_numpy(v) for s, v in zip(self.outputs, values, strict=True)}

    def _stage(self, position: int, array: np.ndarray) -> tvm.runtime.Tensor:
        """``array`` copied into the model's tensor for input ``position``, made on the first
        call and on a new shape (``tvm.runtime.tensor`` per call cost ~40 us more for a 64 KB
        input on the 2-core VM: a third of a 1024 x 1024 sparse layer's call at ``M = 16``)."""
        staged = self._staging.get(position)
        if staged is None or tuple(staged.shape) != array.shape:
            staged = tvm.runtime.empty(array.shape, array.dtype.name, self.device)
            self._staging[position] = staged
        copy_into(staged, array)
        return staged


def _as_declared(array: object, spec: TensorSpec) -> np.ndarray | None:
    """``array`` if it is a C-contiguous numpy array of ``spec``'s dtype and static shape, else
    ``None`` (then :meth:`CompiledModel.check_inputs` checks and converts it). One input on the
    2-core Zen 3 VM: 5.3-6.8 us a call with the full checks, 2.8-2.9 with this one (git-ignored
    ``.old/s25/p_run_prof.py``); a 1024 x 1024 sparse layer's whole call at ``M`` = 1 took 64-71 us
    (``benchmarks/bench_cpu_kernels.py``, session 25).
    """
    if (
        type(array) is np.ndarray
        and array.shape == spec.shape
        and array.dtype == spec.dtype
        and array.flags.c_contiguous
    ):
        return array
    return None


def _device(target_kind: str) -> tvm.runtime.Device:
    return tvm.cuda(0) if target_kind == "cuda" else tvm.cpu(0)


def load_executable(
    executable: tvm.runtime.Executable | tvm.runtime.Module,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    target_kind: str,
) -> CompiledModel:
    """Wrap a built executable (or a loaded library) with its signature."""
    device = _device(target_kind)
    return CompiledModel(inputs, outputs, target_kind, VirtualMachine(executable, device), device)


def load_compiled(library: str | os.PathLike) -> CompiledModel:
    """Load a library written by :func:`compile_onnx` with its signature.

    Raises
    ------
    ModelError
        If the library or its signature is missing or unreadable.
    """
    library = Path(library)
    sig_path = signature_path(library)
    if not library.is_file():
        raise ModelError(f"compiled model {str(library)!r} does not exist")
    try:
        signature = json.loads(sig_path.read_text())
        inputs = [TensorSpec.from_json(s) for s in signature["inputs"]]
        outputs = [TensorSpec.from_json(s) for s in signature["outputs"]]
        target_kind = signature["target"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelError(
            f"signature {str(sig_path)!r} of {str(library)!r} is unreadable: {err}"
        ) from err
    try:
        lib = tvm.runtime.load_module(str(library))
    except Exception as err:  # TVM raises several types for a bad or foreign library
        reason = str(err).strip().splitlines()
        raise ModelError(f"cannot load {str(library)!r}: {reason[-1] if reason else err}") from err
    return load_executable(lib, inputs, outputs, target_kind)
