"""ONNX RNN/GRU/LSTM models with pruned weights, imported through the recurrent converters,
compiled for llvm and compared with onnxruntime (fp32)."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper
from tvm import relax

from tvm_sparse_rnn.errors import ModelError, UnsupportedError
from tvm_sparse_rnn.frontend.onnx import from_onnx
from tvm_sparse_rnn.pipeline import build, sparse_pipeline
from tvm_sparse_rnn.target import resolve_target
from tvm_sparse_rnn.testing import (
    random_recurrent_weights,
    recurrent_onnx_model,
    recurrent_onnxruntime,
)

T, N, IN, H = 6, 3, 5, 12
SEQ_LENS = np.array([6, 2, 5], np.int32)


def _import(model: onnx.ModelProto) -> tvm.IRModule:
    return from_onnx(model)


def _feeds(direction, layout, inputs, seed):
    d = 2 if direction == "bidirectional" else 1
    rng = np.random.default_rng(seed)
    feeds = {"X": rng.standard_normal((T, N, IN) if layout == 0 else (N, T, IN)).astype("float32")}
    if "sequence_lens" in inputs:
        feeds["sequence_lens"] = SEQ_LENS
    for name in ("initial_h", "initial_c"):
        if name in inputs:
            shape = (d, N, H) if layout == 0 else (N, d, H)
            feeds[name] = rng.standard_normal(shape).astype("float32")
    return feeds


def _run_tvm(model, feeds):
    ex, _ = build(_import(model), "llvm")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    names = [i.name for i in model.graph.input]
    out = vm["main"](*(tvm.runtime.tensor(feeds[n]) for n in names))
    return (
        [o.numpy() for o in out] if isinstance(out, tvm.ir.Array | list | tuple) else [out.numpy()]
    )


CASES = [
    # (direction, layout, optional inputs)
    ("forward", 0, ()),
    ("reverse", 0, ("sequence_lens", "initial_h", "initial_c")),
    ("bidirectional", 1, ("initial_h", "initial_c")),
    ("bidirectional", 0, ("sequence_lens",)),
]


@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize(("direction", "layout", "inputs"), CASES)
def test_pruned_recurrent_model_matches_onnxruntime(kind, direction, layout, inputs):
    if kind != "LSTM":
        inputs = tuple(i for i in inputs if i != "initial_c")
    d = 2 if direction == "bidirectional" else 1
    w = random_recurrent_weights(kind, H, IN, d, density=0.15, input_density=0.5, seed=7)
    model = recurrent_onnx_model(kind, w, T, N, IN, H, direction, layout, inputs)
    feeds = _feeds(direction, layout, inputs, seed=11)
    got = _run_tvm(model, feeds)
    expected = recurrent_onnxruntime(kind, w, feeds, H, direction, layout)
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("kind", "density", "attributes", "peepholes"),
    [
        ("GRU", 0.2, {"linear_before_reset": 1}, False),
        ("GRU", 0.9, {}, False),  # dense R: the dense mat-vec variant
        ("LSTM", 0.9, {"clip": 0.8}, True),
        ("RNN", 0.2, {"activations": ["Relu"]}, False),
    ],
)
def test_recurrent_options_match_onnxruntime(kind, density, attributes, peepholes):
    w = random_recurrent_weights(kind, H, IN, 1, density=density, peepholes=peepholes, seed=5)
    inputs = ("sequence_lens", "initial_h")
    model = recurrent_onnx_model(kind, w, T, N, IN, H, "forward", 0, inputs, attributes)
    feeds = _feeds("forward", 0, inputs, seed=2)
    got = _run_tvm(model, feeds)
    expected = recurrent_onnxruntime(kind, w, feeds, H, "forward", 0, attributes)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("inputs", "gathers"), [((), 0), (("sequence_lens",), 2)])
def test_x86_reverse_direction_needs_no_flip(inputs, gathers):
    """Over full-length sequences the reverse direction's projection writes ``U`` backwards and
    its recurrent kernel writes ``Y`` backwards: no flip of ``U`` or ``Y`` around them; with
    ``sequence_lens`` each valid prefix is reversed by a gather instead."""
    w = random_recurrent_weights("GRU", H, IN, 2, density=0.15, input_density=0.5, seed=7)
    model = recurrent_onnx_model("GRU", w, T, N, IN, H, "bidirectional", 0, inputs)
    mod = sparse_pipeline("llvm").front()(_import(model))
    script = mod["main"].script()
    assert "R.flip(" not in script
    assert script.count("R.gather_elements(") == gathers  # U before, Y after the kernel


def test_only_y_h_output():
    """A node whose only used output is Y_h (Y unnamed)."""
    w = random_recurrent_weights("GRU", H, IN, 1, density=0.2, seed=1)
    model = recurrent_onnx_model("GRU", w, T, N, IN, H)
    node = model.graph.node[0]
    node.output[0] = ""
    del model.graph.output[0]
    feeds = _feeds("forward", 0, (), seed=3)
    got = _run_tvm(model, feeds)
    expected = recurrent_onnxruntime("GRU", w, feeds, H)
    np.testing.assert_allclose(got[0], expected[1], rtol=1e-5, atol=1e-5)


def _with_weight_as_input(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    init = next(t for t in model.graph.initializer if t.name == name)
    model.graph.initializer.remove(init)
    model.graph.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, init.dims))
    return model


def test_missing_hidden_size_is_rejected_like_onnxruntime():
    w = random_recurrent_weights("GRU", H, IN, 1, density=0.2, seed=1)
    model = recurrent_onnx_model("GRU", w, T, N, IN, H)
    node = model.graph.node[0]
    node.attribute.remove(next(a for a in node.attribute if a.name == "hidden_size"))
    with pytest.raises(ModelError, match="hidden_size is required"):
        _import(model)


def test_errors_name_the_node():
    w = random_recurrent_weights("LSTM", H, IN, 1, density=0.2, seed=1)
    model = recurrent_onnx_model("LSTM", w, T, N, IN, H)
    model.graph.node[0].name = "lstm_0"
    bad = onnx.ModelProto()
    bad.CopyFrom(model)
    with pytest.raises(ModelError, match="LSTM node 'lstm_0': input R must be an initializer"):
        _import(_with_weight_as_input(bad, "R"))
    bad.CopyFrom(model)
    bad.graph.node[0].attribute.append(helper.make_attribute("input_forget", 1))
    with pytest.raises(UnsupportedError, match=r"lstm_0.*input_forget"):
        _import(bad)
    bad.CopyFrom(model)
    bad.graph.node[0].attribute.append(helper.make_attribute("activation_alpha", [0.5]))
    with pytest.raises(UnsupportedError, match=r"lstm_0.*\['activation_alpha'\]"):
        _import(bad)
    bad.CopyFrom(model)
    acts = helper.make_attribute("activations", ["HardSigmoid", "Tanh", "Tanh"])
    bad.graph.node[0].attribute.append(acts)
    with pytest.raises(UnsupportedError, match=r"lstm_0.*HardSigmoid"):
        _import(bad)


def test_cuda_build_for_sm90a():
    """The CUDA path (per-step Relax ops, dlight) builds for sm_90a; nvcc compiles its source."""
    w = random_recurrent_weights("LSTM", 16, IN, 2, density=0.2, seed=1)
    model = recurrent_onnx_model("LSTM", w, 3, 2, IN, 16, "bidirectional", 0, ("sequence_lens",))
    target = resolve_target("cuda")
    ex, _ = build(_import(model), target)
    cuda_mods = [m for m in ex.mod.imports[0].imports if m.kind == "cuda"]
    assert len(cuda_mods) == 1
    src = cuda_mods[0].inspect_source()
    assert "__global__" in src and "tanhf" in src
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not available")
    from tvm.support import nvcc

    with target:
        cubin = nvcc.compile_cuda(src, target_format="cubin", arch="sm_90a", compiler="nvcc")
    assert len(cubin) > 0
