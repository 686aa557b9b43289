"""Target-neutral placeholder calls: what importers and passes emit, what dispatch replaces.

A placeholder is ``R.call_pure_packed("tvm_sparse_rnn.<op>", *tensors, R.str(attrs))``: the
tensors (activations, and the constant weights) followed by the op's attributes as JSON. It
says *what* a layer computes, not how: :class:`~tvm_sparse_rnn.transform.dispatch.DispatchKernels`
decides per call and target which kernel variant runs and replaces it. A module that still
holds a placeholder fails to build with "cannot find function tvm_sparse_rnn.<op>", never
silently. Being a pure call, an unused placeholder is removed by dead-code elimination.

* :class:`LinearCall` ``y = x @ W.T`` with a constant ``W (N, K)`` (``nn.Linear`` layout), ``x``
  of rank >= 2, and an optional epilogue (constant bias, activation, output dtype); emitted by
  :class:`~tvm_sparse_rnn.transform.DenseToSparse` and by recurrent lowerings for their
  projections, its epilogue folded in by :class:`~tvm_sparse_rnn.transform.FuseLinearEpilogue`.
* :class:`RecurrentCall` one ONNX ``RNN``/``GRU``/``LSTM`` layer in layout 0 (time major),
  emitted by the ONNX converters and
  :func:`tvm_sparse_rnn.runtime.sequence.build_recurrent_sequence`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.ir import StringImm

from .cells import CellConfig, RecurrentWeights
from .epilogue import IDENTITY, Activation, Epilogue

logger = logging.getLogger(__name__)

#: Name prefix of every placeholder's packed function.
PLACEHOLDER_PREFIX = "tvm_sparse_rnn."
LINEAR = f"{PLACEHOLDER_PREFIX}linear"
RECURRENT = f"{PLACEHOLDER_PREFIX}recurrent_sequence"
#: Optional runtime inputs of a recurrent layer, in argument order after ``X``.
RECURRENT_STATE_INPUTS = ("sequence_lens", "initial_h", "initial_c")
#: Constant weights of a recurrent layer, in argument order after the runtime inputs.
RECURRENT_WEIGHTS = ("W", "R", "B", "P")
_CALL_PURE_PACKED = tvm.ir.Op.get("relax.call_pure_packed")


def _callee(call: relax.Expr) -> str | None:
    """The packed-function name of a ``call_pure_packed``, else ``None``."""
    if not isinstance(call, relax.Call) or call.op != _CALL_PURE_PACKED:
        return None
    func = call.args[0]
    return str(func.global_symbol) if isinstance(func, relax.ExternFunc) else None


def _constant(expr: relax.Expr, what: str) -> np.ndarray:
    if not isinstance(expr, tvm.ir.expr.Constant):
        raise ValueError(f"placeholder argument {what} must be a constant, got {type(expr)}")
    return expr.value.numpy()


@dataclass(frozen=True)
class LinearCall:
    """A dense layer with a constant weight: ``epilogue(x @ W.T, bias)``.

    Attributes
    ----------
    name : str
        Layer name, for decisions and logs (ONNX node name, or ``dense<i>``).
    x : relax.Expr
        ``[..., K]`` activation.
    weight : numpy.ndarray
        ``(N, K)`` constant weight.
    epilogue : Epilogue
        Bias add, activation and output dtype applied to the product.
    bias : numpy.ndarray or None
        ``(N,)`` in ``x``'s dtype, given exactly when ``epilogue.bias`` is set.
    """

    name: str
    x: relax.Expr
    weight: np.ndarray
    epilogue: Epilogue = IDENTITY
    bias: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.epilogue.bias != (self.bias is not None):
            raise ValueError(f"linear {self.name}: a bias must be given exactly with epilogue.bias")

    def output_type(self) -> relax.TensorType:
        """``[..., N]`` in the epilogue's output dtype."""
        ty = self.x.ty
        dtype = self.epilogue.output_dtype(str(ty.dtype))
        return relax.TensorType([*ty.shape.values[:-1], self.weight.shape[0]], dtype)

    def emit(self, bb: relax.BlockBuilder) -> relax.Expr:
        """Emit the placeholder; returns :meth:`output_type`."""
        epi = self.epilogue
        meta = {"name": self.name, "activation": epi.activation.value, "out_dtype": epi.out_dtype}
        consts = [relax.const(a) for a in (self.weight, self.bias) if a is not None]
        call = relax.op.call_pure_packed(
            LINEAR, self.x, *consts, StringImm(json.dumps(meta)), ty_args=self.output_type()
        )
        return bb.emit(call)

    @classmethod
    def match(cls, call: relax.Expr) -> LinearCall | None:
        """The linear placeholder ``call`` is, or ``None``."""
        if _callee(call) != LINEAR:
            return None
        x, weight, *bias, attrs = call.args[1:]
        meta = json.loads(attrs.value)
        epilogue = Epilogue(bool(bias), Activation(meta["activation"]), meta["out_dtype"])
        bias = _constant(bias[0], "bias") if bias else None
        return cls(meta["name"], x, _constant(weight, "W"), epilogue, bias)


@dataclass(frozen=True)
class RecurrentCall:
    """One ONNX recurrent layer, time major (layout 0).

    Attributes
    ----------
    name : str
        ONNX node name.
    cfg : CellConfig
        Cell, hidden size, direction, activations, clip, GRU/LSTM options.
    x : relax.Expr
        ``(T, N, I)`` input.
    states : dict of str to relax.Expr
        The given optional inputs of :data:`RECURRENT_STATE_INPUTS`: ``sequence_lens (N,)``,
        ``initial_h``/``initial_c (D, N, H)``.
    weights : RecurrentWeights
        The constant weights in ONNX shapes (``W (D, G*H, I)``, ``R (D, G*H, H)``, optional
        ``B (D, 2*G*H)`` and ``P (D, 3*H)``).
    """

    name: str
    cfg: CellConfig
    x: relax.Expr
    states: dict[str, relax.Expr]
    weights: RecurrentWeights

    def output_types(self) -> relax.TupleType:
        """``(Y (T, D, N, H), Y_h (D, N, H)[, Y_c (D, N, H)])``."""
        seq_len, batch, _ = (int(d) for d in self.x.ty.shape)
        d, h, dtype = self.cfg.num_directions, self.cfg.hidden_size, self.x.ty.dtype
        fields = [relax.TensorType((seq_len, d, batch, h), dtype)]
        fields += [relax.TensorType((d, batch, h), dtype)] * (
            2 if self.cfg.kind.has_cell_state else 1
        )
        return relax.TupleType(fields)

    def emit(self, bb: relax.BlockBuilder) -> relax.Expr:
        """Emit the placeholder; returns the output tuple."""
        states = [s for s in RECURRENT_STATE_INPUTS if s in self.states]
        weights = [w for w in RECURRENT_WEIGHTS if getattr(self.weights, w) is not None]
        cfg = self.cfg
        attrs = {
            "name": self.name,
            "cell": {
                "kind": cfg.kind.value,
                "hidden_size": cfg.hidden_size,
                "direction": cfg.direction,
                "activations": [a.value for a in cfg.activations],
                "clip": cfg.clip,
                "linear_before_reset": cfg.linear_before_reset,
                "peepholes": cfg.peepholes,
            },
            "states": states,
            "weights": weights,
        }
        args = [self.x, *(self.states[s] for s in states)]
        args += [relax.const(np.ascontiguousarray(getattr(self.weights, w))) for w in weights]
        call = relax.op.call_pure_packed(
            RECURRENT, *args, StringImm(json.dumps(attrs)), ty_args=self.output_types()
        )
        return bb.emit(call)

    @classmethod
    def match(cls, call: relax.Expr) -> RecurrentCall | None:
        """The recurrent placeholder ``call`` is, or ``None``."""
        if _callee(call) != RECURRENT:
            return None
        *args, attrs = call.args[1:]
        meta = json.loads(attrs.value)
        cell = meta["cell"]
        cfg = CellConfig(
            cell["kind"],
            cell["hidden_size"],
            cell["direction"],
            tuple(cell["activations"]),
            cell["clip"],
            cell["linear_before_reset"],
            cell["peepholes"],
        )
        states = dict(zip(meta["states"], args[1 : 1 + len(meta["states"])], strict=True))
        consts = args[1 + len(meta["states"]) :]
        weights = {w: _constant(e, w) for w, e in zip(meta["weights"], consts, strict=True)}
        return cls(meta["name"], cfg, args[0], states, RecurrentWeights(**weights))
