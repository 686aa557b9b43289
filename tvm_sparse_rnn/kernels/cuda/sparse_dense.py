"""CUDA schedule of the block-sparse ``sparse_dense`` compute, built for small batches.

With ``M`` of 1 to 64 the kernel is bound by streaming ``W``, so it is organised around the rows
of ``W`` (a CSR-vector / warp-per-row design, as in cuSPARSE's SpMV), not around output tiles as
TVM's old padded kernel was (that one needed ``M >= 32 * bs_r``)::

    blockIdx.x  : rows_per_cta consecutive rows n of Y (= of W)
    blockIdx.y  : tiles of m_tile rows of X
    threadIdx.y : one row n inside the CTA
    threadIdx.x : lane t of the warp sharing row n; the row's stored blocks are dealt
                  round-robin to the compute's 32 lanes (lane t: blocks t, t + 32, ...; with
                  threads_x < 32 a thread also runs lanes t + threads_x, ...)
      for m in the m tile:
        acc[bs_c] = 0                                  # registers, float4 along bs_c
        for round in ceil(blocks / 32):                # same trip count for every lane
          if round * 32 + t < blocks: e = start + round * 32 + t
            acc[:] += W_data[e, n % bs_r, :] * X[m, indices[e] * bs_c : ... + bs_c]
        Y[m, n] = warp all-reduce (5 __shfl_down_sync) of sum(acc), stored by lane 0

Consecutive lanes read consecutive blocks (coalesced ``W_data``); ``X`` comes through L1/L2.
Every lane runs the same number of rounds so the warp reaches the shuffles converged (the
all-reduce takes ``__activemask()``). Knobs are :class:`CudaConfig`, each used only as a split
factor or an annotation value, so MetaSchedule can pass sampled variables instead of ints.

Profile with ``ncu --set full python benchmarks/bench_sparse_dense.py --device gpu --quick``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from tvm import s_tir, tirx

from ...ops.sparse_dense import BLOCK_OUTPUT, BLOCK_PARTIAL_OUTER, BLOCK_SUM, has_output_stage
from ..space import KnobSpace

logger = logging.getLogger(__name__)

#: Lanes of the compute this schedule expects (one warp shares a row).
LANES = 32
#: Width (elements) of the vector loads along a block's columns.
VECTOR_LANES = 4


@dataclass(frozen=True)
class CudaConfig:
    """Knobs of :func:`schedule_sparse_dense_cuda`.

    Attributes
    ----------
    rows_per_cta : int
        Rows of ``W`` per thread block (``threadIdx.y`` extent).
    threads_x : int
        Threads sharing one row (``threadIdx.x`` extent, divides 32).
    m_tile : int
        Rows of ``X`` per thread (register accumulators); ``blockIdx.y`` covers the rest.
    unroll : int
        ``pragma_auto_unroll_max_step`` of the per-thread loops.
    stage_x : int
        ``1``: the CTA first copies its ``m_tile`` rows of ``X`` to shared memory (16-byte
        loads by all its threads) and gathers ``X[m, indices[e]]`` from there instead of through
        L1, where a warp's scattered 2- or 4-byte reads cost up to one L1 wavefront each. It
        changes the loop nest, so it is not sampled by MetaSchedule (not in
        :data:`KNOB_CHOICES`): shipped configs set it where an A/B measured it faster.
    """

    rows_per_cta: int = 4
    threads_x: int = 32
    m_tile: int = 1
    unroll: int = 16
    stage_x: int = 0


#: Candidate values per knob, for tuning.
KNOB_CHOICES: dict[str, tuple[int, ...]] = {
    "rows_per_cta": (1, 2, 4, 8, 16),
    "threads_x": (4, 8, 16, 32),
    "m_tile": (1, 2, 4, 8, 16),
    "unroll": (0, 16, 64),
}
#: Bytes of one cooperative load of the staged ``X`` (a 16-byte vector per thread).
STAGE_LOAD_BYTES = 16
#: Static shared memory a CUDA kernel may declare (the language limit; more needs an opt-in).
STATIC_SHARED_BYTES = 48 * 1024


def schedule_sparse_dense_cuda(sch: s_tir.Schedule, config: Any = None) -> None:
    """Schedule ``sch`` (made from :func:`~tvm_sparse_rnn.ops.sparse_dense.sparse_dense_prim_func`
    with ``lanes=32``) for CUDA in place.

    Parameters
    ----------
    sch : tvm.s_tir.Schedule
        Schedule of the unscheduled PrimFunc ``main``.
    config : CudaConfig, optional
        Knobs; fields may be MetaSchedule random variables. Defaults to ``CudaConfig()``.
    """
    config = config or CudaConfig()
    part = sch.get_sblock(BLOCK_PARTIAL_OUTER)
    acc = sch.get_sblock(BLOCK_SUM)
    i, j, lane, c = sch.get_loops(acc)
    row_outer, row = sch.split(j, [None, config.rows_per_cta])
    m_outer, m_inner = sch.split(i, [None, config.m_tile])
    lane_outer, tx = sch.split(lane, [None, config.threads_x])
    sch.reorder(row_outer, m_outer, row, m_inner, tx, lane_outer, c)
    sch.bind(row_outer, "blockIdx.x")
    sch.bind(m_outer, "blockIdx.y")
    sch.bind(row, "threadIdx.y")
    sch.bind(tx, "threadIdx.x")
    sch.set_scope(part, 0, "local")
    sch.compute_at(part, m_inner, preserve_unit_loops=True)
    # Partial loops under `m_inner`: m(=1), r(=1), lane, c, unit; the lane loop goes to threads.
    p_m, _, p_lane, p_c, _ = sch.get_loops(part)[-5:]
    p_lane_outer, p_tx = sch.split(p_lane, [None, config.threads_x])
    sch.reorder(p_tx, p_m, p_lane_outer)
    sch.bind(p_tx, "threadIdx.x")
    # Vector loads (float4 / half4) of W_data and X along the block's columns where bs_c allows;
    # the float32 accumulators are float4.
    bs_c = int(sch.mod["main"].params[1].shape[2])
    vec = math.gcd(bs_c, VECTOR_LANES)
    if vec > 1:
        sch.vectorize(sch.split(p_c, [None, vec])[1])
    sch.annotate(p_m, "pragma_auto_unroll_max_step", config.unroll)
    sch.annotate(p_m, "pragma_unroll_explicit", 1)
    # The all-reduced float32 sum goes to a register and a separate block stores it (applying
    # the epilogue, casting float16). Storing from the reduction block itself loses the `m < M`
    # guard of a partial m tile in LowerCrossThreadReduction (out-of-bounds stores, seen on the
    # H100 for M = 1).
    if has_output_stage(sch):
        sch.set_scope(acc, 0, "local")
        store = sch.get_sblock(BLOCK_OUTPUT)
    else:
        store = sch.cache_write(acc, 0, "local")
    sch.reverse_compute_at(store, m_inner)
    if config.stage_x:
        _stage_x(sch, part, m_outer, config)


def _stage_x(
    sch: s_tir.Schedule, part: s_tir.SBlockRV, m_outer: s_tir.LoopRV, config: CudaConfig
) -> None:
    """Copy the CTA's ``m_tile x K`` rows of ``X`` to shared memory under ``m_outer``, all the
    CTA's threads loading 16-byte vectors where ``K`` keeps rows 16-byte aligned (``stage_x``
    with a concrete ``m_tile`` and a static ``M``, whose tile has a static size; a tile over
    :data:`STATIC_SHARED_BYTES` or a symbolic ``M`` reads ``X`` through L1 as without it)."""
    x = sch.mod["main"].params[0]
    k = int(x.shape[1])
    itemsize = x.dtype.bits // 8
    static = isinstance(config.m_tile, int) and isinstance(x.shape[0], tirx.IntImm)
    if not static or config.m_tile * k * itemsize > STATIC_SHARED_BYTES:
        logger.debug("X tile of %s x %d rows of %s not staged", config.m_tile, k, x.shape[0])
        return
    index = next(i for i, r in enumerate(sch.get(part).reads) if r.source.same_as(x))
    staged = sch.cache_read(part, index, "shared")
    sch.compute_at(staged, m_outer, preserve_unit_loops=True)
    loops = sch.get_loops(staged)[-2:]  # (m, k) of the copy
    vector = STAGE_LOAD_BYTES // itemsize
    vector = vector if k % vector == 0 else 1
    fused = sch.fuse(*loops)
    _, ty, tx, vec = sch.split(fused, [None, config.rows_per_cta, config.threads_x, vector])
    sch.bind(ty, "threadIdx.y")
    sch.bind(tx, "threadIdx.x")
    sch.vectorize(vec)


#: The tunable space of this schedule (tuned and looked up by :mod:`tvm_sparse_rnn.tuning`).
SPACE = KnobSpace("sparse_dense", CudaConfig, KNOB_CHOICES, schedule_sparse_dense_cuda)
