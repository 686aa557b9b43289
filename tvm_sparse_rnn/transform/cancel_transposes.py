"""``CancelTransposes``: what lies between CSR kernels runs feature-major (llvm).

The x86 CSR kernel computes ``Y^T`` (``(1, N, M)``) from ``X^T`` (``(K, M)``), so the dispatch
wraps it in transposes. Between two such layers -- a transformer's FFN1 -> bias + GELU -> FFN2,
or its residual stream: output projection -> add -> layer norm -> FFN1 -- the activations go
back and forth::

    yt = call_tir(csr1, ...)                          # (1, N, M)
    y  = reshape(permute_dims(yt, [0, 2, 1]), ...)    # (..., N): transpose
    h  = layer_norm(x + y)                            # element-wise, layer norms over N
    xt = permute_dims(reshape(h, [M, N]), [1, 0])     # (N, M): transpose back, for csr2

This pass recomputes such a chain on ``reshape(yt, [N, M])`` directly and binds ``xt`` to it:
element-wise operators as they are (constants of shape ``(N,)`` reshaped to ``(N, 1)``), a
layer norm over ``N`` as one over axis 0 (:class:`~tvm_sparse_rnn.transform.VectorLayerNorm`
puts it on the column kernel), any other operand of shape ``(..., N)`` -- the model's input,
say -- transposed once (reusing a transpose the module already has). A chain is rebuilt only
if it reaches at least one CSR output. The model's output, where its chain reaches CSR outputs,
is computed feature-major too and transposed once at the end, so that the row-major copies of
the residual stream have no reader left (dead-code elimination drops them). The numbers are the
same, operation for operation.
"""

from __future__ import annotations

import logging

import numpy as np
import tvm
from tvm import relax

from .layout_chain import LAYOUT_OPS, block_value, op_name, trace_chain
from .mutate import mutate_relax_functions
from .shapes import tensor_shape

logger = logging.getLogger(__name__)

_LAYER_NORM = "relax.nn.layer_norm"
#: Element-wise operators the chain may hold (unary or binary).
ELEMENTWISE = frozenset(
    f"relax.{name}"
    for name in (
        "add", "subtract", "multiply", "divide", "erf", "tanh", "exp", "sigmoid", "negative",
        "sqrt", "rsqrt", "nn.relu", "nn.gelu", "nn.gelu_tanh", "nn.silu", "power", "maximum",
        "minimum",
    )
)  # fmt: skip


@relax.expr_functor.mutator
class _Canceller(relax.PyExprMutator):
    """Rebinds ``permute_dims(reshape(chain), [1, 0])`` to the chain recomputed on ``Y^T``."""

    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.var2val: dict[relax.Var, relax.Expr] = {}
        # (expr, n, m) -> (expr feature-major, CSR outputs it reaches)
        self.memo: dict[tuple[relax.Expr, int, int], tuple[relax.Expr, int]] = {}
        self.sources = 0  # CSR outputs the chain being rebuilt reached
        self.outputs: set[relax.Var] = set()  # what the function returns
        self.cancelled = 0
        self.emitted = False  # bindings of a chain that then failed are dead code

    def visit_function_(self, func: relax.Function) -> relax.Expr:
        self.var2val = dict(relax.analysis.get_var2val(func))
        returned = func.body.body
        self.outputs = set(returned.fields if isinstance(returned, relax.Tuple) else [returned])
        return super().visit_function_(func)

    def visit_dataflow_block_(self, block: relax.DataflowBlock) -> relax.DataflowBlock:
        self.memo = {}  # what a block emitted is not visible outside it
        return super().visit_dataflow_block_(block)

    def visit_binding_block_(self, block: relax.BindingBlock) -> relax.BindingBlock:
        self.memo = {}
        return super().visit_binding_block_(block)

    def _value(self, expr: relax.Expr) -> relax.Expr:
        return block_value(expr, self.var2val)

    def _source(self, expr: relax.Expr, n: int, m: int) -> relax.Expr | None:
        """``yt`` (``(1, n, m)``) if ``expr`` is a layout chain (:mod:`.layout_chain`) that
        holds ``yt``'s transpose, ``(..., n)`` with ``m`` rows."""
        chain = trace_chain(expr, self.var2val)
        if not chain.ops or tensor_shape(chain.root) != (1, n, m):
            return None
        index = chain.index_map()
        if index is None or index.size != n * m:
            return None
        transpose = np.arange(n * m).reshape(n, m).T
        return chain.root if np.array_equal(index.reshape(m, n), transpose) else None

    def _rebuild(
        self, expr: relax.Expr, shape: tuple[int, ...], n: int, m: int
    ) -> relax.Expr | None:
        """``expr`` (of ``shape``) recomputed feature-major (``(n, m)``), or ``None``."""
        if isinstance(expr, tvm.ir.expr.Constant):
            data = expr.value.numpy()
            if data.ndim == 0:
                return expr
            if data.shape[-1] == n and data.size == n:
                return relax.const(np.ascontiguousarray(data.reshape(n, 1)))
            return None
        if tensor_shape(expr) != shape:
            return None
        key = (expr, n, m)
        if key not in self.memo:
            before = self.sources
            rebuilt = self._rebuild_new(expr, shape, n, m)
            if rebuilt is None:
                return None
            self.memo[key] = (rebuilt, self.sources - before)
            return rebuilt
        rebuilt, sources = self.memo[key]
        self.sources += sources
        return rebuilt

    def _rebuild_new(
        self, expr: relax.Expr, shape: tuple[int, ...], n: int, m: int
    ) -> relax.Expr | None:
        yt = self._source(expr, n, m)
        if yt is not None:
            self.sources += 1
            return self._emit(relax.op.reshape(yt, [n, m]))
        value = self._value(expr)
        if op_name(value) in LAYOUT_OPS:
            root = self._in_place_root(expr, n, m)
            if root is not None:  # a reshape, in effect: rebuild what it reshapes
                return self._rebuild(root, tensor_shape(root), n, m)
        if op_name(value) == _LAYER_NORM:
            return self._rebuild_layer_norm(value, shape, n, m)
        if op_name(value) in ELEMENTWISE:
            args = [self._rebuild(arg, shape, n, m) for arg in value.args]
            if any(a is None for a in args):
                return None
            return self._emit(relax.Call(value.op, args, value.attrs))
        # any other tensor of the chain's shape: transposed once
        return self._emit(relax.op.permute_dims(relax.op.reshape(expr, [m, n]), [1, 0]))

    def _in_place_root(self, expr: relax.Expr, n: int, m: int) -> relax.Expr | None:
        """The root of ``expr``'s layout chain if the chain keeps every element in place and
        the root is ``(..., n)`` with ``m`` rows, else ``None``."""
        chain = trace_chain(expr, self.var2val)
        shape = tensor_shape(chain.root)
        if not chain.ops or not shape or shape[-1] != n or int(np.prod(shape[:-1])) != m:
            return None
        return chain.root if chain.in_place() else None

    def _rebuild_layer_norm(
        self, call: relax.Call, shape: tuple[int, ...], n: int, m: int
    ) -> relax.Expr | None:
        """A layer norm over the last axis (``n``), its scale and offset constants, as one over
        axis 0 of the feature-major input."""
        axes = [int(a) % len(shape) for a in call.attrs.axes]
        x, gamma, beta = call.args
        if axes != [len(shape) - 1] or not all(
            isinstance(c, tvm.ir.expr.Constant) and c.value.numpy().size == n for c in (gamma, beta)
        ):
            return None
        x = self._rebuild(x, shape, n, m)
        if x is None:
            return None
        gamma, beta = (relax.const(c.value.numpy().reshape(n)) for c in (gamma, beta))
        attrs = call.attrs
        return self._emit(
            relax.op.nn.layer_norm(
                x, gamma, beta, [0], float(attrs.epsilon), bool(attrs.center), bool(attrs.scale)
            )
        )

    def _emit(self, expr: relax.Expr) -> relax.Expr:
        self.emitted = True
        return self.builder_.emit(expr)

    def _chain(self, expr: relax.Expr, n: int, m: int) -> relax.Expr | None:
        """``expr``'s chain feature-major if it reaches a CSR output, else ``None``."""
        shape = tensor_shape(expr)
        if not shape or shape[-1] != n or int(np.prod(shape[:-1])) != m:
            return None
        self.sources = 0
        rebuilt = self._rebuild(expr, shape, n, m)
        return rebuilt if rebuilt is not None and self.sources else None

    def _destination(self, binding: relax.VarBinding) -> relax.Expr | None:
        """For ``xt = permute_dims(reshape(chain, [M, N]), [1, 0])``: the chain feature-major;
        for the function's output: its chain feature-major, transposed back."""
        value = binding.value
        if (
            op_name(value) == "relax.permute_dims"
            and op_name(self._value(value.args[0])) == "relax.reshape"
        ):
            axes = value.attrs.axes
            reshape = self._value(value.args[0])
            flat = tensor_shape(reshape)
            if axes is None or [int(a) for a in axes] != [1, 0] or not flat:
                return None
            m, n = flat
            rebuilt = self._chain(reshape.args[0], n, m)
            if rebuilt is None:  # a transpose of a plain tensor: later chains reuse it
                self.memo.setdefault((reshape.args[0], n, m), (binding.var, 0))
            return rebuilt
        if binding.var not in self.outputs:
            return None
        shape = tensor_shape(binding.var)
        if not shape or len(shape) < 2:
            return None
        n, m = shape[-1], int(np.prod(shape[:-1]))
        rebuilt = self._chain(value, n, m)
        if rebuilt is None:
            return None
        back = self._emit(relax.op.permute_dims(rebuilt, [1, 0]))
        return relax.op.reshape(back, shape)

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        replaced = self._destination(binding)
        if replaced is None:
            super().visit_var_binding_(binding)
            return
        self.cancelled += 1
        self.builder_.emit_normalized(
            relax.VarBinding(binding.var, self.builder_.normalize(replaced))
        )


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
