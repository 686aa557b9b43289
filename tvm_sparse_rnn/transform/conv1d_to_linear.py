"""``Conv1dToLinear``: a 1-D convolution with a constant weight as an unfolded linear layer.

TVM's default ``llvm`` pipeline legalizes ``R.nn.conv1d`` into an unscheduled loop nest (the
DeepSpeech2-like model's ``Conv1d(161 -> 512, k 11, s 2)`` took ~90 ms against onnxruntime's
~1 ms). This pass rewrites ``conv1d(x, W)`` (NCW / OIW, ``groups = 1``, ``W`` constant,
float32 or float16) as

    pad -> K strided slices of x stacked to (N, C, K, W_out) -> (N * W_out, C * K)   (im2col)
    -> LinearCall with W reshaped to (F, C * K)                                       (x @ W.T)
    -> (N, W_out, F) -> (N, F, W_out)

so the product is one linear placeholder: the dispatch pass gives it the dense CPU schedule, or a
sparse kernel when the filters are pruned. It runs before ``DenseToSparse`` in the llvm pipeline
(:mod:`tvm_sparse_rnn.pipeline`). Not on cuda: there dlight's own ``conv1d`` schedule was the
faster one for the DeepSpeech2-like convolution (batch 1, float16, H100: 70 us, 85 us fused with
bias and ReLU, against 100 us for the im2col matmul alone).
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
from .shapes import tensor_shape

logger = logging.getLogger(__name__)

_CONV1D = Op.get("relax.nn.conv1d")
op = relax.op


@relax.expr_functor.mutator
class _Conv1dMutator(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.count = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        if call.op != _CONV1D:
            return call
        x, weight = call.args
        attrs = call.attrs
        shape = tensor_shape(x)
        if (
            not isinstance(weight, tvm.ir.expr.Constant)
            or shape is None
            or int(attrs.groups) != 1
            or str(attrs.data_layout) != "NCW"
            or str(attrs.kernel_layout) != "OIW"
            or str(attrs.out_layout) != "NCW"
            or str(x.ty.dtype) not in SUPPORTED_DTYPES
            or str(weight.ty.dtype) != str(x.ty.dtype)
        ):
            return call
        w = weight.value.numpy()
        (stride,), (dilation,) = (int(s) for s in attrs.strides), (int(d) for d in attrs.dilation)
        left, right = (int(p) for p in attrs.padding)
        batch, channels, width = shape
        filters, _, kernel = w.shape
        padded = width + left + right
        out_width = (padded - dilation * (kernel - 1) - 1) // stride + 1
        bb = self.builder_
        if left or right:
            x = bb.emit(op.nn.pad(x, [0, 0, 0, 0, left, right]))
        taps = [
            op.strided_slice(
                x,
                axes=[2],
                begin=[j * dilation],
                end=[j * dilation + stride * (out_width - 1) + 1],
                strides=[stride],
            )
            for j in range(kernel)
        ]
        cols = bb.emit(op.stack(taps, axis=2))  # (N, C, K, W_out)
        cols = bb.emit(op.permute_dims(cols, [0, 3, 1, 2]))  # (N, W_out, C, K)
        cols = bb.emit(op.reshape(cols, [batch * out_width, channels * kernel]))
        name = f"conv{self.count}"
        self.count += 1
        y = LinearCall(name, cols, np.ascontiguousarray(w.reshape(filters, -1))).emit(bb)
        y = bb.emit(op.reshape(y, [batch, out_width, filters]))
        return op.permute_dims(y, [0, 2, 1])


@tvm.transform.module_pass(opt_level=0, name="Conv1dToLinear")
class Conv1dToLinear:
    """Rewrite constant-weight ``R.nn.conv1d`` (NCW, ``groups = 1``) as im2col + a linear
    placeholder named ``conv<i>`` (see the module docstring)."""

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        """Fold constants, rewrite the convolutions, drop dead code."""
        mod = relax.transform.FoldConstant()(mod)
        mutator = _Conv1dMutator(mod)
        mod = mutate_relax_functions(mutator, mod)
        logger.info("Conv1dToLinear: %d convolution(s) as linear layers", mutator.count)
        return relax.transform.DeadCodeElimination()(mod)
