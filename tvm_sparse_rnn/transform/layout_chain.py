"""Chains of layout operators, and where each element of a chain's result comes from.

A model exported from torch moves activations between layers through chains of
``permute_dims`` / ``reshape`` / ``squeeze`` / ``expand_dims`` / ``strided_slice`` (the heads of
an attention split and merged, a kernel's transposed output turned back). Each operator that
reorders elements is a copy kernel of its own after ``FuseOps``, yet a whole chain often adds
up to a plain reshape, or to a slice of rows, of the tensor it starts from. :func:`trace_chain`
finds the chain that ends in an expression (following variable aliases, and optionally
multiplications by scalar constants) and :meth:`LayoutChain.index_map` replays it on an index
array: element ``e`` of the result holds the flat index, into the chain's root, of the element
it copies. The passes compare that array with the index maps they can use.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from .shapes import constant_value, tensor_shape

logger = logging.getLogger(__name__)

#: Operators that only move elements.
LAYOUT_OPS = frozenset(
    f"relax.{name}"
    for name in ("permute_dims", "reshape", "squeeze", "expand_dims", "strided_slice")
)
#: Operators a chain may pass through when it collects scalar factors.
_SCALING_OPS = frozenset({"relax.multiply", "relax.divide"})
#: Largest root (elements) whose index map is computed (an int64 array of its size).
MAX_ELEMENTS = 1 << 24


def op_name(expr: relax.Expr) -> str | None:
    """The operator name of a call of an operator, else ``None``."""
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
        return expr.op.name
    return None


@dataclass(frozen=True)
class LayoutChain:
    """Layout operators from a root expression to a result.

    Attributes
    ----------
    root : relax.Expr
        The first expression that is not a layout operator (a variable or a parameter).
    ops : tuple of relax.Call
        The layout calls, root side first.
    scale : float
        The product of the scalar factors the chain passed through (1 without any).
    """

    root: relax.Expr
    ops: tuple[relax.Call, ...]
    scale: float = 1.0

    def index_map(self) -> np.ndarray | None:
        """For each element of the chain's result, the flat index of the root element it holds
        (an int64 array of the result's shape); ``None`` if a shape is not static, the root has
        more than :data:`MAX_ELEMENTS` elements, or a slice is not constant."""
        shape = tensor_shape(self.root)
        if shape is None or int(np.prod(shape)) > MAX_ELEMENTS:
            return None
        index = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
        for call in self.ops:
            index = _replay(call, index)
            if index is None:
                return None
        return index

    def in_place(self) -> bool:
        """Whether the chain keeps every element of its root at the same flat position (a
        reshape in effect); ``False`` where :meth:`index_map` is ``None``."""
        index = self.index_map()
        size = int(np.prod(tensor_shape(self.root))) if index is not None else -1
        return index is not None and np.array_equal(index.reshape(-1), np.arange(size))


def block_value(expr: relax.Expr, var2val: dict[relax.Var, relax.Expr]) -> relax.Expr:
    """The value bound to ``expr``, aliases followed, looking only through dataflow variables:
    a block's output or a parameter stands for itself (what defines it may sit in another
    block, out of reach of the block that reads it)."""
    while isinstance(expr, relax.DataflowVar) and expr in var2val:
        expr = var2val[expr]
    return expr


def _ints(expr: relax.Expr) -> list[int] | None:
    """The integers of a tuple of constant integers (``IntImm`` or ``PrimValue`` fields)."""
    fields = getattr(expr, "fields", None)
    if fields is None:
        return None
    values = []
    for field in fields:
        value = getattr(field, "value", None)
        if isinstance(value, tvm.tirx.IntImm):  # a PrimValue
            value = value.value
        if not isinstance(value, int):
            return None
        values.append(value)
    return values


def _replay(call: relax.Call, index: np.ndarray) -> np.ndarray | None:
    """``call`` applied to ``index`` with numpy (``None`` where its output shape is unknown)."""
    out_shape = tensor_shape(call)
    if out_shape is None:
        return None
    name = op_name(call)
    if name == "relax.permute_dims":
        axes = call.attrs.axes
        index = np.transpose(index, None if axes is None else [int(a) for a in axes])
    elif name == "relax.strided_slice":
        axes, begin, end, *strides = (_ints(arg) for arg in call.args[1:])
        if axes is None or begin is None or end is None or None in strides:
            return None
        steps = strides[0] if strides else [1] * len(axes)
        slices = [slice(None)] * index.ndim
        for axis, b, e, s in zip(axes, begin, end, steps, strict=True):
            slices[axis] = slice(b, e, s)
        index = index[tuple(slices)]
    # reshape, squeeze, expand_dims (and the others, after their reordering): memory order
    return np.ascontiguousarray(index).reshape(out_shape)


def _scalar(expr: relax.Expr) -> float | None:
    """The value of a constant with one element."""
    value = constant_value(expr)
    return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


def trace_chain(
    expr: relax.Expr, var2val: dict[relax.Var, relax.Expr], with_scales: bool = False
) -> LayoutChain:
    """The layout chain that ends in ``expr``.

    Parameters
    ----------
    expr : relax.Expr
        Where the chain ends: a variable, or a call (a binding's value). The walk stays inside
        the dataflow block (:func:`block_value`).
    var2val : dict
        The function's bindings (``relax.analysis.get_var2val``).
    with_scales : bool
        Also pass through ``multiply`` / ``divide`` by a scalar constant (in either operand
        order for ``multiply``), collecting the factor in :attr:`LayoutChain.scale`.

    Returns
    -------
    LayoutChain
        Possibly with no operators (``expr`` itself, aliases followed, is the root).
    """
    ops: list[relax.Call] = []
    scale = 1.0
    while True:
        value = block_value(expr, var2val)
        if isinstance(value, relax.Var):  # a parameter or another block's output
            return LayoutChain(value, tuple(reversed(ops)), scale)
        name = op_name(value)
        if name in LAYOUT_OPS:
            ops.append(value)
            expr = value.args[0]
            continue
        if with_scales and name in _SCALING_OPS:
            lhs, rhs = value.args
            factor = _scalar(rhs)
            if factor is not None and factor != 0:
                scale = scale * factor if name == "relax.multiply" else scale / factor
                expr = lhs
                continue
            factor = _scalar(lhs)
            if factor is not None and name == "relax.multiply":
                scale *= factor
                expr = rhs
                continue
        return LayoutChain(expr, tuple(reversed(ops)), scale)
