"""ONNX ``RNN``, ``GRU`` and ``LSTM`` converters for the Relax ONNX frontend.

TVM's Relax ONNX importer has no recurrent converters. These map each node 1:1 onto
:func:`tvm_sparse_rnn.rnn.sequence.emit_recurrent_sequence` (sparse x86 kernel when ``R`` is
pruned, dense otherwise; on CUDA the sparse persistent kernel for pruned layers with full
sequences that it implements (:mod:`tvm_sparse_rnn.rnn.persistent_relax`), per-step Relax ops for
the rest). The kernel is picked for ``tvm.target.Target.current()`` (``llvm`` when no target
scope is active):
:func:`tvm_sparse_rnn.frontend.from_onnx` enters the target scope and installs
:data:`RECURRENT_CONVERTERS` into the importer's converter map.

Requirements, each checked with an error naming the node:

* ``W``, ``R``, ``B``, ``P`` are initializers (constants), not graph inputs;
* ``X`` has a static float32 shape;
* attributes: ``activation_alpha``/``activation_beta`` and ``input_forget=1`` are not supported
  (:class:`~tvm_sparse_rnn.errors.UnsupportedError`); activations are limited to
  :data:`~tvm_sparse_rnn.rnn.cells.SUPPORTED_ACTIVATIONS`.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np
import tvm
from tvm import relax
from tvm.relax.frontend.onnx import onnx_frontend as _of

from ..errors import ModelError, UnsupportedError
from ..ops.cells import CellConfig
from ..runtime.sequence import RecurrentWeights, emit_recurrent_sequence

logger = logging.getLogger(__name__)

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


def _convert(kind: str, bb: relax.BlockBuilder, inputs: list, attr: dict, params: list) -> Any:
    node = _node_name(kind, attr)
    unknown = sorted(set(attr) - _KNOWN_ATTRIBUTES)
    if unknown:
        raise UnsupportedError(f"{node}: attribute(s) {unknown} are not supported")
    if kind == "LSTM" and int(attr.get("input_forget", 0)):
        raise UnsupportedError(f"{node}: attribute input_forget=1 is not supported")
    slots = dict(zip(_SLOTS, list(inputs) + [None] * (len(_SLOTS) - len(inputs)), strict=False))
    weights = {s: _constant(node, s, slots[s], params) for s in ("W", "R", "B", "P")}
    if weights["W"] is None or weights["R"] is None:
        raise ModelError(f"{node}: inputs W and R are required")
    direction = attr.get("direction", b"forward")
    hidden_size = int(attr.get("hidden_size", weights["R"].shape[-1]))  # optional in ONNX
    try:
        cfg = CellConfig(
            kind,
            hidden_size,
            direction.decode() if isinstance(direction, bytes) else str(direction),
            activations=_decode(attr.get("activations", ())) or None,
            clip=attr.get("clip"),
            linear_before_reset=bool(attr.get("linear_before_reset", 0)),
            peepholes=weights["P"] is not None,
        )
        out = emit_recurrent_sequence(
            bb,
            cfg,
            slots["X"],
            RecurrentWeights(
                *(None if w is None else w.astype("float32") for w in weights.values())
            ),
            sequence_lens=slots["sequence_lens"],
            initial_h=slots["initial_h"],
            initial_c=slots["initial_c"] if kind == "LSTM" else None,
            layout=int(attr.get("layout", 0)),
        )
    except UnsupportedError as err:
        raise UnsupportedError(f"{node}: {err}") from err
    except ValueError as err:
        raise ModelError(f"{node}: {err}") from err
    num_outputs = int(attr.get("tvm_custom", {}).get("num_outputs", len(out.fields)))
    if num_outputs == 1:
        return out.fields[0]
    return relax.Tuple(list(out.fields[:num_outputs]))


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
