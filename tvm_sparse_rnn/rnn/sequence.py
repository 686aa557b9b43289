"""The recurrent sequence op (ONNX ``RNN``/``GRU``/``LSTM`` semantics) as a Relax builder.

:func:`emit_recurrent_sequence` adds one recurrent layer to a Relax function under construction;
:func:`build_recurrent_sequence` wraps it into a compiled callable on numpy arrays.

Structure of the emitted code, per direction ``d``:

1. ``U = X @ W_d^T + Wb_d`` for all ``T`` steps as **one** matmul (``(T*N, I) x (I, G*H)``).
2. Reverse direction: each sequence's valid prefix is reversed (``U[t] <- U[len-1-t]``; a plain
   flip without ``sequence_lens``), so the recurrence itself always runs forward.
3. The recurrence over ``t``:

   * ``llvm``: one ``call_tir`` of :func:`tvm_sparse_rnn.rnn.kernel_x86.recurrent_prim_func`
     with ``R`` packed sparse (CSR, all gates of a unit together) when its density is at most
     ``density_threshold``, dense otherwise;
   * ``cuda``: a per-step composition of Relax ops (matmul with ``R_g^T``, the cell math of
     :mod:`tvm_sparse_rnn.rnn.cells`, masking by ``sequence_lens``) that the default CUDA
     pipeline schedules with dlight. It gives correct results; the sparse persistent kernel
     (:mod:`tvm_sparse_rnn.rnn.persistent`) replaces it where it applies.
4. The reversed outputs are put back in time order, directions are stacked, layout 1 transposed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.target import Target

from ..errors import UnsupportedError
from ..target import is_cuda, resolve_target
from .cells import CellConfig, gru_gates, gru_output, lstm_cell, rnn_cell
from .kernel_x86 import pack_recurrent_weight, recurrent_prim_func

logger = logging.getLogger(__name__)

#: ``R`` is packed sparse when its density (nonzeros / entries) is at most this; the sparse
#: mat-vec reads 6 bytes per nonzero (value + 16-bit index) against 4 per dense entry, and its
#: gathers are slower per byte, so it only pays off below about half density.
DEFAULT_DENSITY_THRESHOLD = 0.5

_F32 = "float32"
op = relax.op


@dataclass(frozen=True)
class RecurrentWeights:
    """Constant weights of one ONNX recurrent layer (ONNX shapes, float32).

    Attributes
    ----------
    W : numpy.ndarray
        ``(D, G*H, I)``.
    R : numpy.ndarray
        ``(D, G*H, H)``; pruned entries are zeros.
    B : numpy.ndarray or None
        ``(D, 2*G*H)`` = ``[Wb, Rb]``.
    P : numpy.ndarray or None
        ``(D, 3*H)`` LSTM peepholes.
    """

    W: np.ndarray
    R: np.ndarray
    B: np.ndarray | None = None
    P: np.ndarray | None = None

    def check(self, cfg: CellConfig, input_size: int) -> None:
        """Raise :class:`ValueError` naming the weight whose shape does not match ``cfg``."""
        D, GH, H = cfg.num_directions, cfg.num_gates * cfg.hidden_size, cfg.hidden_size
        expected = {"W": (D, GH, input_size), "R": (D, GH, H), "B": (D, 2 * GH), "P": (D, 3 * H)}
        for name, shape in expected.items():
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != shape:
                raise ValueError(
                    f"{cfg.kind} weight {name} has shape {tuple(value.shape)}; expected {shape} "
                    f"(directions={D}, gates={cfg.num_gates}, hidden_size={H}, "
                    f"input_size={input_size})"
                )


class RelaxOps:
    """:class:`~tvm_sparse_rnn.rnn.cells.CellOps` on Relax expressions (float32 tensors)."""

    def add(self, a: relax.Expr, b: relax.Expr) -> relax.Expr:
        return op.add(a, b)

    def mul(self, a: relax.Expr, b: relax.Expr) -> relax.Expr:
        return op.multiply(a, b)

    def one_minus(self, a: relax.Expr) -> relax.Expr:
        return op.subtract(relax.const(1.0, _F32), a)

    def activation(self, name: str, a: relax.Expr) -> relax.Expr:
        if name == "Sigmoid":
            return op.sigmoid(a)
        if name == "Tanh":
            return op.tanh(a)
        return op.nn.relu(a)

    def clip(self, a: relax.Expr, bound: float) -> relax.Expr:
        return op.clip(a, -bound, bound)


def _const(a: np.ndarray, dtype: str | None = None) -> relax.Constant:
    return relax.const(np.ascontiguousarray(a, dtype=dtype or a.dtype))


def _static_shape(expr: relax.Expr, name: str) -> tuple[int, ...]:
    shape = expr.ty.shape
    if shape is None or not all(isinstance(s, tvm.tirx.IntImm) for s in shape):
        raise UnsupportedError(f"{name} must have a static shape, got {shape}")
    return tuple(int(s) for s in shape)


def _direction_state(
    bb: relax.BlockBuilder, state: relax.Expr | None, d: int, batch: int, hidden: int
) -> relax.Expr:
    """``state[d]`` as ``(N, H)`` (state is ``(D, N, H)``), or zeros."""
    if state is None:
        return _const(np.zeros((batch, hidden), _F32))
    return bb.emit(op.squeeze(op.strided_slice(state, axes=[0], begin=[d], end=[d + 1]), [0]))


def _reverse_index(
    bb: relax.BlockBuilder, lens: relax.Expr, seq_len: int, batch: int
) -> relax.Expr:
    """``(T, N)`` int32 time index ``len-1-t`` for ``t < len`` and ``t`` past the length."""
    t = _const(np.arange(seq_len, dtype=np.int32).reshape(seq_len, 1))
    lens_row = op.expand_dims(lens, [0])
    flipped = op.subtract(op.subtract(lens_row, relax.const(1, "int32")), t)
    return bb.emit(op.where(op.less(t, lens_row), flipped, op.broadcast_to(t, (seq_len, batch))))


def _reverse_sequences(
    bb: relax.BlockBuilder, x: relax.Expr, rev_index: relax.Expr | None
) -> relax.Expr:
    """Reverse each sequence's valid prefix of ``x`` ``(T, N, F)`` along time (an involution)."""
    if rev_index is None:
        return bb.emit(op.flip(x, axis=0))
    shape = _static_shape(x, "sequence tensor")
    index = op.broadcast_to(op.expand_dims(rev_index, [2]), shape)
    return bb.emit(op.gather_elements(x, index, axis=0))


def _input_projection(
    bb: relax.BlockBuilder, x: relax.Expr, w: np.ndarray, wb: np.ndarray | None
) -> relax.Expr:
    """``(T, N, G*H)`` = ``X @ W^T + Wb`` as one matmul over all steps."""
    seq_len, batch, input_size = _static_shape(x, "X")
    flat = op.reshape(x, [seq_len * batch, input_size])
    u = op.matmul(flat, _const(w.T, _F32))
    if wb is not None:
        u = op.add(u, _const(wb, _F32))
    return bb.emit(op.reshape(u, [seq_len, batch, w.shape[0]]))


def _emit_x86(
    bb: relax.BlockBuilder,
    cfg: CellConfig,
    d: int,
    u: relax.Expr,
    r: np.ndarray,
    rb: np.ndarray,
    peep: np.ndarray | None,
    h0: relax.Expr,
    c0: relax.Expr | None,
    lens: relax.Expr,
    density_threshold: float,
) -> list[relax.Expr]:
    """The recurrence of one direction as one ``call_tir`` of the x86 kernel."""
    seq_len, batch, _ = _static_shape(u, "U")
    H = cfg.hidden_size
    density = np.count_nonzero(r) / r.size
    packed = pack_recurrent_weight(r, cfg.num_gates, dense=density > density_threshold)
    logger.info(
        "%s direction %d: R density %.3f -> %s x86 kernel (T=%d, N=%d, H=%d)",
        cfg.kind,
        d,
        density,
        "dense" if packed.dense else "sparse",
        seq_len,
        batch,
        H,
    )
    func = recurrent_prim_func(cfg, d, seq_len, batch, packed)
    func = func.without_attr("global_symbol").with_attr("op_pattern", 8)  # opaque: never fused
    gv = bb.add_func(func, f"{cfg.kind.lower()}_recurrent_x86")
    args = [u, *(_const(a) for a in packed.arrays()), _const(rb, _F32)]
    if peep is not None:
        args.append(_const(peep.reshape(3, H), _F32))
    args.append(h0)
    if c0 is not None:
        args.append(c0)
    args.append(lens)
    n_state = 2 if cfg.cell.has_cell_state else 1
    out_ty = [relax.TensorType((seq_len, batch, H), _F32)] + [
        relax.TensorType((batch, H), _F32)
    ] * n_state
    res = bb.emit(relax.call_tir(gv, args, out_ty))
    return [bb.emit(relax.TupleGetItem(res, k)) for k in range(1 + n_state)]


def _emit_steps(
    bb: relax.BlockBuilder,
    cfg: CellConfig,
    d: int,
    u: relax.Expr,
    r: np.ndarray,
    rb: np.ndarray,
    peep: np.ndarray | None,
    h0: relax.Expr,
    c0: relax.Expr | None,
    lens: relax.Expr,
) -> list[relax.Expr]:
    """The recurrence of one direction as a static per-step composition of Relax ops."""
    seq_len = _static_shape(u, "U")[0]
    H, G = cfg.hidden_size, cfg.num_gates
    ops = RelaxOps()
    r_t = [_const(np.ascontiguousarray(r[g * H : (g + 1) * H].T), _F32) for g in range(G)]
    rb_g = [_const(rb[g * H : (g + 1) * H], _F32) for g in range(G)]
    p_g = None if peep is None else [_const(p, _F32) for p in np.split(peep, 3)]
    lens_col = op.expand_dims(lens, [1])
    zero = relax.const(0.0, _F32)
    h, c = h0, c0
    ys = []
    for s in range(seq_len):
        x_t = bb.emit(op.squeeze(op.strided_slice(u, axes=[0], begin=[s], end=[s + 1]), [0]))
        xs = [
            bb.emit(op.strided_slice(x_t, axes=[1], begin=[g * H], end=[(g + 1) * H]))
            for g in range(G)
        ]
        active = bb.emit(op.less(relax.const(s, "int32"), lens_col))  # (N, 1)

        def rec(g: int, vec: relax.Expr) -> relax.Expr:
            return op.add(op.matmul(vec, r_t[g]), rb_g[g])

        if cfg.kind == "RNN":
            h_new = rnn_cell(ops, cfg, d, xs, [rec(0, h)])
        elif cfg.kind == "GRU":
            z, reset = gru_gates(ops, cfg, d, xs, [rec(0, h), rec(1, h)])
            z, reset = bb.emit(z), bb.emit(reset)
            r_h = rec(2, h) if cfg.linear_before_reset else rec(2, op.multiply(reset, h))
            h_new = gru_output(ops, cfg, d, z, reset, xs[2], r_h, h)
        else:
            h_new, c_new = lstm_cell(ops, cfg, d, xs, [rec(g, h) for g in range(4)], c, p_g)
            c_new = bb.emit(c_new)
            c = bb.emit(op.where(active, c_new, c))
        h_new = bb.emit(h_new)
        ys.append(op.expand_dims(op.where(active, h_new, zero), [0]))
        h = bb.emit(op.where(active, h_new, h))
    y = bb.emit(op.concat(ys, axis=0))
    return [y, h] + ([c] if c is not None else [])


def emit_recurrent_sequence(
    bb: relax.BlockBuilder,
    cfg: CellConfig,
    X: relax.Expr,
    weights: RecurrentWeights,
    sequence_lens: relax.Expr | None = None,
    initial_h: relax.Expr | None = None,
    initial_c: relax.Expr | None = None,
    layout: int = 0,
    target: Target | str | None = None,
    density_threshold: float = DEFAULT_DENSITY_THRESHOLD,
) -> relax.Tuple:
    """Emit one ONNX recurrent layer into ``bb`` (inside a function/dataflow block).

    Parameters
    ----------
    bb : relax.BlockBuilder
    cfg : CellConfig
        Cell type, ``hidden_size``, direction, activations, clip, GRU/LSTM options.
    X : relax.Expr
        ``(T, N, I)`` (layout 0) or ``(N, T, I)`` (layout 1) float32, static shape.
    weights : RecurrentWeights
        Constant ``W``, ``R``, ``B``, ``P`` in ONNX shapes.
    sequence_lens : relax.Expr, optional
        ``(N,)`` int32 (or int64) lengths in ``[1, T]``.
    initial_h, initial_c : relax.Expr, optional
        ``(D, N, H)`` (layout 0) or ``(N, D, H)`` (layout 1) float32.
    layout : int
        ONNX ``layout``, 0 or 1.
    target : Target or str, optional
        ``llvm`` (x86 kernel) or ``cuda`` (per-step Relax ops); defaults to
        ``Target.current()``, else ``llvm``.
    density_threshold : float
        Largest ``R`` density packed sparse on x86.

    Returns
    -------
    relax.Tuple
        ``(Y, Y_h)`` or ``(Y, Y_h, Y_c)`` (LSTM) in the ONNX output shapes of ``layout``.
    """
    if layout not in (0, 1):
        raise UnsupportedError(f"layout must be 0 or 1, got {layout}")
    target = resolve_target(target or Target.current(allow_none=True) or "llvm")
    if X.ty.dtype != _F32:
        raise UnsupportedError(f"{cfg.kind} input X has dtype {X.ty.dtype}; only float32")
    if layout == 1:
        X = bb.emit(op.permute_dims(X, [1, 0, 2]))
        initial_h = None if initial_h is None else bb.emit(op.permute_dims(initial_h, [1, 0, 2]))
        initial_c = None if initial_c is None else bb.emit(op.permute_dims(initial_c, [1, 0, 2]))
    seq_len, batch, input_size = _static_shape(X, "X")
    weights.check(cfg, input_size)
    H, G = cfg.hidden_size, cfg.num_gates
    lstm = cfg.cell.has_cell_state
    if sequence_lens is None:
        lens = _const(np.full(batch, seq_len, np.int32))
        rev_index = None
    else:
        lens = bb.emit(op.astype(sequence_lens, "int32"))
        rev_index = _reverse_index(bb, lens, seq_len, batch)
    outs: list[list[relax.Expr]] = []
    for d in range(cfg.num_directions):
        b = weights.B[d] if weights.B is not None else None
        wb = None if b is None else b[: G * H]
        rb = np.zeros(G * H, _F32) if b is None else b[G * H :]
        peep = None if weights.P is None else weights.P[d]
        u = _input_projection(bb, X, weights.W[d], wb)
        if cfg.is_reverse(d):
            u = _reverse_sequences(bb, u, rev_index)
        h0 = _direction_state(bb, initial_h, d, batch, H)
        c0 = _direction_state(bb, initial_c, d, batch, H) if lstm else None
        if is_cuda(target):
            res = _emit_steps(bb, cfg, d, u, weights.R[d], rb, peep, h0, c0, lens)
        else:
            res = _emit_x86(bb, cfg, d, u, weights.R[d], rb, peep, h0, c0, lens, density_threshold)
        if cfg.is_reverse(d):
            res[0] = _reverse_sequences(bb, res[0], rev_index)
        outs.append(res)
    y = bb.emit(op.stack([o[0] for o in outs], axis=1))  # (T, D, N, H)
    states = [bb.emit(op.stack([o[k] for o in outs], axis=0)) for k in range(1, len(outs[0]))]
    if layout == 1:
        y = bb.emit(op.permute_dims(y, [2, 0, 1, 3]))
        states = [bb.emit(op.permute_dims(s, [1, 0, 2])) for s in states]
    return relax.Tuple([y, *states])


class RecurrentSequence:
    """A compiled recurrent layer: ``layer(X, sequence_lens=None, initial_h=None, initial_c=None)``.

    Returned by :func:`build_recurrent_sequence`; call it with numpy arrays in the ONNX shapes of
    its layout. Missing optional inputs mean full lengths and zero initial states.

    Attributes
    ----------
    executable : tvm.runtime.Executable
        The compiled Relax module (``main(X, sequence_lens, initial_h[, initial_c])``).
    """

    def __init__(
        self,
        executable: tvm.runtime.Executable,
        cfg: CellConfig,
        x_shape: tuple[int, int, int],
        layout: int,
        device: tvm.runtime.Device,
    ) -> None:
        self.executable = executable
        self.cfg = cfg
        self.x_shape = x_shape
        self.layout = layout
        self.device = device
        self._vm: relax.VirtualMachine | None = None  # created on first call (needs the device)

    def _state_shape(self) -> tuple[int, int, int]:
        seq_axis = 0 if self.layout == 0 else 1
        batch = self.x_shape[1 - seq_axis]
        d, h = self.cfg.num_directions, self.cfg.hidden_size
        return (d, batch, h) if self.layout == 0 else (batch, d, h)

    def __call__(
        self,
        X: np.ndarray,
        sequence_lens: np.ndarray | None = None,
        initial_h: np.ndarray | None = None,
        initial_c: np.ndarray | None = None,
    ) -> tuple[np.ndarray, ...]:
        """Run the layer; returns ``(Y, Y_h)`` or ``(Y, Y_h, Y_c)`` as float32 numpy arrays."""
        X = np.asarray(X, _F32)
        if X.shape != self.x_shape:
            raise ValueError(f"X has shape {X.shape}; this layer was built for {self.x_shape}")
        seq_len = self.x_shape[0 if self.layout == 0 else 1]
        batch = self.x_shape[1 if self.layout == 0 else 0]
        lens = np.full(batch, seq_len, np.int32) if sequence_lens is None else sequence_lens
        lens = np.asarray(lens).astype(np.int32)
        if lens.shape != (batch,) or lens.min() < 1 or lens.max() > seq_len:
            raise ValueError(
                f"sequence_lens must be ({batch},) with values in [1, {seq_len}], got {lens}"
            )
        state_shape = self._state_shape()
        args = [X, lens]
        states = [initial_h] + ([initial_c] if self.cfg.cell.has_cell_state else [])
        for name, s in zip(("initial_h", "initial_c"), states, strict=False):
            s = np.zeros(state_shape, _F32) if s is None else np.asarray(s, _F32)
            if s.shape != state_shape:
                raise ValueError(f"{name} has shape {s.shape}; expected {state_shape}")
            args.append(s)
        if self._vm is None:
            self._vm = relax.VirtualMachine(self.executable, self.device)
        out = self._vm["main"](*(tvm.runtime.tensor(a, self.device) for a in args))
        return tuple(o.numpy() for o in out)


def build_recurrent_sequence(
    cfg: CellConfig,
    weights: RecurrentWeights,
    x_shape: tuple[int, int, int],
    layout: int = 0,
    target: Target | str = "llvm",
    density_threshold: float = DEFAULT_DENSITY_THRESHOLD,
) -> RecurrentSequence:
    """Compile one recurrent layer into a callable on numpy arrays.

    Parameters
    ----------
    cfg : CellConfig
    weights : RecurrentWeights
        ``W (D, G*H, I)``, ``R (D, G*H, H)``, optional ``B (D, 2*G*H)``, ``P (D, 3*H)``.
    x_shape : tuple of int
        Static shape of ``X``: ``(T, N, I)`` (layout 0) or ``(N, T, I)`` (layout 1).
    layout : int
        ONNX ``layout``.
    target : Target or str
        ``"llvm"`` or ``"cuda"`` (see :func:`tvm_sparse_rnn.target.resolve_target`).
    density_threshold : float
        Largest ``R`` density packed sparse on x86.

    Returns
    -------
    RecurrentSequence
        Runs on ``tvm.cpu()`` or ``tvm.cuda()`` by target.
    """
    target = resolve_target(target)
    batch = x_shape[1] if layout == 0 else x_shape[0]
    D, H = cfg.num_directions, cfg.hidden_size
    state_shape = (D, batch, H) if layout == 0 else (batch, D, H)
    bb = relax.BlockBuilder()
    params = [
        relax.Var("X", relax.TensorType(x_shape, _F32)),
        relax.Var("sequence_lens", relax.TensorType((batch,), "int32")),
        relax.Var("initial_h", relax.TensorType(state_shape, _F32)),
    ]
    if cfg.cell.has_cell_state:
        params.append(relax.Var("initial_c", relax.TensorType(state_shape, _F32)))
    with bb.function("main", params):
        with bb.dataflow():
            out = emit_recurrent_sequence(
                bb,
                cfg,
                params[0],
                weights,
                sequence_lens=params[1],
                initial_h=params[2],
                initial_c=params[3] if cfg.cell.has_cell_state else None,
                layout=layout,
                target=target,
                density_threshold=density_threshold,
            )
            gv = bb.emit_output(out)
        bb.emit_func_output(gv)
    with target:
        ex = tvm.compile(bb.get(), target=target)
    device = tvm.cuda() if is_cuda(target) else tvm.cpu()
    return RecurrentSequence(ex, cfg, tuple(x_shape), layout, device)
