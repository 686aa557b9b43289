"""Relax passes: float16, mark dense layers, dispatch every placeholder to a kernel, dense
schedules (CPU; tensor cores on cuda)."""

from .accumulate_float32 import AccumulateInFloat32
from .cancel_transposes import CancelTransposes
from .constant_take_to_slice import ConstantTakeToSlice
from .conv1d_to_linear import Conv1dToLinear
from .dense_to_sparse import DenseToSparse
from .dispatch import DispatchKernels, DispatchOptions, KernelDecision, KernelVariant
from .fast_math import FastMath
from .feature_major_attention import FeatureMajorAttention
from .fold_layout_chains import FoldLayoutChains
from .fuse_linear_epilogue import FuseLinearEpilogue
from .schedule_dense_cpu import ScheduleDenseCPU
from .schedule_matmul_cuda import ScheduleMatmulCUDA
from .schedule_remainder_cpu import ScheduleRemainderCPU
from .to_float16 import Precision, ToFloat16
from .vector_layer_norm import VectorLayerNorm

__all__ = [
    "AccumulateInFloat32",
    "CancelTransposes",
    "ConstantTakeToSlice",
    "Conv1dToLinear",
    "DenseToSparse",
    "DispatchKernels",
    "DispatchOptions",
    "FastMath",
    "FeatureMajorAttention",
    "FoldLayoutChains",
    "FuseLinearEpilogue",
    "KernelDecision",
    "KernelVariant",
    "Precision",
    "ScheduleDenseCPU",
    "ScheduleMatmulCUDA",
    "ScheduleRemainderCPU",
    "ToFloat16",
    "VectorLayerNorm",
]
