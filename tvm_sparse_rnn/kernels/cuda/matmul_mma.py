"""Dense float16 GEMMs on tensor cores: ``mma.sync`` m16n8k16 fed by ``ldmatrix`` from shared
tiles that ``cp.async`` fills in a multi-stage software pipeline (the Ampere-class GEMM design of
CUTLASS's ``sm80`` kernels, built from TVM's ``mma`` tensor intrinsics).

The function's one reduction block is normalized (dlight's index maps) to
``C[S, I, J] += A[S, I, K] * B[S, J, K]`` and padded to whole tiles, then::

    blockIdx.x   : (S, I / block_m, J / block_n) tiles of C
    threadIdx.y  : warp (warps_m x warps_n), each a (block_m / warps_m) x (block_n / warps_n)
                   tile of 16 x 16 float32 accumulator fragments in registers
    threadIdx.x  : lane
      for k0 in K / block_k:                          (software pipeline, `stages` deep)
          A[block_m, block_k], B[block_n, block_k] -> shared   (16-byte cp.async; rows padded
                                                               by 8 halves: conflict-free ldmatrix)
          for k1 in block_k / 16:  ldmatrix A, B fragments; mma.sync
      fragments -> shared (float32) -> the fused epilogue (bias, cast, ...) -> global, 16 bytes
      per thread

:func:`schedule_mma_matmul` is pure (a function and an :class:`MmaConfig` in, a schedule out);
:class:`MmaMatmul` is the dlight rule that picks the config from the problem and the target's SM
count (:func:`choose_mma_config`) and declines what the kernel cannot take (see
:meth:`MmaMatmul.apply`). Profile with ``ncu --set full python
benchmarks/bench_gpu_models.py --models deepspeech2_b16 --engines tvm-fp16``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import tvm
from tvm import s_tir, sym, tirx
from tvm.s_tir.dlight.analysis import get_root_block
from tvm.s_tir.dlight.gpu.base import GPUScheduleRule
from tvm.s_tir.dlight.gpu.matmul import (
    auto_inline_consumer_chain,
    auto_inline_producers,
    get_index_map,
    get_reduction_blocks,
)
from tvm.sym.analyzer import Analyzer
from tvm.target import Target

from ...target import device_limits

logger = logging.getLogger(__name__)

#: Side of an ``mma`` fragment (m16n8k16 pairs, loaded as 16 x 16 by ``ldmatrix.x4``).
FRAGMENT = 16
WARP_SIZE = 32
#: Halves per 16-byte ``cp.async`` (and the alignment every operand row must keep).
VECTOR_HALVES = 8
#: Float32 accumulators per 16-byte store of the epilogue.
VECTOR_FLOATS = 4
#: Shared-memory row padding (halves): eight 16-byte rows of an ``ldmatrix`` phase in distinct
#: banks.
ROW_PAD = 8
#: Smallest static ``I`` / ``J`` / ``K`` extent the tensor-core kernel takes; below it (GEMV-like
#: layers) dlight's other rules are faster.
MIN_EXTENT = 16
INPUT_DTYPE = "float16"
ACCUMULATOR_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class MmaConfig:
    """Tiling of :func:`schedule_mma_matmul`.

    Attributes
    ----------
    block_m, block_n : int
        The CTA's tile of ``C`` (multiples of ``16 * warps_m`` / ``16 * warps_n``).
    block_k : int
        Columns of ``K`` per pipeline stage (a multiple of 16).
    warps_m, warps_n : int
        Warps of the CTA along ``I`` and ``J``.
    stages : int
        Shared-memory stages of the ``cp.async`` pipeline (>= 2).
    """

    block_m: int = 128
    block_n: int = 128
    block_k: int = 32
    warps_m: int = 2
    warps_n: int = 2
    stages: int = 3

    def __post_init__(self) -> None:
        if self.block_m % (FRAGMENT * self.warps_m) or self.block_n % (FRAGMENT * self.warps_n):
            raise ValueError(f"{self}: block_m / block_n must be whole 16-row fragments per warp")
        if self.block_k % FRAGMENT or self.stages < 2:
            raise ValueError(f"{self}: block_k must be a multiple of 16 and stages >= 2")

    @property
    def warps(self) -> int:
        """Warps per CTA."""
        return self.warps_m * self.warps_n


#: Configs :func:`choose_mma_config` picks from, largest tile first: the tilings measured
#: correct on the H100 (session-9 probe, ``docs/results/README.md``).
MMA_CONFIGS = (
    MmaConfig(128, 128, 32, 2, 2, 3),
    MmaConfig(64, 64, 32, 2, 2, 3),
    MmaConfig(32, 64, 32, 1, 2, 3),
)


#: K splits :func:`plan_split_k` considers.
SPLIT_K_CHOICES = (1, 2, 3, 4, 6, 8)
#: Fewest columns of ``K`` a split keeps (a CTA pipelines at least eight 32-column stages).
MIN_SPLIT_COLUMNS = 256
#: The units of :func:`plan_split_k`'s estimate are about a picosecond on the H100: BERT's FFN
#: GEMM (128 x 3072 -> 768, 48 tiles of 32 x 64, 6144 units a column) took 19.5 us for 3072
#: columns. In those units, a split's second launch (~2 us) ...
SPLIT_K_LAUNCH = 2_000_000
#: ... and each byte of float32 partials written and read back (~3 TB/s).
SPLIT_K_BYTE = 0.33


def _tile_cost(cfg: MmaConfig) -> int:
    """A tile's time per column of ``K``: the larger of its multiply-adds and its operand
    loads (shared-memory fill against tensor-core rate)."""
    return max(cfg.block_m * cfg.block_n, (cfg.block_m + cfg.block_n) * 64)


def _tiles(cfg: MmaConfig, rows: int, cols: int) -> int:
    return math.ceil(rows / cfg.block_m) * math.ceil(cols / cfg.block_n)


def choose_mma_config(rows: int | None, cols: int, num_sms: int, batch: int = 1) -> MmaConfig:
    """The config of least estimated time for ``batch`` GEMMs of ``C (rows, cols)`` on
    ``num_sms`` SMs.

    A tile's time is :func:`_tile_cost`, a launch whole waves of such tiles. On equal estimates
    the config with more tiles wins: a lone 4-warp CTA per SM hides no latency (DeepSpeech2's
    ``1520 x 1776 -> 512`` convolution: 48 tiles of 128 x 128 on 132 SMs took 33.7 us on the
    H200, against 192 tiles of 64 x 64 estimated the same). ``rows=None`` (a symbolic ``M``)
    takes the largest tile.
    """
    if rows is None:
        return MMA_CONFIGS[0]

    def estimate(cfg: MmaConfig) -> tuple[float, int]:
        tiles = batch * _tiles(cfg, rows, cols)
        return math.ceil(tiles / num_sms) * _tile_cost(cfg), -tiles

    return min(MMA_CONFIGS, key=estimate)


def plan_split_k(rows: int, cols: int, k: int, num_sms: int) -> int:
    """Into how many slices of ``K`` to split ``C (rows, cols) = A (rows, k) B (k, cols)`` so
    that a GEMM of few output tiles fills the SMs (1: no split).

    Each slice is one batch of the same kernel (``splits x tiles`` CTAs, each over ``k /
    splits`` columns); a second kernel sums the float32 partials. The estimate of a config and
    split is its waves times :func:`_tile_cost` times the columns per slice, plus for a split
    :data:`SPLIT_K_LAUNCH` and :data:`SPLIT_K_BYTE` per byte of partials; on a tie the fewer
    slices win. Slices keep whole ``block_k`` stages and at least :data:`MIN_SPLIT_COLUMNS`
    columns.
    """

    def estimate(cfg: MmaConfig, splits: int) -> tuple[float, int, int]:
        tiles = splits * _tiles(cfg, rows, cols)
        cost = math.ceil(tiles / num_sms) * _tile_cost(cfg) * k / splits
        if splits > 1:
            cost += SPLIT_K_LAUNCH + SPLIT_K_BYTE * 8 * splits * rows * cols
        return cost, splits, -tiles

    candidates = [
        (cfg, splits)
        for cfg in MMA_CONFIGS
        for splits in SPLIT_K_CHOICES
        if splits == 1 or (k % (splits * cfg.block_k) == 0 and k // splits >= MIN_SPLIT_COLUMNS)
    ]
    return min(candidates, key=lambda c: estimate(*c))[1]


def _linear_in(index: tirx.PrimExpr, var: tirx.Var) -> tuple[int, tirx.PrimExpr] | None:
    """``(coefficient, base)`` of ``index = coefficient * var + base``, if linear with a constant
    coefficient."""
    coeffs = sym.detect_linear_equation(index, [var])
    if len(coeffs) != 2 or not isinstance(coeffs[0], tirx.IntImm):
        return None
    return coeffs[0].value, coeffs[1]


def _reads_rows_along(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV, axis: int) -> bool:
    """Whether every global read of the fetch ``block`` runs along its iterator ``axis`` with
    unit stride in the buffer's last dimension, from 16-byte aligned rows (what ``cp.async``
    takes)."""
    stmt = sch.get(block)
    var = stmt.iter_vars[axis].var
    analyzer = sym.Analyzer()
    for region in stmt.reads:
        if region.source.scope() != "global":
            continue
        *outer, last = (_linear_in(r.min, var) for r in region.region)
        if last is None or last[0] != 1 or any(o is None or o[0] != 0 for o in outer):
            return False
        aligned = (region.source.shape[-1], last[1])
        if not all(analyzer.can_prove(tirx.floormod(e, VECTOR_HALVES) == 0) for e in aligned):
            return False
    return True


def _stage_operand(
    sch: s_tir.Schedule, tile: s_tir.schedule.SBlockRV, operand: int, k0: s_tir.schedule.LoopRV
) -> tuple[s_tir.schedule.SBlockRV, bool] | None:
    """Cache ``operand`` (0: ``A[S, I, K]``, 1: ``B[S, J, K]``) of ``tile`` in shared memory per
    ``k0`` step, its producers inlined; ``(block, k_major)``, ``k_major`` where the tile is kept
    ``(S, K, J)`` because ``B`` is stored ``K``-major, or None where neither layout reads whole
    16-byte rows."""
    shared = sch.cache_read(tile, operand, "shared.dyn")
    sch.compute_at(shared, k0)
    auto_inline_producers(sch, shared)
    if _reads_rows_along(sch, shared, axis=-1):
        return shared, False
    if operand == 1 and _reads_rows_along(sch, shared, axis=-2):
        rows, cols = sch.get_loops(shared)[-2:]
        sch.reorder(cols, rows)
        sch.transform_layout(shared, ("write", 0), lambda b, j, k: (b, k, j))
        return shared, True
    return None


def _normalize(sch: s_tir.Schedule, main: s_tir.schedule.SBlockRV) -> bool:
    """Reindex ``main`` into ``C[S, I, J] += A[S, I, K] * B[S, J, K]``; False if not a GEMM."""
    index_maps = get_index_map(sch.get(main))
    if index_maps is None:
        return False
    matmul_map, a_map, b_map, c_map = index_maps
    for operand, index_map in (("read", 0), a_map), (("read", 1), b_map):
        sch.transform_layout(sch.reindex(main, operand), ("write", 0), index_map)
    sch.transform_layout(sch.reindex(main, ("write", 0)), ("read", 0), c_map)
    sch.transform_block_layout(main, matmul_map)
    return True


def _tensor_intrinsics():
    """TVM's ``cuda`` tensor-intrinsic module, imported on first use: importing
    ``tvm.s_tir.tensor_intrin`` parses every target's intrinsics (over a minute on a 2-core
    machine), which CPU builds never need."""
    from tvm.s_tir.tensor_intrin import cuda

    return cuda


def _fragment_layout(batch, row, col):
    """Row-major ``(S, rows, cols)`` -> ``(S, row tile, col tile, lane, register)`` of the
    16 x 16 ``ldmatrix`` / ``mma`` fragments."""
    shared_16x16_to_ldmatrix_32x8_layout = _tensor_intrinsics().shared_16x16_to_ldmatrix_32x8_layout
    lane, register = shared_16x16_to_ldmatrix_32x8_layout(row % FRAGMENT, col % FRAGMENT)
    return batch, row // FRAGMENT, col // FRAGMENT, lane, register


def _split_fragments(sch: s_tir.Schedule, block: s_tir.schedule.SBlockRV):
    """Split ``block``'s two innermost loops into 16 x 16 fragments; the fragment's row loop."""
    row, col = sch.get_loops(block)[-2:]
    row_tile, row_in = sch.split(row, [None, FRAGMENT])
    col_tile, col_in = sch.split(col, [None, FRAGMENT])
    sch.reorder(row_tile, col_tile, row_in, col_in)
    return row_in


def schedule_mma_matmul(
    func: tirx.PrimFunc, config: MmaConfig, accumulator: str = "float32"
) -> s_tir.Schedule | None:
    """Schedule the one float16 GEMM of ``func`` (and its fused prologue / epilogue) as the
    module docstring's pipelined ``mma.sync`` kernel.

    Parameters
    ----------
    func : tirx.PrimFunc
        A function whose one reduction block is a matmul of float16 operands (any batch axes;
        ``A`` read along ``K``, ``B`` along ``K`` or along ``N``, unit stride, 16-byte aligned
        rows), accumulating in ``accumulator``.
    config : MmaConfig
        Tiling.
    accumulator : str
        ``"float32"`` or ``"float16"``, the reduction block's output dtype.

    Returns
    -------
    s_tir.Schedule or None
        The schedule, or None where the function is not such a GEMM.
    """
    cfg = config
    sch = s_tir.Schedule(func)
    main = (get_reduction_blocks(sch, sch.get_child_blocks(get_root_block(sch))) or [None])[0]
    if main is None or not _normalize(sch, main):
        return None
    sch.pad_einsum(main, [1, cfg.block_m, cfg.block_n, cfg.block_k])
    batch, i, j, k = sch.get_loops(main)
    i, i_frag = sch.split(i, [None, FRAGMENT])
    j, j_frag = sch.split(j, [None, FRAGMENT])
    k, k_frag = sch.split(k, [None, FRAGMENT])
    sch.reorder(i, j, k, i_frag, j_frag, k_frag)
    fragment = main
    tile = sch.blockize(i_frag)
    i0, i1, i2 = sch.split(i, [None, cfg.warps_m, cfg.block_m // cfg.warps_m // FRAGMENT])
    j0, j1, j2 = sch.split(j, [None, cfg.warps_n, cfg.block_n // cfg.warps_n // FRAGMENT])
    k0, k1 = sch.split(k, [None, cfg.block_k // FRAGMENT])
    sch.reorder(i0, j0, i1, j1, k0, k1, i2, j2)
    cta = sch.fuse(batch, i0, j0)
    warp = sch.fuse(i1, j1)
    sch.bind(cta, "blockIdx.x")
    sch.bind(warp, "threadIdx.y")

    def bind_copy(block: s_tir.schedule.SBlockRV, vector: int) -> None:
        fused = sch.fuse(*sch.get_loops(block)[-2:])
        _, ty, tx, vec = sch.split(fused, [None, cfg.warps, WARP_SIZE, vector])
        sch.bind(ty, "threadIdx.y")
        sch.bind(tx, "threadIdx.x")
        sch.vectorize(vec)

    k_major = False
    for operand in (0, 1):
        staged = _stage_operand(sch, tile, operand, k0)
        if staged is None:
            return None
        shared, k_major = staged
        bind_copy(shared, VECTOR_HALVES)
        sch.storage_align(shared, 0, axis=-2, factor=32, offset=ROW_PAD)

    loads = []
    for operand in (0, 1):
        fragments = sch.cache_read(tile, operand, "warp")
        sch.compute_at(fragments, k1)
        loads.append(_split_fragments(sch, fragments))
        sch.transform_layout(fragments, ("write", 0), _fragment_layout)

    staged = sch.cache_write(tile, 0, "shared.dyn")
    consumers = sch.get_consumers(staged)
    if len(consumers) != 1:
        return None
    # The copy back to the unpadded output reads the shared tile: its own (unpadded) domain
    # bounds the stores of a partial tile (inlined into the copy, the padded one did not).
    sch.compute_inline(staged)
    result, sliced = _fold_epilogue(sch, consumers[0])
    accumulators = sch.cache_write(tile, 0, "warp")
    sch.reverse_compute_at(accumulators, warp)
    sch.reverse_compute_at(result, cta)
    store = _split_fragments(sch, accumulators)
    sch.transform_layout(accumulators, ("read", 0), _fragment_layout)
    bind_copy(result, 1 if sliced else VECTOR_FLOATS)  # a slice's rows are not vector-aligned

    init = sch.get_child_blocks(sch.decompose_reduction(tile, k0))[0]
    intrinsics = _tensor_intrinsics().get_mma_intrin_group(
        "shared.dyn", "shared.dyn", INPUT_DTYPE, accumulator, trans_a=False, trans_b=not k_major
    )
    sch.tensorize(loads[0], intrinsics["load_a"])
    sch.tensorize(loads[1], intrinsics["load_b"])
    sch.tensorize(sch.get_loops(fragment)[-3], intrinsics["compute"])
    sch.tensorize(sch.get_loops(init)[-2], intrinsics["init"])
    sch.tensorize(store, intrinsics["store"])
    sch.annotate(k0, "software_pipeline_stage", [0, 0, cfg.stages - 1])
    sch.annotate(k0, "software_pipeline_order", [0, 1, 2])
    sch.annotate(k0, "software_pipeline_async_stages", [0])
    return sch


def _same_elements(
    sch: s_tir.Schedule, a: s_tir.schedule.SBlockRV, b: s_tir.schedule.SBlockRV
) -> bool:
    """Whether the buffers blocks ``a`` and ``b`` write have as many elements (symbolic too)."""
    a_size, b_size = (math.prod(sch.get(x).writes[0].source.shape) for x in (a, b))
    return Analyzer().can_prove_equal(a_size, b_size)


def _fold_epilogue(
    sch: s_tir.Schedule, copy: s_tir.schedule.SBlockRV
) -> tuple[s_tir.schedule.SBlockRV, bool]:
    """The block storing the function's output, with the element-wise epilogue folded in, and
    whether the output is a slice of the GEMM's.

    Usually the epilogue (casts, bias) is reverse-inlined into ``copy`` (the copy of the shared
    tile to the GEMM's output). When the chain ends in fewer elements than the GEMM computes (a
    slice off zero-padded output features, see
    :data:`~tvm_sparse_rnn.transform.dispatch.linear.DENSE_FEATURE_ALIGN`), reverse-inlining
    would iterate the GEMM's domain and store past the output; ``copy`` and the chain are then
    inlined forward into the chain's last block, whose own domain bounds the stores.
    """
    chain = []
    while len(consumers := sch.get_consumers(chain[-1] if chain else copy)) == 1:
        chain.append(consumers[0])
    if not chain or _same_elements(sch, chain[-1], copy):
        auto_inline_consumer_chain(sch, copy)
        return copy, False
    for block in [copy, *chain[:-1]]:
        sch.compute_inline(block)
    return chain[-1], True


def _gemm_extents(
    sch: s_tir.Schedule,
) -> tuple[int | None, int | None, int | None, int | None, str] | None:
    """Static ``(S, M, N, K)`` (batch, rows, columns, reduction; None where symbolic) and the
    accumulator dtype of ``func``'s float16 GEMM, or None where it is not one."""
    main = (get_reduction_blocks(sch, sch.get_child_blocks(get_root_block(sch))) or [None])[0]
    if main is None or get_index_map(sch.get(main)) is None:
        return None
    stmt = sch.get(main)
    if {str(r.source.dtype) for r in stmt.reads} != {INPUT_DTYPE}:
        return None
    accumulator = str(stmt.writes[0].source.dtype)
    if accumulator not in ACCUMULATOR_DTYPES:
        return None
    _normalize(sch, main)
    b, m, n, k = (
        v.dom.extent.value if isinstance(v.dom.extent, tirx.IntImm) else None
        for v in sch.get(main).iter_vars
    )
    return b, m, n, k, accumulator


class MmaMatmul(GPUScheduleRule):
    """dlight rule: a float16 GEMM on the pipelined ``mma.sync`` kernel of
    :func:`schedule_mma_matmul`, tiled by :func:`choose_mma_config`.

    Declines (returns None, leaving the function to the next rule) a function without exactly
    one float16 GEMM, a static ``M``, ``N`` or ``K`` below :data:`MIN_EXTENT`, and operands
    whose rows cannot be copied in aligned 16-byte pieces.
    """

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        """The schedule of ``func`` for ``target``, or None."""
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        try:
            gemm = _gemm_extents(s_tir.Schedule(func))
            if gemm is None:
                return None
            batch, m, n, k, accumulator = gemm
            if any(e is not None and e < MIN_EXTENT for e in (m, n, k)) or n is None:
                return None
            config = choose_mma_config(m, n, device_limits(target).num_sms, batch or 1)
            return schedule_mma_matmul(func, config, accumulator)
        except (s_tir.ScheduleError, tvm.error.InternalError) as err:
            symbol = func.attrs.get("global_symbol") if func.attrs else None
            logger.debug("mma schedule declined %s: %s", symbol, err)
            return None
