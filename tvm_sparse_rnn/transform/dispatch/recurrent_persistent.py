"""Lower directions of a recurrent placeholder to the sparse persistent kernel (CUDA).

One launch runs one direction, or both directions of a bidirectional layer at once (a plan of
``directions == 2``: each direction on its own CTAs, inputs and outputs stacked). Emitted:

1. ``U = X @ W^T + b``: one linear layer over all ``T * N`` rows and all gates of all the
   launch's directions before the recurrence, dispatched like any linear layer (sparse when
   ``W`` is pruned, the dense GEMM otherwise) and named ``<layer>[fw].W+<layer>[bw].W``
   for two directions. ``W``'s rows are put in the kernel's order (unit-major, padded units
   zero, :func:`~tvm_sparse_rnn.kernels.cuda.persistent.packing.unit_major_rows`; both
   directions stacked: one GEMM of twice the features), so the GEMM's output *is* the kernel's
   ``U (T, N, D * G * Hk)``: no re-layout, and a reverse direction reads it backwards. ``b = Wb
   + Rb``, except ``Wb`` alone for the GRU ``h`` gate, whose ``Rb`` goes inside the reset gate
   (:func:`split_onnx_bias`);
2. ``h0``/``c0`` transposed and zero padded into the kernel layout ``(Hk, Bk)``;
3. one ``R.call_tir`` (for all its directions) of
   :func:`~tvm_sparse_rnn.kernels.cuda.persistent.kernel.make_persistent_kernel` per batch chunk of
   the plan, with the packed ``R`` as Relax constants; the kernel carries the
   cooperative-launch attribute, so the module must be built with the package's TIR pipeline
   (:func:`tvm_sparse_rnn.pipeline.build` does);
4. slices back to ``Y (T, N, H)``, ``Y_h (N, H)`` and (LSTM) ``Y_c (N, H)``.

With the flag barrier, a wait that times out (only possible if a CTA stalls for about a second:
the cooperative launch makes all CTAs co-resident) poisons every later output with NaN, so a
compiled model never returns silently wrong numbers; its ``status`` output is not read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from tvm import relax

from ...kernels.cuda.persistent.kernel import make_persistent_kernel
from ...kernels.cuda.persistent.layout import PairOrder
from ...kernels.cuda.persistent.packing import (
    pack,
    stack_directions,
    unit_major,
    unit_major_rows,
)
from ...kernels.cuda.persistent.planner import Barrier, PersistentPlan
from ...kernels.opaque import opaque_kernel
from ...ops.cells import CellConfig, PersistentCell
from .recurrent_common import F32, Direction, op
from .recurrent_steps import Linear

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PersistentChoice:
    """How one direction runs on the persistent kernel.

    Attributes
    ----------
    cell : PersistentCell
        The kernel's cell.
    plan : PersistentPlan
        Geometry (``kind == "persistent"``).
    barrier : Barrier
        Step barrier.
    vector : bool
        Vector loads of ``h``.
    order : PairOrder
        Nonzero order of the packing.
    """

    cell: PersistentCell
    plan: PersistentPlan
    barrier: Barrier
    vector: bool
    order: PairOrder

    def describe(self) -> str:
        """One line: geometry and knobs."""
        vector = "vector" if self.vector else "scalar"
        return f"{self.plan.describe()}, {self.barrier.value} barrier, {vector}, {self.order.value}"


def split_onnx_bias(
    cell: PersistentCell | str, wb: np.ndarray, rb: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """ONNX biases ``Wb``, ``Rb`` (``(G*H,)`` each) -> the kernel's ``(b (G*H,), rbias (H,))``.

    ``b`` is added to the input projection of every gate: ``Wb + Rb``, except ``Wb`` alone for
    the GRU ``h`` gate with ``linear_before_reset=1``, whose ``Rb_h`` stays inside the reset gate
    and is returned as ``rbias`` (zeros for the other cells, including the GRU with
    ``linear_before_reset=0``, which adds ``Rb_h`` outside the reset gate).
    """
    cell = PersistentCell(cell)
    wb, rb = np.asarray(wb, np.float32), np.asarray(rb, np.float32)
    hidden = wb.size // cell.gates
    bias = wb + rb
    rbias = np.zeros(hidden, np.float32)
    if cell is PersistentCell.GRU:
        bias[2 * hidden :] = wb[2 * hidden :]
        rbias = rb[2 * hidden :].copy()
    return bias, rbias


def to_streams(x: relax.Expr, plan: PersistentPlan) -> relax.Expr:
    """``[.., D * rows, R * Bk]`` (directions stacked, one launch's samples) -> the kernel's
    ``[.., D * R * rows, Bk]`` (each direction's ``R = plan.replicas`` batch slices stacked)."""
    reps, bk, dirs = plan.replicas, plan.batch_kernel, plan.directions
    if reps == 1:
        return x
    *lead, rows, _ = (int(d) for d in x.ty.shape)
    n = len(lead)
    split = op.reshape(x, [*lead, dirs, rows // dirs, reps, bk])
    moved = op.permute_dims(split, [*range(n), n, n + 2, n + 1, n + 3])
    return op.reshape(moved, [*lead, dirs * reps * rows // dirs, bk])


def from_streams(x: relax.Expr, plan: PersistentPlan) -> relax.Expr:
    """Inverse of :func:`to_streams`: ``[.., D * R * rows, Bk]`` -> ``[.., D * rows, R * Bk]``."""
    reps, bk, dirs = plan.replicas, plan.batch_kernel, plan.directions
    if reps == 1:
        return x
    *lead, rows, _ = (int(d) for d in x.ty.shape)
    n = len(lead)
    per_stream = rows // (dirs * reps)
    split = op.reshape(x, [*lead, dirs, reps, per_stream, bk])
    moved = op.permute_dims(split, [*range(n), n, n + 2, n + 1, n + 3])
    return op.reshape(moved, [*lead, dirs * per_stream, reps * bk])


def hidden_states(out: relax.Expr, plan: PersistentPlan) -> relax.Expr:
    """``h_1 .. h_T`` of the kernel's ``out (P * T, rows, Bk)``: every ``P = plan.phases``-th
    step from ``P - 1`` (the two-phase GRU interleaves ``r_t * h_{t-1}``)."""
    if plan.phases == 1:
        return out
    steps = int(out.ty.shape[0])
    return op.strided_slice(
        out, axes=[0], begin=[plan.phases - 1], end=[steps], strides=[plan.phases]
    )


def emit_persistent(
    bb: relax.BlockBuilder,
    cfg: CellConfig,
    x: relax.Expr,
    dirns: list[Direction],
    choice: PersistentChoice,
    linear: Linear,
    names: list[str],
) -> list[list[relax.Expr]]:
    """Emit directions of an ONNX ``RNN``/``GRU``/``LSTM`` as one persistent launch.

    See the module docstring. With ``choice.plan.directions == 2`` both directions of a
    bidirectional layer run in the same launch, each on its own CTAs: their ``U``, states and
    outputs are stacked along the hidden axis, their packed ``R`` along the rows.

    Parameters
    ----------
    bb : relax.BlockBuilder
        Inside a dataflow block.
    cfg : CellConfig
        The layer.
    x : relax.Expr
        ``X`` as ``(T, N, I)``, static shape, in the plan's dtype (float32 or float16).
    dirns : list of Direction
        ``choice.plan.directions`` directions: weights (ONNX shapes), initial states ``(N, H)``.
    choice : PersistentChoice
        Geometry, barrier, vector loads and pair order, as the dispatch resolved them.
    linear : callable
        The dispatch of a linear layer (the input projection, sparse where it pays).
    names : list of str
        Layer name of each direction (its projection is ``<name>.W``).

    Returns
    -------
    list of list of relax.Expr
        Per direction ``[Y (T, N, H), Y_h (N, H)]`` (LSTM: ``+ [Y_c (N, H)]``) in ``x``'s dtype,
        ``Y`` in time order.
    """
    seq_len, batch, input_size = (int(s) for s in x.ty.shape)
    plan, cell, dtype = choice.plan, choice.cell, choice.plan.dtype
    H, Hk, Bk, G = cfg.hidden_size, plan.hidden_padded, plan.batch_kernel, plan.gates
    if len(dirns) != plan.directions:
        raise ValueError(f"{len(dirns)} directions for a plan of {plan.directions}")
    b_pad = plan.launch_batch * plan.num_batch_chunks
    packed = stack_directions(
        [pack(unit_major(d.r, G), plan, choice.order, choice.vector) for d in dirns]
    )
    reverse = tuple(cfg.is_reverse(d.index) for d in dirns)
    kernel = make_persistent_kernel(plan, cell, choice.barrier, choice.vector, reverse)
    func = opaque_kernel(kernel)
    func = func.with_attr("tirx.is_scheduled", True)
    gv = bb.add_func(func, f"rnn_persistent_{cell.value}")

    x_rows = bb.emit(op.reshape(x, [seq_len * batch, input_size]))
    biases, rbiases = zip(*(split_onnx_bias(cell, d.wb, d.rb) for d in dirns), strict=True)
    weight = np.concatenate([unit_major_rows(d.w, G, Hk) for d in dirns]).astype(dtype)
    bias = np.concatenate([unit_major_rows(b, G, Hk) for b in biases]).astype(dtype)
    u = linear(x_rows, weight, "+".join(f"{name}.W" for name in names))
    u = bb.emit(op.reshape(op.add(u, relax.const(bias)), [seq_len, batch, weight.shape[0]]))
    hs, cs = [], []
    for dirn in dirns:
        states = [op.permute_dims(s, [1, 0]) for s in (dirn.h0, dirn.c0 if G == 4 else dirn.h0)]
        if (Hk, b_pad) != (H, batch):
            states = [op.nn.pad(s, [0, Hk - H, 0, b_pad - batch]) for s in states]
        hs.append(bb.emit(states[0]))
        cs.append(bb.emit(states[1]))

    def stacked(parts: list[relax.Expr], axis: int) -> relax.Expr:
        return parts[0] if len(parts) == 1 else bb.emit(op.concat(parts, axis=axis))

    h, c = stacked(hs, 0), stacked(cs, 0)
    weights = [relax.const(a) for a in packed]
    rb_k = relax.const(np.concatenate([np.pad(rb, (0, Hk - H)) for rb in rbiases]).astype(F32))
    rows = plan.streams * Hk
    out_ty = [
        relax.TensorType((plan.phases * seq_len, rows, Bk), dtype),
        relax.TensorType((rows, Bk), dtype),
        relax.TensorType((1,), "int32"),
    ]
    lb = plan.launch_batch
    chunks, c_chunks = [], []
    for ch in range(plan.num_batch_chunks):
        u_ch, states = u, [h, c]
        if plan.num_batch_chunks > 1:
            lo, hi = ch * lb, (ch + 1) * lb
            u_ch = bb.emit(op.strided_slice(u, axes=[1], begin=[lo], end=[min(hi, batch)]))
            states = [
                bb.emit(op.strided_slice(a, axes=[a.ty.ndim - 1], begin=[lo], end=[hi]))
                for a in states
            ]
        states = [bb.emit(to_streams(a, plan)) for a in states]
        res = bb.emit(relax.call_tir(gv, [*weights, u_ch, *states, rb_k], out_ty))
        # status (output 2) is ignored
        h_launch = bb.emit(hidden_states(bb.emit(relax.TupleGetItem(res, 0)), plan))
        chunks.append(bb.emit(from_streams(h_launch, plan)))
        c_chunks.append(bb.emit(from_streams(bb.emit(relax.TupleGetItem(res, 1)), plan)))
    y_all, c_all = stacked(chunks, 2), stacked(c_chunks, 1)

    def unpad(whole: relax.Expr, k: int) -> relax.Expr:
        """Direction ``k``'s ``[.., H, N]`` of a stacked ``[.., D * Hk, B_pad]`` output."""
        axes = [whole.ty.ndim - 2, whole.ty.ndim - 1]
        return op.strided_slice(whole, axes=axes, begin=[k * Hk, 0], end=[k * Hk + H, batch])

    outputs = []
    for k, dirn in enumerate(dirns):
        y = bb.emit(op.permute_dims(unpad(y_all, k), [0, 2, 1]))  # (T, N, H), kernel time order
        y_h = bb.emit(
            op.squeeze(op.strided_slice(y, axes=[0], begin=[seq_len - 1], end=[seq_len]), [0])
        )
        if cfg.is_reverse(dirn.index):
            y = bb.emit(op.flip(y, axis=0))
        outs = [y, y_h]
        if G == 4:
            outs.append(bb.emit(op.permute_dims(unpad(c_all, k), [1, 0])))
        outputs.append(outs)
    return outputs
