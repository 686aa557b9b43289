"""Softmax for x86 over the last axis (rows) or the one before it (columns): every stage a
vector loop.

TOPI's ``fast_softmax`` reduces the row max and the row sum with a scalar loop, and dlight's CPU
reduction rule keeps them scalar. Here both are the two-step row reductions of
:mod:`~tvm_sparse_rnn.kernels.x86.row_reduction` (``lanes`` partial results in a vector loop,
then a tree fold)::

    for r in parallel(rows):
        pmax[l]  = max_g x[r, g * lanes + l]          (vector)
        m        = max_l pmax[l]
        e[c]     = fast_exp(x[r, c] - m)              (vector, the polynomial of topi.fast_exp)
        psum[l]  = sum_g e[g * lanes + l]             (vector)
        s        = sum_l psum[l]
        y[r, c]  = e[c] * (1 / s)                     (vector)

A softmax over the second-to-last axis (the attention of
:class:`~tvm_sparse_rnn.transform.FeatureMajorAttention`, scores stored ``(heads, keys,
queries)``) needs no lane folding: its reductions run down the columns, a vector of the last
axis at a time (a strip of 32 columns, two cache lines:
:func:`~tvm_sparse_rnn.kernels.x86.row_reduction.column_strip`)::

    for h, strip in parallel(heads, columns / 32):        (c: the strip's columns)
        cmax[c]  = max_r x[h, r, c]                 (vector over c, r outer)
        e[r, c]  = fast_exp((x[h, r, c] - cmax[c]) * scale)   (vector)
        csum[c]  = sum_r e[r, c]                    (vector over c, r outer)
        y[h, r, c] = e[r, c] * (1 / csum[c])        (vector)

Profile with ``python benchmarks/profile_cpu_models.py bert_unstructured --top 8``.
"""

from __future__ import annotations

import logging
import operator

from tvm import s_tir, te, tirx, topi

from .row_reduction import (
    ReducedAxis,
    fold_lanes,
    lane_partials,
    schedule_column_stages,
    schedule_row_stages,
)

logger = logging.getLogger(__name__)


def _row_softmax(x: te.Tensor, lanes: int, scale: tirx.PrimExpr) -> te.Tensor:
    """``softmax(scale * x, axis=-1)`` with lane-wise partial reductions; ``C`` must divide by
    ``lanes``."""
    row_max = fold_lanes(lane_partials(x, te.max, "partial_max", lanes), tirx.Max, "row_max")
    shifted = te.compute(x.shape, lambda *i: (x[i] - row_max[i[:-1]]) * scale, name="shifted")
    e = topi.fast_exp(shifted)
    row_sum = fold_lanes(lane_partials(e, te.sum, "partial_sum", lanes), operator.add, "row_sum")
    inverse = te.compute(row_sum.shape, lambda *i: 1.0 / row_sum[i], name="row_inverse")
    return te.compute(x.shape, lambda *i: e[i] * inverse[i[:-1]], name="softmax")


def _column_softmax(x: te.Tensor, scale: tirx.PrimExpr) -> te.Tensor:
    """``softmax(scale * x, axis=-2)``."""
    *lead, rows, cols = x.shape

    def column(t: te.Tensor, i: tuple) -> tirx.PrimExpr:
        return t[(*i[:-2], i[-1])]

    r = te.reduce_axis((0, rows), "r")
    col_max = te.compute(
        (*lead, cols), lambda *i: te.max(x[(*i[:-1], r, i[-1])], axis=r), name="col_max"
    )
    shifted = te.compute(x.shape, lambda *i: (x[i] - column(col_max, i)) * scale, name="shifted")
    e = topi.fast_exp(shifted)
    s = te.reduce_axis((0, rows), "s")
    col_sum = te.compute(
        (*lead, cols), lambda *i: te.sum(e[(*i[:-1], s, i[-1])], axis=s), name="col_sum"
    )
    inverse = te.compute(col_sum.shape, lambda *i: 1.0 / col_sum[i], name="col_inverse")
    return te.compute(x.shape, lambda *i: e[i] * column(inverse, i), name="softmax")


def make_softmax(
    shape: tuple[int, ...],
    dtype: str,
    lanes: int,
    axis: ReducedAxis = ReducedAxis.LAST,
    scale: float = 1.0,
) -> tirx.PrimFunc:
    """The scheduled ``main(x, y)``: ``y = softmax(scale * x, axis)`` for a ``shape`` whose
    last dimension divides by ``lanes``.

    Parameters
    ----------
    shape : tuple of int
        Static shape, rank >= 2.
    dtype : str
        ``"float32"``.
    lanes : int
        Vector lanes of the target (:func:`~tvm_sparse_rnn.kernels.x86.vector.vector_lanes`).
    axis : ReducedAxis
        The last axis (rows in parallel) or the second-to-last (strips of columns in
        parallel, :func:`~tvm_sparse_rnn.kernels.x86.row_reduction.column_strip`).
    scale : float
        Positive factor of ``x`` (an attention's ``1 / sqrt(D)``), applied after the max (the
        max of ``x`` scaled is that of ``scale * x``).

    Raises
    ------
    ValueError
        If ``scale`` is not positive.

    Returns
    -------
    tirx.PrimFunc
        With ``tirx.is_scheduled=True``.
    """
    if not scale > 0:
        raise ValueError(f"softmax: scale must be positive, got {scale}")
    x = te.placeholder(shape, dtype, "x")
    factor = tirx.const(scale, dtype)
    if axis is ReducedAxis.LAST:
        y = _row_softmax(x, lanes, factor)
        stages = ("row_inverse", "row_sum", "partial_sum", "T_fast_exp", "row_max", "partial_max")
    else:
        y = _column_softmax(x, factor)
        stages = ("col_inverse", "col_sum", "T_fast_exp", "col_max")  # consumers first
    sch = s_tir.Schedule(te.create_prim_func([x, y]))
    sch.compute_inline(sch.get_sblock("shifted"))
    if axis is ReducedAxis.SECOND_LAST:
        schedule_column_stages(sch, "softmax", stages, lanes)
        return sch.mod["main"].with_attr("tirx.is_scheduled", True)
    schedule_row_stages(sch, "softmax", stages, lanes, with_partials=shape[-1] > lanes)
    exp = sch.get_sblock("T_fast_exp")
    sch.set_scope(exp, 0, "global")
    sch.vectorize(sch.split(sch.get_loops(exp)[-1], [None, lanes])[1])
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)
