"""tvm-sparse-rnn: pruned dense and recurrent layers that run faster than their dense form.

Public API
----------
BSRWeight
    Validated block-sparse weight (:mod:`tvm_sparse_rnn.bsr`).
build_sparse_dense, sparse_dense_func, emit_sparse_dense
    The block-sparse ``Y = X @ W.T`` operator as a callable, a scheduled PrimFunc, or inside a
    Relax program (:mod:`tvm_sparse_rnn.sparse_dense`).
CellConfig, RecurrentWeights, build_recurrent_sequence
    RNN/GRU/LSTM sequence op with ONNX semantics (:mod:`tvm_sparse_rnn.runtime.sequence`).
build_persistent_rnn
    The sparse persistent RNN/GRU/LSTM GPU kernel as a callable
    (:mod:`tvm_sparse_rnn.runtime.persistent`).
DenseToSparse, DispatchKernels, DispatchOptions
    The Relax passes: mark dense layers, dispatch every layer to a kernel variant
    (:mod:`tvm_sparse_rnn.transform`); ``relax.get_pipeline("tvm_sparse_rnn")`` and
    :func:`tvm_sparse_rnn.pipeline.build` run them with TVM's default passes.

ONNX import lives in :mod:`tvm_sparse_rnn.frontend` (needs the ``onnx`` package). Under a
runtime-only TVM (``TVM_USE_RUNTIME_LIB=1``) the package offers the errors, :class:`BSRWeight`
and :mod:`tvm_sparse_rnn.runtime.compiled` only (:data:`RUNTIME_ONLY`).
"""

from __future__ import annotations

import tvm

from .bsr import BSRWeight
from .cpu_threads import configure_cpu_threads
from .errors import (
    BSRFormatError,
    CapacityError,
    ModelError,
    SparseRNNError,
    TuningError,
    UnsupportedError,
)
from .runtime import checks  # noqa: F401  (registers the runtime checks compiled models call)

configure_cpu_threads()  # before any kernel runs: TVM fixes its pool size at first use

__version__ = "0.1.0"

#: TVM was loaded without its compiler (``TVM_USE_RUNTIME_LIB=1``, a runtime-only wheel): only
#: :mod:`tvm_sparse_rnn.runtime.compiled` (load and run compiled models) is usable.
RUNTIME_ONLY = bool(getattr(tvm.base, "_RUNTIME_ONLY", False))

if not RUNTIME_ONLY:
    from .ops.cells import CellConfig, RecurrentWeights
    from .pipeline import build
    from .runtime.persistent import build_persistent_rnn
    from .runtime.sequence import build_recurrent_sequence
    from .runtime.sparse_dense import SparseDenseKernel, build_sparse_dense, sparse_dense_func
    from .transform import DenseToSparse, DispatchKernels, DispatchOptions
    from .transform.dispatch import emit_sparse_dense

__all__ = [
    "RUNTIME_ONLY",
    "BSRFormatError",
    "BSRWeight",
    "CapacityError",
    "CellConfig",
    "DenseToSparse",
    "DispatchKernels",
    "DispatchOptions",
    "ModelError",
    "RecurrentWeights",
    "SparseDenseKernel",
    "SparseRNNError",
    "TuningError",
    "UnsupportedError",
    "__version__",
    "build",
    "build_persistent_rnn",
    "build_recurrent_sequence",
    "build_sparse_dense",
    "emit_sparse_dense",
    "sparse_dense_func",
]
