"""End-to-end ONNX import of pruned models (onnx.helper graphs) vs onnxruntime."""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from tvm_sparse_rnn.compile import build_onnx_with_decisions, plan_onnx
from tvm_sparse_rnn.demo import OPSET, build_demo_model, build_recurrent_model, pruned_weight
from tvm_sparse_rnn.errors import ModelError, UnsupportedError
from tvm_sparse_rnn.frontend import from_onnx, load_onnx
from tvm_sparse_rnn.transform import KernelVariant
from tvm_sparse_rnn.transform.dispatch.cost_model import CostParams

HAS_RNN = importlib.util.find_spec("tvm_sparse_rnn.frontend.onnx_rnn") is not None
needs_rnn = pytest.mark.skipif(
    not HAS_RNN, reason="recurrent converters (tvm_sparse_rnn.frontend.onnx_rnn) not available"
)
RTOL = ATOL = 1e-4
#: The cost rule without its per-kernel overhead: the test layers are small (see
#: tests/test_dense_to_sparse.py for that term).
WORK_ONLY = CostParams(block_overhead=16.0, break_even=0.45)


def _model(nodes, inputs, outputs, inits):
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _f32(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _ort(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _tvm(model, feeds, target="llvm", **kwargs):
    """Build with the package's pipeline; returns ``(decisions, outputs)``."""
    executable, _, _, decisions = build_onnx_with_decisions(
        model, target=target, params=WORK_ONLY, **kwargs
    )
    vm = relax.VirtualMachine(executable, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(v) for v in feeds.values()])
    outs = [out.numpy()] if isinstance(out, tvm.runtime.Tensor) else [o.numpy() for o in out]
    return decisions, outs


def _sparse(decisions):
    return [d for d in decisions if d.variant is KernelVariant.SPARSE_DENSE]


def gemm_matmul_mlp(seed=0):
    """Gemm(transB=1, alpha, beta, bias) -> Relu -> MatMul(W*mask) -> Gemm(transA=1 via a
    transposed input, transB=0) -> dense MatMul that must stay dense."""
    rng = np.random.default_rng(seed)
    w1 = pruned_weight(rng, (64, 32), 0.9, (1, 16))
    w2 = rng.standard_normal((64, 64)).astype("float32")
    m2 = pruned_weight(rng, (64, 64), 0.9, (4, 4)) != 0
    w3 = pruned_weight(rng, (32, 64), 0.9, (8, 1))
    w4 = rng.standard_normal((32, 16)).astype("float32")
    inits = [
        numpy_helper.from_array(w1, "W1"),
        numpy_helper.from_array(rng.standard_normal(64).astype("float32"), "B1"),
        numpy_helper.from_array(w2, "W2"),
        numpy_helper.from_array(m2.astype("float32"), "M2"),
        numpy_helper.from_array(np.ascontiguousarray(w3.T), "W3"),
        numpy_helper.from_array(rng.standard_normal(32).astype("float32"), "B3"),
        numpy_helper.from_array(w4, "W4"),
    ]
    nodes = [
        helper.make_node("Gemm", ["X", "W1", "B1"], ["g1"], "fc1", transB=1, alpha=0.5, beta=2.0),
        helper.make_node("Relu", ["g1"], ["a1"], "relu1"),
        helper.make_node("Mul", ["W2", "M2"], ["W2m"], "prune"),
        helper.make_node("MatMul", ["a1", "W2m"], ["g2"], "fc2"),
        helper.make_node("Transpose", ["g2"], ["g2t"], "t"),
        helper.make_node("Gemm", ["g2t", "W3", "B3"], ["g3"], "fc3", transA=1),
        helper.make_node("MatMul", ["g3", "W4"], ["Y"], "head"),
    ]
    return _model(nodes, [_f32("X", [6, 32])], [_f32("Y", [6, 16])], inits)


def test_mlp_gemm_matmul_matches_onnxruntime():
    model = gemm_matmul_mlp()
    feeds = {"X": np.random.default_rng(1).standard_normal((6, 32)).astype("float32")}
    decisions, got = _tvm(model, feeds)
    np.testing.assert_allclose(got[0], _ort(model, feeds)[0], rtol=RTOL, atol=ATOL)
    assert len(_sparse(decisions)) == 3
    plans = {d.layer: d for d in plan_onnx(model, target="llvm", params=WORK_ONLY)}
    assert plans == {d.layer: d for d in decisions}  # inspect decides what compile builds
    variants = [plans[n].variant for n in ("fc1", "fc2", "fc3", "head")]
    assert variants == [KernelVariant.SPARSE_DENSE] * 3 + [KernelVariant.DENSE]
    assert "block 1x16" in plans["fc1"].detail
    assert "block 4x4" in plans["fc2"].detail
    assert "block 8x1" in plans["fc3"].detail


def test_3d_matmul_and_fixed_block_size():
    rng = np.random.default_rng(2)
    w = pruned_weight(rng, (48, 32), 0.9, (1, 16))
    model = _model(
        [helper.make_node("MatMul", ["X", "W"], ["Y"], "mm")],
        [_f32("X", [2, 5, 32])],
        [_f32("Y", [2, 5, 48])],
        [numpy_helper.from_array(np.ascontiguousarray(w.T), "W")],
    )
    feeds = {"X": rng.standard_normal((2, 5, 32)).astype("float32")}
    for block in ("auto", (2, 8)):
        decisions, got = _tvm(model, feeds, block_size=block)
        assert _sparse(decisions)
        np.testing.assert_allclose(got[0], _ort(model, feeds)[0], rtol=RTOL, atol=ATOL)


def test_symbolic_batch_with_shape_dict():
    rng = np.random.default_rng(3)
    w = pruned_weight(rng, (32, 32), 0.9, (1, 16))
    model = _model(
        [helper.make_node("MatMul", ["X", "W"], ["Y"], "mm")],
        [_f32("X", ["batch", 32])],
        [_f32("Y", ["batch", 32])],
        [numpy_helper.from_array(w, "W")],
    )
    feeds = {"X": rng.standard_normal((3, 32)).astype("float32")}
    _, got = _tvm(model, feeds, shape_dict={"X": (3, 32)})
    np.testing.assert_allclose(got[0], _ort(model, feeds)[0], rtol=RTOL, atol=ATOL)
    with pytest.raises(ModelError, match="unknown input"):
        from_onnx(model, shape_dict={"x": (3, 32)})


def test_unsupported_op_names_the_node():
    graph = helper.make_graph(
        [helper.make_node("FancyOp", ["X"], ["Y"], "my_fancy", domain="com.example")],
        "g",
        [_f32("X", [2, 4])],
        [_f32("Y", [2, 4])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.example", 1)],
    )
    model.ir_version = 8
    with pytest.raises(UnsupportedError, match=r"my_fancy.*FancyOp.*com\.example"):
        from_onnx(model)


def test_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage-not-a-protobuf\xff\xff")
    with pytest.raises(ModelError, match=r"bad\.onnx"):
        load_onnx(bad)
    with pytest.raises(ModelError, match="does not exist"):
        load_onnx(tmp_path / "missing.onnx")


def test_cuda_build_packs_sparse_kernel_source():
    """Builds for sm_90a on a GPU-less machine; the sparse kernels are in the CUDA source."""
    model = gemm_matmul_mlp()
    executable, _, _, decisions = build_onnx_with_decisions(model, target="cuda", params=WORK_ONLY)
    assert len(_sparse(decisions)) == 3  # fc1, fc2, fc3; head stays dense
    modules, cuda = [executable.mod], []
    while modules:
        m = modules.pop()
        modules.extend(m.imports)
        cuda += [m.inspect_source()] if m.kind == "cuda" else []
    assert len(cuda) == 1
    kernels = cuda[0].split("__global__")[1:]
    assert sum("W_indptr" in k for k in kernels) >= 3


@pytest.mark.gpu
def test_cuda_end_to_end_matches_onnxruntime():
    model = gemm_matmul_mlp()
    feeds = {"X": np.random.default_rng(4).standard_normal((6, 32)).astype("float32")}
    executable = build_onnx_with_decisions(model, target="cuda", params=WORK_ONLY)[0]
    vm = relax.VirtualMachine(executable, tvm.cuda())
    out = vm["main"](tvm.runtime.tensor(feeds["X"], tvm.cuda())).numpy()
    np.testing.assert_allclose(out, _ort(model, feeds)[0], rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------- recurrent
@needs_rnn
@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
def test_recurrent_matches_onnxruntime(op):
    model = build_recurrent_model(op, seq_len=5, batch=2, input_size=16, hidden=32)
    feeds = {"X": np.random.default_rng(5).standard_normal((5, 2, 16)).astype("float32")}
    _, got = _tvm(model, feeds)
    for g, ref in zip(got, _ort(model, feeds), strict=True):
        np.testing.assert_allclose(g, ref, rtol=RTOL, atol=ATOL)


@needs_rnn
def test_mixed_demo_model_matches_onnxruntime():
    model = build_demo_model(seq_len=3, batch=2, input_size=32, hidden=64, mlp=64, classes=16)
    feeds = {"frames": np.random.default_rng(6).standard_normal((3, 2, 32)).astype("float32")}
    decisions, got = _tvm(model, feeds)
    np.testing.assert_allclose(got[0], _ort(model, feeds)[0], rtol=RTOL, atol=ATOL)
    assert _sparse(decisions)
