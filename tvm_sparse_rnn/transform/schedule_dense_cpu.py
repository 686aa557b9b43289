"""``ScheduleDenseCPU``: the x86 dense schedule rule on every fused matmul PrimFunc.

TVM's default Relax pipeline for ``llvm`` legalizes ``R.matmul`` into a naive single-threaded
triple loop (no dlight rule covers a CPU GEMM with ``M > 1``); the registered pipeline
(:mod:`tvm_sparse_rnn.pipeline`) runs this pass after ``FuseTIR`` so that layers kept dense get
the parallel, vectorized schedule of :func:`~tvm_sparse_rnn.kernels.x86.dense.schedule_dense_func`.
"""

from __future__ import annotations

import logging

import tvm
from tvm import tirx

from ..kernels.x86.dense import schedule_dense_func

logger = logging.getLogger(__name__)


@tvm.transform.module_pass(opt_level=0, name="ScheduleDenseCPU")
def ScheduleDenseCPU(mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Apply :func:`schedule_dense_func` to every PrimFunc of ``mod`` it fits."""
    updates = {}
    for gv, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc):
            scheduled = schedule_dense_func(func)
            if scheduled is not None:
                updates[gv] = scheduled
    for gv, func in updates.items():
        mod[gv] = func
    logger.debug("ScheduleDenseCPU scheduled %d dense function(s)", len(updates))
    return mod
