"""The x86 schedule rule of dense matmuls (the layers that stay dense), after ``FuseTIR``.

TVM's default Relax pipeline for ``llvm`` legalizes ``R.matmul`` into a naive single-threaded
triple loop (no dlight rule covers a CPU GEMM with ``M > 1``), which makes every layer the
:class:`~tvm_sparse_rnn.transform.DenseToSparse` pass keeps dense -- and the dense reference
build -- far slower than onnxruntime. This pass schedules each unscheduled PrimFunc whose
reduction block is named ``matmul`` (what ``LegalizeOps`` emits, fused epilogues included):

* the output columns are split by the widest vector width dividing ``N`` (16, 8, 4);
* rows (the last spatial loop before the columns) are tiled by the largest of 16, 8, 4, 2
  dividing their count, and loops become
  ``(row_outer, col_outer) parallel -> k -> row_inner unrolled -> col_inner vectorized``: each
  step of ``k`` loads one vector of the ``(K, N)`` weight and does up to 16 FMAs with it into an
  accumulator tile held in registers (``cache_write`` to ``local``), so the weight is streamed
  from memory ``M / 16`` times instead of ``M`` times;
* fused epilogues (bias add, ReLU, ...) are computed at the parallel loop.

:class:`~tvm_sparse_rnn.transform.schedule_dense_cpu.ScheduleDenseCPU` applies it after
``FuseTIR`` and leaves functions marked ``tirx.is_scheduled`` (the sparse kernels) untouched.
"""

from __future__ import annotations

import contextlib
import logging

from tvm import s_tir, tirx

logger = logging.getLogger(__name__)

_MATMUL_BLOCK = "matmul"
_VECTOR_WIDTHS = (16, 8, 4)
#: Rows computed together, reusing each loaded weight vector.
_ROW_TILES = (16, 8, 4, 2)


def schedule_dense_func(func: tirx.PrimFunc) -> tirx.PrimFunc | None:
    """Schedule one legalized (fused) matmul PrimFunc; ``None`` if it is not one."""
    if func.attrs is not None and func.attrs.get("tirx.is_scheduled", False):
        return None
    sch = s_tir.Schedule(func)
    try:
        block = sch.get_sblock(_MATMUL_BLOCK)
    except s_tir.ScheduleError:
        return None
    loops = sch.get_loops(block)
    if len(loops) < 3:  # a vector dot product (1-D x 1-D): nothing to tile
        return None
    *spatial, col, k = loops
    extent = sch.get(col).extent
    if not spatial or not isinstance(extent, tirx.IntImm):
        return None
    width = next((w for w in _VECTOR_WIDTHS if int(extent) % w == 0), 1)
    # Leading (batch) loops join the parallel loop; tiling only the last row loop by a divisor
    # keeps every parallel iteration's accumulator region exact.
    *batch, rows = spatial
    n_rows = sch.get(rows).extent
    tile = next((t for t in _ROW_TILES if isinstance(n_rows, tirx.IntImm) and n_rows % t == 0), 1)
    rows_outer, rows_inner = sch.split(rows, [None, tile])
    col_outer, col_inner = sch.split(col, [None, width])
    sch.reorder(*batch, rows_outer, col_outer, k, rows_inner, col_inner)
    outer = sch.fuse(*batch, rows_outer, col_outer)
    sch.parallel(outer)
    sch.unroll(rows_inner)
    sch.vectorize(col_inner)
    accumulate = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(accumulate, outer)
    sch.decompose_reduction(block, k)
    for consumer in sch.get_consumers(accumulate):
        # an epilogue reading other rows or columns than the tile (Gemm's broadcast bias of
        # another shape) cannot move under the tile loop: it stays a loop of its own
        with contextlib.suppress(s_tir.ScheduleError):
            sch.reverse_compute_at(consumer, outer)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)
