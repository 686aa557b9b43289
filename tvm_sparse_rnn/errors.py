"""Typed errors raised by tvm-sparse-rnn.

Every error names the offending input and the limit it broke, so that a user can fix the input
without reading the source. The CLI maps :class:`SparseRNNError` subclasses to non-zero exit
codes with a one-line message.
"""

from __future__ import annotations

import tvm_ffi


class SparseRNNError(Exception):
    """Base class of every error this package raises on purpose."""


class BSRFormatError(SparseRNNError, ValueError):
    """A block-sparse (BSR) weight is malformed.

    Parameters
    ----------
    array : str
        Name of the offending array (``"data"``, ``"indices"``, ``"indptr"``, ``"shape"`` or
        ``"block_size"``).
    message : str
        What is wrong, with the bad value and the limit it broke.
    """

    def __init__(self, array: str, message: str) -> None:
        self.array = array
        super().__init__(f"BSR {array}: {message}")


class UnsupportedError(SparseRNNError, NotImplementedError):
    """A valid request this package does not implement (an ONNX attribute, a dtype, a target)."""


class CapacityError(SparseRNNError):
    """The weights or activations do not fit on chip for the requested kernel."""


class ModelError(SparseRNNError):
    """A model file cannot be read, or its inputs do not match what was given."""


class TuningError(SparseRNNError):
    """A tuning run or a tuning database cannot be used."""


class MissingDependencyError(SparseRNNError, ImportError):
    """An optional package this feature needs is not installed; the message names the extra."""


class UsageError(SparseRNNError, ValueError):
    """Command-line arguments that cannot work together (the CLI exits with code 2).

    For example an output path that would overwrite the input model, or a ``--tuning-logs``
    directory that does not exist.
    """


# Errors raised inside a Python pass or callback cross TVM's FFI; registering the classes keeps
# their type (otherwise they arrive as RuntimeError). BSRFormatError takes two arguments and is
# raised outside passes, so it is not registered.
for _cls in (SparseRNNError, UnsupportedError, CapacityError, ModelError, TuningError):
    tvm_ffi.register_error(_cls)
