"""The numpy reference of the recurrent sequence op against onnxruntime."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tvm_sparse_rnn.errors import UnsupportedError
from tvm_sparse_rnn.ops.cells import CellConfig
from tvm_sparse_rnn.ops.reference import recurrent_sequence_reference
from tvm_sparse_rnn.testing import random_recurrent_weights, recurrent_onnxruntime

T, N, IN, H = 5, 3, 6, 8
SEQ_LENS = np.array([5, 2, 4], np.int32)


def _case(kind, direction, layout, inputs, attributes=None, peepholes=False, seed=0):
    """Build the model and feeds; return (cfg, weights, feeds, ort outputs)."""
    d = 2 if direction == "bidirectional" else 1
    w = random_recurrent_weights(kind, H, IN, d, density=0.3, peepholes=peepholes, seed=seed)
    rng = np.random.default_rng(seed + 1)
    x_shape = (T, N, IN) if layout == 0 else (N, T, IN)
    state_shape = (d, N, H) if layout == 0 else (N, d, H)
    feeds = {"X": rng.standard_normal(x_shape).astype("float32")}
    if "sequence_lens" in inputs:
        feeds["sequence_lens"] = SEQ_LENS
    for name in ("initial_h", "initial_c"):
        if name in inputs:
            feeds[name] = rng.standard_normal(state_shape).astype("float32")
    attributes = attributes or {}
    cfg = CellConfig(
        kind,
        H,
        direction,
        activations=tuple(a.decode() for a in attributes.get("activations", [])) or None,
        clip=attributes.get("clip"),
        linear_before_reset=bool(attributes.get("linear_before_reset", 0)),
        peepholes=peepholes,
    )
    expected = recurrent_onnxruntime(kind, w, feeds, H, direction, layout, attributes)
    return cfg, w, feeds, expected


def _check(cfg, w, feeds, expected, layout):
    got = recurrent_sequence_reference(
        cfg,
        feeds["X"],
        w["W"],
        w["R"],
        w.get("B"),
        feeds.get("sequence_lens"),
        feeds.get("initial_h"),
        feeds.get("initial_c"),
        w.get("P"),
        layout=layout,
    )
    for g, e in zip(got, expected, strict=False):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("kind", "direction", "layout", "inputs"),
    [
        (k, d, lay, inp)
        for k, d, (lay, inp) in itertools.product(
            ("RNN", "GRU", "LSTM"),
            ("forward", "reverse", "bidirectional"),
            [(0, ()), (0, ("sequence_lens", "initial_h", "initial_c")), (1, ("initial_h",))],
        )
    ],
)
def test_reference_matches_onnxruntime(kind, direction, layout, inputs):
    if kind != "LSTM":
        inputs = tuple(i for i in inputs if i != "initial_c")
    cfg, w, feeds, expected = _case(kind, direction, layout, inputs)
    _check(cfg, w, feeds, expected, layout)


@pytest.mark.parametrize(
    ("kind", "attributes", "peepholes"),
    [
        ("GRU", {"linear_before_reset": 1}, False),
        ("LSTM", {}, True),
        ("LSTM", {"clip": 0.7}, False),
        ("RNN", {"activations": [b"Relu", b"Sigmoid"]}, False),
        ("GRU", {"activations": [b"Tanh", b"Relu", b"Sigmoid", b"Tanh"], "clip": 1.5}, False),
    ],
)
def test_reference_options_match_onnxruntime(kind, attributes, peepholes):
    direction = "bidirectional" if len(attributes.get("activations", [])) in (2, 4) else "forward"
    inputs = ("sequence_lens", "initial_h")
    cfg, w, feeds, expected = _case(kind, direction, 0, inputs, attributes, peepholes, seed=3)
    _check(cfg, w, feeds, expected, 0)


def test_config_errors():
    with pytest.raises(UnsupportedError, match="activation 'HardSigmoid'"):
        CellConfig("RNN", 4, activations=("HardSigmoid",))
    with pytest.raises(UnsupportedError, match="needs 2 activations"):
        CellConfig("GRU", 4, activations=("Sigmoid", "Tanh", "Tanh"))
    with pytest.raises(UnsupportedError, match="direction"):
        CellConfig("LSTM", 4, direction="sideways")
    with pytest.raises(UnsupportedError, match="linear_before_reset"):
        CellConfig("LSTM", 4, linear_before_reset=True)
