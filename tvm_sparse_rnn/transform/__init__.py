"""Relax passes: mark dense layers, dispatch every placeholder to a kernel, CPU dense schedule."""

from .dense_to_sparse import DenseToSparse
from .dispatch import DispatchKernels, DispatchOptions, KernelDecision, KernelVariant
from .schedule_dense_cpu import ScheduleDenseCPU

__all__ = [
    "DenseToSparse",
    "DispatchKernels",
    "DispatchOptions",
    "KernelDecision",
    "KernelVariant",
    "ScheduleDenseCPU",
]
