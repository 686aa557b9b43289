"""Vector registers of an x86 (llvm) target."""

from __future__ import annotations

from tvm.target import Target
from tvm.target.codegen import llvm_get_vector_width

#: Vector width assumed when the target does not say (SSE).
_DEFAULT_VECTOR_BITS = 128


def vector_lanes(target: Target, dtype_bits: int) -> int:
    """Elements of ``dtype_bits`` in one vector register of ``target`` (at least 2)."""
    width = llvm_get_vector_width(target)
    return max((width if width > 0 else _DEFAULT_VECTOR_BITS) // dtype_bits, 2)
