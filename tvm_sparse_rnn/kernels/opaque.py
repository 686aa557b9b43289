"""What every hand-scheduled kernel carries when a Relax program calls it."""

from __future__ import annotations

from tvm import tirx

#: PrimFunc attribute ``op_pattern`` value kOpaque: keeps Relax's FuseOps away from the kernel.
OP_PATTERN_OPAQUE = 8


def opaque_kernel(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """``func`` marked opaque to operator fusion and without ``global_symbol`` (the caller
    names it when adding it to a module)."""
    return func.with_attr("op_pattern", OP_PATTERN_OPAQUE).without_attr("global_symbol")
