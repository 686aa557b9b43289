"""``ScheduleMatmulCUDA``: dense float16 matmuls on tensor cores for ``sm_90a``.

Runs, over the unscheduled functions just before TVM's own dlight pass (which then leaves the
functions scheduled here alone: they are marked ``tirx.is_scheduled``), first match wins:

1. :class:`~tvm_sparse_rnn.kernels.cuda.matmul_mma.MmaMatmul`, the pipelined ``mma.sync``
   GEMM (H100, float16, against dlight's ``wmma`` schedule: BERT's ``128 x 2304 x 768`` qkv
   layer 9.1 vs 42.2 us, ``128 x 768 x 3072`` 19.3 vs 155.2 us; ``docs/results/README.md``);
2. :class:`~tvm_sparse_rnn.kernels.cuda.matmul.TensorCoreMatmul` (dlight's ``Matmul`` rule
   seeing the arch without its feature suffix) for what the first declines: convolutions,
   rows that are not 16-byte aligned.

Functions both decline (no float16 matmul, GEMV-like extents) fall through to TVM's rules.
"""

from __future__ import annotations

import logging

import tvm
from tvm.s_tir import dlight

from ..kernels.cuda.matmul import TensorCoreMatmul
from ..kernels.cuda.matmul_mma import MmaMatmul

logger = logging.getLogger(__name__)


@tvm.transform.module_pass(opt_level=0, name="ScheduleMatmulCUDA")
def ScheduleMatmulCUDA(mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """The ``mma.sync`` rule, then dlight's ``Matmul`` rule on the numeric arch, over
    unscheduled functions (inside a target context)."""
    return dlight.ApplyDefaultSchedule(MmaMatmul(), TensorCoreMatmul())(mod)
