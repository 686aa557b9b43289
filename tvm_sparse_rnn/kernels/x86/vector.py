"""Vector registers of an x86 (llvm) target."""

from __future__ import annotations

from tvm.target import Target
from tvm.target.codegen import llvm_get_vector_width, target_has_features

#: Vector width assumed when the target does not say (SSE).
_DEFAULT_VECTOR_BITS = 128


#: Vector registers of x86-64 with AVX-512 (zmm0-31) and without it (xmm/ymm0-15).
AVX512_REGISTERS, BASE_REGISTERS = 32, 16


def vector_registers(target: Target) -> int:
    """Vector registers of ``target``'s CPU: 32 with AVX-512, else 16."""
    return AVX512_REGISTERS if target_has_features("avx512f", target) else BASE_REGISTERS


def vector_lanes(target: Target, dtype_bits: int) -> int:
    """Elements of ``dtype_bits`` in one vector register of ``target`` (at least 2)."""
    width = llvm_get_vector_width(target)
    return max((width if width > 0 else _DEFAULT_VECTOR_BITS) // dtype_bits, 2)
