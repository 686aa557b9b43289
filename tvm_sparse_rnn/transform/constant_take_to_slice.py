"""``ConstantTakeToSlice``: ``take`` of one constant index as a slice that fusion can absorb.

The ONNX export of ``torch.nn.MultiheadAttention`` splits the packed q/k/v projection with
``Gather(index = 0 / 1 / 2)``, which Relax imports as ``R.take(x, R.const(i), axis)``. TVM
legalizes ``take`` as an opaque kernel (the index is read from a buffer at run time), so
``FuseOps`` cannot fuse it: every split is its own kernel and a full copy of the projection
(3 per attention layer; 16 us each on the 2-core CPU, 8 us per BERT call on the H100). With a
scalar constant in range, ``take(x, i, axis) == squeeze(strided_slice(x, [axis], [i], [i + 1]),
[axis])``: two injective ops that fuse into the head-split transposes that follow.
"""

from __future__ import annotations

import logging

import tvm
from tvm import relax
from tvm.ir import Op

from .mutate import mutate_relax_functions
from .shapes import constant_value, tensor_shape

logger = logging.getLogger(__name__)

_TAKE = Op.get("relax.take")


def _constant_index(expr: relax.Expr) -> int | None:
    """The value of a scalar integer constant, else ``None``."""
    value = constant_value(expr)
    if value is None or value.ndim != 0 or value.dtype.kind not in "iu":
        return None
    return int(value)


@relax.expr_functor.mutator
class _TakeMutator(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.count = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        if call.op != _TAKE:
            return call
        x, indices = call.args
        index, shape = _constant_index(indices), tensor_shape(x)
        if index is None or shape is None or call.attrs.axis is None:
            return call
        axis = int(call.attrs.axis) % len(shape)
        if not -shape[axis] <= index < shape[axis]:
            return call  # out of range: keep take's own mode (wrap, clip, fast)
        index %= shape[axis]
        self.count += 1
        sliced = relax.op.strided_slice(x, axes=[axis], begin=[index], end=[index + 1])
        return relax.op.squeeze(self.builder_.emit(sliced), axis=[axis])


@tvm.transform.module_pass(opt_level=0, name="ConstantTakeToSlice")
def ConstantTakeToSlice(mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Rewrite ``R.take`` of a scalar constant index in range as ``strided_slice`` +
    ``squeeze`` (see the module docstring)."""
    mutator = _TakeMutator(mod)
    mod = mutate_relax_functions(mutator, mod)
    logger.info("ConstantTakeToSlice: %d take(s) of a constant index as slices", mutator.count)
    return mod
