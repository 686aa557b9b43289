"""x86 (LLVM) schedule of the block-sparse ``sparse_dense`` compute.

Loop nest (``lanes = 1`` compute, see :mod:`tvm_sparse_rnn.ops.sparse_dense`)::

    parallel for block_row in N // bs_r:            # threads split the block rows
      for m_outer in ceil(M / m_tile):
        for m_inner in m_tile:                       # unrolled where the extents allow
          acc[bs_r, bs_c] = 0                        # stack array -> vector registers
          for e in blocks of block_row:              # data-dependent
            acc[:, :] += W_data[e, :, :] * X[m, indices[e] * bs_c + (0 .. bs_c)]   # vectorized
          for t in ceil(log2(bs_c)):                 # pairwise sum: halve the columns
            acc[:, 0 .. w/2] += acc[:, w/2 .. w]     # vectorized
          Y[m, block_row * bs_r + r] = acc[r, 0]

The vector runs over the block's columns, plus its rows where ``X`` is the same for all of them
(``bs_c == 1``: a broadcast) or is replicated per row by the compute (:func:`replicate_x`: 4x4,
8x4, ... blocks read ``Xr[m, kb, r, c]``, so the whole block is one contiguous vector FMA). The
block row stays in L1 while the ``m`` loops re-read it. Knobs are :class:`X86Config`; each is
used only as a split factor or an annotation value, so MetaSchedule can pass sampled variables.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from tvm import s_tir, tirx

from ...ops.sparse_dense import (
    BLOCK_OUTPUT,
    BLOCK_PARTIAL_OUTER,
    BLOCK_SUM,
    BLOCK_TREE,
    BLOCK_XREP,
    has_output_stage,
)
from ..space import KnobSpace

logger = logging.getLogger(__name__)

#: Lanes of the compute this schedule expects (one lane: the whole block row per iteration).
LANES = 1
#: Widest vector (elements) the ``(bs_r, bs_c)`` loop is vectorized with; wider blocks split.
MAX_VECTOR = 64
#: Narrower block columns are vectorized together with the block rows (see :func:`replicate_x`).
MIN_VECTOR = 16


@dataclass(frozen=True)
class X86Config:
    """Knobs of :func:`schedule_sparse_dense_x86`.

    Attributes
    ----------
    m_tile : int
        Rows of ``X`` handled per pass over a block row (split factor of ``M``).
    unroll : int
        ``pragma_auto_unroll_max_step`` of the ``m_inner`` loop.
    """

    m_tile: int = 4
    unroll: int = 64


#: Candidate values per knob, for tuning.
KNOB_CHOICES: dict[str, tuple[int, ...]] = {
    "m_tile": (1, 2, 4, 8, 16),
    "unroll": (0, 16, 64, 256),
}


def schedule_sparse_dense_x86(sch: s_tir.Schedule, config: Any = None) -> None:
    """Schedule ``sch`` (made from :func:`~tvm_sparse_rnn.ops.sparse_dense.sparse_dense_prim_func`
    with ``lanes=1``) for x86 in place.

    Parameters
    ----------
    sch : tvm.s_tir.Schedule
        Schedule of the unscheduled PrimFunc ``main``.
    config : X86Config, optional
        Knobs; fields may be MetaSchedule random variables. Defaults to ``X86Config()``.
    """
    config = config or X86Config()
    _, bs_r, bs_c = (int(s) for s in sch.mod["main"].params[1].shape)
    part = sch.get_sblock(BLOCK_PARTIAL_OUTER)
    acc = sch.get_sblock(BLOCK_SUM)
    i, j = sch.get_loops(acc)
    block_row, r = sch.split(j, [None, bs_r])
    m_outer, m_inner = sch.split(i, [None, _m_tile(config.m_tile, sch.get(i).extent)])
    sch.reorder(block_row, m_outer, m_inner, r)
    sch.parallel(block_row)
    sch.annotate(m_inner, "pragma_auto_unroll_max_step", config.unroll)
    sch.annotate(m_inner, "pragma_unroll_explicit", 1)
    # Vectorize the partial sums over (lane, c, unit), contiguous in W_data and X; also over r
    # where X is a broadcast (bs_c == 1) or replicated. The pairwise-sum stages (last first),
    # the partial sums and the output stage (epilogue, cast) go under m_inner (or r), so that
    # their buffers are static (also for a dynamic M) and small. They keep the default scope:
    # "local" would be a workspace allocation per row, "global" a stack array that LLVM keeps in
    # vector registers.
    root_blocks = sch.get_child_blocks(sch.get_sblock("root"))
    replicated = any(sch.get(b).name_hint == BLOCK_XREP for b in root_blocks)
    with_rows = bs_c == 1 or replicated
    inner = m_inner if with_rows else r
    for stage in reversed(root_blocks):
        if sch.get(stage).name_hint.startswith(BLOCK_TREE):
            sch.compute_at(stage, inner, preserve_unit_loops=True)
            _vectorize(sch, sch.get_loops(stage)[-1])
    sch.compute_at(part, inner, preserve_unit_loops=True)
    _vectorize(sch, sch.fuse(*sch.get_loops(part)[-4 if with_rows else -3 :]))
    if has_output_stage(sch):
        sch.reverse_compute_at(sch.get_sblock(BLOCK_OUTPUT), m_inner)
    if replicated:
        xrep = sch.get_sblock(BLOCK_XREP)
        i, kb, r, c = sch.get_loops(xrep)
        sch.parallel(sch.fuse(i, kb))
        sch.vectorize(sch.fuse(r, c))


def _m_tile(m_tile: Any, m: Any) -> Any:
    """``m_tile``, or a static ``M`` where that is smaller (the same loop nest without the
    predicate that costs up to 2x); a sampled ``m_tile`` (tuning) is kept as it is."""
    if isinstance(m_tile, int) and isinstance(m, tirx.IntImm):
        return min(m_tile, int(m))
    return m_tile


def _vectorize(sch: s_tir.Schedule, loop: s_tir.LoopRV) -> None:
    """Vectorize ``loop`` (a static extent), in pieces of :data:`MAX_VECTOR` if it is longer."""
    extent = int(sch.get(loop).extent)
    if extent > MAX_VECTOR:
        _, loop = sch.split(loop, [None, MAX_VECTOR])
    if extent > 1:
        sch.vectorize(loop)


def replicate_x(bs_r: int, bs_c: int) -> bool:
    """Whether the x86 compute should replicate ``X`` (``replicate_x`` of
    :func:`~tvm_sparse_rnn.ops.sparse_dense.sparse_dense`): blocks with several rows whose
    columns alone are narrower than a vector register (16 float32)."""
    return bs_r > 1 and 1 < bs_c < MIN_VECTOR


#: The tunable space of this schedule (tuned and looked up by :mod:`tvm_sparse_rnn.tuning`).
SPACE = KnobSpace("sparse_dense", X86Config, KNOB_CHOICES, schedule_sparse_dense_x86)
