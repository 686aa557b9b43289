"""Property test: random ONNX RNN/GRU/LSTM attribute combinations vs onnxruntime.

Each example draws a cell, direction, layout, sizes, pruning density, optional inputs
(``sequence_lens`` within ``[1, T]``, ``initial_h``, ``initial_c``), ``clip``,
``linear_before_reset`` (GRU) and peepholes (LSTM), builds the one-node model with
:func:`tvm_sparse_rnn.compile.build_onnx` on llvm and compares every output with onnxruntime.
Each example compiles a model (~0.5 s), so the example count is small.

Out-of-range ``sequence_lens`` (onnxruntime rejects them) must raise a typed error; they run in
a subprocess, so that a regression to the old segfault cannot take the test run down.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
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


# ------------------------------------------------------------------ bad sequence_lens
_LENS_SCRIPT = """
import sys, numpy as np
from tvm_sparse_rnn import SparseRNNError
from tvm_sparse_rnn.compile import build_onnx, load_executable
from tvm_sparse_rnn.testing import random_recurrent_weights, recurrent_onnx_model
kind, direction, lens = sys.argv[1], sys.argv[2], int(sys.argv[3])
w = random_recurrent_weights(kind, 8, 4, 2 if direction == "bidirectional" else 1, 0.5)
m = recurrent_onnx_model(kind, w, 5, 2, 4, 8, direction, 0, ("sequence_lens",))
ex, i, o = build_onnx(m, target="llvm")
feeds = {"X": np.ones((5, 2, 4), "float32"), "sequence_lens": np.array([lens, 5], "int32")}
try:
    load_executable(ex, i, o, "llvm").run(feeds)
except SparseRNNError as err:
    print("TYPED", err)
else:
    print("RAN")
"""


@pytest.mark.parametrize(
    ("kind", "direction", "lens"),
    [("RNN", "reverse", 7), ("GRU", "forward", 9), ("RNN", "reverse", -1),
     ("LSTM", "bidirectional", 700000)],
)  # fmt: skip
def test_sequence_lens_out_of_range_is_a_typed_error(kind, direction, lens):
    """In a subprocess (these segfaulted or returned garbage before the runtime check): a
    ``ModelError`` naming the node and the range, as onnxruntime rejects them."""
    proc = subprocess.run(
        [sys.executable, "-c", _LENS_SCRIPT, kind, direction, str(lens)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-500:]}"
    assert proc.stdout.startswith("TYPED"), proc.stdout
