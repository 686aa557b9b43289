"""Dispatch of a recurrent placeholder: per direction, which kernel runs the recurrence.

* ``llvm``: the x86 kernels (:mod:`.recurrent_x86`), ``W`` and ``R`` each packed sparse when its
  density is at most ``options.density_threshold`` (dense packing otherwise), the recurrent
  kernel's loop structure from the tuning lookup;
* ``cuda``: the sparse persistent kernel (:mod:`.recurrent_persistent`) for the directions it
  implements (:meth:`~tvm_sparse_rnn.ops.cells.CellConfig.persistent_cell`) with full sequence
  lengths, a pruned ``R`` and a geometry that keeps ``R`` on chip on the target's GPU
  (:func:`~tvm_sparse_rnn.target.device_limits`), geometry/barrier/load width/pair order from
  the tuning lookup; every other direction runs per step (:mod:`.recurrent_steps`).

A float16 placeholder (``--dtype float16``, :class:`~tvm_sparse_rnn.transform.ToFloat16`) runs on
the float16 persistent kernel; the float32 kernels (x86, per step) get its input and states cast
to float32 and their outputs cast back.

Outputs are stacked to the ONNX layout-0 shapes ``Y (T, D, N, H)``, ``Y_h (D, N, H)``,
``Y_c (D, N, H)``.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import tvm
from tvm import relax
from tvm.target import Target

from ...kernels.x86.recurrent import UNROLL, pack_weight, projection_tile
from ...ops.cells import CellConfig
from ...ops.placeholders import RecurrentCall
from ...target import device_limits, is_cuda
from ...tuning.persistent_space import tuned_persistent_config
from ...tuning.rnn_x86_space import recurrent_config
from .decision import DispatchOptions, KernelDecision, KernelVariant
from .projection_x86 import pad_columns
from .recurrent_common import (
    F32,
    Direction,
    const,
    direction_state,
    op,
    reverse_index,
    static_shape,
)
from .recurrent_persistent import PersistentChoice, emit_persistent_direction
from .recurrent_steps import Linear, emit_steps_direction
from .recurrent_x86 import emit_x86_direction

logger = logging.getLogger(__name__)

_DIRECTION_NAMES = ("fw", "bw")


def _density(w: np.ndarray) -> float:
    return float(np.count_nonzero(w)) / w.size


def full_lengths(sequence_lens: relax.Expr | None, seq_len: int) -> bool:
    """Whether ``sequence_lens`` is absent or a constant with every length equal to ``seq_len``."""
    if sequence_lens is None:
        return True
    if isinstance(sequence_lens, tvm.ir.expr.Constant):
        return bool(np.all(sequence_lens.value.numpy() == seq_len))
    return False


def persistent_choice(
    cfg: CellConfig,
    d: int,
    R: np.ndarray,
    batch: int,
    lengths_full: bool,
    target: Target,
    options: DispatchOptions,
    dtype: str = F32,
) -> tuple[PersistentChoice | None, str, str]:
    """``(choice, config source, reason)`` of direction ``d`` on the persistent kernel;
    ``choice`` is ``None`` when the kernel does not apply (``reason`` says why)."""
    cell, why = cfg.persistent_cell(d)
    if cell is None:
        return None, "-", why
    density = _density(R)
    if not lengths_full:
        return None, "-", "sequence_lens given"
    if density > options.density_threshold:
        return None, "-", f"R density {density:.3f} > {options.density_threshold:.3f}"
    limits = device_limits(target)
    found = tuned_persistent_config(R, batch, cell, dtype, target, limits)
    if found is None:
        return None, "-", f"R does not fit on chip of {limits.name}"
    (plan, barrier, vector, order), source = found
    return PersistentChoice(cell, plan, barrier, vector, order), source, f"R density {density:.3f}"


class _Float32Inputs:
    """``X`` and a direction's states in float32 for the float32 kernels, outputs cast back to
    ``X``'s dtype (all identities for a float32 layer; ``X`` is cast once, when first asked)."""

    def __init__(self, bb: relax.BlockBuilder, x: relax.Expr, dtype: str) -> None:
        self.bb, self._x, self.dtype = bb, x, dtype
        self._x32: relax.Expr | None = x if dtype == F32 else None

    def _cast(self, expr: relax.Expr | None, dtype: str) -> relax.Expr | None:
        if expr is None or str(expr.ty.dtype) == dtype:
            return expr
        return self.bb.emit(op.astype(expr, dtype))

    def x(self) -> relax.Expr:
        """``X`` in float32."""
        if self._x32 is None:
            self._x32 = self._cast(self._x, F32)
        return self._x32

    def states(self, dirn: Direction) -> Direction:
        """``dirn`` with its initial states in float32."""
        return dataclasses.replace(dirn, h0=self._cast(dirn.h0, F32), c0=self._cast(dirn.c0, F32))

    def back(self, outputs: list[relax.Expr]) -> list[relax.Expr]:
        """The float32 outputs of a direction in ``X``'s dtype."""
        return [self._cast(o, self.dtype) for o in outputs]


def dispatch_recurrent(
    bb: relax.BlockBuilder,
    call: RecurrentCall,
    target: Target,
    options: DispatchOptions,
    linear: Linear,
) -> tuple[relax.Expr, list[KernelDecision]]:
    """Lower one recurrent placeholder for ``target``; returns ``(outputs, decisions)``."""
    cfg, X, weights = call.cfg, call.x, call.weights
    seq_len, batch, input_size = static_shape(X, "X")
    dtype = str(X.ty.dtype)
    to_f32 = _Float32Inputs(bb, X, dtype)
    H, G = cfg.hidden_size, cfg.num_gates
    sequence_lens = call.states.get("sequence_lens")
    if sequence_lens is None:
        lens = const(np.full(batch, seq_len, np.int32))
    else:
        lens = bb.emit(op.astype(sequence_lens, "int32"))
    reverses = any(cfg.is_reverse(d) for d in range(cfg.num_directions))
    rev_index = None  # None: all sequences are full, reversing is a plain flip
    if reverses and sequence_lens is not None:
        rev_index = reverse_index(bb, lens, seq_len, batch)
    cuda = is_cuda(target)
    if not cuda:  # (I, T*N): one nonzero of W multiplies a contiguous row
        columns = seq_len * batch
        x_in = op.reshape(op.permute_dims(to_f32.x(), [2, 0, 1]), [input_size, columns])
        x_in = bb.emit(pad_columns(x_in, columns, projection_tile(columns)))
    outs: list[list[relax.Expr]] = []
    decisions = []
    for d in range(cfg.num_directions):
        b = np.zeros(2 * G * H, F32) if weights.B is None else weights.B[d].astype(F32)
        dirn = Direction(
            d,
            weights.W[d].astype(F32),
            b[: G * H],
            weights.R[d].astype(F32),
            b[G * H :],
            None if weights.P is None else weights.P[d].astype(F32),
            direction_state(bb, call.states.get("initial_h"), d, batch, H, dtype),
            direction_state(bb, call.states.get("initial_c"), d, batch, H, dtype)
            if cfg.kind.has_cell_state
            else None,
        )
        layer = f"{call.name}[{_DIRECTION_NAMES[d] if cfg.num_directions == 2 else d}]"
        shape = f"{cfg.kind.value} H={H} T={seq_len} N={batch}"
        if cuda:
            lengths_full = full_lengths(sequence_lens, seq_len)
            choice, source, reason = persistent_choice(
                cfg, d, dirn.r, batch, lengths_full, target, options, dtype
            )
            if choice is not None:
                outs.append(emit_persistent_direction(bb, cfg, X, dirn, choice, linear, layer))
                decision = KernelDecision(
                    layer, KernelVariant.PERSISTENT, f"{shape}: {choice.describe()}", source, reason
                )
            else:
                full = None if sequence_lens is None else lens
                steps = emit_steps_direction(
                    bb, cfg, to_f32.x(), to_f32.states(dirn), full, rev_index, linear, layer
                )
                outs.append(to_f32.back(steps))
                decision = KernelDecision(layer, KernelVariant.PER_STEP, shape, "-", reason)
        else:
            dense_w = _density(dirn.w) > options.density_threshold
            dense_r = _density(dirn.r) > options.density_threshold
            packed_w = pack_weight(dirn.w, G, dense=dense_w, row_multiple=1)
            packed_r = pack_weight(dirn.r, G, dense=dense_r, row_multiple=UNROLL)
            config, source = recurrent_config(cfg, d, seq_len, batch, packed_r)
            x86 = emit_x86_direction(
                bb,
                cfg,
                x_in,
                seq_len,
                batch,
                to_f32.states(dirn),
                lens,
                rev_index,
                packed_w,
                packed_r,
                config,
            )
            outs.append(to_f32.back(x86))
            packing = f"W {'dense' if dense_w else 'sparse'}, R {'dense' if dense_r else 'sparse'}"
            reason = (
                f"W density {_density(dirn.w):.3f}, R density {_density(dirn.r):.3f} "
                f"(sparse at <= {options.density_threshold:.3f})"
            )
            decision = KernelDecision(
                layer,
                KernelVariant.RECURRENT_X86,
                f"{shape}: {packing}",
                f"{source}: {config}",
                reason,
            )
        logger.info("dispatch %s -> %s (%s)", layer, decision.variant.value, decision.reason)
        decisions.append(decision)
    y = bb.emit(op.stack([o[0] for o in outs], axis=1))  # (T, D, N, H)
    states = [bb.emit(op.stack([o[k] for o in outs], axis=0)) for k in range(1, len(outs[0]))]
    return relax.Tuple([y, *states]), decisions


__all__ = ["dispatch_recurrent", "full_lengths", "persistent_choice"]
