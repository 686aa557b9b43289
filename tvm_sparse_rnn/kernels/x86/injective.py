"""The x86 schedule rule of injective (element-wise, layout) functions after ``FuseTIR``.

TVM 0.27's default Relax pipeline for ``llvm`` leaves every function no dlight rule claims as a
naive single-threaded scalar loop nest; dlight's CPU rules cover reductions (softmax, layer
norm) and GEMV but no element-wise or layout function, so a fused GELU, a bias add or a
transpose ran 2-11x slower than onnxruntime's (``benchmarks/profile_cpu_models.py``). This rule:

* inlines every producer block into the last one (``FuseTIR`` output of injective ops);
* splits the innermost loop by the target's vector width in the output dtype (when it divides
  the loop) and vectorizes it;
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
from tvm.target.codegen import llvm_get_vector_width

logger = logging.getLogger(__name__)

#: Vector width assumed when the target does not say (SSE).
_DEFAULT_VECTOR_BITS = 128


def vector_lanes(target: Target, dtype_bits: int) -> int:
    """Elements of ``dtype_bits`` in one vector register of ``target`` (at least 2)."""
    width = llvm_get_vector_width(target)
    return max((width if width > 0 else _DEFAULT_VECTOR_BITS) // dtype_bits, 2)


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
            outer.append(inner_outer)
        if outer:
            sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])
        return sch
