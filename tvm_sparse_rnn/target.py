"""Target resolution: short names (``"llvm"``, ``"cuda"``) to fully specified TVM targets."""

from __future__ import annotations

import functools
import logging

import tvm
from tvm.target import Target

from .errors import UnsupportedError

logger = logging.getLogger(__name__)

#: The GPU this package is tuned for; the tag carries arch sm_90a and the thread/smem limits
#: MetaSchedule and the schedules read.
DEFAULT_CUDA_TAG = "nvidia/nvidia-h100"


@functools.cache
def host_target() -> Target:
    """The LLVM target of this machine's CPU (``mcpu`` detected, e.g. ``znver5``)."""
    return Target.from_device(tvm.cpu())


def resolve_target(target: str | dict | Target) -> Target:
    """Return a complete :class:`tvm.target.Target`.

    Parameters
    ----------
    target : str, dict or Target
        ``"llvm"`` (this CPU, ``mcpu`` detected), ``"cuda"`` (the H100, ``sm_90a``, host =
        this CPU), a TVM tag such as ``"nvidia/nvidia-h100"``, a JSON dict, or a Target.

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
    if resolved.kind.name not in ("llvm", "cuda"):
        raise UnsupportedError(
            f"target kind {resolved.kind.name!r} is not supported; use 'llvm' or 'cuda'"
        )
    return resolved


def is_cuda(target: Target) -> bool:
    """Whether ``target`` generates CUDA kernels."""
    return target.kind.name == "cuda"
