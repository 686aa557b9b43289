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
import operator

from tvm import s_tir, te, tirx, topi

logger = logging.getLogger(__name__)


def lane_partials(t: te.Tensor, op, name: str, lanes: int) -> te.Tensor:
    """``(*lead, lanes)`` partial reductions of ``t (*lead, C)`` over its last axis, one per
    vector lane (lane ``l`` over columns ``g * lanes + l``); ``t`` itself when ``C == lanes``."""
    *lead, c = (int(d) for d in t.shape)
    if c == lanes:
        return t
    g = te.reduce_axis((0, c // lanes), "g")
    return te.compute(
        (*lead, lanes), lambda *i: op(t[(*i[:-1], g * lanes + i[-1])], axis=g), name=name
    )


def fold_lanes(t: te.Tensor, combine, name: str) -> te.Tensor:
    """``t (*lead, lanes)`` combined over its lanes -> ``(*lead)``, as a balanced tree of
    ``combine`` (independent operations instead of one dependent chain of ``lanes``)."""
    *lead, lanes = (int(d) for d in t.shape)

    def tree(terms: list) -> tirx.PrimExpr:
        while len(terms) > 1:
            pairs = zip(terms[0::2], terms[1::2], strict=False)
            terms = [combine(a, b) for a, b in pairs] + terms[len(terms) - len(terms) % 2 :]
        return terms[0]

    return te.compute(
        tuple(lead), lambda *i: tree([t[(*i, lane)] for lane in range(lanes)]), name=name
    )


def schedule_row_stages(
    sch: s_tir.Schedule, out: str, stages: tuple[str, ...], lanes: int, with_partials: bool
) -> None:
    """Rows of ``out`` in parallel, its columns as vectors; ``stages`` (consumers first)
    computed per row. Stages named ``partial_*`` (the lane-wise reductions of
    :func:`lane_partials`, absent unless ``with_partials``) live in registers, their lane loop
    vectorized inside the column-group loop."""
    *lead, col = sch.get_loops(sch.get_sblock(out))
    row = sch.fuse(*lead) if len(lead) > 1 else lead[0]
    sch.parallel(row)
    sch.vectorize(sch.split(col, [None, lanes])[1])
    partials = [name for name in stages if name.startswith("partial_")] if with_partials else []
    for name in stages:
        if name in partials or not name.startswith("partial_"):
            sch.compute_at(sch.get_sblock(name), row)
    for name in partials:
        block = sch.get_sblock(name)
        sch.set_scope(block, 0, "local")
        lane, group = sch.get_loops(block)[-2:]
        sch.reorder(group, lane)
        sch.vectorize(lane)
        sch.decompose_reduction(block, group)


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
    sch.set_scope(exp, 0, "local")
    sch.vectorize(sch.split(sch.get_loops(exp)[-1], [None, lanes])[1])
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)
