"""``DenseToSparse``: mark dense layers with constant weights as target-neutral linear calls.

The pass works on any Relax module whose dense layers have their weights bound as constants:
modules from :func:`tvm_sparse_rnn.frontend.from_onnx`, from ``tvm.relax.frontend.onnx.from_onnx``
(default ``keep_params_in_input=False``), or built by hand. It first runs
``relax.transform.FoldConstant`` so that weights computed from constants (a pruned model often
carries ``weight * mask``, or ``permute_dims(weight)``) become plain constants, then matches

* ``R.matmul(x, C)`` with ``C`` a 2-D constant ``(K, N)``: ONNX ``MatMul`` with an initializer and
  ``Gemm(transB=0)``;
* ``R.matmul(x, R.permute_dims(C))`` with ``C`` ``(N, K)``: ``Gemm(transB=1)``, ``nn.Linear``
  and ``relax.op.linear`` (only seen when constants are not folded first).

``x`` may be any expression of rank >= 2 (``Gemm``'s ``transA`` and ``alpha`` act on ``x`` and its
``bias``/``beta`` on a separate ``R.add``, both left in place). Each matched layer becomes a
:class:`~tvm_sparse_rnn.ops.placeholders.LinearCall` named ``dense<i>`` (program order); whether it
runs sparse (and with which block size and kernel) or dense is decided per target by
:class:`~tvm_sparse_rnn.transform.dispatch.DispatchKernels`, which must run after it (the
registered pipeline ``tvm_sparse_rnn`` runs both).

Examples
--------
>>> mod = tvm.relax.frontend.onnx.from_onnx(onnx_model)            # doctest: +SKIP
>>> mod = DenseToSparse()(mod)                                      # doctest: +SKIP
>>> mod = DispatchKernels("llvm")(mod)                              # doctest: +SKIP
"""

from __future__ import annotations

import logging

import numpy as np
import tvm
from tvm import relax
from tvm.ir import Op

from ..bsr import SUPPORTED_DTYPES
from ..ops.placeholders import LinearCall
from .mutate import mutate_relax_functions
from .shapes import constant_value

logger = logging.getLogger(__name__)

_MATMUL = Op.get("relax.matmul")
_PERMUTE_DIMS = Op.get("relax.permute_dims")


@relax.expr_functor.mutator
class _DenseToSparseMutator(relax.PyExprMutator):
    """Replaces constant-weight ``R.matmul`` calls by linear placeholders."""

    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.count = 0

    def _bound(self, expr: relax.Expr) -> relax.Expr:
        """See through a dataflow variable to the expression bound to it."""
        bound = self.lookup_binding(expr) if isinstance(expr, relax.Var) else None
        return bound if bound is not None else expr

    def _weight_nk(self, expr: relax.Expr) -> np.ndarray | None:
        """The ``(N, K)`` weight behind ``expr``, or ``None`` if it is not a 2-D constant."""
        expr = self._bound(expr)
        value = constant_value(expr)
        if value is not None:
            return value.T if value.ndim == 2 else None
        if isinstance(expr, relax.Call) and expr.op == _PERMUTE_DIMS:
            axes = expr.attrs.axes
            value = constant_value(self._bound(expr.args[0]))
            if value is not None and value.ndim == 2 and (axes is None or list(axes) == [1, 0]):
                return value
        return None

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        if call.op != _MATMUL or len(call.args) != 2:
            return call
        x, w = call.args
        weight = self._weight_nk(w)
        x_ty = x.ty
        dtype = str(x_ty.dtype) if isinstance(x_ty, relax.TensorType) else ""
        if (
            weight is None
            or not isinstance(x_ty, relax.TensorType)
            or not isinstance(x_ty.shape, relax.ShapeExpr)
            or x_ty.ndim < 2
            or dtype not in SUPPORTED_DTYPES
            or str(call.ty.dtype) != dtype
            or weight.dtype.name != dtype
        ):
            return call
        name = f"dense{self.count}"
        self.count += 1
        return LinearCall(name, x, np.ascontiguousarray(weight)).emit(self.builder_)


@tvm.transform.module_pass(opt_level=0, name="DenseToSparse")
class DenseToSparse:
    """Mark every constant-weight dense layer as a target-neutral linear placeholder.

    Parameters
    ----------
    fold_constants : bool
        Run ``relax.transform.FoldConstant`` first (folds ``weight * mask``, ``permute_dims``).
    """

    def __init__(self, fold_constants: bool = True) -> None:
        self.fold_constants = fold_constants

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        """Fold constants, replace dense layers by placeholders, drop dead code."""
        if self.fold_constants:
            mod = relax.transform.FoldConstant()(mod)
        mutator = _DenseToSparseMutator(mod)
        mod = mutate_relax_functions(mutator, mod)
        logger.info("DenseToSparse: %d dense layer(s) with constant weights", mutator.count)
        return relax.transform.DeadCodeElimination()(mod)
