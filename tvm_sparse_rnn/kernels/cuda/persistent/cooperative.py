"""TIR pipeline that launches the kernels which ask for it cooperatively.

A cooperative launch (``cuLaunchKernelEx`` with the cooperative attribute, which TVM's CUDA
runtime uses when a kernel's ``tirx.kernel_launch_params`` carry
``"tirx.use_cooperative_launch"``) is what makes ``this_grid().sync()`` legal, and it fails
instead of deadlocking when the grid cannot be co-resident. The persistent kernel asks for it
with the PrimFunc attribute :data:`~tvm_sparse_rnn.kernels.cuda.persistent.kernel.COOPERATIVE_ATTR`
(both barriers: the flag barrier relies on the same co-residency).

TVM's ``SplitHostDevice`` keeps that attribute on the host function only; its device kernels
are named after it (``<symbol>_kernel``, ``<symbol>_kernel_1``, ...).
:func:`mark_cooperative_launch` runs after TVM's default (``s_tir``) pipeline and tags the
device kernels of every host function carrying the attribute; the tag goes before
``tirx.use_dyn_shared_memory``, which the runtime requires to be last.
"""

from __future__ import annotations

import logging

import tvm
from tvm import tirx

from .kernel import COOPERATIVE_ATTR

logger = logging.getLogger(__name__)

PIPELINE_NAME = "tvm_sparse_rnn"
COOPERATIVE_TAG = "tirx.use_cooperative_launch"
DYN_SMEM_TAG = "tirx.use_dyn_shared_memory"
_DEVICE_KERNEL_LAUNCH = 2  # CallingConv::kDeviceKernelLaunch
_FFI_PREFIX = "__tvm_ffi_"


def _kernel_prefixes(mod: tvm.IRModule) -> tuple[str, ...]:
    """``<symbol>_kernel`` of every host function that asks for a cooperative launch."""
    prefixes = []
    for gv, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc) and func.attrs and func.attrs.get(COOPERATIVE_ATTR):
            symbol = str(func.attrs.get("global_symbol", gv.name_hint)).removeprefix(_FFI_PREFIX)
            prefixes += [f"{symbol}_kernel", f"{gv.name_hint}_kernel"]
    return tuple(prefixes)


def _is_device_kernel_of(func: tirx.PrimFunc, prefixes: tuple[str, ...]) -> bool:
    if func.attrs is None or int(func.attrs.get("calling_conv", 0)) != _DEVICE_KERNEL_LAUNCH:
        return False
    symbol = str(func.attrs.get("global_symbol", ""))
    return any(symbol == p or symbol.startswith(p + "_") for p in prefixes)


@tvm.transform.module_pass(opt_level=0, name="MarkCooperativeLaunch")
def mark_cooperative_launch(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Tag the device kernels of functions carrying :data:`COOPERATIVE_ATTR`."""
    prefixes = _kernel_prefixes(mod)
    if not prefixes:
        return mod
    updates = {}
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc) or not _is_device_kernel_of(func, prefixes):
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
    """Register the TIR pipeline (idempotent) and return its name for ``tvm.tirx.build``."""
    tirx.register_tir_pipeline(PIPELINE_NAME, _pipeline)
    return PIPELINE_NAME
