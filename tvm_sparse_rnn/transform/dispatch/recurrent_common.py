"""What every lowering of a recurrent placeholder shares: constants, shapes, reversal, states.

The recurrence itself always runs forward in time; a reverse direction reverses each sequence's
valid prefix of its input and output around it (:func:`reverse_sequences`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from tvm import relax

from ...errors import UnsupportedError
from ..shapes import tensor_shape

logger = logging.getLogger(__name__)

F32 = "float32"
op = relax.op


def const(a: np.ndarray, dtype: str | None = None) -> relax.Expr:
    return relax.const(np.ascontiguousarray(a, dtype=dtype or a.dtype))


def static_shape(expr: relax.Expr, name: str) -> tuple[int, ...]:
    shape = tensor_shape(expr)
    if shape is None:
        raise UnsupportedError(f"{name} must have a static shape, got {expr.ty.shape}")
    return shape


def direction_state(
    bb: relax.BlockBuilder,
    state: relax.Expr | None,
    d: int,
    batch: int,
    hidden: int,
    dtype: str = F32,
) -> relax.Expr:
    """``state[d]`` as ``(N, H)`` (state is ``(D, N, H)``), or zeros of ``dtype``."""
    if state is None:
        return const(np.zeros((batch, hidden), dtype))
    return bb.emit(op.squeeze(op.strided_slice(state, axes=[0], begin=[d], end=[d + 1]), [0]))


def reverse_index(bb: relax.BlockBuilder, lens: relax.Expr, seq_len: int, batch: int) -> relax.Expr:
    """``(T, N)`` int32 time index ``len-1-t`` for ``t < len`` and ``t`` past the length."""
    t = const(np.arange(seq_len, dtype=np.int32).reshape(seq_len, 1))
    lens_row = op.expand_dims(lens, [0])
    flipped = op.subtract(op.subtract(lens_row, relax.const(1, "int32")), t)
    return bb.emit(op.where(op.less(t, lens_row), flipped, op.broadcast_to(t, (seq_len, batch))))


def reverse_sequences(
    bb: relax.BlockBuilder,
    x: relax.Expr,
    rev_index: relax.Expr | None,
    axis: int,
    batch_axis: int | None = None,
) -> relax.Expr:
    """Reverse each sequence's valid prefix of ``x`` along time ``axis`` (an involution).

    ``x`` has its time axis at ``axis`` and the batch axis at ``batch_axis`` (default: right
    after it, always after it); ``rev_index`` is :func:`reverse_index` (``None``: all sequences
    are full, a plain flip).
    """
    if rev_index is None:
        return bb.emit(op.flip(x, axis=axis))
    shape = static_shape(x, "sequence tensor")
    batch_axis = axis + 1 if batch_axis is None else batch_axis
    others = [i for i in range(len(shape)) if i not in (axis, batch_axis)]
    index = op.broadcast_to(op.expand_dims(rev_index, others), shape)
    return bb.emit(op.gather_elements(x, index, axis=axis))


@dataclass(frozen=True)
class Direction:
    """What one direction's recurrence needs, in ONNX shapes (``G*H`` rows gate-major)."""

    index: int
    w: np.ndarray  # (G*H, I)
    wb: np.ndarray  # (G*H,)
    r: np.ndarray  # (G*H, H)
    rb: np.ndarray  # (G*H,)
    peep: np.ndarray | None  # (3*H,)
    h0: relax.Expr  # (N, H)
    c0: relax.Expr | None  # (N, H)
