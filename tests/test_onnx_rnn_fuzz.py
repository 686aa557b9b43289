"""Property test: random ONNX RNN/GRU/LSTM attribute combinations vs onnxruntime.

Each example draws a cell, direction, layout, sizes, pruning density, optional inputs
(``sequence_lens`` within ``[1, T]``, ``initial_h``, ``initial_c``), ``clip``,
``linear_before_reset`` (GRU) and peepholes (LSTM), builds the one-node model with
:func:`tvm_sparse_rnn.compile.build_onnx` on llvm and compares every output with onnxruntime.
Each example compiles a model (~1 s), so the example count is small.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tvm_sparse_rnn.compile import build_onnx, load_executable
from tvm_sparse_rnn.testing import (
    random_recurrent_weights,
    recurrent_onnx_model,
    recurrent_onnxruntime,
)

EXAMPLES = 40  # 400 passed once locally (~3 min)
RTOL, ATOL = 1e-4, 1e-4


@st.composite
def recurrent_cases(draw) -> dict:
    kind = draw(st.sampled_from(["RNN", "GRU", "LSTM"]))
    case = {
        "kind": kind,
        "direction": draw(st.sampled_from(["forward", "reverse", "bidirectional"])),
        "layout": draw(st.sampled_from([0, 1])),
        "hidden": draw(st.sampled_from([4, 8, 16, 32])),
        "input_size": draw(st.integers(1, 12)),
        "seq_len": draw(st.integers(1, 6)),
        "batch": draw(st.integers(1, 3)),
        "density": draw(st.sampled_from([0.0, 0.1, 0.5, 1.0])),
        "bias": draw(st.booleans()),
        "peepholes": kind == "LSTM" and draw(st.booleans()),
        "optional": draw(st.sets(st.sampled_from(["sequence_lens", "initial_h", "initial_c"]))),
        "seed": draw(st.integers(0, 2**16)),
        "attributes": {},
    }
    if kind != "LSTM":
        case["optional"].discard("initial_c")
    if draw(st.booleans()):
        case["attributes"]["clip"] = draw(st.sampled_from([0.5, 1.0, 3.0]))
    if kind == "GRU":
        case["attributes"]["linear_before_reset"] = draw(st.sampled_from([0, 1]))
    return case


def _feeds(case: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    t, n, i, h = case["seq_len"], case["batch"], case["input_size"], case["hidden"]
    d = 2 if case["direction"] == "bidirectional" else 1
    layout = case["layout"]
    feeds = {"X": rng.uniform(-1, 1, (t, n, i) if layout == 0 else (n, t, i)).astype("float32")}
    state = (d, n, h) if layout == 0 else (n, d, h)
    for name in ("initial_h", "initial_c"):
        if name in case["optional"]:
            feeds[name] = rng.uniform(-0.5, 0.5, state).astype("float32")
    if "sequence_lens" in case["optional"]:
        feeds["sequence_lens"] = rng.integers(1, t + 1, n).astype("int32")
    return feeds


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(recurrent_cases())
def test_recurrent_layer_matches_onnxruntime(case):
    rng = np.random.default_rng(case["seed"])
    d = 2 if case["direction"] == "bidirectional" else 1
    weights = random_recurrent_weights(
        case["kind"],
        case["hidden"],
        case["input_size"],
        d,
        case["density"],
        peepholes=case["peepholes"],
        seed=case["seed"],
    )
    if not case["bias"]:
        del weights["B"]
    feeds = _feeds(case, rng)
    optional = tuple(k for k in ("sequence_lens", "initial_h", "initial_c") if k in feeds)
    model = recurrent_onnx_model(
        case["kind"],
        weights,
        case["seq_len"],
        case["batch"],
        case["input_size"],
        case["hidden"],
        case["direction"],
        case["layout"],
        optional,
        case["attributes"],
    )
    expected = recurrent_onnxruntime(
        case["kind"],
        weights,
        feeds,
        case["hidden"],
        case["direction"],
        case["layout"],
        case["attributes"],
    )
    executable, inputs, outputs = build_onnx(model, target="llvm")
    got = load_executable(executable, inputs, outputs, "llvm").run(feeds)
    for spec, ref in zip(outputs, expected, strict=True):
        np.testing.assert_allclose(got[spec.name], ref, rtol=RTOL, atol=ATOL, err_msg=spec.name)
