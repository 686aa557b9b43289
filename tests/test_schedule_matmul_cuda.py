"""Dense float16 matmuls and convolutions on tensor cores for ``sm_90a`` (ScheduleMatmulCUDA).

CPU: the dense float16 build of a GEMM and of a Conv1d for ``sm_90a`` multiplies with ``wmma``
(TVM's dlight alone gives both CUDA-core loops), float32 and small layers keep dlight's other
schedules. GPU: their outputs match numpy in float64.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from tvm.target import Target

from tvm_sparse_rnn.compile import build_onnx_with_decisions, load_executable
from tvm_sparse_rnn.kernels.cuda.matmul import numeric_arch
from tvm_sparse_rnn.runtime.persistent import cuda_source
from tvm_sparse_rnn.target import resolve_target
from tvm_sparse_rnn.transform import KernelVariant

WMMA = "wmma::mma_sync"
#: float16 result vs float64 reference, relative to the largest |reference|.
FLOAT16_RTOL = 5e-3


def _model(node: onnx.NodeProto, x_shape, y_shape, weights: dict[str, np.ndarray]):
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, y_shape)],
        [numpy_helper.from_array(w, name) for name, w in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _gemm(m: int, n: int, k: int, seed: int = 0):
    """``Y = X W^T`` (``X (m, k)``, dense ``W (n, k)``) and its float64 reference."""
    w = (np.random.default_rng(seed).standard_normal((n, k)) * 0.05).astype(np.float32)
    model = _model(helper.make_node("Gemm", ["X", "W"], ["Y"], transB=1), [m, k], [m, n], {"W": w})
    return model, lambda x: x.astype(np.float64) @ w.T.astype(np.float64)


def _conv1d(batch: int, seed: int = 0):
    """The DeepSpeech2-like Conv1d (161 -> 256 channels, kernel 11, stride 2, 120 frames)."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((256, 161, 11)) * 0.05).astype(np.float32)
    frames = (120 - 11) // 2 + 1
    node = helper.make_node("Conv", ["X", "W"], ["Y"], strides=[2])
    model = _model(node, [batch, 161, 120], [batch, 256, frames], {"W": w})

    def reference(x: np.ndarray) -> np.ndarray:
        cols = np.stack([x[:, :, 2 * t : 2 * t + 11] for t in range(frames)], axis=1)
        return np.einsum("btck,ock->bot", cols.astype(np.float64), w.astype(np.float64))

    return model, reference


def _build(model: onnx.ModelProto, dtype: str = "float16"):
    executable, inputs, outputs, decisions = build_onnx_with_decisions(
        model, target="cuda", dtype=dtype, sparse=False
    )
    assert {d.variant for d in decisions} <= {KernelVariant.DENSE}
    return executable, inputs, outputs


def test_numeric_arch_drops_the_feature_suffix():
    assert str(numeric_arch(resolve_target("cuda")).attrs["arch"]) == "sm_90"
    plain = Target({"kind": "cuda", "arch": "sm_80"})
    assert str(numeric_arch(plain).attrs["arch"]) == "sm_80"


@pytest.mark.parametrize("model", ["gemm", "conv1d"])
def test_dense_float16_layers_multiply_on_tensor_cores(model):
    built = _gemm(128, 256, 192)[0] if model == "gemm" else _conv1d(2)[0]
    assert WMMA in cuda_source(_build(built)[0].mod)


def test_float32_and_small_layers_keep_cuda_cores():
    assert WMMA not in cuda_source(_build(_gemm(128, 256, 192)[0], "float32")[0].mod)
    assert WMMA not in cuda_source(_build(_gemm(16, 256, 192)[0])[0].mod)  # M <= 64


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("case", "x_shape"),
    [("gemm", (128, 192)), ("gemm", (200, 200)), ("conv1d", (2, 161, 120))],
)
def test_gpu_dense_float16_on_tensor_cores_matches_float64(case, x_shape):
    model, reference = _gemm(x_shape[0], 320, x_shape[1]) if case == "gemm" else _conv1d(2)
    executable, inputs, outputs = _build(model)
    assert WMMA in cuda_source(executable.mod)
    x = np.random.default_rng(1).standard_normal(x_shape).astype(np.float32)
    got = load_executable(executable, inputs, outputs, "cuda").run({"X": x})["Y"]
    ref = reference(x)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= FLOAT16_RTOL * np.abs(ref).max()
