"""Static shapes and constant values of Relax expressions, for the passes that only rewrite
static tensors or read constant operands."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax


def tensor_shape(expr: relax.Expr) -> tuple[int, ...] | None:
    """The shape of ``expr``'s tensor type when every dimension is a constant, else ``None``
    (not a tensor, unknown rank, or a symbolic dimension)."""
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    dims = ty.shape.values
    if not all(isinstance(d, tvm.tirx.IntImm) for d in dims):
        return None
    return tuple(int(d) for d in dims)


def constant_value(expr: relax.Expr) -> np.ndarray | None:
    """The value of ``expr`` when it is a Relax constant, else ``None``."""
    if isinstance(expr, tvm.ir.expr.Constant):
        return expr.value.numpy()
    return None
