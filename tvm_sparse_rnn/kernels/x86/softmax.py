"""Softmax over the last axis for x86: every stage a vector loop, rows in parallel.

TOPI's ``fast_softmax`` reduces the row max and the row sum with a scalar loop, and dlight's CPU
reduction rule keeps them scalar (vectorizing a reduction axis needs an ``rfactor``). Here each
reduction runs in two steps whose first one is vectorizable: ``lanes`` partial results, one per
vector lane, accumulated over the ``C / lanes`` column groups (the lane axis is spatial), then
folded::

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

from tvm import s_tir, te, tirx, topi

logger = logging.getLogger(__name__)


def softmax_compute(x: te.Tensor, lanes: int) -> te.Tensor:
    """``softmax(x, axis=-1)`` with lane-wise partial reductions; ``C`` must divide by
    ``lanes``."""
    *lead, c = (int(d) for d in x.shape)
    groups = c // lanes

    def lane_reduce(t: te.Tensor, op, name: str) -> te.Tensor:
        if groups == 1:  # one vector per row: the lanes are the row
            return t
        g = te.reduce_axis((0, groups), "g")
        return te.compute(
            (*lead, lanes), lambda *i: op(t[(*i[:-1], g * lanes + i[-1])], axis=g), name=name
        )

    def fold(t: te.Tensor, op, name: str) -> te.Tensor:
        lane = te.reduce_axis((0, lanes), "lane")
        return te.compute(tuple(lead), lambda *i: op(t[(*i, lane)], axis=lane), name=name)

    row_max = fold(lane_reduce(x, te.max, "partial_max"), te.max, "row_max")
    shifted = te.compute(x.shape, lambda *i: x[i] - row_max[i[:-1]], name="shifted")
    e = topi.fast_exp(shifted)
    row_sum = fold(lane_reduce(e, te.sum, "partial_sum"), te.sum, "row_sum")
    inverse = te.compute(tuple(lead), lambda *i: 1.0 / row_sum[i], name="row_inverse")
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
    out = sch.get_sblock("softmax")
    *lead, col = sch.get_loops(out)
    row = sch.fuse(*lead) if len(lead) > 1 else lead[0]
    sch.parallel(row)
    sch.vectorize(sch.split(col, [None, lanes])[1])
    sch.compute_inline(sch.get_sblock("shifted"))
    partials = ("partial_max", "partial_sum") if shape[-1] > lanes else ()  # none: one vector
    stages = ("row_inverse", "row_sum", "partial_sum", "T_fast_exp", "row_max", "partial_max")
    for name in stages:  # consumers first
        if name in partials or not name.startswith("partial"):
            sch.compute_at(sch.get_sblock(name), row)
    for name in ("T_fast_exp", *partials):
        sch.set_scope(sch.get_sblock(name), 0, "local")
    for name in partials:
        block = sch.get_sblock(name)
        lane, group = sch.get_loops(block)[-2:]
        sch.reorder(group, lane)
        sch.vectorize(lane)
        sch.decompose_reduction(block, group)
    exp = sch.get_sblock("T_fast_exp")
    sch.vectorize(sch.split(sch.get_loops(exp)[-1], [None, lanes])[1])
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)
