"""The x86 schedule rule of dense matmuls (the layers that stay dense), after ``FuseTIR``.

TVM's default Relax pipeline for ``llvm`` legalizes ``R.matmul`` into a naive single-threaded
triple loop (no dlight rule covers a CPU GEMM with ``M > 1``), which makes every layer the
:class:`~tvm_sparse_rnn.transform.DenseToSparse` pass keeps dense -- and the dense reference
build -- far slower than onnxruntime. This rule schedules each unscheduled PrimFunc whose
reduction block is named ``matmul`` (what ``LegalizeOps`` emits, fused epilogues included) as a
register-blocked GEMM (the BLIS micro-kernel shape):

* leading unit-row loops join the batch loop into the rows (``(95, 1, K) x (K, N)`` is a
  95-row GEMM, not 95 one-row ones);
* ``pad_einsum`` pads the rows to the row tile and the columns to two vector registers, so
  that no shape (``M = 95``, ``N = 29``) falls back to one-row, scalar code;
* loops become ``(row_outer, col_outer) parallel -> k -> row_inner, col_vector unrolled ->
  lane vectorized``: each step of ``k`` loads two vectors of the ``(K, N)`` weight and does
  ``2 x rows`` FMAs with them into an accumulator tile held in registers (``cache_write`` to
  ``local``; 14 x 2 accumulators + 2 weight vectors fill AVX-512's 32 registers; AVX2's 16
  take 6 x 2: :func:`tile_limits`);
* fused epilogues (bias add, ReLU, ...) are computed at the parallel loop.

On the 2-core AVX-512 VM it took the DeepSpeech2-like model's im2col convolution
``(95, 1771) x (1771, 512)`` from 11.8 to 1.3 ms and its output layer ``(95, 1, 2048) x (2048,
29)`` from 3.4 to 0.11 ms, each timed alone (``time_evaluator``); inside the model
(``python benchmarks/profile_cpu_models.py deepspeech2 --top 10``) they now take about 2.0 and
0.2 ms.

:class:`~tvm_sparse_rnn.transform.schedule_dense_cpu.ScheduleDenseCPU` applies it after
``FuseTIR`` and leaves functions marked ``tirx.is_scheduled`` (the sparse kernels) untouched.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass

from tvm import s_tir, tirx
from tvm.target import Target

from ...target import host_target
from .vector import AVX512_REGISTERS, BASE_REGISTERS, vector_lanes, vector_registers

logger = logging.getLogger(__name__)

_MATMUL_BLOCK = "matmul"
#: Row tiles tried; the accumulator tile is ``rows x vectors`` vector registers.
_ROW_TILES = (14, 12, 8, 6, 4, 2, 1)
#: ``(tallest row tile, column vectors)`` per vector register count. AVX-512 (32): 14 x 2
#: accumulators + 2 weight vectors. AVX2 (16): 6 x 2, 12 accumulators (BLIS's Haswell SGEMM
#: shape): one thread of the Zen 3 VM (``time_evaluator``, best of 10, two rounds; git-ignored
#: ``.old/s23/dense_tile_probe.py``), GFLOPS at 8 x 1 / 6 x 2 / 4 x 2 / 4 x 3 / 5 x 2:
#: ``95 x 1771 x 512`` 41 / 64-68 / 40-48 / 45-52 / 50-62, ``128 x 768 x 768`` 42-50 / 60-61 /
#: 42 / 56-57 / 49, ``16 x 1024 x 1024`` 31-33 / 44-49 / 31 / 34-44 / 37-38. BERT's attention
#: products (12 x 128 x 128 x 64, heads read in place: rows that cannot be padded) 4 x 2
#: 58-59 / 71-73, 8 x 1 37-38 / 37-42, and 8 x 2 (16 accumulators, which the 512-bit width TVM
#: reported for every x86 CPU had made the "8 x 1" tile) 44-45 / 47-48.
_TILE_LIMITS = {AVX512_REGISTERS: (14, 2), BASE_REGISTERS: (6, 2)}
#: How much more modelled work a row tile dividing the rows may cost than a padded one, per
#: vector register count. AVX-512: BERT's attention matmuls (12 x 128 x 64 x 128 and 12 x 128 x
#: 128 x 64) took 113 and 140 us with the padded 12-row tile, 81 and 74 us with the 8-row tile
#: (2-core AVX-512 VM, median of 3). AVX2: below 1, the padded 6-row tile wins even where a
#: 4-row one models as much work (``16 x 1024 x 1024``; ``128 x 768 x 768``: see
#: :data:`_TILE_LIMITS`): 8 accumulators are just the FMAs two pipes keep in flight.
PAD_PENALTY = {AVX512_REGISTERS: 1.5, BASE_REGISTERS: 0.95}


@dataclass(frozen=True)
class DenseTile:
    """Register tile of the dense micro-kernel.

    Attributes
    ----------
    rows : int
        Output rows computed together (each weight vector is reused ``rows`` times).
    lanes : int
        Elements per vector register in the output dtype.
    vectors : int
        Vector registers of columns per tile.
    """

    rows: int
    lanes: int
    vectors: int

    @property
    def cols(self) -> int:
        """Output columns per tile."""
        return self.lanes * self.vectors


def _register_file(registers: int) -> int:
    """The key of :data:`_TILE_LIMITS` and :data:`PAD_PENALTY` for ``registers`` vector
    registers: AVX-512's 32, else 16."""
    return AVX512_REGISTERS if registers >= AVX512_REGISTERS else BASE_REGISTERS


def tile_limits(registers: int) -> tuple[int, int]:
    """``(tallest row tile, column vectors)`` of the micro-kernel for ``registers`` vector
    registers (:data:`_TILE_LIMITS`; 16 for any count below 32)."""
    return _TILE_LIMITS[_register_file(registers)]


def choose_row_tile(rows: int, registers: int, pad: bool = True) -> int:
    """The row tile with the least work per useful row: padding ``rows`` up to a multiple of
    the tile against the weight-vector loads a shorter tile shares among fewer rows (ties go to
    the taller tile), at most the tallest of :func:`tile_limits`. A tile dividing ``rows`` is
    preferred unless it costs more than :data:`PAD_PENALTY` (of the register count) times the
    best padded one: padding copies the operands outside the tile loop. ``pad=False``: the best
    dividing tile."""
    tallest, weight_loads = tile_limits(registers)
    tiles = tuple(t for t in _ROW_TILES if t <= tallest)

    def cost(tile: int) -> float:
        return math.ceil(rows / tile) * (tile + weight_loads) / rows

    def best(tiles: tuple[int, ...]) -> int:
        return min(tiles, key=lambda tile: (cost(tile), -tile))

    padded = best(tiles)
    dividing = best(tuple(t for t in tiles if rows % t == 0))  # 1 always divides
    if not pad:
        return dividing
    penalty = PAD_PENALTY[_register_file(registers)]
    return dividing if cost(dividing) <= penalty * cost(padded) else padded


def choose_tile(rows: int, cols: int, lanes: int, registers: int, pad: bool = True) -> DenseTile:
    """Tile of a ``rows x cols`` output for ``registers`` vectors of ``lanes`` elements;
    ``pad=False``: one that divides the rows and, where whole vectors do, the columns."""
    vectors = tile_limits(registers)[1] if cols > lanes else 1
    if not pad and cols % (lanes * vectors):
        vectors = 1
    return DenseTile(choose_row_tile(rows, registers, pad), lanes, vectors)


def _int_extent(sch: s_tir.Schedule, loop: s_tir.LoopRV) -> int | None:
    extent = sch.get(loop).extent
    return int(extent) if isinstance(extent, tirx.IntImm) else None


def _merge_unit_rows(sch: s_tir.Schedule, block: s_tir.SBlockRV) -> None:
    """Fold a unit row iterator into the batch iterator before it (``(B, 1, K)`` rows)."""
    loops = sch.get_loops(block)
    if len(loops) < 4 or _int_extent(sch, loops[-3]) != 1:
        return
    head = len(loops) - 4

    def merged(*iters: tirx.Var) -> list[tirx.PrimExpr]:
        return [*iters[:head], iters[head] + iters[head + 1], *iters[head + 2 :]]

    sch.transform_block_layout(block, tirx.IndexMap.from_func(merged, ndim=len(loops)))


def _pad_to_tile(
    sch: s_tir.Schedule, block: s_tir.SBlockRV, lanes: int, registers: int
) -> DenseTile:
    """Pad the rows and columns of ``block`` to the tile chosen for them, or take a tile that
    needs no padding where ``pad_einsum`` cannot pad the block (its operands read at index
    expressions such as the attention heads' ``h * D + d``); no padding (one row, one vector
    where it divides the columns) for symbolic extents."""
    *spatial, rows, cols, _ = sch.get_loops(block)
    n_rows, n_cols = _int_extent(sch, rows), _int_extent(sch, cols)
    if n_rows is None or n_cols is None:
        return DenseTile(1, lanes if n_cols is not None and n_cols % lanes == 0 else 1, 1)
    tile = choose_tile(n_rows, n_cols, lanes, registers)
    if n_rows % tile.rows == 0 and n_cols % tile.cols == 0:
        return tile
    try:
        sch.pad_einsum(block, [1] * len(spatial) + [tile.rows, tile.cols, 1])
    except s_tir.ScheduleError as err:
        logger.debug("dense schedule: no padding to %s (%s); a dividing tile", tile, err)
        tile = choose_tile(n_rows, n_cols, lanes, registers, pad=False)
        if n_rows % tile.rows or n_cols % tile.cols:
            raise
    return tile


def _tile_loops(sch: s_tir.Schedule, block: s_tir.SBlockRV, tile: DenseTile) -> None:
    """Register-block ``block`` by ``tile`` under one parallel loop; epilogues join it."""
    *batch, rows, cols, k = sch.get_loops(block)
    rows_outer, rows_inner = sch.split(rows, [None, tile.rows])
    cols_outer, col_vectors, lanes = sch.split(cols, [None, tile.vectors, tile.lanes])
    sch.reorder(*batch, rows_outer, cols_outer, k, rows_inner, col_vectors, lanes)
    outer = sch.fuse(*batch, rows_outer, cols_outer)
    sch.parallel(outer)
    sch.unroll(rows_inner)
    sch.unroll(col_vectors)
    sch.vectorize(lanes)
    accumulate = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(accumulate, outer)
    sch.decompose_reduction(block, k)
    for consumer in sch.get_consumers(accumulate):
        # an epilogue reading other rows or columns than the tile (Gemm's broadcast bias of
        # another shape, the un-padding copy) cannot move under the tile loop: it stays a loop
        # of its own
        with contextlib.suppress(s_tir.ScheduleError):
            sch.reverse_compute_at(consumer, outer)


def schedule_dense_func(func: tirx.PrimFunc, target: Target | None = None) -> tirx.PrimFunc | None:
    """Schedule one legalized (fused) matmul PrimFunc; ``None`` if it is not one.

    Parameters
    ----------
    func : tvm.tirx.PrimFunc
        A ``FuseTIR`` output with a reduction block named ``matmul`` over ``(..., rows, cols,
        k)`` (any float dtype; fused element-wise epilogues allowed).
    target : tvm.target.Target, optional
        The llvm target (its vector width); default: the current target, else this CPU's.

    Returns
    -------
    tvm.tirx.PrimFunc or None
        The scheduled function, marked ``tirx.is_scheduled``.
    """
    if func.attrs is not None and func.attrs.get("tirx.is_scheduled", False):
        return None
    target = target or Target.current(allow_none=True) or host_target()
    for merge_rows in (True, False):
        sch = s_tir.Schedule(func)
        try:
            block = sch.get_sblock(_MATMUL_BLOCK)
        except s_tir.ScheduleError:
            return None
        if len(sch.get_loops(block)) < 3:  # a vector dot product (1-D x 1-D): nothing to tile
            return None
        dtype_bits = sch.get(block).writes[0].source.dtype.bits
        try:
            if merge_rows:
                _merge_unit_rows(sch, block)
            lanes = vector_lanes(target, dtype_bits)
            tile = _pad_to_tile(sch, block, lanes, vector_registers(target))
            _tile_loops(sch, block, tile)
        except s_tir.ScheduleError as err:
            logger.debug("dense schedule (merge_rows=%s) failed: %s", merge_rows, err)
            continue
        return sch.mod["main"].with_attr("tirx.is_scheduled", True)
    return None
