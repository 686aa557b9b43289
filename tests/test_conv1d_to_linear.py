"""Conv1dToLinear: 1-D convolutions with constant weights as im2col + a linear layer (llvm)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tvm_sparse_rnn.compile import build_onnx_with_decisions, load_executable
from tvm_sparse_rnn.demo import pruned_weight
from tvm_sparse_rnn.transform import KernelVariant


def _conv_model(w, b, width, batch, stride, pad, dilation):
    filters, channels, kernel = w.shape
    out = (width + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
    node = helper.make_node(
        "Conv", ["X", "W", "B"], ["Y"], "conv", strides=[stride], pads=[pad, pad],
        dilations=[dilation],
    )  # fmt: skip
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [batch, channels, width])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [batch, filters, out])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize(
    ("batch", "channels", "width", "filters", "kernel", "stride", "pad", "dilation", "sparsity"),
    [
        (1, 3, 20, 8, 5, 2, 2, 1, 0.0),
        (2, 4, 17, 6, 3, 1, 0, 1, 0.0),
        (1, 5, 30, 7, 3, 3, 1, 2, 0.0),
        (1, 64, 128, 256, 11, 2, 5, 1, 0.9),  # pruned filters: the linear layer goes sparse
    ],
)
def test_conv1d_matches_onnxruntime(
    batch, channels, width, filters, kernel, stride, pad, dilation, sparsity
):
    rng = np.random.default_rng(0)
    w = pruned_weight(rng, (filters, channels * kernel), sparsity).reshape(filters, channels, -1)
    b = rng.standard_normal(filters).astype("float32")
    model = _conv_model(w, b, width, batch, stride, pad, dilation)
    executable, inputs, outputs, decisions = build_onnx_with_decisions(model, target="llvm")
    (decision,) = decisions
    assert decision.layer == "conv0"
    assert (decision.variant is not KernelVariant.DENSE) == (sparsity > 0)
    x = rng.standard_normal((batch, channels, width)).astype("float32")
    got = load_executable(executable, inputs, outputs, "llvm").run({"X": x})["Y"]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(got, session.run(None, {"X": x})[0], rtol=1e-4, atol=1e-4)


def test_float16_conv1d_becomes_a_linear_layer_and_matches_onnxruntime():
    """A float16 build casts the convolution first; it is still rewritten (``conv0``), and the
    result stays within the float16 tolerance of onnxruntime's float32 run."""
    rng = np.random.default_rng(3)
    w = pruned_weight(rng, (8, 4 * 5), 0.0).reshape(8, 4, 5)
    b = rng.standard_normal(8).astype("float32")
    model = _conv_model(w, b, 30, 2, 2, 1, 1)
    executable, inputs, outputs, decisions = build_onnx_with_decisions(
        model, target="llvm", dtype="float16"
    )
    assert [d.layer for d in decisions] == ["conv0"]
    x = rng.standard_normal((2, 4, 30)).astype("float32")
    got = load_executable(executable, inputs, outputs, "llvm").run({"X": x})["Y"]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = session.run(None, {"X": x})[0]
    assert np.abs(got - ref).max() <= 1e-2 * np.abs(ref).max()
