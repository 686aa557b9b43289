"""Vector registers of an x86 (llvm) target."""

from __future__ import annotations

from tvm.target import Target
from tvm.target.codegen import target_has_features

#: Vector register bits by the widest feature the target has (first match), else SSE's 128.
#: TVM's ``llvm_get_vector_width`` answered 512 for every x86 ``-mcpu`` (``haswell`` and
#: ``znver3`` too), which doubled every vector loop and register tile on AVX2 CPUs.
_VECTOR_BITS = (("avx512f", 512), ("avx", 256))
_SSE_BITS = 128


#: Vector registers of x86-64 with AVX-512 (zmm0-31) and without it (xmm/ymm0-15).
AVX512_REGISTERS, BASE_REGISTERS = 32, 16


def vector_registers(target: Target) -> int:
    """Vector registers of ``target``'s CPU: 32 with AVX-512, else 16."""
    return AVX512_REGISTERS if target_has_features("avx512f", target) else BASE_REGISTERS


def vector_bits(target: Target) -> int:
    """Bits of one vector register of ``target``'s CPU: 512 with AVX-512, 256 with AVX or AVX2,
    else 128."""
    return next(
        (bits for feature, bits in _VECTOR_BITS if target_has_features(feature, target)), _SSE_BITS
    )


def vector_lanes(target: Target, dtype_bits: int) -> int:
    """Elements of ``dtype_bits`` in one vector register of ``target`` (at least 2)."""
    return max(vector_bits(target) // dtype_bits, 2)
