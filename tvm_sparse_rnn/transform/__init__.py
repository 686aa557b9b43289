"""Relax passes: mark dense layers, dispatch every placeholder to a kernel, CPU dense schedule."""

from .conv1d_to_linear import Conv1dToLinear
from .dense_to_sparse import DenseToSparse
from .dispatch import DispatchKernels, DispatchOptions, KernelDecision, KernelVariant
from .schedule_dense_cpu import ScheduleDenseCPU

__all__ = [
    "Conv1dToLinear",
    "DenseToSparse",
    "DispatchKernels",
    "DispatchOptions",
    "KernelDecision",
    "KernelVariant",
    "ScheduleDenseCPU",
]
