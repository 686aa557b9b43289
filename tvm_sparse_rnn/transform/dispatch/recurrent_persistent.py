"""The sparse persistent kernel inside a Relax module (ONNX ``RNN``/``GRU``/``LSTM`` on CUDA).

:func:`emit_recurrent_sequence <tvm_sparse_rnn.rnn.sequence.emit_recurrent_sequence>` calls
:func:`persistent_rnn_plan` for every direction of a layer on a ``cuda`` target; when it returns a
plan, :func:`emit_persistent_rnn` emits that direction as

1. ``U = X @ W^T + b``: one Relax matmul over all ``T * N`` rows and all gates before the
   recurrence (``b = Wb + Rb``, except ``Wb`` alone for the GRU ``h`` gate, whose ``Rb`` goes
   inside the reset gate:
   :func:`~tvm_sparse_rnn.rnn.persistent.split_onnx_bias`)
   (a dense layer with a constant weight, so :class:`~tvm_sparse_rnn.transform.DenseToSparse`
   makes it ``sparse_dense`` when ``W`` is pruned and dlight schedules it otherwise: the GEMM runs
   on the GPU);
2. Relax reshapes, transposes and zero pads into the kernel layout ``U (T, G*Hk, Bk)``
   (unit-major rows) and ``h0``/``c0 (Hk, Bk)`` (reverse direction: ``U`` flipped in time first);
3. one ``R.call_tir`` of the persistent kernel (:func:`~tvm_sparse_rnn.rnn.persistent.\
persistent_prim_func`, **grid barrier**) per batch chunk of the plan (one for every batch that
   fits in shared memory), with the packed ``R`` as Relax constants;
4. slices back to ``Y (T, N, H)``, ``Y_h (N, H)`` and (LSTM) ``Y_c (N, H)``.

The grid barrier is used because nothing checks the kernel's ``status`` output after a
``call_tir`` (it is a second output that is ignored): the flag barrier's bounded spin reports a
time-out only through ``status`` and would leave wrong numbers behind. The grid barrier cannot
time out, and the cooperative launch guarantees (or fails the launch) that all CTAs are resident.

**The module must be built with the cooperative TIR pipeline**, :func:`tir_pipeline` (which
:func:`tvm_sparse_rnn.compile.build` uses): a grid sync in a kernel that is not launched
cooperatively faults (``cudaErrorLaunchFailure``). It only tags kernels that call the grid sync
or copy ``h`` with the persistent kernel's helper; every other kernel builds as with TVM's default.

Conditions (else the per-step Relax path, which is correct for every case): ``RNN`` with
activation ``Tanh`` or ``Relu``, ``GRU`` with ``linear_before_reset=1`` (PyTorch's and cuDNN's
form; with 0 the candidate mat-vec needs every unit's reset gate, a second grid exchange per step)
or ``LSTM`` without peepholes, both with the default activations; no ``clip``, no
``sequence_lens`` (or a constant of full lengths), ``R`` density at most the density threshold,
and :func:`~tvm_sparse_rnn.rnn.planner.plan_persistent` returns a persistent plan (``R`` fits on
chip). The geometry, load width and nonzero order come from the tuning lookup (a tuned record of
``tvm-sparse-rnn tune``, else a shipped config, else the planner's defaults); the barrier is always
the grid barrier.
"""

from __future__ import annotations

import logging

import numpy as np
import tvm
from tvm import relax
from tvm.target import Target

from ...errors import CapacityError
from ...target import is_cuda
from ...tuning.persistent_space import tuned_persistent_config
from ...kernels.cuda.persistent import cooperative as cuda_pipeline
from ...ops.cells import CellConfig
from ...kernels.cuda.persistent.packing import unit_major
from ...runtime.persistent import persistent_prim_func, split_onnx_bias
from ...kernels.cuda.persistent.planner import CELL_GATES, PersistentPlan, plan_persistent

logger = logging.getLogger(__name__)

#: ONNX RNN activation -> the kernel's ``cell``.
KERNEL_ACTIVATIONS = {"Tanh": "tanh", "Relu": "relu"}
#: The activations of the gated cells the kernel implements (ONNX defaults).
GATED_ACTIVATIONS = {"GRU": ("Sigmoid", "Tanh"), "LSTM": ("Sigmoid", "Tanh", "Tanh")}
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


def kernel_cell(cfg: CellConfig, d: int, peepholes: np.ndarray | None = None) -> str | None:
    """The kernel ``cell`` for direction ``d`` of ``cfg``, or ``None`` with the reason logged.

    ``peepholes`` is the direction's ``P`` (all zeros counts as none).
    """
    acts = cfg.direction_activations(d)
    if cfg.kind == "RNN":
        cell = KERNEL_ACTIVATIONS.get(acts[0])
        reason = f"activation {acts[0]}"
    elif acts != GATED_ACTIVATIONS[cfg.kind]:
        cell, reason = None, f"activations {list(acts)}"
    elif cfg.kind == "GRU" and not cfg.linear_before_reset:
        cell, reason = None, "GRU linear_before_reset=0"
    elif peepholes is not None and np.any(peepholes):
        cell, reason = None, "LSTM peepholes"
    else:
        cell = cfg.kind.lower()
    if cell is None:
        logger.info("%s direction %d: per-step CUDA path (%s)", cfg.kind, d, reason)
    return cell


def persistent_rnn_plan(
    cfg: CellConfig,
    d: int,
    R: np.ndarray,
    batch: int,
    lengths_full: bool,
    density_threshold: float,
    peepholes: np.ndarray | None = None,
) -> PersistentPlan | None:
    """The persistent plan of direction ``d`` of a layer, or ``None`` if the kernel does not apply.

    Parameters
    ----------
    cfg : CellConfig
        The layer.
    d : int
        Direction index.
    R : numpy.ndarray
        ``(G*H, H)`` float32 recurrent weight of direction ``d`` (ONNX ``R[d]``).
    batch : int
        ``N``.
    lengths_full : bool
        No ``sequence_lens``, or all lengths equal ``T`` (:func:`full_lengths`).
    density_threshold : float
        Largest density of ``R`` that counts as pruned.
    peepholes : numpy.ndarray, optional
        ``(3*H,)`` LSTM ``P[d]``.

    Returns
    -------
    PersistentPlan or None
        A plan of kind ``"persistent"``; ``None`` (with the reason logged) otherwise.
    """
    cell = kernel_cell(cfg, d, peepholes)
    if cell is None:
        return None
    density = np.count_nonzero(R) / R.size
    if cfg.clip is not None:
        reason = f"clip={cfg.clip}"
    elif not lengths_full:
        reason = "sequence_lens given"
    elif density > density_threshold:
        reason = f"R density {density:.3f} > {density_threshold}"
    else:
        gates = CELL_GATES[cell]
        tuned = tuned_persistent_config(R, batch, cell, _F32, "cuda")
        if tuned is None:
            try:
                plan_persistent(unit_major(R, gates), batch, gates=gates, require_persistent=True)
            except CapacityError as err:
                reason = f"R does not fit on chip: {err}"
        else:
            plan = tuned[0]
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
    wb: np.ndarray,
    rb: np.ndarray,
    R: np.ndarray,
    h0: relax.Expr,
    c0: relax.Expr | None = None,
) -> list[relax.Expr]:
    """Emit one direction of an ONNX ``RNN``/``GRU``/``LSTM`` as the persistent kernel.

    See the module docstring.

    Parameters
    ----------
    bb : relax.BlockBuilder
        Inside a dataflow block.
    cfg : CellConfig
        The layer.
    d : int
        Direction index (selects the activation; reverse directions run on flipped time).
    plan : PersistentPlan
        From :func:`persistent_rnn_plan` for ``R`` and the batch.
    x : relax.Expr
        ``X`` as ``(T, N, I)`` float32, static shape.
    w : numpy.ndarray
        ``(G*H, I)`` float32 ``W[d]``.
    wb, rb : numpy.ndarray
        ``(G*H,)`` float32 ``Wb[d]`` and ``Rb[d]``.
    R : numpy.ndarray
        ``(G*H, H)`` float32 ``R[d]``.
    h0, c0 : relax.Expr
        ``(N, H)`` float32 initial states of this direction (``c0``: LSTM).

    Returns
    -------
    list of relax.Expr
        ``[Y (T, N, H), Y_h (N, H)]`` (LSTM: ``+ [Y_c (N, H)]``) float32, ``Y`` in time order.
    """
    seq_len, batch, input_size = (int(s) for s in x.ty.shape)
    H, Hk, Bk, G = cfg.hidden_size, plan.hidden_padded, plan.batch_kernel, plan.gates
    b_pad = Bk * plan.num_batch_chunks
    cell = kernel_cell(cfg, d)
    tuned = tuned_persistent_config(R, batch, cell, _F32, "cuda")
    vector, order = tuned[2:] if tuned is not None and tuned[0] == plan else (None, None)
    func, consts, plan = persistent_prim_func(
        R, batch, cell, RELAX_BARRIER, plan=plan, vector=vector, order=order
    )
    func = (
        func.without_attr("global_symbol")
        .with_attr("op_pattern", _OP_PATTERN_OPAQUE)
        .with_attr("tirx.is_scheduled", True)
    )
    gv = bb.add_func(func, f"rnn_persistent_{cell}")
    bias, rbias = split_onnx_bias(cell, wb, rb)
    rbias_k = np.zeros(Hk, _F32)
    rbias_k[:H] = rbias

    u = op.matmul(
        op.reshape(x, [seq_len * batch, input_size]), relax.const(np.ascontiguousarray(w.T))
    )
    u = op.reshape(op.add(u, relax.const(bias.astype(_F32))), [seq_len, batch, G, H])
    if cfg.is_reverse(d):
        u = op.flip(u, axis=0)
    u = op.permute_dims(u, [0, 3, 2, 1])  # (T, H, G, N): unit-major rows
    states = [op.permute_dims(s, [1, 0]) for s in (h0, c0 if G == 4 else h0)]  # (H, N)
    if (Hk, b_pad) != (H, batch):
        u = op.nn.pad(u, [0, 0, 0, Hk - H, 0, 0, 0, b_pad - batch])
        states = [op.nn.pad(s, [0, Hk - H, 0, b_pad - batch]) for s in states]
    u = bb.emit(op.reshape(u, [seq_len, Hk * G, b_pad]))
    h, c = (bb.emit(s) for s in states)
    weights = [relax.const(consts[k]) for k in ("vals", "idx", "spairs")]
    rb_k = relax.const(rbias_k)
    out_ty = [
        relax.TensorType((seq_len, Hk, Bk), _F32),
        relax.TensorType((Hk, Bk), _F32),
        relax.TensorType((1,), "int32"),
    ]
    chunks, c_chunks = [], []
    for ch in range(plan.num_batch_chunks):
        args = [u, h, c]
        if plan.num_batch_chunks > 1:
            lo, hi = ch * Bk, (ch + 1) * Bk
            args = [
                bb.emit(op.strided_slice(a, axes=[a.ty.ndim - 1], begin=[lo], end=[hi]))
                for a in args
            ]
        res = bb.emit(relax.call_tir(gv, [*weights, *args, rb_k], out_ty))
        chunks.append(bb.emit(relax.TupleGetItem(res, 0)))  # status (output 2) is ignored
        c_chunks.append(bb.emit(relax.TupleGetItem(res, 1)))

    def unpad(parts: list[relax.Expr], axis: int) -> relax.Expr:
        whole = parts[0] if len(parts) == 1 else bb.emit(op.concat(parts, axis=axis))
        return op.strided_slice(whole, axes=[axis - 1, axis], begin=[0, 0], end=[H, batch])

    y = bb.emit(op.permute_dims(unpad(chunks, 2), [0, 2, 1]))  # (T, N, H), kernel time order
    y_h = bb.emit(
        op.squeeze(op.strided_slice(y, axes=[0], begin=[seq_len - 1], end=[seq_len]), [0])
    )
    if cfg.is_reverse(d):
        y = bb.emit(op.flip(y, axis=0))
    if G != 4:
        return [y, y_h]
    return [y, y_h, bb.emit(op.permute_dims(unpad(c_chunks, 1), [1, 0]))]


__all__ = [
    "GATED_ACTIVATIONS",
    "KERNEL_ACTIVATIONS",
    "RELAX_BARRIER",
    "emit_persistent_rnn",
    "full_lengths",
    "kernel_cell",
    "persistent_rnn_plan",
    "tir_pipeline",
]
