"""``Conv1dToLinear``: a 1-D convolution with a constant weight as an unfolded linear layer.

TVM's default ``llvm`` pipeline legalizes ``R.nn.conv1d`` into an unscheduled loop nest (the
DeepSpeech2-like model's ``Conv1d(161 -> 512, k 11, s 2)`` took ~90 ms against onnxruntime's
~1 ms). This pass rewrites ``conv1d(x, W)`` (NCW / OIW, ``groups = 1``, ``W`` constant,
float32 or float16) as

    cols[n * W_out + t, c * K + k] = x[n, c, t * s + k * d - pad]  (N * W_out, C * K)  (im2col)
    -> LinearCall with W reshaped to (F, C * K)                                       (x @ W.T)
    -> (N, W_out, F) -> (N, F, W_out)

so the product is one linear placeholder: the dispatch pass gives it the dense CPU schedule, the
tensor-core GEMM on cuda, or a sparse kernel when the filters are pruned. It runs before
``DenseToSparse`` (:mod:`tvm_sparse_rnn.pipeline`). On cuda only float16 convolutions are
rewritten, their ``C * K`` columns zero-padded to a multiple of 8 (16-byte rows, which the
pipelined ``mma.sync`` GEMM of :mod:`~tvm_sparse_rnn.kernels.cuda.matmul_mma` needs): dlight's
``wmma`` schedule of the DeepSpeech2-like convolution took 58 us at batch 1 and 76 us at batch 16
on the H200, the unfolding (then a stack of strided slices) and the ``mma.sync`` GEMM 3 + 15 us
and 33 + 33 us on an H100 (``benchmarks/bench_gpu_models.py --profile``, session 12); float32
keeps dlight's ``conv1d`` (its im2col GEMM would run on CUDA cores).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax, te, tirx
from tvm.ir import Op

from ..bsr import SUPPORTED_DTYPES
from ..ops.placeholders import LinearCall
from .mutate import mutate_relax_functions
from .shapes import tensor_shape

logger = logging.getLogger(__name__)

_CONV1D = Op.get("relax.nn.conv1d")
op = relax.op


@dataclass(frozen=True)
class _Taps:
    """The unfolding of one convolution: ``kernel`` taps ``dilation`` apart, ``stride`` between
    outputs, ``left`` zeros before ``x``, ``out_width`` outputs, rows of ``columns`` (``C *
    kernel`` padded with zeros)."""

    kernel: int
    stride: int
    dilation: int
    left: int
    out_width: int
    columns: int

    def im2col(self, x: te.Tensor) -> te.Tensor:
        """``cols[n * W_out + t, c * K + k] = x[n, c, t * stride + k * dilation - left]``
        (zero in the padding and the padded columns) as one compute: ``(N * W_out, columns)``."""
        batch, channels, width = (int(d) for d in x.shape)

        def value(row: tirx.PrimExpr, col: tirx.PrimExpr) -> tirx.PrimExpr:
            n, t = row // self.out_width, row % self.out_width
            c, k = col // self.kernel, col % self.kernel
            pos = t * self.stride + k * self.dilation - self.left
            inside = tirx.all(col < channels * self.kernel, pos >= 0, pos < width)
            return tirx.if_then_else(inside, x[n, c, pos], tirx.const(0, x.dtype))

        return te.compute((batch * self.out_width, self.columns), value, name="im2col")


@relax.expr_functor.mutator
class _Conv1dMutator(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, dtypes: tuple[str, ...], column_multiple: int) -> None:
        super().__init__(mod)
        self.dtypes = dtypes
        self.column_multiple = column_multiple
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
            or str(x.ty.dtype) not in self.dtypes
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
        columns = channels * kernel + -(channels * kernel) % self.column_multiple
        taps = _Taps(kernel, stride, dilation, left, out_width, columns)
        cols = bb.emit_te(taps.im2col, x, primfunc_name_hint="im2col")
        w = np.pad(w.reshape(filters, -1), [(0, 0), (0, columns - channels * kernel)])
        name = f"conv{self.count}"
        self.count += 1
        y = LinearCall(name, cols, np.ascontiguousarray(w)).emit(bb)
        y = bb.emit(op.reshape(y, [batch, out_width, filters]))
        return op.permute_dims(y, [0, 2, 1])


@tvm.transform.module_pass(opt_level=0, name="Conv1dToLinear")
class Conv1dToLinear:
    """Rewrite constant-weight ``R.nn.conv1d`` (NCW, ``groups = 1``) as im2col + a linear
    placeholder named ``conv<i>`` (see the module docstring).

    Parameters
    ----------
    dtypes : tuple of str
        The input dtypes whose convolutions are rewritten.
    column_multiple : int
        The unfolded ``C * K`` columns (and the weight's) are zero-padded to a multiple of it.
    """

    def __init__(
        self, dtypes: tuple[str, ...] = SUPPORTED_DTYPES, column_multiple: int = 1
    ) -> None:
        self.dtypes = tuple(dtypes)
        self.column_multiple = column_multiple

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        """Fold constants, rewrite the convolutions, drop dead code."""
        mod = relax.transform.FoldConstant()(mod)
        mutator = _Conv1dMutator(mod, self.dtypes, self.column_multiple)
        mod = mutate_relax_functions(mutator, mod)
        logger.info("Conv1dToLinear: %d convolution(s) as linear layers", mutator.count)
        return relax.transform.DeadCodeElimination()(mod)
