"""``FastMath``: vectorizable approximations of ``exp``, ``erf``, ``tanh`` and softmax (llvm).

The same rewrite as TVM's ``relax.transform.FastMathTransform`` -- ``topi.fast_exp``,
``topi.fast_erf``, ``topi.fast_tanh``, ``topi.nn.fast_softmax``, as onnxruntime's MLAS does --
which in TVM 0.27 raises ``AttributeError`` on any call whose callee is not an operator (a call
of another Relax function, a packed function). The registered pipeline runs it on llvm before
legalization: a fused GELU or softmax of the BERT-like encoder becomes a vector loop (the
encoder went from 10.2 to 7.4 ms; its error vs onnxruntime did not change).
"""

from __future__ import annotations

import logging

import tvm
from tvm import relax, topi

from ..kernels.opaque import opaque_kernel
from ..kernels.x86.row_reduction import ReducedAxis
from ..kernels.x86.softmax import make_softmax
from .mutate import mutate_relax_functions
from .shapes import tensor_shape
from .to_float16 import Precision

logger = logging.getLogger(__name__)

_FAST_UNARY = {"relax.exp": topi.fast_exp, "relax.erf": topi.fast_erf, "relax.tanh": topi.fast_tanh}
_SOFTMAX = "relax.nn.softmax"


@relax.expr_functor.mutator
class _FastMathMutator(relax.PyExprMutator):
    """Replaces float32 ``exp``/``erf``/``tanh``/softmax calls by their TOPI approximations;
    a softmax over the last or the second-to-last axis of a static shape whose last axis
    divides by ``lanes`` by a vector kernel of :mod:`~tvm_sparse_rnn.kernels.x86.softmax`."""

    def __init__(self, mod: tvm.IRModule, lanes: int | None) -> None:
        super().__init__(mod)
        self.lanes = lanes

    def _vector_softmax(self, call: relax.Call) -> relax.Expr | None:
        dims = tensor_shape(call)
        if self.lanes is None or dims is None or len(dims) < 2 or dims[-1] % self.lanes:
            return None
        axis = ReducedAxis.of(int(call.attrs.axis), len(dims))
        if axis is None:
            return None
        dtype = str(call.ty.dtype)
        func = opaque_kernel(make_softmax(dims, dtype, self.lanes, axis))
        gv = self.builder_.add_func(func, "softmax_vector")
        return relax.call_tir(gv, [call.args[0]], relax.TensorType(dims, dtype))

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        name = call.op.name if isinstance(call.op, tvm.ir.Op) else None
        if name != _SOFTMAX and name not in _FAST_UNARY:
            return call
        if not isinstance(call.ty, relax.TensorType) or str(call.ty.dtype) != Precision.FLOAT32:
            return call
        if name == _SOFTMAX:
            vector = self._vector_softmax(call)
            if vector is not None:
                return vector
            return self.builder_.call_te(topi.nn.fast_softmax, call.args[0], call.attrs.axis)
        return self.builder_.call_te(_FAST_UNARY[name], call.args[0])


@tvm.transform.module_pass(opt_level=0, name="FastMath")
class FastMath:
    """Rewrite every Relax function's ``exp``, ``erf``, ``tanh`` and softmax (float32).

    Parameters
    ----------
    lanes : int, optional
        Vector lanes of the target (float32); given, a softmax over the last (or second-to-last)
        axis of a shape whose last axis divides by it runs the row (or column) vector kernel.
    """

    def __init__(self, lanes: int | None = None) -> None:
        self.lanes = lanes

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        """The module with the approximations in place."""
        return mutate_relax_functions(_FastMathMutator(mod, self.lanes), mod)
