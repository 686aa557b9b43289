"""Softmax over the last axis for x86: every stage a vector loop, rows in parallel.

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

Profile with ``python benchmarks/profile_cpu_models.py bert_unstructured --top 8``.
"""

from __future__ import annotations

import logging
import operator

from tvm import s_tir, te, tirx, topi

from .row_reduction import fold_lanes, lane_partials, schedule_row_stages

logger = logging.getLogger(__name__)


def softmax_compute(x: te.Tensor, lanes: int) -> te.Tensor:
    """``softmax(x, axis=-1)`` with lane-wise partial reductions; ``C`` must divide by
    ``lanes``."""
    row_max = fold_lanes(lane_partials(x, te.max, "partial_max", lanes), tirx.Max, "row_max")
    shifted = te.compute(x.shape, lambda *i: x[i] - row_max[i[:-1]], name="shifted")
    e = topi.fast_exp(shifted)
    row_sum = fold_lanes(lane_partials(e, te.sum, "partial_sum", lanes), operator.add, "row_sum")
    inverse = te.compute(row_sum.shape, lambda *i: 1.0 / row_sum[i], name="row_inverse")
    return te.compute(x.shape, lambda *i: e[i] * inverse[i[:-1]], name="softmax")


def make_softmax(shape: tuple[int, ...], dtype: str, lanes: int) -> tirx.PrimFunc:
    """The scheduled ``main(x, y)``: ``y = softmax(x, axis=-1)`` for a ``shape`` whose last
    dimension divides by ``lanes``.

    Parameters
    ----------
    shape : tuple of int
        Static shape, rank >= 2.
    dtype : str
        ``"float32"``.
    lanes : int
        Vector lanes of the target (:func:`~tvm_sparse_rnn.kernels.x86.vector.vector_lanes`).

    Returns
    -------
    tirx.PrimFunc
        With ``tirx.is_scheduled=True``.
    """
    x = te.placeholder(shape, dtype, "x")
    sch = s_tir.Schedule(te.create_prim_func([x, softmax_compute(x, lanes)]))
    sch.compute_inline(sch.get_sblock("shifted"))
    stages = ("row_inverse", "row_sum", "partial_sum", "T_fast_exp", "row_max", "partial_max")
    schedule_row_stages(sch, "softmax", stages, lanes, with_partials=shape[-1] > lanes)
    exp = sch.get_sblock("T_fast_exp")
    sch.set_scope(exp, 0, "global")
    sch.vectorize(sch.split(sch.get_loops(exp)[-1], [None, lanes])[1])
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)
