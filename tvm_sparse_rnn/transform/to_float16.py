"""``ToFloat16``: run a float32 model in float16 (the ``--dtype float16`` compile option).

TVM's ``relax.transform.ToMixedPrecision(out_dtype="float16")`` casts the inputs of matmuls and
convolutions to float16 and lets the element-wise operators that follow stay in float16, while the
operators it keeps in float32 (softmax, layer norm, reductions, and the recurrent placeholders,
which it does not know) get float32 inputs; ``FoldConstant`` then stores the cast weights as
float16 constants. The model's inputs and outputs keep their float32 signature.

``ToMixedPrecision`` cannot read a ``call_pure_packed`` whose tensors it re-typed (it asks every
argument, the packed function included, for a tensor type), so the package's placeholders pass
through it as direct calls of their packed function -- calls it leaves alone, casting their
tensors back to the dtypes they had -- and are restored afterwards. Recurrent placeholders then
become float16 themselves (input, initial states and weights; outputs cast back for the float32
consumers ``ToMixedPrecision`` gave them): the dispatch runs them on the float16 persistent
kernel on cuda (float32 accumulation, ``h`` stored in half), and casts around the float32 kernels
elsewhere.

Run it before :class:`~tvm_sparse_rnn.transform.DenseToSparse`, so that the pruned layers it
marks carry float16 weights (the sparse kernels accumulate in float32), and run
:class:`~tvm_sparse_rnn.transform.AccumulateInFloat32` after the dispatch, so that the layers
that stay dense accumulate in float32 too.
"""

from __future__ import annotations

import logging
from enum import StrEnum

import numpy as np
import tvm
from tvm import relax

from ..errors import UnsupportedError
from ..ops.cells import RecurrentWeights
from ..ops.placeholders import PLACEHOLDER_PREFIX, RecurrentCall
from .mutate import mutate_relax_functions

logger = logging.getLogger(__name__)


class Precision(StrEnum):
    """The dtype a compiled model computes in (its inputs and outputs stay as in the model)."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"


def parse_precision(dtype: Precision | str) -> Precision:
    """``dtype`` as a :class:`Precision`.

    Raises
    ------
    UnsupportedError
        If ``dtype`` names no :class:`Precision` (e.g. ``"bfloat16"``).
    """
    try:
        return Precision(dtype)
    except ValueError:
        allowed = ", ".join(p.value for p in Precision)
        raise UnsupportedError(f"dtype {dtype!r}: a model compiles in {allowed}") from None


_CALL_PURE_PACKED = tvm.ir.Op.get("relax.call_pure_packed")


def _is_placeholder(func: relax.Expr) -> bool:
    return isinstance(func, relax.ExternFunc) and str(func.global_symbol).startswith(
        PLACEHOLDER_PREFIX
    )


@relax.expr_functor.mutator
class _PlaceholdersAsDirectCalls(relax.PyExprMutator):
    """``call_pure_packed(f, *args)`` -> ``f(*args)`` for the package's placeholders."""

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        if call.op != _CALL_PURE_PACKED or not _is_placeholder(call.args[0]):
            return call
        return relax.Call(call.args[0], call.args[1:], ty_args=call.ty_args)


@relax.expr_functor.mutator
class _PlaceholdersAsPureCalls(relax.PyExprMutator):
    """Undoes :class:`_PlaceholdersAsDirectCalls`: ``f(*args)`` -> ``call_pure_packed(f, ...)``."""

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        if not _is_placeholder(call.op):
            return call
        return relax.op.call_pure_packed(call.op, *call.args, ty_args=list(call.ty_args))


@relax.expr_functor.mutator
class _RecurrentInFloat16(relax.PyExprMutator):
    """A float32 recurrent placeholder -> the same in float16, its outputs cast to float32."""

    def _half(self, expr: relax.Expr) -> relax.Expr:
        return self.builder_.emit(relax.op.astype(expr, Precision.FLOAT16.value))

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        layer = RecurrentCall.match(call)
        if layer is None or str(layer.x.ty.dtype) != Precision.FLOAT32.value:
            return call
        states = {
            name: state if name == "sequence_lens" else self._half(state)
            for name, state in layer.states.items()
        }
        weights = RecurrentWeights(
            *(
                None if w is None else w.astype(np.float16)
                for w in (layer.weights.W, layer.weights.R, layer.weights.B, layer.weights.P)
            )
        )
        half = RecurrentCall(layer.name, layer.cfg, self._half(layer.x), states, weights)
        outputs = half.emit(self.builder_)
        return relax.Tuple(
            [
                relax.op.astype(relax.TupleGetItem(outputs, i), Precision.FLOAT32.value)
                for i in range(len(half.output_types().fields))
            ]
        )


@tvm.transform.module_pass(opt_level=0, name="ToFloat16")
class ToFloat16:
    """Cast a float32 Relax module's matmuls, convolutions and what follows them to float16."""

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        """Dataflow blocks, mixed precision with float16 outputs, weights folded to float16."""
        mod = relax.transform.ConvertToDataflow()(mod)
        mod = mutate_relax_functions(_PlaceholdersAsDirectCalls(mod), mod)
        mod = relax.transform.ToMixedPrecision(out_dtype=Precision.FLOAT16.value)(mod)
        mod = mutate_relax_functions(_PlaceholdersAsPureCalls(mod), mod)
        mod = mutate_relax_functions(_RecurrentInFloat16(mod), mod)
        return relax.transform.FoldConstant()(mod)
