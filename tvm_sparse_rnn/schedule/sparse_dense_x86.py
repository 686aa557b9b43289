"""x86 (LLVM) schedule of the block-sparse ``sparse_dense`` compute.

Loop nest (``lanes = 1`` compute, see :mod:`tvm_sparse_rnn.ops.sparse_dense`)::

    parallel for block_row in N // bs_r:            # threads split the block rows
      for m_outer in ceil(M / m_tile):
        for m_inner in m_tile:
          acc[bs_r, bs_c] = 0                        # "local": a vector register
          for e in blocks of block_row:              # data-dependent
            acc[:, :] += W_data[e, :, :] * X[m, indices[e] * bs_c + (0 .. bs_c)]   # vectorized
        Y[m, block_row * bs_r + r] = sum_c acc[m_inner, r, c]     # unrolled

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

from tvm import s_tir

from ..ops.sparse_dense import ACC_DTYPE, BLOCK_CAST, BLOCK_PARTIAL_OUTER, BLOCK_SUM, BLOCK_XREP

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
        ``pragma_auto_unroll_max_step`` of the final reduction over ``(m, bs_r, bs_c)``.
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
    i, j, lane, c = sch.get_loops(acc)
    block_row, r = sch.split(j, [None, bs_r])
    m_outer, m_inner = sch.split(i, [None, config.m_tile])
    sch.reorder(block_row, m_outer, m_inner, r, lane, c)
    sch.parallel(block_row)
    sch.set_scope(part, 0, "local")
    sch.compute_at(part, m_outer, preserve_unit_loops=True)
    # Partial loops under m_outer: m_inner, r, lane, c, unit. Vectorize (lane, c, unit), which
    # is contiguous in W_data and X; also r where X is a broadcast (bs_c == 1) or replicated.
    root_blocks = sch.get_child_blocks(sch.get_sblock("root"))
    replicated = any(sch.get(b).name_hint == BLOCK_XREP for b in root_blocks)
    with_rows = bs_c == 1 or replicated
    vec = sch.fuse(*sch.get_loops(part)[-4 if with_rows else -3 :])
    if (bs_r * bs_c if with_rows else bs_c) > MAX_VECTOR:
        _, vec = sch.split(vec, [None, MAX_VECTOR])
    sch.vectorize(vec)
    sch.annotate(m_inner, "pragma_auto_unroll_max_step", config.unroll)
    sch.annotate(m_inner, "pragma_unroll_explicit", 1)
    if sch.mod["main"].params[0].dtype != ACC_DTYPE:
        sch.reverse_compute_at(sch.get_sblock(BLOCK_CAST), block_row)
    if replicated:
        xrep = sch.get_sblock(BLOCK_XREP)
        i, kb, r, c = sch.get_loops(xrep)
        sch.parallel(sch.fuse(i, kb))
        sch.vectorize(sch.fuse(r, c))


def replicate_x(bs_r: int, bs_c: int) -> bool:
    """Whether the x86 compute should replicate ``X`` (``replicate_x`` of
    :func:`~tvm_sparse_rnn.ops.sparse_dense.sparse_dense`): blocks with several rows whose
    columns alone are narrower than a vector register (16 float32)."""
    return bs_r > 1 and 1 < bs_c < MIN_VECTOR
