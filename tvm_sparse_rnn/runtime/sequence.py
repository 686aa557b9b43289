"""The recurrent sequence op (ONNX ``RNN``/``GRU``/``LSTM`` semantics) as a Relax builder.

:func:`emit_recurrent_sequence` adds one recurrent layer to a Relax function under construction
(the ONNX converters of :mod:`tvm_sparse_rnn.frontend.onnx_rnn` call it);
:func:`build_recurrent_sequence` wraps it into a compiled callable on numpy arrays.

Structure of the emitted code, per direction ``d``:

1. The input projection ``U = X @ W_d^T + Wb_d`` for all ``T`` steps at once, before the
   recurrence: on ``llvm`` one ``call_tir`` of
   :func:`~tvm_sparse_rnn.rnn.kernel_x86.projection_prim_func` (``W`` packed sparse when its
   density is at most ``density_threshold``, else dense); on ``cuda`` one Relax matmul.
2. Reverse direction: each sequence's valid prefix is reversed (``U[t] <- U[len-1-t]``; a plain
   flip without ``sequence_lens``), so the recurrence itself always runs forward.
3. The recurrence over ``t``:

   * ``llvm``: one ``call_tir`` of :func:`~tvm_sparse_rnn.rnn.kernel_x86.recurrent_prim_func`
     with ``R`` packed sparse (CSR, all gates of a unit together) when its density is at most
     ``density_threshold``, dense otherwise (same kernel, dense mat-vec);
   * ``cuda``, pruned directions that the persistent kernel implements (``RNN`` with
     ``Tanh``/``Relu``, ``GRU`` with ``linear_before_reset=1`` and ``LSTM`` without peepholes,
     default activations; no ``clip``, full lengths, ``R`` density at most
     ``density_threshold``, ``R`` fits on chip; see
     :mod:`~tvm_sparse_rnn.rnn.persistent_relax`): one ``call_tir`` of
     the sparse persistent kernel (:mod:`tvm_sparse_rnn.rnn.persistent_relax`, grid barrier),
     all ``T`` steps in one launch. Build such a module with
     :func:`tvm_sparse_rnn.compile.build` (or ``tir_pipeline=``
     :func:`~tvm_sparse_rnn.rnn.persistent_relax.tir_pipeline`): the kernel must be launched
     cooperatively;
   * ``cuda``, everything else: a per-step composition of Relax ops (matmul with ``R_g^T``, the
     cell math of :mod:`tvm_sparse_rnn.rnn.cells`, masking by ``sequence_lens``) that the
     default CUDA pipeline schedules with dlight.
4. The reversed outputs are put back in time order, directions are stacked, layout 1 transposed.

Shapes must be static (``X`` and the optional inputs); float32 only.
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
from ..ops.cells import CellConfig, gru_gates, gru_output, lstm_cell, rnn_cell
from ..kernels.x86.recurrent import (
    UNROLL,
    pack_weight,
    projection_prim_func,
    recurrent_prim_func,
    unit_major_order,
)
from ..transform.dispatch.recurrent_persistent import (
    emit_persistent_rnn,
    full_lengths,
    persistent_rnn_plan,
    tir_pipeline,
)

logger = logging.getLogger(__name__)

#: ``W`` / ``R`` are packed sparse when their density (nonzeros / entries) is at most this: a
#: sparse entry costs an index load and 6 bytes (value + 16-bit index) against 4 bytes and a
#: contiguous access for a dense one, so sparse only pays off below about half density.
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


def _const(a: np.ndarray, dtype: str | None = None) -> relax.Expr:
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
    bb: relax.BlockBuilder,
    x: relax.Expr,
    rev_index: relax.Expr | None,
    axis: int,
    batch_axis: int | None = None,
) -> relax.Expr:
    """Reverse each sequence's valid prefix of ``x`` along time ``axis`` (an involution).

    ``x`` has its time axis at ``axis`` and the batch axis at ``batch_axis`` (default: right
    after it, always after it); ``rev_index`` is :func:`_reverse_index` (``None``: all sequences
    are full, a plain flip).
    """
    if rev_index is None:
        return bb.emit(op.flip(x, axis=axis))
    shape = _static_shape(x, "sequence tensor")
    batch_axis = axis + 1 if batch_axis is None else batch_axis
    others = [i for i in range(len(shape)) if i not in (axis, batch_axis)]
    index = op.broadcast_to(op.expand_dims(rev_index, others), shape)
    return bb.emit(op.gather_elements(x, index, axis=axis))


@dataclass(frozen=True)
class _Direction:
    """What one direction's recurrence needs, in ONNX shapes (``G*H`` rows gate-major)."""

    index: int
    w: np.ndarray  # (G*H, I)
    wb: np.ndarray  # (G*H,)
    r: np.ndarray  # (G*H, H)
    rb: np.ndarray  # (G*H,)
    peep: np.ndarray | None  # (3*H,)
    h0: relax.Expr  # (N, H)
    c0: relax.Expr | None  # (N, H)


def _emit_x86(
    bb: relax.BlockBuilder,
    cfg: CellConfig,
    x: relax.Expr,
    batch: int,
    dirn: _Direction,
    lens: relax.Expr,
    rev_index: relax.Expr | None,
    density_threshold: float,
) -> list[relax.Expr]:
    """One direction on x86: projection kernel, then one ``call_tir`` of the recurrent kernel.

    ``x`` is ``X`` transposed to ``(I, T*N)``. Returns ``[Y (T, N, H), Y_h (N, H), [Y_c]]``.
    """
    m = _static_shape(x, "X")[1]
    seq_len = m // batch
    H, G = cfg.hidden_size, cfg.num_gates
    order = unit_major_order(G, H)
    packed = {}
    for name, w, multiple in (("W", dirn.w, 1), ("R", dirn.r, UNROLL)):
        density = np.count_nonzero(w) / w.size
        packed[name] = pack_weight(w, G, dense=density > density_threshold, row_multiple=multiple)
        logger.info(
            "%s direction %d: %s density %.3f -> %s x86 kernel (T=%d, N=%d, H=%d)",
            cfg.kind,
            dirn.index,
            name,
            density,
            "dense" if packed[name].dense else "sparse",
            seq_len,
            batch,
            H,
        )

    def add(func: tvm.tirx.PrimFunc, name: str) -> relax.GlobalVar:
        func = func.without_attr("global_symbol").with_attr("op_pattern", 8)  # opaque: no fusion
        return bb.add_func(func, name)

    proj = add(
        projection_prim_func(packed["W"], seq_len, batch), f"{cfg.kind.lower()}_projection_x86"
    )
    args = [x, *(_const(a) for a in packed["W"].arrays()), _const(dirn.wb[order], _F32)]
    u = bb.emit(relax.call_tir(proj, args, relax.TensorType((seq_len, G * H, batch), _F32)))
    if cfg.is_reverse(dirn.index):
        u = _reverse_sequences(bb, u, rev_index, axis=0, batch_axis=2)
    func = recurrent_prim_func(cfg, dirn.index, seq_len, batch, packed["R"])
    gv = add(func, f"{cfg.kind.lower()}_recurrent_x86")
    args = [u, *(_const(a) for a in packed["R"].arrays()), _const(dirn.rb[order], _F32)]
    if dirn.peep is not None:
        args.append(_const(dirn.peep.reshape(3, H), _F32))
    args += [dirn.h0] + ([dirn.c0] if dirn.c0 is not None else []) + [lens]
    n_state = 2 if cfg.kind.has_cell_state else 1
    out_ty = [relax.TensorType((seq_len, batch, H), _F32)]
    out_ty += [relax.TensorType((batch, H), _F32)] * n_state
    res = bb.emit(relax.call_tir(gv, args, out_ty))
    outs = [bb.emit(relax.TupleGetItem(res, k)) for k in range(1 + n_state)]
    if cfg.is_reverse(dirn.index):
        outs[0] = _reverse_sequences(bb, outs[0], rev_index, axis=0)
    return outs


def _emit_steps(
    bb: relax.BlockBuilder,
    cfg: CellConfig,
    x: relax.Expr,
    dirn: _Direction,
    lens: relax.Expr | None,
    rev_index: relax.Expr | None,
) -> list[relax.Expr]:
    """One direction as a static per-step composition of Relax ops (the CUDA path).

    ``x`` is ``X`` as ``(T, N, I)``; ``lens`` is ``None`` when every sequence is full. Returns
    ``[Y (T, N, H), Y_h (N, H), [Y_c]]``. Steps past a sequence's length keep the state and
    write zeros, through float 0/1 masks (``m * new + (1 - m) * old`` is exact for m in {0, 1});
    boolean ``where`` would be vectorized into invalid CUDA by the default GPU schedules.
    """
    seq_len, batch, input_size = _static_shape(x, "X")
    H, G = cfg.hidden_size, cfg.num_gates
    d = dirn.index
    u = op.matmul(op.reshape(x, [seq_len * batch, input_size]), _const(dirn.w.T, _F32))
    u = bb.emit(op.reshape(op.add(u, _const(dirn.wb, _F32)), [seq_len, batch, G * H]))
    if cfg.is_reverse(d):
        u = _reverse_sequences(bb, u, rev_index, axis=0)
    ops = RelaxOps()
    r_t = [_const(np.ascontiguousarray(dirn.r[g * H : (g + 1) * H].T), _F32) for g in range(G)]
    rb_g = [_const(dirn.rb[g * H : (g + 1) * H], _F32) for g in range(G)]
    p_g = None if dirn.peep is None else [_const(p, _F32) for p in np.split(dirn.peep, 3)]
    lens_col = None if lens is None else op.expand_dims(lens, [1])
    one = relax.const(1.0, _F32)

    def keep(mask: relax.Expr | None, new: relax.Expr, old: relax.Expr | None) -> relax.Expr:
        if mask is None:
            return new
        kept = op.multiply(mask, new)
        return kept if old is None else op.add(kept, op.multiply(op.subtract(one, mask), old))

    h, c = dirn.h0, dirn.c0
    ys = []
    for s in range(seq_len):
        x_t = bb.emit(op.squeeze(op.strided_slice(u, axes=[0], begin=[s], end=[s + 1]), [0]))
        xs = [
            bb.emit(op.strided_slice(x_t, axes=[1], begin=[g * H], end=[(g + 1) * H]))
            for g in range(G)
        ]
        active = (  # (N, 1) float 0/1
            None
            if lens_col is None
            else bb.emit(op.astype(op.less(relax.const(s, "int32"), lens_col), _F32))
        )

        def rec(g: int, vec: relax.Expr) -> relax.Expr:
            return op.add(op.matmul(vec, r_t[g]), rb_g[g])

        if cfg.kind == "RNN":
            h_new = rnn_cell(ops, cfg, d, xs, [rec(0, h)])
        elif cfg.kind == "GRU":
            z, reset = (bb.emit(e) for e in gru_gates(ops, cfg, d, xs, [rec(0, h), rec(1, h)]))
            r_h = rec(2, h) if cfg.linear_before_reset else rec(2, op.multiply(reset, h))
            h_new = gru_output(ops, cfg, d, z, reset, xs[2], r_h, h)
        else:
            h_new, c_new = lstm_cell(ops, cfg, d, xs, [rec(g, h) for g in range(4)], c, p_g)
            c = bb.emit(keep(active, bb.emit(c_new), c))
        h_new = bb.emit(h_new)
        ys.append(op.expand_dims(keep(active, h_new, None), [0]))
        h = bb.emit(keep(active, h_new, h))
    y = bb.emit(op.concat(ys, axis=0))
    if cfg.is_reverse(d):
        y = _reverse_sequences(bb, y, rev_index, axis=0)
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
        ``llvm`` (x86 kernels) or ``cuda`` (the sparse persistent kernel for the pruned
        directions it implements, per-step Relax ops otherwise; see the module docstring);
        defaults to ``Target.current()``, else ``llvm``.
    density_threshold : float
        Largest density of ``W`` / ``R`` packed sparse on x86 (denser ones use the dense
        variant of the same kernels), and of ``R`` for the persistent kernel on cuda.

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
    reverses = any(cfg.is_reverse(d) for d in range(cfg.num_directions))
    if sequence_lens is None:
        lens = _const(np.full(batch, seq_len, np.int32))
    else:
        lens = bb.emit(op.astype(sequence_lens, "int32"))
    rev_index = None  # None: all sequences are full, reversing is a plain flip
    if reverses and sequence_lens is not None:
        rev_index = _reverse_index(bb, lens, seq_len, batch)
    cuda = is_cuda(target)
    if not cuda:  # (I, T*N): one nonzero of W multiplies a contiguous row
        x_in = bb.emit(op.reshape(op.permute_dims(X, [2, 0, 1]), [input_size, seq_len * batch]))
    outs: list[list[relax.Expr]] = []
    for d in range(cfg.num_directions):
        b = np.zeros(2 * G * H, _F32) if weights.B is None else weights.B[d]
        dirn = _Direction(
            d,
            weights.W[d],
            b[: G * H],
            weights.R[d],
            b[G * H :],
            None if weights.P is None else weights.P[d],
            _direction_state(bb, initial_h, d, batch, H),
            _direction_state(bb, initial_c, d, batch, H) if cfg.kind.has_cell_state else None,
        )
        plan = None
        if cuda:
            lengths_full = full_lengths(sequence_lens, seq_len)
            plan = persistent_rnn_plan(
                cfg, d, dirn.r, batch, lengths_full, density_threshold, dirn.peep
            )
        if plan is not None:
            outs.append(
                emit_persistent_rnn(
                    bb, cfg, d, plan, X, dirn.w, dirn.wb, dirn.rb, dirn.r, dirn.h0, dirn.c0
                )
            )
        elif cuda:
            full = None if sequence_lens is None else lens
            outs.append(_emit_steps(bb, cfg, X, dirn, full, rev_index))
        else:
            outs.append(_emit_x86(bb, cfg, x_in, batch, dirn, lens, rev_index, density_threshold))
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
        self.seq_len, self.batch = (x_shape[0], x_shape[1]) if layout == 0 else x_shape[1::-1]
        d, h = cfg.num_directions, cfg.hidden_size
        self.state_shape = (d, self.batch, h) if layout == 0 else (self.batch, d, h)
        self._vm: relax.VirtualMachine | None = None  # created on first call (needs the device)
        self._defaults: dict[str, tvm.runtime.Tensor] = {}

    def _arg(self, name: str, value: np.ndarray | None) -> tvm.runtime.Tensor:
        """``value`` on the device, or the cached default (full lengths, zero state)."""
        if value is None:
            if name not in self._defaults:
                default = (
                    np.full(self.batch, self.seq_len, np.int32)
                    if name == "sequence_lens"
                    else np.zeros(self.state_shape, _F32)
                )
                self._defaults[name] = tvm.runtime.tensor(default, self.device)
            return self._defaults[name]
        if name == "sequence_lens":
            lens = np.asarray(value).astype(np.int32)
            if lens.shape != (self.batch,) or lens.min() < 1 or lens.max() > self.seq_len:
                raise ValueError(
                    f"sequence_lens must be ({self.batch},) with values in [1, {self.seq_len}], "
                    f"got {lens}"
                )
            return tvm.runtime.tensor(lens, self.device)
        state = np.asarray(value, _F32)
        if state.shape != self.state_shape:
            raise ValueError(f"{name} has shape {state.shape}; expected {self.state_shape}")
        return tvm.runtime.tensor(state, self.device)

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
        args = [
            tvm.runtime.tensor(X, self.device),
            self._arg("sequence_lens", sequence_lens),
            self._arg("initial_h", initial_h),
        ]
        if self.cfg.kind.has_cell_state:
            args.append(self._arg("initial_c", initial_c))
        if self._vm is None:
            self._vm = relax.VirtualMachine(self.executable, self.device)
        return tuple(o.numpy() for o in self._vm["main"](*args))


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
    if cfg.kind.has_cell_state:
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
                initial_c=params[3] if cfg.kind.has_cell_state else None,
                layout=layout,
                target=target,
                density_threshold=density_threshold,
            )
            gv = bb.emit_output(out)
        bb.emit_func_output(gv)
    with target:
        ex = tvm.compile(bb.get(), target=target, tir_pipeline=tir_pipeline(target))
    device = tvm.cuda() if is_cuda(target) else tvm.cpu()
    return RecurrentSequence(ex, cfg, tuple(x_shape), layout, device)
