"""``VectorLayerNorm``: a last-axis float32 layer norm on the vector kernel (llvm).

Replaces each ``relax.nn.layer_norm`` over the last axis of a static float32 tensor whose length
divides by the target's vector lanes (with its scale and offset) by a ``call_tir`` of
:func:`~tvm_sparse_rnn.kernels.x86.layer_norm.make_layer_norm`: dlight's CPU reduction rule
leaves the row mean and variance scalar loops. On the 2-core VM the BERT-like encoder's
``128 x 768`` layer norm took 20.5 us as the vector kernel (``time_evaluator``); the profile
of the model before put its four layer norms at 471 us
(``python benchmarks/profile_cpu_models.py bert_4x4 --runs 20``).
"""

from __future__ import annotations

import logging

import tvm
from tvm import relax

from ..kernels.opaque import opaque_kernel
from ..kernels.x86.layer_norm import make_layer_norm
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

    def _takes(self, call: relax.Call) -> tuple[int, ...] | None:
        """The static shape of ``call``'s input where the vector kernel takes it, else None."""
        dims = tensor_shape(call)
        if dims is None or len(dims) < 2 or dims[-1] % self.lanes:
            return None
        if str(call.ty.dtype) != Precision.FLOAT32:
            return None
        attrs = call.attrs
        axes = [int(a) for a in attrs.axes]
        return dims if axes in ([-1], [len(dims) - 1]) and attrs.center and attrs.scale else None

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == _LAYER_NORM):
            return call
        dims = self._takes(call)
        if dims is None:
            return call
        func = make_layer_norm(dims, Precision.FLOAT32, float(call.attrs.epsilon), self.lanes)
        gv = self.builder_.add_func(opaque_kernel(func), "layer_norm_vector")
        return relax.call_tir(gv, list(call.args), relax.TensorType(dims, Precision.FLOAT32))


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
        """The module with the vector layer norms in place."""
        return mutate_relax_functions(_VectorLayerNormMutator(mod, self.lanes), mod)
