"""Recurrent cells with exactly the semantics of the ONNX ``RNN``, ``GRU`` and ``LSTM`` operators.

One definition of the cell math serves every implementation: the numpy reference
(:mod:`tvm_sparse_rnn.ops.reference`, float64 arrays), the x86 kernel
(:mod:`tvm_sparse_rnn.kernels.x86.recurrent`, scalar TIR expressions) and the per-step Relax
composition used on CUDA (:mod:`tvm_sparse_rnn.transform.dispatch.recurrent_steps`, Relax
expressions). The math is written once
against a small :class:`CellOps` interface; each implementation supplies its own ops.

Gate order and equations (ONNX operator specification, opset 14)::

    RNN   gates (i)        h = f(x_i + r_i)
    GRU   gates (z, r, h)  z = f(x_z + r_z);  r = f(x_r + r_r)
                           lbr=0: h~ = g(x_h + (r * h_prev) @ R_h^T + Rb_h)
                           lbr=1: h~ = g(x_h + r * (h_prev @ R_h^T + Rb_h))
                           h = (1 - z) * h~ + z * h_prev
    LSTM  gates (i, o, f, c)
                           i = f(x_i + r_i + P_i * c_prev);  f = f(x_f + r_f + P_f * c_prev)
                           c = f(x_f...) * c_prev + i * g(x_c + r_c)
                           o = f(x_o + r_o + P_o * c);       h = o * h(c)

``x_g = X_t @ W_g^T + Wb_g`` is the input projection and ``r_g = h_prev @ R_g^T + Rb_g`` the
recurrent one. ``clip`` (when given) clamps every pre-activation to ``[-clip, clip]`` before its
activation, as onnxruntime does.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..errors import UnsupportedError

logger = logging.getLogger(__name__)


class Activation(enum.StrEnum):
    """ONNX activation names this package implements (no alpha/beta parameters)."""

    SIGMOID = "Sigmoid"
    TANH = "Tanh"
    RELU = "Relu"


class CellType(enum.StrEnum):
    """An ONNX recurrent operator: its gates (ONNX storage order) and defaults.

    The one table of gate counts in the package: every kernel reads ``num_gates`` from here.
    """

    RNN = "RNN"
    GRU = "GRU"
    LSTM = "LSTM"

    @property
    def gates(self) -> tuple[str, ...]:
        """Gate names in ONNX storage order (rows of ``W``/``R`` are ``[gate0; gate1; ...]``)."""
        return {"RNN": ("i",), "GRU": ("z", "r", "h"), "LSTM": ("i", "o", "f", "c")}[self.value]

    @property
    def num_gates(self) -> int:
        """Number of gates ``G``; ``W`` is ``(G*H, I)`` and ``R`` is ``(G*H, H)`` per direction."""
        return len(self.gates)

    @property
    def default_activations(self) -> tuple[Activation, ...]:
        """Activations of one direction when the ONNX attribute is absent."""
        sig, tanh = Activation.SIGMOID, Activation.TANH
        return {"RNN": (tanh,), "GRU": (sig, tanh), "LSTM": (sig, tanh, tanh)}[self.value]

    @property
    def has_cell_state(self) -> bool:
        """Whether the cell carries ``c`` (LSTM) besides ``h``."""
        return self is CellType.LSTM


class PersistentCell(enum.StrEnum):
    """The cells the persistent GPU kernel specializes on: a :class:`CellType` plus, for the
    vanilla RNN, its activation, for the GRU its ``linear_before_reset`` (gated cells use the
    ONNX default activations)."""

    TANH = "tanh"
    RELU = "relu"
    #: GRU, ``linear_before_reset=1`` (PyTorch, cuDNN): ``r * (R_h h + Rb_h)``.
    GRU = "gru"
    #: GRU, ``linear_before_reset=0`` (the ONNX default, TensorFlow / Keras exports):
    #: ``R_h (r * h)``, so a step needs every unit's reset gate before the candidate's mat-vec.
    GRU_LBR0 = "gru_lbr0"
    LSTM = "lstm"

    @property
    def cell_type(self) -> CellType:
        """The ONNX operator."""
        return {
            "tanh": CellType.RNN,
            "relu": CellType.RNN,
            "gru": CellType.GRU,
            "gru_lbr0": CellType.GRU,
            "lstm": CellType.LSTM,
        }[self.value]

    @property
    def gates(self) -> int:
        """Rows of ``R`` per hidden unit (``G``)."""
        return self.cell_type.num_gates

    @property
    def two_phase(self) -> bool:
        """Whether a step exchanges a state twice: ``r * h_{t-1}``, then ``h_t`` (GRU, lbr=0)."""
        return self is PersistentCell.GRU_LBR0


#: Activations supported in every implementation (ONNX names, no alpha/beta parameters).
SUPPORTED_ACTIVATIONS = tuple(a.value for a in Activation)

DIRECTIONS = ("forward", "reverse", "bidirectional")


def unit_major_order(num_gates: int, hidden_size: int) -> np.ndarray:
    """Row permutation from ONNX gate-major (``g*H + j``) to unit-major (``j*G + g``) order:
    row ``j*G + g`` of the kernels' weights is gate ``g`` of hidden unit ``j``."""
    return np.arange(num_gates * hidden_size).reshape(num_gates, hidden_size).T.reshape(-1)


def _activation(name: str) -> Activation:
    """The activation of an ONNX name; names are case-sensitive, as onnxruntime reads them."""
    try:
        return Activation(name)
    except ValueError:
        raise UnsupportedError(
            f"activation {name!r} is not supported; supported: {', '.join(SUPPORTED_ACTIVATIONS)}"
        ) from None


@dataclass(frozen=True)
class CellConfig:
    """Everything that fixes the math of one recurrent layer (all directions).

    Parameters
    ----------
    kind : str
        ``"RNN"``, ``"GRU"`` or ``"LSTM"``.
    hidden_size : int
        ``H``.
    direction : str
        ``"forward"``, ``"reverse"`` or ``"bidirectional"``.
    activations : sequence of str, optional
        ONNX ``activations`` attribute: one entry per activation slot and direction (forward
        first). Defaults to the cell's ONNX defaults.
    clip : float, optional
        ONNX ``clip``; pre-activations are clamped to ``[-clip, clip]``.
    linear_before_reset : bool
        GRU only: apply the reset gate after the recurrent mat-vec (ONNX attribute = 1).
    peepholes : bool
        LSTM only: the layer has peephole weights ``P``.

    Raises
    ------
    UnsupportedError
        For an unknown cell, direction or activation, or a wrong number of activations.
    """

    kind: CellType
    hidden_size: int
    direction: str = "forward"
    activations: tuple[Activation, ...] | None = None
    clip: float | None = None
    linear_before_reset: bool = False
    peepholes: bool = False

    def __post_init__(self) -> None:
        try:
            kind = CellType(self.kind)
        except ValueError:
            names = [c.value for c in CellType]
            raise UnsupportedError(f"cell {self.kind!r} is not one of {names}") from None
        if self.direction not in DIRECTIONS:
            raise UnsupportedError(f"direction {self.direction!r} is not one of {DIRECTIONS}")
        if int(self.hidden_size) < 1:
            raise ValueError(f"hidden_size must be >= 1, got {self.hidden_size}")
        n_slots = len(kind.default_activations) * self.num_directions
        acts = self.activations
        if acts is None or len(acts) == 0:
            acts = kind.default_activations * self.num_directions
        elif len(acts) == len(kind.default_activations) and self.num_directions == 2:
            acts = tuple(acts) * 2  # onnxruntime also accepts one set for both directions
        if len(acts) != n_slots:
            raise UnsupportedError(
                f"{kind.value} {self.direction} needs {n_slots} activations, got {len(acts)}: "
                f"{list(acts)}"
            )
        if self.clip is not None and not float(self.clip) > 0:
            raise UnsupportedError(f"clip must be > 0, got {self.clip}")
        if self.linear_before_reset and kind is not CellType.GRU:
            raise UnsupportedError(f"linear_before_reset is a GRU attribute, not {kind.value}")
        if self.peepholes and kind is not CellType.LSTM:
            raise UnsupportedError(f"peepholes (P) are an LSTM input, not {kind.value}")
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "hidden_size", int(self.hidden_size))
        object.__setattr__(self, "activations", tuple(_activation(a) for a in acts))
        object.__setattr__(self, "clip", None if self.clip is None else float(self.clip))
        object.__setattr__(self, "linear_before_reset", bool(self.linear_before_reset))
        object.__setattr__(self, "peepholes", bool(self.peepholes))

    @property
    def num_directions(self) -> int:
        """1, or 2 for ``bidirectional``."""
        return 2 if self.direction == "bidirectional" else 1

    @property
    def num_gates(self) -> int:
        """``G``."""
        return self.kind.num_gates

    def direction_activations(self, d: int) -> tuple[Activation, ...]:
        """Activations of direction ``d`` (0 = forward, 1 = reverse of a bidirectional layer)."""
        n = len(self.kind.default_activations)
        return self.activations[d * n : (d + 1) * n]

    def is_reverse(self, d: int) -> bool:
        """Whether direction ``d`` runs from each sequence's end to its start."""
        return self.direction == "reverse" or (self.direction == "bidirectional" and d == 1)

    def persistent_cell(self, d: int) -> tuple[PersistentCell | None, str]:
        """The persistent kernel's cell for direction ``d``, or ``None`` and why not.

        The kernel implements the vanilla RNN with ``Tanh`` or ``Relu``, GRU (either
        ``linear_before_reset``) and LSTM without peepholes, gated cells with their default
        activations, all without ``clip``.
        """
        acts = self.direction_activations(d)
        if self.clip is not None:
            return None, f"clip={self.clip}"
        if self.kind is CellType.RNN:
            cell = {Activation.TANH: PersistentCell.TANH, Activation.RELU: PersistentCell.RELU}
            return cell.get(acts[0]), f"activation {acts[0].value}"
        if acts != self.kind.default_activations:
            return None, f"activations {[a.value for a in acts]}"
        if self.two_phase:
            return PersistentCell.GRU_LBR0, "persistent cell"
        if self.peepholes:
            return None, "LSTM peepholes"
        return PersistentCell(self.kind.value.lower()), "persistent cell"

    @property
    def two_phase(self) -> bool:
        """Whether a step needs all reset gates before the candidate mat-vec (GRU, lbr=0)."""
        return self.kind == "GRU" and not self.linear_before_reset


class CellOps(Protocol):
    """Element-wise operations the cell math is written against.

    Implementations: numpy arrays (reference), scalar TIR ``PrimExpr`` (x86 kernel), Relax
    expressions (CUDA per-step path).
    """

    def add(self, a: Any, b: Any) -> Any:
        """``a + b``."""

    def mul(self, a: Any, b: Any) -> Any:
        """``a * b``."""

    def one_minus(self, a: Any) -> Any:
        """``1 - a``."""

    def activation(self, name: str, a: Any) -> Any:
        """ONNX activation ``name`` (one of :data:`SUPPORTED_ACTIVATIONS`) of ``a``."""

    def clip(self, a: Any, bound: float) -> Any:
        """``a`` clamped to ``[-bound, bound]``."""


def _act(ops: CellOps, cfg: CellConfig, name: str, pre: Any) -> Any:
    if cfg.clip is not None:
        pre = ops.clip(pre, cfg.clip)
    return ops.activation(name, pre)


def rnn_cell(ops: CellOps, cfg: CellConfig, d: int, x: Sequence[Any], r: Sequence[Any]) -> Any:
    """Vanilla RNN step: ``h = f(x_i + r_i)``.

    Parameters
    ----------
    ops : CellOps
    cfg : CellConfig
    d : int
        Direction (selects the activations).
    x, r : sequence
        Per-gate input and recurrent pre-activations (biases included), ONNX gate order.
    """
    (f,) = cfg.direction_activations(d)
    return _act(ops, cfg, f, ops.add(x[0], r[0]))


def gru_gates(
    ops: CellOps, cfg: CellConfig, d: int, x: Sequence[Any], r: Sequence[Any]
) -> tuple[Any, Any]:
    """GRU update and reset gates ``(z, r)`` from gates 0 and 1 of ``x`` and ``r``."""
    f, _ = cfg.direction_activations(d)
    return (_act(ops, cfg, f, ops.add(x[0], r[0])), _act(ops, cfg, f, ops.add(x[1], r[1])))


def gru_output(
    ops: CellOps,
    cfg: CellConfig,
    d: int,
    z: Any,
    reset: Any,
    x_h: Any,
    r_h: Any,
    h_prev: Any,
) -> Any:
    """GRU output ``h = (1 - z) * h~ + z * h_prev``.

    ``r_h`` is the recurrent pre-activation of gate ``h`` (bias ``Rb_h`` included): computed from
    ``reset * h_prev`` when ``linear_before_reset`` is 0 and from ``h_prev`` when it is 1 (then the
    reset gate multiplies it here).
    """
    _, g = cfg.direction_activations(d)
    rec = ops.mul(reset, r_h) if cfg.linear_before_reset else r_h
    cand = _act(ops, cfg, g, ops.add(x_h, rec))
    return ops.add(ops.mul(ops.one_minus(z), cand), ops.mul(z, h_prev))


def lstm_cell(
    ops: CellOps,
    cfg: CellConfig,
    d: int,
    x: Sequence[Any],
    r: Sequence[Any],
    c_prev: Any,
    peep: Sequence[Any] | None = None,
) -> tuple[Any, Any]:
    """LSTM step; returns ``(h, c)``.

    Parameters
    ----------
    x, r : sequence
        Pre-activations in ONNX gate order ``(i, o, f, c)``.
    c_prev : array-like
        Previous cell state.
    peep : sequence, optional
        Peephole weights ``(P_i, P_o, P_f)`` (ONNX order of ``P``).
    """
    f, g, h = cfg.direction_activations(d)
    pre_i, pre_o, pre_f, pre_c = (ops.add(x[k], r[k]) for k in range(4))
    if peep is not None:
        pre_i = ops.add(pre_i, ops.mul(peep[0], c_prev))
        pre_f = ops.add(pre_f, ops.mul(peep[2], c_prev))
    gate_i = _act(ops, cfg, f, pre_i)
    gate_f = _act(ops, cfg, f, pre_f)
    c = ops.add(ops.mul(gate_f, c_prev), ops.mul(gate_i, _act(ops, cfg, g, pre_c)))
    if peep is not None:
        pre_o = ops.add(pre_o, ops.mul(peep[1], c))
    gate_o = _act(ops, cfg, f, pre_o)
    return ops.mul(gate_o, ops.activation(h, c)), c


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
