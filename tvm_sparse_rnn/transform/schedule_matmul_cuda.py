"""``ScheduleMatmulCUDA``: dense matmuls on tensor cores for ``sm_90a`` too.

Runs :class:`~tvm_sparse_rnn.kernels.cuda.matmul.TensorCoreMatmul` (dlight's ``Matmul`` rule
seeing the arch without its feature suffix) over the unscheduled functions just before TVM's
own dlight pass, which then leaves the functions it scheduled alone (they are marked
``tirx.is_scheduled``). Functions the rule declines (no matmul, or an extent <= 64) fall through
to TVM's rules unchanged.
"""

from __future__ import annotations

import logging

import tvm
from tvm.s_tir import dlight

from ..kernels.cuda.matmul import TensorCoreMatmul

logger = logging.getLogger(__name__)


@tvm.transform.module_pass(opt_level=0, name="ScheduleMatmulCUDA")
def ScheduleMatmulCUDA(mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """dlight's ``Matmul`` rule on the numeric arch over unscheduled functions (inside a
    target context)."""
    return dlight.ApplyDefaultSchedule(TensorCoreMatmul())(mod)
