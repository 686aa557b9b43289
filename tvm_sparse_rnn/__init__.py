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

ONNX import lives in :mod:`tvm_sparse_rnn.frontend` (needs the ``onnx`` package).
"""

from __future__ import annotations

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
from .ops.cells import CellConfig, RecurrentWeights
from .pipeline import build
from .runtime import checks  # noqa: F401  (registers the runtime checks compiled models call)
from .runtime.persistent import build_persistent_rnn
from .runtime.sequence import build_recurrent_sequence
from .runtime.sparse_dense import SparseDenseKernel, build_sparse_dense, sparse_dense_func
from .transform import DenseToSparse, DispatchKernels, DispatchOptions
from .transform.dispatch import emit_sparse_dense

configure_cpu_threads()  # before any kernel runs: TVM fixes its pool size at first use

__version__ = "0.1.0"

__all__ = [
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
