"""Dispatch of a linear placeholder: dense, block-sparse, or one of the sparse variants.

The cost rule (:func:`~tvm_sparse_rnn.transform.dispatch.cost_model.plan_layer`) picks the block
size and decides sparse or dense for the target. A sparse layer runs the x86 CSR kernel where the
rule says so (:mod:`.linear_csr_x86`), the tensor-core kernel (:mod:`.linear_tensor_core`) or the
CSR-vector kernel (:mod:`.linear_csr_vector`) on CUDA where they take it, else the block-sparse
kernel with the config the tuning lookup gives (tuned record, shipped config, default): one
``call_tir`` of :func:`~tvm_sparse_rnn.kernels.sparse_dense.sparse_dense_func` with the BSR
arrays as Relax constants, leading dimensions of ``x`` flattened to ``[M, K]`` around it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax, tirx
from tvm.target import Target

from ...bsr import BSRWeight
from ...cpu_threads import pool_threads
from ...errors import UnsupportedError
from ...kernels.cuda.matmul_mma import MIN_EXTENT, VECTOR_HALVES, plan_split_k
from ...kernels.cuda.tensor_core.kernel import default_config
from ...kernels.sparse_dense import SparseDenseLayout, sparse_dense_func
from ...kernels.x86.csr_tiling import csr_tiling
from ...ops.epilogue import IDENTITY, Activation, Epilogue
from ...ops.placeholders import LinearCall
from ...ops.split_k import split_k_matmul, split_k_sum
from ...target import device_limits, is_cuda, resolve_target
from ...tuning.lookup import lookup_config
from ...tuning.sparse_dense_space import sparse_dense_tune_task
from .cost_model import (
    cost_params,
    plan_layer,
    uses_csr_vector,
    uses_tensor_cores,
)
from .decision import DispatchOptions, KernelDecision, KernelVariant
from .linear_csr_vector import CsrVectorLinear
from .linear_csr_x86 import CsrSpmmLinear
from .linear_tensor_core import TensorCoreLinear

logger = logging.getLogger(__name__)

#: Output features of a dense float16 layer on CUDA are padded to a multiple of this (16-byte
#: rows of ``W^T``), so the pipelined ``mma.sync`` GEMM takes it: DeepSpeech2's 29-class output
#: layer (1520 x 2048 -> 29) otherwise fell to a CUDA-core schedule of 48 CTAs.
DENSE_FEATURE_ALIGN = VECTOR_HALVES


def emit_sparse_dense(
    bb: relax.BlockBuilder,
    x: relax.Expr,
    weight: BSRWeight,
    target: str | dict | Target,
    config: object = None,
) -> relax.Expr:
    """Emit ``x @ W.T`` as a ``call_tir`` of the scheduled block-sparse kernel.

    Parameters
    ----------
    bb : relax.BlockBuilder
        Builder inside a dataflow block or function.
    x : relax.Expr
        ``[M, K]`` tensor (``M`` static or symbolic) of ``weight.dtype``.
    weight : BSRWeight or scipy/torch sparse
        ``W[N, K]`` (converted by :meth:`BSRWeight.coerce`); its arrays become Relax constants.
    target : str, dict or Target
        Target the kernel is scheduled for.
    config : X86Config or CudaConfig, optional
        Schedule knobs of ``target``'s schedule; ``None``: the tuning lookup (tuned record,
        shipped config, default).

    Returns
    -------
    relax.Expr
        The emitted ``[M, N]`` result, in ``x``'s dtype.

    Raises
    ------
    UnsupportedError
        If ``x`` is not 2-D, its last dimension is not ``K`` or its dtype is not the weight's.
    """
    weight = BSRWeight.coerce(weight)
    ty = x.ty
    n, k = weight.shape
    if not isinstance(ty, relax.TensorType) or ty.ndim != 2 or ty.shape is None:
        raise UnsupportedError(f"sparse_dense: input x must be a 2-D tensor [M, {k}], got {ty}")
    m, x_k = ty.shape.values
    if not isinstance(x_k, tirx.IntImm) or int(x_k) != k:
        got = int(x_k) if isinstance(x_k, tirx.IntImm) else x_k
        raise UnsupportedError(f"sparse_dense: input x has K = {got}, the weight expects K = {k}")
    if ty.dtype != weight.dtype:
        raise UnsupportedError(
            f"sparse_dense: input x has dtype {ty.dtype}, the weight has dtype {weight.dtype}"
        )
    target = resolve_target(target)
    batch = _batch(m)
    if config is None:
        config = lookup_config(sparse_dense_tune_task(weight, batch, target), target)[0]
    func = sparse_dense_func(SparseDenseLayout.of(weight), batch, target, config)
    gv = bb.add_func(func, "sparse_dense_bsr")
    data, indices, indptr = weight.kernel_arrays()
    args = [x, relax.const(data), relax.const(indices), relax.const(indptr)]
    return bb.emit(relax.call_tir(gv, args, relax.TensorType((m, n), weight.dtype)))


def emit_epilogue_ops(
    bb: relax.BlockBuilder, y: relax.Expr, epilogue: Epilogue, bias: np.ndarray | None
) -> relax.Expr:
    """``epilogue(y, bias)`` as Relax ops (bias add, activation, cast), for the kernels that do
    not apply it themselves; TVM's fusion joins them to what follows."""
    op = relax.op
    if epilogue.bias:
        y = bb.emit(op.add(y, relax.const(bias)))
    if epilogue.activation is Activation.RELU:
        y = bb.emit(op.nn.relu(y))
    elif epilogue.activation is Activation.GELU:
        y = _emit_erf_gelu(bb, y)
    dtype = epilogue.output_dtype(str(y.ty.dtype))
    return y if dtype == str(y.ty.dtype) else bb.emit(op.astype(y, dtype))


def _batch(m: tirx.PrimExpr) -> int | tirx.Var:
    return int(m) if isinstance(m, tirx.IntImm) else tirx.Var("m", "int64")


@dataclass
class LinearLowering:
    """How one linear layer is lowered; :meth:`emit` may be called for several inputs of the
    same type (a per-step recurrence), which then share the weight's constants and kernel.

    Attributes
    ----------
    decision : KernelDecision
        The dispatch decision.
    weight : numpy.ndarray
        ``(N, K)`` dense weight (the dense variant multiplies by its transpose).
    bsr : BSRWeight or None
        The block-sparse weight of the sparse variant.
    config : object
        The sparse kernel's schedule config.
    target : Target
        The resolved target.
    csr : CsrSpmmLinear or None
        The packed weight of the CSR variant (x86, static rows; :mod:`.linear_csr_x86`).
    tensor_core : TensorCoreLinear or None
        The packed weight of the tensor-core variant (CUDA, float16).
    csr_vector : CsrVectorLinear or None
        The packed weight of the CSR-vector variant (CUDA, unstructured, a few rows).
    split_k : int
        Slices of ``K`` of the dense variant's GEMM (CUDA, float16;
        :func:`~tvm_sparse_rnn.kernels.cuda.matmul_mma.plan_split_k`), 1 for none.
    """

    decision: KernelDecision
    weight: np.ndarray
    bsr: BSRWeight | None
    config: object
    target: Target
    csr: CsrSpmmLinear | None = None
    tensor_core: TensorCoreLinear | None = None
    csr_vector: CsrVectorLinear | None = None
    split_k: int = 1
    _consts: list[relax.Expr] = field(default_factory=list)

    def emit(
        self,
        bb: relax.BlockBuilder,
        x: relax.Expr,
        epilogue: Epilogue = IDENTITY,
        bias: np.ndarray | None = None,
    ) -> relax.Expr:
        """Emit ``epilogue(x @ W.T, bias)`` (``x`` of rank >= 2) for the decided variant: the
        block-sparse and CSR-vector kernels apply the epilogue in their store, the CSR kernel
        the bias and activation, Relax ops after the kernel do the rest."""
        if self.csr_vector is not None:
            return self.csr_vector.emit(bb, x, epilogue, bias)
        if self.tensor_core is not None:
            return emit_epilogue_ops(bb, self.tensor_core.emit(bb, x), epilogue, bias)
        if self.csr is not None:
            y = self.csr.emit(bb, x, bias, epilogue.activation)
            in_kernel = dataclasses.replace(epilogue, bias=False, activation=Activation.NONE)
            return emit_epilogue_ops(bb, y, in_kernel, None)
        if self.bsr is None:
            return emit_epilogue_ops(bb, self._emit_dense(bb, x), epilogue, bias)
        ty = x.ty
        n, k = self.bsr.shape
        lead = ty.shape.values[:-1]
        x2d = x if ty.ndim == 2 else bb.emit(relax.op.reshape(x, [-1, k]))
        if not self._consts:
            self._consts.extend(relax.const(a) for a in self.bsr.kernel_arrays())
        m = x2d.ty.shape.values[0]
        func = sparse_dense_func(
            SparseDenseLayout.of(self.bsr), _batch(m), self.target, self.config, epilogue
        )
        gv = bb.add_func(func, "sparse_dense_bsr")
        out = relax.TensorType((m, n), epilogue.output_dtype(self.bsr.dtype))
        args = [x2d, *self._consts, *([relax.const(bias)] if epilogue.bias else [])]
        y = bb.emit(relax.call_tir(gv, args, out))
        return y if ty.ndim == 2 else bb.emit(relax.op.reshape(y, [*lead, n]))

    def _emit_dense(self, bb: relax.BlockBuilder, x: relax.Expr) -> relax.Expr:
        """``x @ W^T`` as a Relax matmul with the constant ``W^T``; float16 on CUDA: ``W^T``'s
        columns zero-padded to :data:`DENSE_FEATURE_ALIGN` and the padding sliced off, and
        ``K`` split in :attr:`split_k` slices where that was planned."""
        n, k = self.weight.shape
        if not self._consts:
            wt = np.ascontiguousarray(self.weight.T)
            if is_cuda(self.target) and str(x.ty.dtype) == "float16":
                pad = -n % DENSE_FEATURE_ALIGN
                wt = np.pad(wt, [(0, 0), (0, pad)])
            if self.split_k > 1:  # (S, K / S, N): slice s of K is batch s
                wt = wt.reshape(self.split_k, k // self.split_k, -1)
            self._consts.append(relax.const(wt))
        if self.split_k > 1:
            y = self._emit_split_k(bb, x)
        else:
            y = bb.emit(relax.op.matmul(x, self._consts[0]))
        if int(self._consts[0].ty.shape[-1]) == n:
            return y
        return bb.emit(relax.op.strided_slice(y, axes=[y.ty.ndim - 1], begin=[0], end=[n]))

    def _emit_split_k(self, bb: relax.BlockBuilder, x: relax.Expr) -> relax.Expr:
        """The GEMM as :attr:`split_k` batches of partial products (:func:`split_k_matmul`)
        and their float32 sum, cast back to ``x``'s dtype (:func:`split_k_sum`)."""
        op = relax.op
        k = self.weight.shape[1]
        lead = x.ty.shape.values[:-1]
        m = math.prod(int(d) for d in lead)
        x3 = bb.emit(op.reshape(x, [m, self.split_k, k // self.split_k]))
        partial = bb.emit_te(split_k_matmul, x3, self._consts[0], primfunc_name_hint="split_k")
        y = bb.emit_te(split_k_sum, partial, str(x.ty.dtype), primfunc_name_hint="split_k_sum")
        return bb.emit(op.reshape(y, [*lead, y.ty.shape.values[-1]]))


def _emit_erf_gelu(bb: relax.BlockBuilder, y: relax.Expr) -> relax.Expr:
    """``y * (1 + erf(y / sqrt 2)) * 0.5`` as the Relax ops torch exports (``relax.op.nn.gelu``
    would legalize to a libm ``erf`` that :class:`~tvm_sparse_rnn.transform.FastMath` misses)."""
    op = relax.op
    dtype = str(y.ty.dtype)
    scaled = bb.emit(op.divide(y, relax.const(math.sqrt(2), dtype)))
    one_plus_erf = bb.emit(op.add(bb.emit(op.erf(scaled)), relax.const(1, dtype)))
    return bb.emit(op.multiply(bb.emit(op.multiply(y, one_plus_erf)), relax.const(0.5, dtype)))


def _dense_split_k(weight: np.ndarray, rows: int | None, dtype: str, target: Target) -> int:
    """Slices of ``K`` for a dense layer's GEMM: float16 on CUDA with static rows, where
    :func:`~tvm_sparse_rnn.kernels.cuda.matmul_mma.plan_split_k` finds the output tiles too
    few for the SMs; else 1."""
    if not is_cuda(target) or dtype != "float16" or rows is None or rows < MIN_EXTENT:
        return 1
    n, k = weight.shape
    cols = n + -n % DENSE_FEATURE_ALIGN
    return plan_split_k(rows, cols, k, device_limits(target).num_sms)


def plan_linear(call: LinearCall, target: Target, options: DispatchOptions) -> LinearLowering:
    """Decide how the linear placeholder ``call`` runs on ``target``; the decision's detail
    says where its epilogue runs."""
    lowering = _plan_variant(call, target, options)
    if call.epilogue.is_identity and call.epilogue.out_dtype is None:
        return lowering
    variant = lowering.decision.variant
    in_kernel = variant in (KernelVariant.SPARSE_DENSE, KernelVariant.CSR_VECTOR)
    where = "in the kernel" if in_kernel else "after it"
    if variant is KernelVariant.CSR_SPMM:  # bias and activation in the kernel, a cast after
        where = "in the kernel" if call.epilogue.out_dtype is None else "cast after it"
    detail = f"{lowering.decision.detail}, epilogue {call.epilogue.describe()} ({where})"
    lowering.decision = dataclasses.replace(lowering.decision, detail=detail)
    return lowering


def _plan_variant(call: LinearCall, target: Target, options: DispatchOptions) -> LinearLowering:
    """The variant ``call`` runs as on ``target``, its packed weight and config."""
    weight, ty = call.weight, call.x.ty
    if not np.isfinite(weight).all():  # keep the user's numbers, NaN/Inf included, exactly
        detail = f"W {'x'.join(map(str, weight.shape))}"
        reason = "the weight holds NaN or Inf: a sparse kernel would drop them where x is 0"
        decision = KernelDecision(call.name, KernelVariant.DENSE, detail, "-", reason)
        return LinearLowering(decision, weight, None, None, target)
    lead = ty.shape.values[:-1]
    static = all(isinstance(d, tvm.tirx.IntImm) for d in lead)
    rows = math.prod(int(d) for d in lead) if static else None
    plan = plan_layer(
        weight,
        target.kind.name,
        options.sparsity_threshold,
        options.block_size,
        options.candidates,
        options.cost_params,
        rows=rows,
        dtype=str(ty.dtype),
    )
    stats = plan.choice
    detail = f"W {'x'.join(map(str, plan.shape))}, sparsity {plan.sparsity:.1%}"
    if stats is not None:
        block = "x".join(map(str, stats.block_size))
        detail += f", block {block}, fill {stats.fill:.1%}, stored {stats.stored_fraction:.1%}"
    if not plan.sparse:
        split_k = _dense_split_k(weight, rows, str(ty.dtype), target)
        detail += f", split-K {split_k}" if split_k > 1 else ""
        decision = KernelDecision(call.name, KernelVariant.DENSE, detail, "-", plan.reason)
        return LinearLowering(decision, weight, None, None, target, split_k=split_k)
    if plan.csr and str(ty.dtype) == "float32":
        csr = CsrSpmmLinear.plan(weight, rows, csr_tiling(target), pool_threads())
        detail = f"W {'x'.join(map(str, plan.shape))}, sparsity {plan.sparsity:.1%}, CSR"
        decision = KernelDecision(
            call.name, KernelVariant.CSR_SPMM, f"{detail}, {csr.detail()}", "-", plan.reason
        )
        return LinearLowering(decision, weight, None, None, target, csr)
    params = options.cost_params or cost_params(target.kind.name)
    if uses_tensor_cores(params, rows, str(ty.dtype)) and not plan.starved:
        try:
            tc = TensorCoreLinear.plan(weight, default_config(rows), target)
        except UnsupportedError as err:  # too dense for the registers: the block kernel runs
            logger.info("%s: no tensor-core kernel (%s)", call.name, err)
        else:
            detail = f"W {'x'.join(map(str, plan.shape))}, sparsity {plan.sparsity:.1%}, "
            decision = KernelDecision(
                call.name,
                KernelVariant.TENSOR_CORE,
                detail + tc.detail(),
                f"default: {tc.config}",
                plan.reason,
            )
            return LinearLowering(decision, weight, None, None, target, tensor_core=tc)
    if is_cuda(target) and static and uses_csr_vector(stats.block_size, rows, str(ty.dtype)):
        try:
            vector = CsrVectorLinear.plan(weight, rows, str(ty.dtype), target)
        except UnsupportedError as err:  # too many rows or columns: the block kernel runs
            logger.info("%s: no CSR-vector kernel (%s)", call.name, err)
        else:
            decision = KernelDecision(
                call.name,
                KernelVariant.CSR_VECTOR,
                f"{detail}, {vector.detail()}",
                f"default: {vector.config}",
                plan.reason,
            )
            return LinearLowering(decision, weight, None, None, target, csr_vector=vector)
    bsr = BSRWeight.from_dense(weight, stats.block_size, dtype=str(ty.dtype))
    batch = rows if static else tirx.Var("m", "int64")
    config, source = lookup_config(sparse_dense_tune_task(bsr, batch, target), target)
    decision = KernelDecision(
        call.name, KernelVariant.SPARSE_DENSE, detail, f"{source}: {config}", plan.reason
    )
    return LinearLowering(decision, weight, bsr, config, target)
