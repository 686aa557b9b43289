"""Dispatch of a recurrent placeholder: per direction, which kernel runs the recurrence.

* ``llvm``: the x86 kernels (:mod:`.recurrent_x86`), ``W`` and ``R`` each packed sparse when its
  density is at most ``options.density_threshold`` (dense packing otherwise), the recurrent
  kernel's loop structure from the tuning lookup;
* ``cuda``: the sparse persistent kernel (:mod:`.recurrent_persistent`) for the directions it
  implements (:meth:`~tvm_sparse_rnn.ops.cells.CellConfig.persistent_cell`) with full sequence
  lengths, a pruned ``R`` and a geometry that keeps ``R`` on chip on the target's GPU
  (:func:`~tvm_sparse_rnn.target.device_limits`), geometry/barrier/load width/pair order from
  the tuning lookup; both directions of a bidirectional layer share one launch, each on half
  of the SMs, where a geometry fits (``options.concurrent_directions``); every other direction
  runs per step (:mod:`.recurrent_steps`).

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

from ...kernels.cuda.persistent.planner import row_lengths
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
from .recurrent_persistent import PersistentChoice, emit_persistent
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
    directions: tuple[int, ...],
    Rs: list[np.ndarray],
    batch: int,
    lengths_full: bool,
    target: Target,
    options: DispatchOptions,
    dtype: str = F32,
) -> tuple[PersistentChoice | None, str, str]:
    """``(choice, config source, reason)`` of ``directions`` in one persistent launch.

    One direction, or both of a bidirectional layer (``Rs`` their recurrent weights), which
    then share one geometry, planned for the longer of their longest rows and for half of the
    SMs each. ``choice`` is ``None`` when the kernel does not apply (``reason`` says why).
    """
    cells = []
    for d in directions:
        cell, why = cfg.persistent_cell(d)
        if cell is None:
            return None, "-", why
        cells.append(cell)
    if len(set(cells)) > 1:
        return None, "-", "the directions run different cells"
    if not lengths_full:
        return None, "-", "sequence_lens given"
    densities = ", ".join(f"{_density(R):.3f}" for R in Rs)
    if max(_density(R) for R in Rs) > options.density_threshold:
        return None, "-", f"R density {densities} > {options.density_threshold:.3f}"
    limits = device_limits(target)
    longest = max(Rs, key=lambda R: int(row_lengths(R).max()))
    found = tuned_persistent_config(
        longest, batch, cells[0], dtype, target, limits, directions=len(directions)
    )
    if found is None:
        share = f" with {len(directions)} directions at once" if len(directions) > 1 else ""
        return None, "-", f"R does not fit on chip of {limits.name}{share}"
    (plan, barrier, vector, order), source = found
    if not options.half_accumulation:
        plan = dataclasses.replace(plan, fp16_chunk=0)
    return (
        PersistentChoice(cells[0], plan, barrier, vector, order),
        source,
        f"R density {densities}",
    )


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


def _directions(
    bb: relax.BlockBuilder, call: RecurrentCall, batch: int, dtype: str
) -> list[Direction]:
    """Each direction's weights (float32, ONNX shapes) and initial states."""
    cfg, weights = call.cfg, call.weights
    H, G = cfg.hidden_size, cfg.num_gates
    dirns = []
    for d in range(cfg.num_directions):
        b = np.zeros(2 * G * H, F32) if weights.B is None else weights.B[d].astype(F32)
        dirns.append(
            Direction(
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
        )
    return dirns


def _layer_name(call: RecurrentCall, d: int) -> str:
    return f"{call.name}[{_DIRECTION_NAMES[d] if call.cfg.num_directions == 2 else d}]"


def _shape_text(cfg: CellConfig, seq_len: int, batch: int) -> str:
    return f"{cfg.kind.value} H={cfg.hidden_size} T={seq_len} N={batch}"


@dataclasses.dataclass(frozen=True)
class _Lengths:
    """The sequence lengths of a recurrent call as its lowerings take them.

    Attributes
    ----------
    given : relax.Expr or None
        ``sequence_lens`` as given (``None``: every sequence is full).
    lens : relax.Expr
        ``(N,)`` int32 lengths (``T`` each when not given).
    rev_index : relax.Expr or None
        :func:`~.recurrent_common.reverse_index` when a direction reverses and lengths are
        given, else ``None`` (reversing is a plain flip).
    """

    given: relax.Expr | None
    lens: relax.Expr
    rev_index: relax.Expr | None

    @staticmethod
    def of(bb: relax.BlockBuilder, call: RecurrentCall, seq_len: int, batch: int) -> _Lengths:
        """The lengths of ``call`` (bindings emitted into ``bb``)."""
        given = call.states.get("sequence_lens")
        if given is None:
            lens = const(np.full(batch, seq_len, np.int32))
        else:
            lens = bb.emit(op.astype(given, "int32"))
        reverses = any(call.cfg.is_reverse(d) for d in range(call.cfg.num_directions))
        rev_index = None
        if reverses and given is not None:
            rev_index = reverse_index(bb, lens, seq_len, batch)
        return _Lengths(given, lens, rev_index)


def _lower_cuda(
    bb: relax.BlockBuilder,
    call: RecurrentCall,
    dirns: list[Direction],
    lengths: _Lengths,
    target: Target,
    options: DispatchOptions,
    linear: Linear,
) -> tuple[list[list[relax.Expr]], list[KernelDecision]]:
    """Per direction ``(outputs, decisions)`` on cuda: both directions in one persistent launch
    where :func:`persistent_choice` finds a geometry for them, else each on its own persistent
    launch, else per step."""
    cfg, X = call.cfg, call.x
    seq_len, batch, _ = static_shape(X, "X")
    dtype = str(X.ty.dtype)
    lengths_full = full_lengths(lengths.given, seq_len)
    shape = _shape_text(cfg, seq_len, batch)
    layers = [_layer_name(call, d.index) for d in dirns]

    def choose(group: list[Direction]) -> tuple[PersistentChoice | None, str, str]:
        indices = tuple(d.index for d in group)
        rs = [d.r for d in group]
        return persistent_choice(cfg, indices, rs, batch, lengths_full, target, options, dtype)

    def persistent(group: list[Direction], choice: PersistentChoice, source: str, reason: str):
        names = [layers[d.index] for d in group]
        outs = emit_persistent(bb, cfg, X, group, choice, linear, names)
        detail = f"{shape}: {choice.describe()}"
        return outs, [
            KernelDecision(n, KernelVariant.PERSISTENT, detail, source, reason) for n in names
        ]

    if len(dirns) == 2 and options.concurrent_directions:
        choice, source, reason = choose(dirns)
        if choice is not None:
            return persistent(dirns, choice, source, reason)
    to_f32 = _Float32Inputs(bb, X, dtype)
    outs, decisions = [], []
    for dirn in dirns:
        choice, source, reason = choose([dirn])
        if choice is not None:
            (out,), (decision,) = persistent([dirn], choice, source, reason)
        else:
            full = None if lengths.given is None else lengths.lens
            steps = emit_steps_direction(
                bb,
                cfg,
                to_f32.x(),
                to_f32.states(dirn),
                full,
                lengths.rev_index,
                linear,
                layers[dirn.index],
            )
            out = to_f32.back(steps)
            decision = KernelDecision(
                layers[dirn.index], KernelVariant.PER_STEP, shape, "-", reason
            )
        outs.append(out)
        decisions.append(decision)
    return outs, decisions


def _lower_x86(
    bb: relax.BlockBuilder,
    call: RecurrentCall,
    dirns: list[Direction],
    lengths: _Lengths,
    options: DispatchOptions,
) -> tuple[list[list[relax.Expr]], list[KernelDecision]]:
    """Per direction ``(outputs, decisions)`` on llvm: the x86 kernels, ``W`` and ``R`` each
    packed sparse when sparse enough."""
    cfg, X = call.cfg, call.x
    seq_len, batch, input_size = static_shape(X, "X")
    to_f32 = _Float32Inputs(bb, X, str(X.ty.dtype))
    G = cfg.num_gates
    shape = _shape_text(cfg, seq_len, batch)
    columns = seq_len * batch  # (I, T*N): one nonzero of W multiplies a contiguous row
    x_in = op.reshape(op.permute_dims(to_f32.x(), [2, 0, 1]), [input_size, columns])
    x_in = bb.emit(pad_columns(x_in, columns, projection_tile(columns)))
    outs, decisions = [], []
    for dirn in dirns:
        dense_w = _density(dirn.w) > options.density_threshold
        dense_r = _density(dirn.r) > options.density_threshold
        packed_w = pack_weight(dirn.w, G, dense=dense_w, row_multiple=1)
        packed_r = pack_weight(dirn.r, G, dense=dense_r, row_multiple=UNROLL)
        config, source = recurrent_config(cfg, dirn.index, seq_len, batch, packed_r)
        x86 = emit_x86_direction(
            bb,
            cfg,
            x_in,
            seq_len,
            batch,
            to_f32.states(dirn),
            lengths.lens,
            lengths.rev_index,
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
        decisions.append(
            KernelDecision(
                _layer_name(call, dirn.index),
                KernelVariant.RECURRENT_X86,
                f"{shape}: {packing}",
                f"{source}: {config}",
                reason,
            )
        )
    return outs, decisions


def dispatch_recurrent(
    bb: relax.BlockBuilder,
    call: RecurrentCall,
    target: Target,
    options: DispatchOptions,
    linear: Linear,
) -> tuple[relax.Expr, list[KernelDecision]]:
    """Lower one recurrent placeholder for ``target``; returns ``(outputs, decisions)``."""
    seq_len, batch, _ = static_shape(call.x, "X")
    dirns = _directions(bb, call, batch, str(call.x.ty.dtype))
    lengths = _Lengths.of(bb, call, seq_len, batch)
    if is_cuda(target):
        outs, decisions = _lower_cuda(bb, call, dirns, lengths, target, options, linear)
    else:
        outs, decisions = _lower_x86(bb, call, dirns, lengths, options)
    for decision in decisions:
        logger.info(
            "dispatch %s -> %s (%s)", decision.layer, decision.variant.value, decision.reason
        )
    y = bb.emit(op.stack([o[0] for o in outs], axis=1))  # (T, D, N, H)
    states = [bb.emit(op.stack([o[k] for o in outs], axis=0)) for k in range(1, len(outs[0]))]
    return relax.Tuple([y, *states]), decisions


__all__ = ["dispatch_recurrent", "full_lengths", "persistent_choice"]
