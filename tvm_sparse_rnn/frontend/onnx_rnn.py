"""ONNX ``RNN``, ``GRU`` and ``LSTM`` converters for the Relax ONNX frontend.

TVM's Relax ONNX importer has no recurrent converters. These map each node 1:1 onto a
target-neutral :class:`~tvm_sparse_rnn.ops.placeholders.RecurrentCall` in layout 0 (layout 1 is
transposed around it), validated as strictly as onnxruntime validates a node;
:class:`~tvm_sparse_rnn.transform.dispatch.DispatchKernels` later picks the kernels per target.
:func:`tvm_sparse_rnn.frontend.from_onnx` installs :data:`RECURRENT_CONVERTERS` into the
importer's converter map.

Requirements, each checked with an error naming the node:

* ``W``, ``R``, ``B``, ``P`` are initializers (constants, finite), not graph inputs;
* ``X`` has a static float32 shape; ``hidden_size`` is given and matches the weights;
* ``sequence_lens`` lie in ``[0, T]`` (checked at import when constant, else in the graph);
* attributes: ``activation_alpha``/``activation_beta`` and ``input_forget=1`` are not supported
  (:class:`~tvm_sparse_rnn.errors.UnsupportedError`); activations are limited to
  :data:`~tvm_sparse_rnn.ops.cells.SUPPORTED_ACTIVATIONS` (case-sensitive ONNX names).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np
import tvm
from tvm import relax
from tvm.ir import StringImm
from tvm.relax.frontend.onnx import onnx_frontend as _of

from ..errors import ModelError, UnsupportedError
from ..ops.cells import CellConfig, RecurrentWeights
from ..ops.placeholders import RecurrentCall
from ..signature import SEQUENCE_LENS_CHECK

logger = logging.getLogger(__name__)

op = relax.op

#: Attributes every converter understands (anything else is an error naming it).
_KNOWN_ATTRIBUTES = frozenset(
    {
        "hidden_size",
        "direction",
        "layout",
        "activations",
        "clip",
        "linear_before_reset",
        "input_forget",
        "tvm_custom",
    }
)
#: ONNX input slots: X, W, R, B, sequence_lens, initial_h, initial_c, P (LSTM only).
_SLOTS = ("X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P")


def _node_name(kind: str, attr: dict[str, Any]) -> str:
    name = attr.get("tvm_custom", {}).get("name") or "<unnamed>"
    return f"{kind} node {name!r}"


def _constant(
    node: str, slot: str, expr: relax.Expr | None, params: list[Any]
) -> np.ndarray | None:
    """The numpy value of a weight input, which must be an initializer."""
    if expr is None:
        return None
    if isinstance(expr, tvm.ir.expr.Constant):
        return expr.value.numpy()
    if isinstance(expr, relax.Var) and len(params) > 1 and expr.name in params[1]:
        return np.asarray(params[1][expr.name][1].numpy())  # keep_params_in_input=True
    raise ModelError(
        f"{node}: input {slot} must be an initializer (a constant weight); got a computed or "
        "graph-input tensor. Fold it into an initializer (e.g. with onnx-simplifier) first."
    )


def _decode(values: Any) -> tuple[str, ...]:
    return tuple(v.decode() if isinstance(v, bytes) else str(v) for v in values)


def _sequence_lens_checked(
    bb: relax.BlockBuilder, node: str, lens: relax.Expr | None, seq_len: int
) -> relax.Expr | None:
    """``sequence_lens`` with its range checked as onnxruntime does: constants at import, runtime
    inputs by :data:`~tvm_sparse_rnn.signature.SEQUENCE_LENS_CHECK` in the graph (a length
    past ``T`` would read out of bounds)."""
    if lens is None:
        return None
    if isinstance(lens, tvm.ir.expr.Constant):
        values = lens.value.numpy()
        if values.size and (values.min() < 0 or values.max() > seq_len):
            raise ModelError(
                f"{node}: sequence_lens {values.tolist()} must lie in [0, T = {seq_len}]"
            )
        return lens
    lens32 = bb.emit(op.astype(lens, "int32"))
    check = op.call_pure_packed(
        SEQUENCE_LENS_CHECK, lens32, relax.prim_value(seq_len), StringImm(node), ty_args=lens32.ty
    )
    return bb.emit(check)


def _layout0(bb: relax.BlockBuilder, expr: relax.Expr | None, layout: int) -> relax.Expr | None:
    """A layout-1 tensor (batch first) as layout 0: ``X`` and the states swap axes 0 and 1."""
    if expr is None or layout == 0:
        return expr
    return bb.emit(op.permute_dims(expr, [1, 0, 2]))


def _convert(kind: str, bb: relax.BlockBuilder, inputs: list, attr: dict, params: list) -> Any:
    node = _node_name(kind, attr)
    unknown = sorted(set(attr) - _KNOWN_ATTRIBUTES)
    if unknown:
        raise UnsupportedError(f"{node}: attribute(s) {unknown} are not supported")
    if kind == "LSTM" and int(attr.get("input_forget", 0)):
        raise UnsupportedError(f"{node}: attribute input_forget=1 is not supported")
    if "hidden_size" not in attr:
        raise ModelError(f"{node}: attribute hidden_size is required")
    layout = int(attr.get("layout", 0))
    if layout not in (0, 1):
        raise ModelError(f"{node}: attribute layout must be 0 or 1, got {layout}")
    slots = dict(zip(_SLOTS, list(inputs) + [None] * (len(_SLOTS) - len(inputs)), strict=False))
    weights = {s: _constant(node, s, slots[s], params) for s in ("W", "R", "B", "P")}
    if weights["W"] is None or weights["R"] is None:
        raise ModelError(f"{node}: inputs W and R are required")
    for name, value in weights.items():
        if value is not None and not np.isfinite(value).all():
            raise ModelError(f"{node}: weight {name} holds NaN or Inf")
    direction = attr.get("direction", b"forward")
    x = _layout0(bb, slots["X"], layout)
    try:
        cfg = CellConfig(
            kind,
            int(attr["hidden_size"]),
            direction.decode() if isinstance(direction, bytes) else str(direction),
            activations=_decode(attr.get("activations", ())) or None,
            clip=attr.get("clip"),
            linear_before_reset=bool(attr.get("linear_before_reset", 0)),
            peepholes=weights["P"] is not None,
        )
        shape = x.ty.shape
        if shape is None or not all(isinstance(d, tvm.tirx.IntImm) for d in shape):
            raise UnsupportedError(f"input X must have a static shape, got {shape}")
        if x.ty.dtype != "float32":
            raise UnsupportedError(f"input X has dtype {x.ty.dtype}; only float32")
        seq_len, _, input_size = (int(d) for d in shape)
        recurrent = RecurrentWeights(
            *(None if w is None else w.astype("float32") for w in weights.values())
        )
        recurrent.check(cfg, input_size)
        states = {
            "sequence_lens": _sequence_lens_checked(bb, node, slots["sequence_lens"], seq_len),
            "initial_h": _layout0(bb, slots["initial_h"], layout),
            "initial_c": _layout0(bb, slots["initial_c"], layout) if kind == "LSTM" else None,
        }
        call = RecurrentCall(
            attr.get("tvm_custom", {}).get("name") or kind.lower(),
            cfg,
            x,
            {k: v for k, v in states.items() if v is not None},
            recurrent,
        )
        out = call.emit(bb)
    except UnsupportedError as err:
        raise UnsupportedError(f"{node}: {err}") from err
    except ValueError as err:
        raise ModelError(f"{node}: {err}") from err
    fields = [bb.emit(relax.TupleGetItem(out, k)) for k in range(len(call.output_types().fields))]
    if layout == 1:  # Y (T, D, N, H) -> (N, T, D, H); states (D, N, H) -> (N, D, H)
        fields = [bb.emit(op.permute_dims(fields[0], [2, 0, 1, 3]))] + [
            bb.emit(op.permute_dims(f, [1, 0, 2])) for f in fields[1:]
        ]
    num_outputs = int(attr.get("tvm_custom", {}).get("num_outputs", len(fields)))
    if num_outputs == 1:
        return fields[0]
    return relax.Tuple(fields[:num_outputs])


class _RecurrentConverter(_of.OnnxOpConverter):
    """Shared converter body; subclasses set :attr:`kind`."""

    kind: ClassVar[str] = ""

    @classmethod
    def _impl_v7(cls, bb: relax.BlockBuilder, inputs: list, attr: dict, params: list) -> Any:
        """Opsets 7 to 22: one body (opset 14 added ``layout``, absent means 0)."""
        return _convert(cls.kind, bb, inputs, attr, params)


class RNN(_RecurrentConverter):
    """ONNX ``RNN`` (opsets 7, 14, 22)."""

    kind = "RNN"


class GRU(_RecurrentConverter):
    """ONNX ``GRU`` (opsets 7, 14, 22)."""

    kind = "GRU"


class LSTM(_RecurrentConverter):
    """ONNX ``LSTM`` (opsets 7, 14, 22)."""

    kind = "LSTM"


#: Converters to add to ``onnx_frontend._get_convert_map()``.
RECURRENT_CONVERTERS: dict[str, type] = {"RNN": RNN, "GRU": GRU, "LSTM": LSTM}
