"""Row reductions over the last axis as vector loops, shared by the x86 row kernels
(:mod:`~tvm_sparse_rnn.kernels.x86.softmax`, :mod:`~tvm_sparse_rnn.kernels.x86.layer_norm`), and
the schedule of their column variants (reductions over the second-to-last axis).

dlight's CPU reduction rule keeps a reduction over the last axis a scalar loop (vectorizing a
reduction axis needs an ``rfactor``). Here a row reduction runs in two steps: ``lanes`` partial
results, one per vector lane, accumulated over the ``C / lanes`` column groups (the lane axis is
spatial, so the loop is a vector loop), then folded as a balanced tree of independent
operations.
"""

from __future__ import annotations

import enum
import logging

from tvm import s_tir, te, tirx

logger = logging.getLogger(__name__)


class ReducedAxis(enum.Enum):
    """The axis a row kernel (softmax, layer norm) reduces over: the last one (rows, vectors
    of partial results folded at the end) or the second-to-last (columns, vectors along the
    last axis)."""

    LAST = -1
    SECOND_LAST = -2

    @classmethod
    def of(cls, axis: int, rank: int) -> ReducedAxis | None:
        """``axis`` of a tensor of ``rank`` (negative counts from the end) as a member, or
        ``None`` for any other axis."""
        from_end = axis % rank - rank
        return next((member for member in cls if member.value == from_end), None)


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
    :func:`lane_partials`, absent unless ``with_partials``) are per-row buffers, their lane loop
    vectorized inside the column-group loop. Per-row buffers take the "global" scope: LLVM keeps
    a small constant-size one on the stack (in registers), while a "local" one is a
    ``TVMBackendAllocWorkspace`` and free per row (BERT's softmax: 155 -> 47 us a layer, 2-core
    AMD VM)."""
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
        sch.set_scope(block, 0, "global")
        lane, group = sch.get_loops(block)[-2:]
        sch.reorder(group, lane)
        sch.vectorize(lane)
        sch.decompose_reduction(block, group)


#: Columns of a strip of the column kernels (float32: two 64-byte cache lines). Strips of one
#: AVX2 vector (8 columns) read half a line per row and per pass, each line twice; BERT's
#: feature-major layer norm (``768 x 128`` with its residual) / attention softmax (``12 x 128 x
#: 128``, axis -2) took 42-66 / 117-167 us at 8 columns, 48-52 / 87-130 at 16, 32-47 / 58-96 at
#: 32, 37-51 / 67-119 at 64 (2-core Zen 3 VM, ``time_evaluator``, three rounds; git-ignored
#: ``.old/s23/norm_probe.py``).
COLUMN_STRIP = 32


def column_strip(columns: int, lanes: int) -> int:
    """Columns a strip of :func:`schedule_column_stages` spans over a last axis of ``columns``
    (a multiple of ``lanes``): :data:`COLUMN_STRIP` (or ``lanes`` if wider) where it divides
    ``columns``, else ``lanes``."""
    strip = max(COLUMN_STRIP, lanes)
    return strip if columns % strip == 0 else lanes


def schedule_column_stages(
    sch: s_tir.Schedule, out: str, stages: tuple[str, ...], lanes: int
) -> None:
    """Strips of :func:`column_strip` columns of ``out`` in parallel (fused with its leading
    axes), each a loop over the rows of one strip of vectors; ``stages`` (consumers first)
    computed per strip. Stages with a reduction over the rows (a column reduction) keep the rows
    outside and the strip's columns as vectors (spatial, so the vector loop needs no
    ``rfactor``); the others are vectorized along their last axis. Per-strip buffers take the
    "global" scope (see :func:`schedule_row_stages`)."""
    *lead, row, col = sch.get_loops(sch.get_sblock(out))
    width = column_strip(int(sch.get(col).extent), lanes)
    strip, col_lanes = sch.split(col, [None, width])
    sch.reorder(strip, row, col_lanes)
    outer = sch.fuse(*lead, strip)
    sch.parallel(outer)
    sch.vectorize(col_lanes)
    for name in stages:
        block = sch.get_sblock(name)
        sch.compute_at(block, outer)
        sch.set_scope(block, 0, "global")
        loops = sch.get_loops(block)
        if any(var.iter_type == tirx.IterVar.CommReduce for var in sch.get(block).iter_vars):
            lane, rows = loops[-2:]
            sch.reorder(rows, lane)
            sch.vectorize(lane)
            sch.decompose_reduction(block, rows)
        else:
            sch.vectorize(loops[-1])
