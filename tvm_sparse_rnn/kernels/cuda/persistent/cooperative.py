"""TIR pipeline that launches the persistent RNN kernels cooperatively.

A cooperative launch (``cuLaunchKernelEx`` with the cooperative attribute, which TVM's CUDA
runtime uses when a kernel's ``tirx.kernel_launch_params`` carry
``"tirx.use_cooperative_launch"``) is what makes ``this_grid().sync()`` legal, and it fails
instead of deadlocking when the grid cannot be co-resident. The flag barrier uses it for the
same guarantee. The pass runs after TVM's default (``s_tir``) pipeline and tags the device
kernels that copy ``h`` with :data:`~tvm_sparse_rnn.rnn.kernel_cuda.COPY_HELPER` or call the grid
sync; the tag goes before ``tirx.use_dyn_shared_memory``, which the runtime requires to be last.
"""

from __future__ import annotations

import logging

import tvm
from tvm import tirx

from .kernel import COPY_HELPER

logger = logging.getLogger(__name__)

PIPELINE_NAME = "tvm_sparse_rnn.persistent"
COOPERATIVE_TAG = "tirx.use_cooperative_launch"
DYN_SMEM_TAG = "tirx.use_dyn_shared_memory"
_DEVICE_KERNEL_LAUNCH = 2  # CallingConv::kDeviceKernelLaunch


@tvm.transform.module_pass(opt_level=0, name="MarkCooperativeLaunch")
def mark_cooperative_launch(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Tag persistent device kernels for a cooperative launch."""
    updates = {}
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc) or func.attrs is None:
            continue
        if int(func.attrs.get("calling_conv", 0)) != _DEVICE_KERNEL_LAUNCH:
            continue
        text = func.script()
        if COPY_HELPER not in text and "grid_sync" not in text:
            continue
        params = [str(p) for p in func.attrs.get("tirx.kernel_launch_params", [])]
        if COOPERATIVE_TAG in params:
            continue
        pos = params.index(DYN_SMEM_TAG) if DYN_SMEM_TAG in params else len(params)
        params.insert(pos, COOPERATIVE_TAG)
        updates[gv] = func.with_attr("tirx.kernel_launch_params", params)
        logger.debug("cooperative launch: %s", gv.name_hint)
    for gv, func in updates.items():
        mod[gv] = func
    return mod


def _pipeline() -> tuple:
    base, finalize_host, finalize_device = tirx.get_tir_pipeline("s_tir")
    return tvm.transform.Sequential([base, mark_cooperative_launch]), finalize_host, finalize_device


def register() -> str:
    """Register the pipeline (idempotent) and return its name for ``tvm.tirx.build``."""
    tirx.register_tir_pipeline(PIPELINE_NAME, _pipeline)
    return PIPELINE_NAME
