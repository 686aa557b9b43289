"""CUDA builds replay their kernels as CUDA graphs (``cuda_graph=True``, the default)."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from tvm_sparse_rnn.compile import build_onnx, load_executable
from tvm_sparse_rnn.demo import build_demo_model, random_inputs
from tvm_sparse_rnn.pipeline import CUDA_GRAPH_CONFIG, _with_config
from tvm_sparse_rnn.testing import run_onnxruntime

#: The demo MLP on 16 rows (fc1 and fc2 go sparse, the classifier stays dense).
MLP = {"seq_len": 4, "batch": 4, "hidden": 256, "mlp": 512, "classes": 16, "recurrent": False}
CAPTURE = "vm.builtin.cuda_graph.run_or_capture"


@pytest.fixture(scope="module")
def model():
    return build_demo_model(**MLP)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_cuda_build_captures_its_kernels_in_cuda_graphs(model, dtype):
    executable, _, _ = build_onnx(model, target="cuda", dtype=dtype)
    assert CAPTURE in executable.as_text()


def test_cuda_graph_can_be_turned_off(model):
    executable, _, _ = build_onnx(model, target="cuda", cuda_graph=False)
    assert CAPTURE not in executable.as_text()


def test_cuda_graph_keeps_the_callers_pass_context(model):
    """The build adds its switch to the caller's pass context instead of replacing it."""
    with tvm.transform.PassContext(
        opt_level=3, disabled_pass=["FoldConstant"], config={"tirx.disable_vectorize": True}
    ):
        derived = _with_config({CUDA_GRAPH_CONFIG: True})
        executable, _, _ = build_onnx(model, target="cuda")
    assert derived.opt_level == 3 and list(derived.disabled_pass) == ["FoldConstant"]
    assert derived.config["tirx.disable_vectorize"] and derived.config[CUDA_GRAPH_CONFIG]
    assert CAPTURE in executable.as_text()


def test_llvm_build_has_no_cuda_graph(model):
    executable, _, _ = build_onnx(model, target="llvm")
    assert CAPTURE not in executable.as_text()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_gpu_replayed_graph_reads_each_calls_input(model, dtype):
    """Calls after the capture see their own inputs (the graph does not bake in the first)."""
    executable, inputs, outputs = build_onnx(model, target="cuda", dtype=dtype)
    compiled = load_executable(executable, inputs, outputs, "cuda")
    rtol = 1e-4 if dtype == "float32" else 1e-2
    for seed in range(3):
        feeds = random_inputs(inputs, seed=seed)
        got = compiled.run(feeds)[outputs[0].name]
        ref = run_onnxruntime(model, feeds)[0]
        assert np.abs(got - ref).max() <= rtol * np.abs(ref).max()
