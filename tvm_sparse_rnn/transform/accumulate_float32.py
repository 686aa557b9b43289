"""``AccumulateInFloat32``: float16 matmuls and convolutions that accumulate in float32.

``ToMixedPrecision(out_dtype="float16")`` leaves ``R.matmul(a, b, out_dtype="float16")``, and the
dispatch lowers dense layers to ``R.matmul(a, b)`` of float16 ``a``, ``b``: their legalized loops
sum in float16, which over ``K`` = 3072 products loses about two decimal digits.
This pass rewrites each such matmul into ``R.astype(R.matmul(a, b, out_dtype="float32"),
"float16")`` -- what cuBLAS and torch do for half-precision GEMMs -- and fusion folds the cast into
the matmul's epilogue. It runs after the dispatch, so it reaches the layers kept dense and the
attention matmuls (the sparse kernels accumulate in float32 by themselves). 1-D and 2-D
convolutions get the same treatment (``out_dtype="float32"``, one cast): the DeepSpeech2-like
Conv1d sums ``161 x 11`` products per output.
"""

from __future__ import annotations

import logging

import tvm
from tvm import relax
from tvm.ir import Op

from .mutate import mutate_relax_functions
from .to_float16 import Precision

logger = logging.getLogger(__name__)

_MATMUL = Op.get("relax.matmul")
#: Convolution ops and their constructors (rebuilt with ``out_dtype="float32"``).
_CONVOLUTIONS = {
    Op.get("relax.nn.conv1d"): relax.op.nn.conv1d,
    Op.get("relax.nn.conv2d"): relax.op.nn.conv2d,
}
_CONV_ATTRS = (
    "strides",
    "padding",
    "dilation",
    "groups",
    "data_layout",
    "kernel_layout",
    "out_layout",
)


def _sums_in_float16(call: relax.Call) -> bool:
    return (
        (call.op == _MATMUL or call.op in _CONVOLUTIONS)
        and str(call.ty.dtype) == Precision.FLOAT16
        and all(str(arg.ty.dtype) == Precision.FLOAT16 for arg in call.args)
    )


def _in_float32(call: relax.Call) -> relax.Expr:
    """``call`` (a float16 matmul or convolution) with a float32 result."""
    if call.op == _MATMUL:
        return relax.op.matmul(*call.args, out_dtype=Precision.FLOAT32)
    attrs = {name: getattr(call.attrs, name) for name in _CONV_ATTRS}
    return _CONVOLUTIONS[call.op](*call.args, **attrs, out_dtype=Precision.FLOAT32)


@relax.expr_functor.mutator
class _AccumulateMutator(relax.PyExprMutator):
    """Wraps float16 matmuls and convolutions into their float32-result form and one cast."""

    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.count = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        if not _sums_in_float16(call):
            return call
        self.count += 1
        wide = self.builder_.emit(_in_float32(call))
        return relax.op.astype(wide, Precision.FLOAT16)


@tvm.transform.module_pass(opt_level=0, name="AccumulateInFloat32")
class AccumulateInFloat32:
    """Make every float16 ``R.matmul`` and convolution accumulate in float32 (see the module
    docstring)."""

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        """Rewrite the float16 matmuls and convolutions of every Relax function."""
        mutator = _AccumulateMutator(mod)
        mod = mutate_relax_functions(mutator, mod)
        logger.info("AccumulateInFloat32: %d float16 matmul(s) / convolution(s)", mutator.count)
        return mod
