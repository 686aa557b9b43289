"""Runtime checks that compiled models call: registered TVM global functions.

A model whose recurrent layers take ``sequence_lens`` as a runtime input checks its range in the
graph (:data:`~tvm_sparse_rnn.signature.SEQUENCE_LENS_CHECK`); importing
:mod:`tvm_sparse_rnn` registers the check, so load such a library with the package imported.
"""

from __future__ import annotations

import tvm
import tvm_ffi

from ..errors import ModelError
from ..signature import SEQUENCE_LENS_CHECK


@tvm_ffi.register_global_func(SEQUENCE_LENS_CHECK, override=True)
def check_sequence_lens(lens: tvm.runtime.Tensor, seq_len: int, node: str) -> tvm.runtime.Tensor:
    """Return ``lens`` unchanged, or raise :class:`ModelError` if a length is outside
    ``[0, seq_len]`` (onnxruntime rejects such inputs; the kernels would read out of bounds)."""
    values = lens.numpy()
    if values.size and (values.min() < 0 or values.max() > int(seq_len)):
        raise ModelError(f"{node}: sequence_lens {values.tolist()} must lie in [0, T = {seq_len}]")
    return lens
