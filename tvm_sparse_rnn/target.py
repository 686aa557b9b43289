"""Targets: short names (``"llvm"``, ``"cuda"``) to complete TVM targets, and a GPU's limits.

Every kernel decision that depends on the GPU (how many CTAs a persistent kernel may have, how
many registers and how much shared memory each) reads :func:`device_limits` of the target it
compiles for, not a constant: the target carries the arch, the thread and shared-memory limits
(the tags registered here carry the opt-in dynamic shared memory of their GPU), and the SM count
comes from the live device when the target's arch matches it, else from the target's ``model``.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import tvm
from tvm.target import Target

from .errors import UnsupportedError

logger = logging.getLogger(__name__)

#: Tag of the GPU ``"cuda"`` means when this machine has none (the lent H200, sm_90a).
DEFAULT_CUDA_TAG = "tvm_sparse_rnn/h200"

#: Hopper tags. ``max_shared_memory_per_block`` is TVM's static limit (what dlight and
#: MetaSchedule verify against); kernels that opt in to dynamic shared memory read
#: :data:`OPT_IN_SHARED_MEMORY` of the arch.
_HOPPER = {
    "kind": "cuda",
    "arch": "sm_90a",
    "max_shared_memory_per_block": 48 * 1024,
    "max_threads_per_block": 1024,
    "max_num_threads": 1024,
    "thread_warp_size": 32,
    "registers_per_block": 65536,
}
_TAGS = {
    "tvm_sparse_rnn/h200": {**_HOPPER, "model": "h200", "l2_cache_size_bytes": 60 * 1024 * 1024},
    "tvm_sparse_rnn/h100": {**_HOPPER, "model": "h100", "l2_cache_size_bytes": 50 * 1024 * 1024},
}
#: Streaming multiprocessors per GPU model (the ``model`` attribute of a cuda target).
SM_COUNTS = {"h200": 132, "h100": 132}
#: Dynamic shared memory one CTA may opt in to, per compute capability (CUDA programming guide).
OPT_IN_SHARED_MEMORY = {"90": 227 * 1024, "89": 99 * 1024, "86": 99 * 1024, "80": 163 * 1024}
#: Registers per SM and ptxas's per-thread limit (every arch since sm_50).
REGISTERS_PER_SM = 65536
MAX_REGISTERS_PER_THREAD = 255


for _name, _config in _TAGS.items():
    tvm.target.register_tag(_name, _config, override=True)


#: x86 ISA families of shipped CPU configs, widest first: (name, LLVM features it needs).
CPU_ISA_FAMILIES = (("avx512", ("avx512f", "avx512bw", "avx512vl")), ("avx2", ("avx2", "fma")))
#: LLVM tuning feature that keeps its vectorizers from turning scalar loads into gathers.
NO_GATHER = "+prefer-no-gather"


def cpu_isa_family(target: Target) -> str | None:
    """The widest of :data:`CPU_ISA_FAMILIES` an llvm target's CPU has, else ``None``.

    The same VM class reports different ``mcpu`` names (``emeraldrapids``, ``znver5``,
    ``rocketlake``) for CPUs that run the same vector code; configs measured on one serve
    the others of its family.
    """
    if target.kind.name != "llvm":
        return None
    for family, features in CPU_ISA_FAMILIES:
        if all(tvm.target.codegen.target_has_features(f, target) for f in features):
            return family
    return None


def without_vector_gathers(target: Target) -> Target:
    """``target`` with :data:`NO_GATHER` on x86 (AVX2 and wider).

    Vector gathers are slow on AMD Zen 4 (a mat-vec of 16-lane ``vgatherdps`` took 1.23
    cycles a nonzero, the scalar loop 0.81) and on Intel CPUs with the Downfall microcode;
    LLVM's SLP vectorizer otherwise builds them from the independent scalar accumulators of the
    recurrent mat-vec (the x86 GRU kernel with its gate math vectorized over units: 188 -> 110
    us a step, H = 1024, N = 1, one core of the AMD EPYC VM).
    """
    if target.kind.name != "llvm" or not tvm.target.codegen.target_has_features("avx2", target):
        return target
    config = dict(target.export())
    mattr = list(config.get("mattr", ()))
    if NO_GATHER in mattr:
        return target
    return Target({**config, "mattr": [*mattr, NO_GATHER]})


@functools.cache
def host_target() -> Target:
    """The LLVM target of this machine's CPU (``mcpu`` detected, e.g. ``znver5``), without
    vector gathers (:func:`without_vector_gathers`)."""
    return without_vector_gathers(Target.from_device(tvm.cpu()))


def resolve_target(target: str | dict | Target) -> Target:
    """Return a complete :class:`tvm.target.Target`.

    Parameters
    ----------
    target : str, dict or Target
        ``"llvm"`` (this CPU, ``mcpu`` detected), ``"cuda"`` (:data:`DEFAULT_CUDA_TAG`, host =
        this CPU), a TVM tag such as ``"tvm_sparse_rnn/h100"``, a JSON dict, or a Target.

    Raises
    ------
    UnsupportedError
        For target kinds other than ``llvm`` and ``cuda``.
    """
    if isinstance(target, Target):
        resolved = target
    elif target == "llvm":
        resolved = host_target()
    elif target == "cuda":
        resolved = Target(DEFAULT_CUDA_TAG, host=host_target())
    else:
        resolved = Target(target)
    if resolved.kind.name == "cuda" and resolved.host is None:
        resolved = Target(resolved, host=host_target())
    resolved = without_vector_gathers(resolved)
    if resolved.kind.name not in ("llvm", "cuda"):
        raise UnsupportedError(
            f"target kind {resolved.kind.name!r} is not supported; use 'llvm' or 'cuda'"
        )
    return resolved


def is_cuda(target: Target) -> bool:
    """Whether ``target`` generates CUDA kernels."""
    return target.kind.name == "cuda"


@dataclass(frozen=True)
class DeviceLimits:
    """The limits of one GPU that kernel plans respect.

    Attributes
    ----------
    name : str
        Device name, for messages.
    num_sms : int
        Streaming multiprocessors; a persistent kernel has at most one CTA per SM.
    regs_per_sm : int
        32-bit registers per SM.
    max_regs_per_thread : int
        ptxas's per-thread register limit.
    max_threads_per_block : int
        Threads per CTA.
    smem_per_block : int
        Largest shared memory per CTA in bytes (dynamic shared memory opt-in beyond 48 KB).
    """

    name: str
    num_sms: int
    regs_per_sm: int = REGISTERS_PER_SM
    max_regs_per_thread: int = MAX_REGISTERS_PER_THREAD
    max_threads_per_block: int = 1024
    smem_per_block: int = 227 * 1024


def _live_cuda_device(capability: str) -> tvm.runtime.Device | None:
    """``tvm.cuda(0)`` when it exists and is of compute ``capability`` (e.g. ``"90"``)."""
    try:
        dev = tvm.cuda(0)
        if not dev.exist:
            return None
        major, minor = str(dev.compute_version).split(".")
    except Exception:  # no CUDA runtime in this TVM build
        return None
    return dev if capability == f"{major}{minor}" else None


def device_limits(target: str | dict | Target) -> DeviceLimits:
    """The limits of the GPU ``target`` compiles for.

    Threads per CTA come from the target, the opt-in shared memory per CTA from its arch
    (:data:`OPT_IN_SHARED_MEMORY`), the SM count from the live device when its compute
    capability is the target's arch, else from :data:`SM_COUNTS` by the target's ``model``.

    Raises
    ------
    UnsupportedError
        For a non-cuda target, or a cuda target whose SM count is unknown (no live device of its
        arch and no known ``model``).
    """
    target = resolve_target(target)
    if not is_cuda(target):
        raise UnsupportedError(f"device limits are for cuda targets, got {target.kind.name}")
    attrs = target.attrs
    arch = str(attrs.get("arch", ""))
    model = str(attrs.get("model", "")) if "model" in attrs else ""
    capability = arch.removeprefix("sm_").rstrip("a")
    dev = _live_cuda_device(capability)
    if dev is not None:
        name, num_sms = str(dev.device_name), int(dev.multi_processor_count)
    elif model in SM_COUNTS:
        name, num_sms = f"{model} ({arch})", SM_COUNTS[model]
    else:
        raise UnsupportedError(
            f"cuda target {target} names no known GPU model ({sorted(SM_COUNTS)}) and no live "
            f"device of arch {arch!r} is present: use target 'cuda' or a tvm_sparse_rnn/ tag"
        )
    return DeviceLimits(
        name=name,
        num_sms=num_sms,
        max_threads_per_block=int(attrs.get("max_threads_per_block", 1024)),
        smem_per_block=shared_memory_per_block(target),
    )


def shared_memory_per_block(target: str | dict | Target) -> int:
    """Shared memory (bytes) a CTA may opt in to on ``target``'s arch
    (:data:`OPT_IN_SHARED_MEMORY`), else the target's ``max_shared_memory_per_block``."""
    target = resolve_target(target)
    capability = str(target.attrs.get("arch", "")).removeprefix("sm_").rstrip("a")
    return OPT_IN_SHARED_MEMORY.get(
        capability, int(target.attrs.get("max_shared_memory_per_block", 48 * 1024))
    )
