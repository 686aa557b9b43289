"""What a compiled library shows its loader, readable without TVM's compiler.

* the signature file beside ``OUT.so`` (:func:`signature_path`): target, and the ONNX names,
  shapes and dtypes of the inputs (in ``main``'s parameter order) and outputs
  (:class:`TensorSpec`), written by :func:`tvm_sparse_rnn.compile.compile_onnx`;
* the global functions a compiled model calls back (:data:`SEQUENCE_LENS_CHECK`, registered by
  :mod:`tvm_sparse_rnn.runtime.checks`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

#: Version of the ``OUT.json`` signature layout.
SIGNATURE_VERSION = 1
#: Global function a compiled model calls on a runtime ``sequence_lens`` input,
#: ``check(lens, T, node) -> lens``: raises :class:`~tvm_sparse_rnn.errors.ModelError` for a
#: length outside ``[0, T]`` (:mod:`tvm_sparse_rnn.runtime.checks` registers it).
SEQUENCE_LENS_CHECK = "tvm_sparse_rnn.check_sequence_lens"


def signature_path(library: str | os.PathLike) -> Path:
    """The signature file beside a compiled library (``OUT.so`` -> ``OUT.json``)."""
    return Path(library).with_suffix(".json")


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one model input or output.

    Attributes
    ----------
    name : str
        The ONNX value name.
    shape : tuple of (int or str)
        Static dims as ints; symbolic dims by their ONNX name (``"?"`` when unnamed).
    dtype : str
        numpy dtype name, e.g. ``"float32"``.
    """

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    def to_json(self) -> dict:
        """A JSON-serializable dict."""
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, obj: Mapping) -> TensorSpec:
        """Inverse of :meth:`to_json`."""
        return cls(obj["name"], tuple(obj["shape"]), obj["dtype"])
