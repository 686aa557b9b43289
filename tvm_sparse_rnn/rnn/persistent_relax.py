"""The sparse persistent RNN kernel inside a Relax module (ONNX ``RNN`` layers on CUDA).

:func:`emit_recurrent_sequence <tvm_sparse_rnn.rnn.sequence.emit_recurrent_sequence>` calls
:func:`persistent_rnn_plan` for every direction of a layer on a ``cuda`` target; when it returns a
plan, :func:`emit_persistent_rnn` emits that direction as

1. ``U = X @ W^T + (Wb + Rb)``: one Relax matmul over all ``T * N`` rows before the recurrence
   (a dense layer with a constant weight, so :class:`~tvm_sparse_rnn.transform.DenseToSparse`
   makes it ``sparse_dense`` when ``W`` is pruned and dlight schedules it otherwise: the GEMM runs
   on the GPU);
2. Relax reshapes, transposes and zero pads into the kernel layout ``U (T, Hk, Bk)`` and
   ``h0 (Hk, Bk)`` (reverse direction: ``U`` flipped in time first);
3. one ``R.call_tir`` of the persistent kernel (:func:`~tvm_sparse_rnn.rnn.persistent.\
persistent_prim_func`, **grid barrier**) per batch chunk of the plan (one for every batch that
   fits in shared memory), with the packed ``R`` as Relax constants;
4. slices back to ``Y (T, N, H)`` and ``Y_h (N, H)``.

The grid barrier is used because nothing checks the kernel's ``status`` output after a
``call_tir`` (it is a second output that is ignored): the flag barrier's bounded spin reports a
time-out only through ``status`` and would leave wrong numbers behind. The grid barrier cannot
time out, and the cooperative launch guarantees (or fails the launch) that all CTAs are resident.

**The module must be built with the cooperative TIR pipeline**, :func:`tir_pipeline` (which
:func:`tvm_sparse_rnn.compile.build` uses): a grid sync in a kernel that is not launched
cooperatively faults (``cudaErrorLaunchFailure``). It only tags kernels that call the grid sync
or copy ``h`` with the persistent kernel's helper; every other kernel builds as with TVM's default.

Conditions (else the per-step Relax path, which is correct for every case): ``RNN`` cell,
activation ``Tanh`` or ``Relu``, no ``clip``, no ``sequence_lens`` (or a constant of full lengths),
``R`` density at most the density threshold, and :func:`~tvm_sparse_rnn.rnn.planner.\
plan_persistent` returns a persistent plan (``R`` fits in registers).
"""

from __future__ import annotations

import logging

import numpy as np
import tvm
from tvm import relax
from tvm.target import Target

from ..errors import CapacityError
from ..target import is_cuda
from . import cuda_pipeline
from .cells import CellConfig
from .persistent import persistent_prim_func
from .planner import PersistentPlan, plan_persistent

logger = logging.getLogger(__name__)

#: ONNX activation name -> the kernel's ``activation``.
KERNEL_ACTIVATIONS = {"Tanh": "tanh", "Relu": "relu"}
#: The barrier of kernels emitted into Relax (see the module docstring).
RELAX_BARRIER = "grid"
#: PrimFunc attribute ``op_pattern`` value kOpaque: keeps Relax's FuseOps away from the kernel.
_OP_PATTERN_OPAQUE = 8
_F32 = "float32"
op = relax.op


def tir_pipeline(target: Target) -> str:
    """The TIR pipeline to build a Relax module for ``target`` with.

    ``cuda``: TVM's default (``s_tir``) pipeline followed by the pass that launches persistent
    kernels cooperatively (:mod:`~tvm_sparse_rnn.rnn.cuda_pipeline`); other kernels are
    unaffected. Other targets: ``"default"``.
    """
    return cuda_pipeline.register() if is_cuda(target) else "default"


def full_lengths(sequence_lens: relax.Expr | None, seq_len: int) -> bool:
    """Whether ``sequence_lens`` is absent or a constant with every length equal to ``seq_len``."""
    if sequence_lens is None:
        return True
    if isinstance(sequence_lens, tvm.ir.expr.Constant):
        return bool(np.all(sequence_lens.value.numpy() == seq_len))
    return False


def persistent_rnn_plan(
    cfg: CellConfig,
    d: int,
    R: np.ndarray,
    batch: int,
    lengths_full: bool,
    density_threshold: float,
) -> PersistentPlan | None:
    """The persistent plan of direction ``d`` of a layer, or ``None`` if the kernel does not apply.

    Parameters
    ----------
    cfg : CellConfig
        The layer.
    d : int
        Direction index.
    R : numpy.ndarray
        ``(H, H)`` float32 recurrent weight of direction ``d`` (ONNX ``R[d]``).
    batch : int
        ``N``.
    lengths_full : bool
        No ``sequence_lens``, or all lengths equal ``T`` (:func:`full_lengths`).
    density_threshold : float
        Largest density of ``R`` that counts as pruned.

    Returns
    -------
    PersistentPlan or None
        A plan of kind ``"persistent"``; ``None`` (with the reason logged) otherwise.
    """
    activation = cfg.direction_activations(d)[0]
    density = np.count_nonzero(R) / R.size
    if cfg.kind != "RNN":
        reason = f"{cfg.kind} cell (the persistent kernel is a vanilla RNN)"
    elif activation not in KERNEL_ACTIVATIONS:
        reason = f"activation {activation}"
    elif cfg.clip is not None:
        reason = f"clip={cfg.clip}"
    elif not lengths_full:
        reason = "sequence_lens given"
    elif density > density_threshold:
        reason = f"R density {density:.3f} > {density_threshold}"
    else:
        try:
            plan = plan_persistent(R, batch, require_persistent=True)
        except CapacityError as err:
            reason = f"R does not fit on chip: {err}"
        else:
            logger.info(
                "%s direction %d: persistent kernel (R density %.3f): %s",
                cfg.kind,
                d,
                density,
                plan.describe(),
            )
            return plan
    logger.info("%s direction %d: per-step CUDA path (%s)", cfg.kind, d, reason)
    return None


def emit_persistent_rnn(
    bb: relax.BlockBuilder,
    cfg: CellConfig,
    d: int,
    plan: PersistentPlan,
    x: relax.Expr,
    w: np.ndarray,
    bias: np.ndarray,
    R: np.ndarray,
    h0: relax.Expr,
) -> list[relax.Expr]:
    """Emit one direction of an ONNX ``RNN`` as the persistent kernel (see the module docstring).

    Parameters
    ----------
    bb : relax.BlockBuilder
        Inside a dataflow block.
    cfg : CellConfig
        The layer (``RNN``).
    d : int
        Direction index (selects the activation; reverse directions run on flipped time).
    plan : PersistentPlan
        From :func:`persistent_rnn_plan` for ``R`` and the batch.
    x : relax.Expr
        ``X`` as ``(T, N, I)`` float32, static shape.
    w : numpy.ndarray
        ``(H, I)`` float32 ``W[d]``.
    bias : numpy.ndarray
        ``(H,)`` float32 ``Wb[d] + Rb[d]``.
    R : numpy.ndarray
        ``(H, H)`` float32 ``R[d]``.
    h0 : relax.Expr
        ``(N, H)`` float32 initial state of this direction.

    Returns
    -------
    list of relax.Expr
        ``[Y (T, N, H), Y_h (N, H)]`` float32, ``Y`` in time order.
    """
    seq_len, batch, input_size = (int(s) for s in x.ty.shape)
    H, Hk, Bk = cfg.hidden_size, plan.hidden_padded, plan.batch_kernel
    b_pad = Bk * plan.num_batch_chunks
    activation = KERNEL_ACTIVATIONS[cfg.direction_activations(d)[0]]
    func, consts, plan = persistent_prim_func(R, batch, activation, RELAX_BARRIER, plan=plan)
    func = (
        func.without_attr("global_symbol")
        .with_attr("op_pattern", _OP_PATTERN_OPAQUE)
        .with_attr("tirx.is_scheduled", True)
    )
    gv = bb.add_func(func, f"rnn_persistent_{activation}")

    u = op.matmul(
        op.reshape(x, [seq_len * batch, input_size]), relax.const(np.ascontiguousarray(w.T))
    )
    u = op.reshape(op.add(u, relax.const(bias.astype(_F32))), [seq_len, batch, H])
    if cfg.is_reverse(d):
        u = op.flip(u, axis=0)
    u = op.permute_dims(u, [0, 2, 1])  # (T, H, N)
    h = op.permute_dims(h0, [1, 0])  # (H, N)
    if (Hk, b_pad) != (H, batch):
        u = op.nn.pad(u, [0, 0, 0, Hk - H, 0, b_pad - batch])
        h = op.nn.pad(h, [0, Hk - H, 0, b_pad - batch])
    u, h = bb.emit(u), bb.emit(h)
    vals, idx = relax.const(consts["vals"]), relax.const(consts["idx"])
    out_ty = [relax.TensorType((seq_len, Hk, Bk), _F32), relax.TensorType((1,), "int32")]
    chunks = []
    for c in range(plan.num_batch_chunks):
        u_c, h_c = u, h
        if plan.num_batch_chunks > 1:
            u_c = bb.emit(op.strided_slice(u, axes=[2], begin=[c * Bk], end=[(c + 1) * Bk]))
            h_c = bb.emit(op.strided_slice(h, axes=[1], begin=[c * Bk], end=[(c + 1) * Bk]))
        res = bb.emit(relax.call_tir(gv, [vals, idx, u_c, h_c], out_ty))
        chunks.append(bb.emit(relax.TupleGetItem(res, 0)))  # status (output 1) is ignored
    out = chunks[0] if len(chunks) == 1 else bb.emit(op.concat(chunks, axis=2))
    out = op.strided_slice(out, axes=[1, 2], begin=[0, 0], end=[H, batch])
    y = bb.emit(op.permute_dims(out, [0, 2, 1]))  # (T, N, H), kernel time order
    y_h = bb.emit(
        op.squeeze(op.strided_slice(y, axes=[0], begin=[seq_len - 1], end=[seq_len]), [0])
    )
    if cfg.is_reverse(d):
        y = bb.emit(op.flip(y, axis=0))
    return [y, y_h]


__all__ = [
    "KERNEL_ACTIVATIONS",
    "RELAX_BARRIER",
    "emit_persistent_rnn",
    "full_lengths",
    "persistent_rnn_plan",
    "tir_pipeline",
]
