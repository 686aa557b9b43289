"""Layer normalization for x86 over the last axis (rows) or the one before it (columns): every
stage a vector loop.

dlight's CPU reduction rule keeps the row mean and variance scalar loops (a float sum over the
reduction axis does not vectorize without an ``rfactor``): 768 dependent adds twice per row.
Here (:mod:`~tvm_sparse_rnn.kernels.x86.row_reduction`) each reduction runs as ``lanes``
partial sums (one per vector lane, over the ``C / lanes`` column groups), then folded::

    for r in parallel(rows):
        psum[l] = sum_g x[r, g * lanes + l]                       (vector)
        mean    = sum_l psum[l] / C
        pvar[l] = sum_g (x[r, g * lanes + l] - mean) ** 2         (vector)
        inv     = rsqrt(sum_l pvar[l] / C + eps)
        y[r, c] = (x[r, c] - mean) * inv * gamma[c] + beta[c]     (vector)

A layer norm over the second-to-last axis (the feature-major hidden states of
:class:`~tvm_sparse_rnn.transform.CancelTransposes`, ``(features, tokens)``) reduces down the
columns, a strip of 32 tokens (two cache lines) at a time, strips in parallel
(:func:`~tvm_sparse_rnn.kernels.x86.row_reduction.column_strip`)::

    for strip in parallel(tokens / 32):             (c: the strip's tokens)
        mean[c] = sum_r x[r, c] / R                 (vector over c, r outer)
        var[c]  = sum_r (x[r, c] - mean[c]) ** 2 / R
        y[r, c] = (x[r, c] - mean[c]) * rsqrt(var[c] + eps) * gamma[r] + beta[r]

Profile with ``python benchmarks/profile_cpu_models.py bert_4x4 --runs 20``.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable

from tvm import s_tir, te, tirx

from .row_reduction import (
    ReducedAxis,
    fold_lanes,
    lane_partials,
    schedule_column_stages,
    schedule_row_stages,
)

logger = logging.getLogger(__name__)

#: Name of the residual add's stage (inlined where it is read).
_RESIDUAL_SUM = "residual_sum"


def _normalize(
    x: te.Tensor,
    gamma: te.Tensor,
    beta: te.Tensor,
    epsilon: float,
    mean_of: Callable[[te.Tensor, str], te.Tensor],
    at: Callable[[te.Tensor, tuple], tirx.PrimExpr],
    feature: Callable[[tuple], tirx.PrimExpr],
    prefix: str,
) -> te.Tensor:
    """The layer-norm stages over one axis of ``x``: ``mean_of(t, name)`` reduces ``t`` over it,
    ``at(stat, i)`` reads a reduced tensor at ``x``'s index ``i``, ``feature(i)`` indexes
    ``gamma`` / ``beta``; stage names start with ``prefix``."""
    mean = mean_of(x, f"{prefix}_sum")
    centered = te.compute(x.shape, lambda *i: x[i] - at(mean, i), name="centered")
    squares = te.compute(x.shape, lambda *i: centered[i] * centered[i], name="squares")
    variance = mean_of(squares, f"{prefix}_var")
    inverse = te.compute(
        variance.shape, lambda *i: te.rsqrt(variance[i] + epsilon), name=f"{prefix}_inverse"
    )
    return te.compute(
        x.shape,
        lambda *i: centered[i] * at(inverse, i) * gamma[feature(i)] + beta[feature(i)],
        name="layer_norm",
    )


def _row_layer_norm(
    x: te.Tensor, gamma: te.Tensor, beta: te.Tensor, epsilon: float, lanes: int
) -> te.Tensor:
    """``layer_norm(x, gamma, beta)`` over the last axis with lane-wise partial sums; ``C``
    must divide by ``lanes``."""
    c = int(x.shape[-1])

    def row_mean(t: te.Tensor, name: str) -> te.Tensor:
        total = fold_lanes(lane_partials(t, te.sum, f"partial_{name}", lanes), operator.add, name)
        return te.compute(total.shape, lambda *i: total[i] / c, name=f"{name}_mean")

    return _normalize(
        x, gamma, beta, epsilon, row_mean, lambda t, i: t[i[:-1]], lambda i: i[-1], "row"
    )


def _normalized_input(
    shape: tuple[int, ...], dtype: str, residual: bool
) -> tuple[list[te.Tensor], te.Tensor]:
    """The kernel's input placeholders and what it normalizes: ``x``, or ``x + r`` (a residual
    add, as onnxruntime's ``SkipLayerNormalization``) computed where it is read."""
    x = te.placeholder(shape, dtype, "x")
    if not residual:
        return [x], x
    r = te.placeholder(shape, dtype, "r")
    return [x, r], te.compute(shape, lambda *i: x[i] + r[i], name=_RESIDUAL_SUM)


def _column_layer_norm(
    x: te.Tensor, gamma: te.Tensor, beta: te.Tensor, epsilon: float
) -> te.Tensor:
    """``layer_norm(x, gamma, beta)`` over the second-to-last axis (``gamma``, ``beta`` along
    it)."""
    *lead, rows, cols = x.shape

    def column_mean(t: te.Tensor, name: str) -> te.Tensor:
        r = te.reduce_axis((0, rows), "r")
        total = te.compute(
            (*lead, cols), lambda *i: te.sum(t[(*i[:-1], r, i[-1])], axis=r), name=name
        )
        return te.compute(total.shape, lambda *i: total[i] / rows, name=f"{name}_mean")

    def column(t: te.Tensor, i: tuple) -> tirx.PrimExpr:
        return t[(*i[:-2], i[-1])]

    return _normalize(x, gamma, beta, epsilon, column_mean, column, lambda i: i[-2], "col")


def make_layer_norm(
    shape: tuple[int, ...],
    dtype: str,
    epsilon: float,
    lanes: int,
    axis: ReducedAxis = ReducedAxis.LAST,
    residual: bool = False,
) -> tirx.PrimFunc:
    """The scheduled ``main(x, [r,] gamma, beta, y)``: ``y = layer_norm(x [+ r], gamma, beta)``
    over ``axis`` of a static ``shape`` whose last dimension divides by ``lanes``.

    Parameters
    ----------
    shape : tuple of int
        Static shape of ``x``, rank >= 2; ``gamma`` and ``beta`` are ``(shape[axis],)``.
    dtype : str
        ``"float32"``.
    epsilon : float
        Added to the variance.
    lanes : int
        Vector lanes of the target (:func:`~tvm_sparse_rnn.kernels.x86.vector.vector_lanes`).
    axis : ReducedAxis
        The last axis (rows in parallel) or the second-to-last (strips of columns in
        parallel, :func:`~tvm_sparse_rnn.kernels.x86.row_reduction.column_strip`).
    residual : bool
        Normalize ``x + r`` (a second input of the same shape): the add of a residual
        connection, in the same passes over the data instead of a kernel of its own.

    Returns
    -------
    tirx.PrimFunc
        With ``tirx.is_scheduled=True``.
    """
    inputs, x = _normalized_input(shape, dtype, residual)
    gamma = te.placeholder((shape[axis.value],), dtype, "gamma")
    beta = te.placeholder((shape[axis.value],), dtype, "beta")
    if axis is ReducedAxis.LAST:
        y = _row_layer_norm(x, gamma, beta, epsilon, lanes)
        variance = ("row_inverse", "row_var_mean", "row_var", "partial_row_var")
        stages = (*variance, "row_sum_mean", "row_sum", "partial_row_sum")  # consumers first
    else:
        y = _column_layer_norm(x, gamma, beta, epsilon)
        stages = ("col_inverse", "col_var_mean", "col_var", "col_sum_mean", "col_sum")
    sch = s_tir.Schedule(te.create_prim_func([*inputs, gamma, beta, y]))
    for name in ("squares", "centered", *([_RESIDUAL_SUM] if residual else [])):
        sch.compute_inline(sch.get_sblock(name))
    if axis is ReducedAxis.LAST:
        schedule_row_stages(sch, "layer_norm", stages, lanes, with_partials=shape[-1] > lanes)
    else:
        schedule_column_stages(sch, "layer_norm", stages, lanes)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)
