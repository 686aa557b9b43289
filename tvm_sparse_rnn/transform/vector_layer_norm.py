"""``VectorLayerNorm``: float32 layer norms on the vector kernels (llvm).

Replaces each ``relax.nn.layer_norm`` over the last axis of a static float32 tensor whose length
divides by the target's vector lanes (with its scale and offset) by a ``call_tir`` of
:func:`~tvm_sparse_rnn.kernels.x86.layer_norm.make_layer_norm`, and one over the second-to-last
axis (the feature-major hidden states of :class:`~tvm_sparse_rnn.transform.CancelTransposes`)
by its column variant (``axis=ReducedAxis.SECOND_LAST``): dlight's CPU
reduction rule leaves the mean and variance scalar loops. A layer norm of ``add(a, b)`` (two
tensors of its shape: a transformer's residual connection) reads ``a`` and ``b`` itself, as
onnxruntime's ``SkipLayerNormalization`` does, instead of a kernel writing their sum first.
On the 2-core VM the BERT-like encoder's ``128 x 768`` layer norm took 20.5 us as the vector
kernel (``time_evaluator``); the profile of the model before put its four layer norms at
471 us (``python benchmarks/profile_cpu_models.py bert_4x4 --runs 20``).
"""

from __future__ import annotations

import logging

import tvm
from tvm import relax

from ..kernels.opaque import opaque_kernel
from ..kernels.x86.layer_norm import make_layer_norm
from ..kernels.x86.row_reduction import ReducedAxis
from .layout_chain import block_value, op_name
from .mutate import mutate_relax_functions
from .shapes import tensor_shape
from .to_float16 import Precision

logger = logging.getLogger(__name__)

_LAYER_NORM = "relax.nn.layer_norm"


@relax.expr_functor.mutator
class _VectorLayerNormMutator(relax.PyExprMutator):
    """Replaces the layer norms the vector kernel takes (see the module docstring)."""

    def __init__(self, mod: tvm.IRModule, lanes: int) -> None:
        super().__init__(mod)
        self.lanes = lanes
        self.var2val: dict[relax.Var, relax.Expr] = {}

    def visit_function_(self, func: relax.Function) -> relax.Expr:
        self.var2val = dict(relax.analysis.get_var2val(func))
        return super().visit_function_(func)

    def _residual_operands(self, x: relax.Expr, dims: tuple[int, ...]) -> list[relax.Expr]:
        """``[a, b]`` if ``x`` is ``add(a, b)`` of two tensors of ``dims`` (no broadcast), else
        ``[x]``."""
        value = block_value(x, self.var2val)
        if op_name(value) != "relax.add":
            return [x]
        if any(
            tensor_shape(arg) != dims or isinstance(arg, tvm.ir.expr.Constant) for arg in value.args
        ):
            return [x]
        return [self.visit_expr(arg) for arg in value.args]

    def _axis(self, call: relax.Call) -> ReducedAxis | None:
        """The axis of a layer norm a vector kernel takes (over the last axis: rows, the one
        before: columns), else None."""
        dims = tensor_shape(call)
        if dims is None or len(dims) < 2 or dims[-1] % self.lanes:
            return None
        attrs = call.attrs
        if str(call.ty.dtype) != Precision.FLOAT32 or not (attrs.center and attrs.scale):
            return None
        axes = [int(a) for a in attrs.axes]
        return ReducedAxis.of(axes[0], len(dims)) if len(axes) == 1 else None

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        if op_name(call) != _LAYER_NORM:
            return call
        axis = self._axis(call)
        if axis is None:
            return call
        dims = tensor_shape(call)
        x, gamma, beta = call.args
        inputs = self._residual_operands(x, dims)
        epsilon = float(call.attrs.epsilon)
        func = make_layer_norm(
            dims, Precision.FLOAT32, epsilon, self.lanes, axis, residual=len(inputs) == 2
        )
        gv = self.builder_.add_func(opaque_kernel(func), "layer_norm_vector")
        args = [*inputs, gamma, beta]
        return relax.call_tir(gv, args, relax.TensorType(dims, Precision.FLOAT32))


@tvm.transform.module_pass(opt_level=0, name="VectorLayerNorm")
class VectorLayerNorm:
    """Put every Relax function's last-axis float32 layer norms on the vector kernel.

    Parameters
    ----------
    lanes : int
        Vector lanes of the target (float32).
    """

    def __init__(self, lanes: int) -> None:
        self.lanes = lanes

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        """The module with the vector layer norms in place (residual adds they absorbed left
        to dead-code elimination)."""
        mod = mutate_relax_functions(_VectorLayerNormMutator(mod, self.lanes), mod)
        return relax.transform.DeadCodeElimination()(mod)
