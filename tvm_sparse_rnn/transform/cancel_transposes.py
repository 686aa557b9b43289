"""``CancelTransposes``: element-wise chains between two CSR kernels run feature-major (llvm).

The x86 CSR kernel computes ``Y^T`` (``(1, N, M)``) from ``X^T`` (``(K, M)``), so the dispatch
wraps it in transposes. Between two such layers -- a transformer's FFN1 -> bias + GELU -> FFN2
-- the activations go back and forth::

    yt = call_tir(csr1, ...)                          # (1, N, M)
    y  = reshape(permute_dims(yt, [0, 2, 1]), ...)    # (..., N): transpose
    h  = gelu(y + b)                                  # element-wise, constants over N
    xt = permute_dims(reshape(h, [M, N]), [1, 0])     # (N, M): transpose back, for csr2

This pass recomputes the element-wise chain on ``reshape(yt, [N, M])`` directly, constants of
shape ``(N,)`` reshaped to ``(N, 1)``, and binds ``xt`` to it: both transposes disappear (the
old chain is left to dead-code elimination when nothing else reads it). Only element-wise
operators whose other operands are constants (scalars or vectors over ``N``) are followed, so
the numbers are the same, operation for operation.
"""

from __future__ import annotations

import logging

import numpy as np
import tvm
from tvm import relax

from .mutate import mutate_relax_functions
from .shapes import tensor_shape

logger = logging.getLogger(__name__)

#: Element-wise operators the chain may hold (unary or binary).
ELEMENTWISE = frozenset(
    f"relax.{name}"
    for name in (
        "add", "subtract", "multiply", "divide", "erf", "tanh", "exp", "sigmoid", "negative",
        "sqrt", "rsqrt", "nn.relu", "nn.gelu", "nn.gelu_tanh", "nn.silu", "power", "maximum",
        "minimum",
    )
)  # fmt: skip


def _op(expr: relax.Expr, name: str | None = None) -> bool:
    """Whether ``expr`` is a call of an operator (named ``name``, if given)."""
    if not isinstance(expr, relax.Call) or not isinstance(expr.op, tvm.ir.Op):
        return False
    return name is None or expr.op.name == name


@relax.expr_functor.mutator
class _Canceller(relax.PyExprMutator):
    """Rebinds ``permute_dims(reshape(chain), [1, 0])`` to the chain recomputed on ``Y^T``."""

    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.var2val: dict[relax.Var, relax.Expr] = {}
        self.cancelled = 0
        self.emitted = False  # bindings of a chain that then failed are dead code

    def visit_function_(self, func: relax.Function) -> relax.Expr:
        self.var2val = dict(relax.analysis.get_var2val(func))
        return super().visit_function_(func)

    def _value(self, expr: relax.Expr) -> relax.Expr:
        """``expr`` with var-to-var aliases followed to a bound value."""
        while isinstance(expr, relax.Var) and expr in self.var2val:
            value = self.var2val[expr]
            if not isinstance(value, relax.Var):
                return value
            expr = value
        return expr

    def _source(self, expr: relax.Expr, n: int, m: int) -> relax.Expr | None:
        """``yt`` (``(1, n, m)``) if ``expr`` is reshapes/aliases of ``permute_dims(yt,
        [0, 2, 1])``."""
        value = self._value(expr)
        while _op(value, "relax.reshape"):
            value = self._value(value.args[0])
        if not _op(value, "relax.permute_dims"):
            return None
        axes = [int(a) for a in value.attrs.axes] if value.attrs.axes is not None else None
        yt = value.args[0]
        if axes != [0, 2, 1] or tensor_shape(yt) != (1, n, m):
            return None
        return yt

    def _rebuild(
        self,
        expr: relax.Expr,
        shape: tuple[int, ...],
        n: int,
        m: int,
        memo: dict[relax.Expr, relax.Expr],
    ) -> relax.Expr | None:
        """``expr`` (of ``shape``) recomputed feature-major (``(n, m)``), or ``None``."""
        if isinstance(expr, tvm.ir.expr.Constant):
            data = expr.value.numpy()
            if data.ndim == 0:
                return expr
            if data.shape[-1] == n and data.size == n:
                return relax.const(np.ascontiguousarray(data.reshape(n, 1)))
            return None
        key = expr
        if key in memo:
            return memo[key]
        if tensor_shape(expr) != shape:
            return None
        yt = self._source(expr, n, m)
        if yt is not None:
            self.emitted = True
            out = self.builder_.emit(relax.op.reshape(yt, [n, m]))
            memo[key] = out
            return out
        value = self._value(expr)
        if not _op(value) or value.op.name not in ELEMENTWISE:
            return None
        args = [self._rebuild(arg, shape, n, m, memo) for arg in value.args]
        if any(a is None for a in args):
            return None
        self.emitted = True
        out = self.builder_.emit(relax.Call(value.op, args, value.attrs))
        memo[key] = out
        return out

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        value = binding.value
        replaced = None
        if _op(value, "relax.permute_dims") and _op(self._value(value.args[0]), "relax.reshape"):
            axes = value.attrs.axes
            reshape = self._value(value.args[0])
            flat = tensor_shape(reshape)
            chain = reshape.args[0]
            shape = tensor_shape(chain)
            if axes is not None and [int(a) for a in axes] == [1, 0] and flat and shape:
                m, n = flat
                if shape[-1] == n and int(np.prod(shape[:-1])) == m:
                    replaced = self._rebuild(chain, shape, n, m, {})
        if replaced is None:
            super().visit_var_binding_(binding)
            return
        self.cancelled += 1
        self.builder_.emit_normalized(relax.VarBinding(binding.var, replaced))


@tvm.transform.module_pass(opt_level=0, name="CancelTransposes")
def CancelTransposes(mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Run element-wise chains between CSR kernels feature-major (see the module docstring),
    then drop what no longer has a reader."""
    canceller = _Canceller(mod)
    mod = mutate_relax_functions(canceller, mod)
    if canceller.cancelled:
        logger.info("CancelTransposes: %d transpose pairs removed", canceller.cancelled)
    if canceller.emitted:
        mod = relax.transform.DeadCodeElimination()(mod)
    return mod
