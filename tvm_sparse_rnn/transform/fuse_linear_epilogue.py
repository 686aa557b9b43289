"""``FuseLinearEpilogue``: fold the bias add, ReLU and cast after a linear layer into it.

A pruned ``nn.Linear`` + ``ReLU`` arrives as ``relu(add(matmul(x, W), b))`` (and, in float16, an
``astype`` back to float32 after the last layer). Each op after the matmul is one more launch
that re-reads the layer's output: for a 4096-wide MLP at batch 4 on the H100, about 6 of 28.6 us
by an estimate from a profile. This pass folds, into the linear placeholder
(:class:`~tvm_sparse_rnn.ops.placeholders.LinearCall`) that produces their only input, in this
order:

* ``R.add(y, C)`` (either operand order) with ``C`` a constant of ``y``'s dtype whose shape is
  ``(N,)`` or ``(1, ..., 1, N)`` and does not broadcast ``y``: the epilogue's bias;
* ``R.nn.relu(y)`` or the erf GELU ``y * (1 + erf(y / sqrt 2)) * 0.5`` as torch exports it (the
  product's factors in any order and grouping, ``y / sqrt 2`` also as ``y * (1 / sqrt 2)``,
  its scalars constants or casts of constants as ``ToFloat16`` leaves them): its activation;
* ``R.astype(y, dtype)`` to float32 or float16: its output dtype.

The kernels that apply an epilogue in their store (``sparse_dense``) do so; the dispatch emits
the same ops after the other variants, so folding never changes what is computed (the fused
kernel adds the bias to the float32 sum before rounding, which is closer to float64). A layer
output used more than once (the GELU's two uses aside) is left alone. Runs after
:class:`~tvm_sparse_rnn.transform.DenseToSparse` and before
:class:`~tvm_sparse_rnn.transform.DispatchKernels`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import Counter

import numpy as np
import tvm
import tvm_ffi
from tvm import relax
from tvm.ir import Op

from ..ops.epilogue import Activation
from ..ops.placeholders import LinearCall
from .mutate import mutate_relax_functions
from .shapes import constant_value

logger = logging.getLogger(__name__)

_ADD = Op.get("relax.add")
_RELU = Op.get("relax.nn.relu")
_ASTYPE = Op.get("relax.astype")
_MULTIPLY = Op.get("relax.multiply")
_DIVIDE = Op.get("relax.divide")
_ERF = Op.get("relax.erf")
#: Output dtypes an epilogue may cast to.
CAST_DTYPES = ("float32", "float16")
#: Relative tolerance of a GELU's scalar constants (``0.5``, ``1``, ``sqrt 2``): float16 ones too.
GELU_CONSTANT_RTOL = 1e-3


@relax.expr_functor.visitor
class _UseCounter(relax.PyExprVisitor):
    """Counts the uses of every variable of the visited functions."""

    def __init__(self) -> None:
        super().__init__()
        self.uses: Counter = Counter()

    def visit_var_(self, var: relax.Var) -> None:
        self.uses[var] += 1

    def visit_dataflow_var_(self, var: relax.DataflowVar) -> None:
        self.uses[var] += 1


@relax.expr_functor.mutator
class _EpilogueMutator(relax.PyExprMutator):
    """Replaces ``op(linear placeholder)`` by a linear placeholder with a larger epilogue."""

    def __init__(self, mod: tvm.IRModule, uses: Counter) -> None:
        super().__init__(mod)
        self.uses = uses
        self.count = 0

    def _sole_linear(self, expr: relax.Expr, uses: int = 1) -> LinearCall | None:
        """The linear placeholder behind ``expr`` (through aliases), if nothing else uses it:
        ``expr`` itself ``uses`` times, the aliases once."""
        while isinstance(expr, relax.Var):
            if self.uses.get(expr, 1) != uses:  # vars made by this pass have a single use
                return None
            bound = self.lookup_binding(expr)
            if bound is None:
                return None
            expr, uses = bound, 1
        return LinearCall.match(expr)

    def _is_scalar(self, expr: relax.Expr, value: float) -> bool:
        """Whether ``expr`` holds one element close to ``value``: a constant, or a variable
        bound to a cast of one (``ToFloat16`` casts a float16 model's scalars so)."""
        if isinstance(expr, relax.Var):
            bound = self.lookup_binding(expr)
            if isinstance(bound, relax.Call) and bound.op == _ASTYPE:
                expr = bound.args[0]
        array = constant_value(expr)
        return (
            array is not None
            and array.size == 1
            and math.isclose(float(array.reshape(())), value, rel_tol=GELU_CONSTANT_RTOL)
        )

    def _sole_call(self, expr: relax.Expr, op: Op) -> relax.Call | None:
        """The ``op`` call bound to ``expr``, if ``expr`` is a variable used once."""
        if not isinstance(expr, relax.Var) or self.uses.get(expr, 1) != 1:
            return None
        bound = self.lookup_binding(expr)
        return bound if isinstance(bound, relax.Call) and bound.op == op else None

    def _product_factors(self, expr: relax.Expr) -> list[relax.Expr]:
        """The factors of a product: multiplies bound to variables used once, flattened."""
        call = expr if isinstance(expr, relax.Call) else self._sole_call(expr, _MULTIPLY)
        if call is None or call.op != _MULTIPLY:
            return [expr]
        return [f for arg in call.args for f in self._product_factors(arg)]

    def _erf_gelu_input(self, expr: relax.Expr) -> relax.Expr | None:
        """``y`` of a factor ``1 + erf(y / sqrt 2)`` (either operand order)."""
        add = self._sole_call(expr, _ADD)
        for one, erf_var in (add.args, list(add.args)[::-1]) if add is not None else ():
            erf = self._sole_call(erf_var, _ERF)
            if erf is not None and self._is_scalar(one, 1.0):
                return self._over_sqrt2(erf.args[0])
        return None

    def _over_sqrt2(self, expr: relax.Expr) -> relax.Expr | None:
        """``y`` of ``y / sqrt 2`` or ``y * (1 / sqrt 2)`` (either operand order)."""
        divide = self._sole_call(expr, _DIVIDE)
        if divide is not None and self._is_scalar(divide.args[1], math.sqrt(2)):
            return divide.args[0]
        multiply = self._sole_call(expr, _MULTIPLY)
        for y, c in (multiply.args, list(multiply.args)[::-1]) if multiply is not None else ():
            if self._is_scalar(c, 1 / math.sqrt(2)):
                return y
        return None

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        folded = None
        if call.op == _ADD:
            folded = self._fold_bias(call)
        elif call.op == _RELU:
            folded = self._fold_relu(call)
        elif call.op == _ASTYPE:
            folded = self._fold_cast(call)
        elif call.op == _MULTIPLY:
            folded = self._fold_gelu(call)
        if folded is None:
            return call
        self.count += 1
        return folded.emit(self.builder_)

    def _fold_bias(self, call: relax.Call) -> LinearCall | None:
        for y, c in (call.args, list(call.args)[::-1]):
            linear = self._sole_linear(y)
            value = constant_value(c)
            if linear is None or value is None or not linear.epilogue.is_identity:
                continue
            n = linear.weight.shape[0]
            if (
                linear.epilogue.out_dtype is None
                and value.dtype.name == str(linear.x.ty.dtype)
                and value.size == n
                and value.shape[-1:] == (n,)
                and value.ndim <= call.ty.ndim
                and tvm_ffi.structural_equal(call.ty, linear.output_type())
            ):
                epilogue = dataclasses.replace(linear.epilogue, bias=True)
                bias = np.ascontiguousarray(value.reshape(n))
                return dataclasses.replace(linear, epilogue=epilogue, bias=bias)
        return None

    def _fold_relu(self, call: relax.Call) -> LinearCall | None:
        return _with_activation(self._sole_linear(call.args[0]), Activation.RELU)

    def _fold_gelu(self, call: relax.Call) -> LinearCall | None:
        factors = self._product_factors(call)
        if len(factors) != 3:
            return None
        halves = [f for f in factors if self._is_scalar(f, 0.5)]
        gelus = [(f, y) for f in factors if (y := self._erf_gelu_input(f)) is not None]
        if len(halves) != 1 or len(gelus) != 1:
            return None
        ((gelu, y_in_erf),) = gelus
        (y,) = [f for f in factors if f is not halves[0] and f is not gelu]
        if not (isinstance(y, relax.Var) and y.same_as(y_in_erf)):
            return None
        linear = self._sole_linear(y, uses=2)
        if linear is None or not tvm_ffi.structural_equal(call.ty, linear.output_type()):
            return None  # a scalar of higher rank broadcasts the output
        return _with_activation(linear, Activation.GELU)

    def _fold_cast(self, call: relax.Call) -> LinearCall | None:
        linear = self._sole_linear(call.args[0])
        dtype = str(call.attrs.dtype)
        if linear is None or linear.epilogue.out_dtype is not None or dtype not in CAST_DTYPES:
            return None
        if dtype == str(linear.x.ty.dtype):
            return None
        return dataclasses.replace(
            linear, epilogue=dataclasses.replace(linear.epilogue, out_dtype=dtype)
        )


def _with_activation(linear: LinearCall | None, activation: Activation) -> LinearCall | None:
    """``linear`` with ``activation`` in its epilogue, if it has none yet and no cast."""
    epi = linear.epilogue if linear is not None else None
    if epi is None or epi.activation is not Activation.NONE or epi.out_dtype is not None:
        return None
    return dataclasses.replace(linear, epilogue=dataclasses.replace(epi, activation=activation))


@tvm.transform.module_pass(opt_level=0, name="FuseLinearEpilogue")
class FuseLinearEpilogue:
    """Fold bias adds, ReLUs and casts into the linear placeholders that feed them (see the
    module docstring)."""

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        """Count uses, fold, drop the replaced placeholders."""
        counter = _UseCounter()
        for _, func in mod.functions_items():
            if isinstance(func, relax.Function):
                counter.visit_expr(func)
        mutator = _EpilogueMutator(mod, counter.uses)
        mod = mutate_relax_functions(mutator, mod)
        logger.info("FuseLinearEpilogue: %d op(s) folded into linear layers", mutator.count)
        return relax.transform.DeadCodeElimination()(mod)
