"""The Relax side of the x86 projection kernel: its ``XT`` operand, padded to whole tiles.

:func:`~tvm_sparse_rnn.kernels.x86.recurrent.projection_prim_func` (the recurrent layers' input
projection and the unstructured linear layers' CSR kernel) reads ``XT (K, M)`` in tiles of a
power of two of columns; ``M = 95`` (DeepSpeech2's 95 frames) reads 96 columns.
"""

from __future__ import annotations

from tvm import relax

from ...kernels.x86.recurrent import padded_columns


def pad_columns(xt: relax.Expr, m: int, tile: int) -> relax.Expr:
    """``XT (K, m)`` zero-padded to :func:`padded_columns` ``(m, tile)`` columns."""
    extra = padded_columns(m, tile) - m
    return relax.op.nn.pad(xt, [0, 0, 0, extra]) if extra else xt
