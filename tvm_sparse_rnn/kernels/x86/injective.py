"""The x86 schedule rule of injective (element-wise, layout) functions after ``FuseTIR``.

TVM 0.27's default Relax pipeline for ``llvm`` leaves every function no dlight rule claims as a
naive single-threaded scalar loop nest; dlight's CPU rules cover reductions (softmax, layer
norm) and GEMV but no element-wise or layout function, so a fused GELU, a bias add or a
transpose ran 2-11x slower than onnxruntime's (``benchmarks/profile_cpu_models.py``). This rule:

* inlines every producer block into the last one (``FuseTIR`` output of injective ops);
* splits the innermost loop by the target's vector width in the output dtype (when it divides
  the loop) and vectorizes it;
* where the function transposes (an input's last axis is not the output's), tiles the output
  ``16 x lanes`` so that the tile reads whole input cache lines;
* fuses the remaining loops into one parallel loop.

:class:`~tvm_sparse_rnn.transform.schedule_remainder_cpu.ScheduleRemainderCPU` applies it with
dlight's CPU rules to the functions nothing else scheduled.
"""

from __future__ import annotations

import logging

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import ScheduleRule, get_extent
from tvm.target import Target

from .vector import vector_lanes

logger = logging.getLogger(__name__)

#: Output rows per tile of a transposing function, the widest dividing the row count first.
_TRANSPOSE_ROWS = (16, 8, 4, 2)


class InjectiveCPU(ScheduleRule):
    """dlight rule: parallel outer loops, vectorized inner loop, for all-injective functions."""

    def apply(
        self, func: tirx.PrimFunc, target: Target, _: bool
    ) -> s_tir.Schedule | list[s_tir.Schedule] | None:
        """The schedule of ``func``, or ``None`` if it has a reduction or cannot be inlined."""
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        sch = s_tir.Schedule(func)
        blocks = normalize_prim_func(sch)
        if not blocks or not all(b.is_injective() for b in blocks):
            return None
        try:
            for producer in blocks[:-1]:
                sch.compute_inline(producer.block_rv)
        except s_tir.ScheduleError:
            return None
        last = blocks[-1].block_rv
        loops = sch.get_loops(last)
        if not loops:
            return None
        writes = sch.get(last).writes
        lanes = vector_lanes(target, writes[0].source.dtype.bits if writes else 32)
        *outer, inner = loops
        extent = get_extent(sch, inner)
        if isinstance(extent, int) and extent >= lanes and extent % lanes == 0:
            inner_outer, vector = sch.split(inner, [None, lanes])
            sch.vectorize(vector)
            rows = _transpose_tile_rows(sch, last, outer)
            if rows is not None:
                rows_outer, rows_inner = sch.split(outer.pop(), [None, rows])
                sch.reorder(rows_outer, inner_outer, rows_inner)
                sch.unroll(rows_inner)
                outer += [rows_outer, inner_outer]
            else:
                outer.append(inner_outer)
        if outer:
            sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
        return sch


def _transpose_tile_rows(
    sch: s_tir.Schedule, block: s_tir.SBlockRV, outer: list[s_tir.LoopRV]
) -> int | None:
    """Rows of the output tile of a transposing function, ``None`` for one that is not.

    A function whose last output axis is not the last axis of some input it reads (a transpose,
    or an element-wise op fused with one) reads each input cache line for one element of a
    vector; tiling ``rows x lanes`` of the output makes the tile's reads whole cache lines
    (``(1, 3072, 128) -> (1, 128, 3072)``: 240 -> 60 us on the 2-core AVX-512 VM).
    """
    stmt = sch.get(block)
    if not outer or not stmt.iter_vars:
        return None
    last = stmt.iter_vars[-1].var
    if all(not r.region or _uses(r.region[-1].min, last) for r in stmt.reads):
        return None
    extent = get_extent(sch, outer[-1])
    if not isinstance(extent, int):
        return None
    return next((rows for rows in _TRANSPOSE_ROWS if extent % rows == 0), None)


def _uses(expr: tirx.PrimExpr, var: tirx.Var) -> bool:
    """Whether ``expr`` mentions ``var``."""
    return any(v.same_as(var) for v in tirx.analysis.undefined_vars(expr))
