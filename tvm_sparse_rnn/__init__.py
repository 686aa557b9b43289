"""tvm-sparse-rnn: pruned dense and recurrent layers that run faster than their dense form.

Public API
----------
BSRWeight
    Validated block-sparse weight (:mod:`tvm_sparse_rnn.bsr`).
"""

from __future__ import annotations

from .bsr import BSRWeight
from .errors import (
    BSRFormatError,
    CapacityError,
    ModelError,
    SparseRNNError,
    TuningError,
    UnsupportedError,
)

__version__ = "0.1.0"

__all__ = [
    "BSRFormatError",
    "BSRWeight",
    "CapacityError",
    "ModelError",
    "SparseRNNError",
    "TuningError",
    "UnsupportedError",
    "__version__",
]
