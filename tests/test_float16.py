"""``--dtype float16``: ToFloat16 + AccumulateInFloat32 in the pipeline, numerics vs onnxruntime.

float16 results are checked against onnxruntime's float32 run with a stated tolerance: the largest
error at most ``FLOAT16_RTOL`` of the largest output magnitude (the builds measured here stay
under 2e-3); the float32 build of the same model keeps the suite's 1e-4.
"""

from __future__ import annotations

import json
import re

import numpy as np
import onnxruntime as ort
import pytest
import tvm
from tvm import relax

from tvm_sparse_rnn.cli.main import main
from tvm_sparse_rnn.compile import build_onnx_with_decisions, load_executable, plan_onnx
from tvm_sparse_rnn.demo import build_demo_model, random_inputs
from tvm_sparse_rnn.errors import UnsupportedError
from tvm_sparse_rnn.frontend.onnx import from_onnx, model_signature
from tvm_sparse_rnn.pipeline import sparse_pipeline
from tvm_sparse_rnn.runtime.persistent import cuda_source
from tvm_sparse_rnn.testing import (
    random_recurrent_weights,
    recurrent_onnx_model,
    run_onnxruntime,
)
from tvm_sparse_rnn.transform import AccumulateInFloat32, KernelVariant, ToFloat16

#: Largest float16 error, relative to the largest |output| of onnxruntime's float32 run.
FLOAT16_RTOL = 1e-2
#: The demo MLP on 16 rows: fc1 1024x512 and fc2 1024x1024 go sparse; the classifier (16 x 1024,
#: 50 % pruned) stays dense on llvm, on cuda it runs on the block kernel (one dense CTA).
MLP = {"seq_len": 4, "batch": 4, "hidden": 512, "mlp": 1024, "classes": 16, "recurrent": False}
#: The same behind its pruned RNN layer.
WITH_RNN = {**MLP, "hidden": 128, "recurrent": True}


def _relative_error(model, target: str, dtype: str, feeds: dict | None = None) -> float:
    """Largest error of every output vs onnxruntime, relative to that output's largest value."""
    executable, inputs, outputs, _ = build_onnx_with_decisions(model, target=target, dtype=dtype)
    feeds = random_inputs(inputs) if feeds is None else feeds
    got = load_executable(executable, inputs, outputs, target).run(feeds)
    refs = run_onnxruntime(model, feeds)
    errors = []
    for spec, ref in zip(outputs, refs, strict=True):
        assert got[spec.name].dtype == np.float32  # the model's signature is kept
        errors.append(np.abs(got[spec.name] - ref).max() / np.abs(ref).max())
    return float(max(errors))


#: Recurrent layers (kind, attributes, direction, optional inputs): T = 8, N = 3, I = 24,
#: H = 48, R 20 %; GRU with linear_before_reset 1 (torch exports) and 0 (ONNX's default).
RECURRENT = [
    ("GRU", {"linear_before_reset": 1}, "forward", ()),
    ("GRU", None, "bidirectional", ("initial_h",)),
    ("LSTM", None, "bidirectional", ("initial_h", "initial_c")),
    ("RNN", None, "reverse", ("sequence_lens",)),
]


def _recurrent(
    kind: str, attributes: dict | None, direction: str, inputs: tuple[str, ...]
) -> tuple:
    """A one-layer model and its feeds."""
    seq_len, batch, size, hidden = 8, 3, 24, 48
    d = 2 if direction == "bidirectional" else 1
    w = random_recurrent_weights(kind, hidden, size, d, density=0.2, seed=3)
    model = recurrent_onnx_model(
        kind, w, seq_len, batch, size, hidden, direction, 0, inputs, attributes
    )
    rng = np.random.default_rng(4)
    feeds = {"X": rng.standard_normal((seq_len, batch, size)).astype("float32")}
    for name in inputs:
        feeds[name] = (
            np.array([8, 5, 1], "int32")
            if name == "sequence_lens"
            else rng.standard_normal((d, batch, hidden)).astype("float32")
        )
    return model, feeds


@pytest.mark.parametrize("config", [MLP, WITH_RNN], ids=["mlp", "rnn+mlp"])
def test_float16_build_matches_onnxruntime_on_llvm(config):
    model = build_demo_model(**config)
    assert _relative_error(model, "llvm", "float32") < 1e-5
    err16 = _relative_error(model, "llvm", "float16")
    assert 1e-5 < err16 < FLOAT16_RTOL  # really computed in half precision, and close


@pytest.mark.parametrize(("kind", "attributes", "direction", "inputs"), RECURRENT)
def test_float16_recurrent_layers_match_onnxruntime_on_llvm(kind, attributes, direction, inputs):
    """On llvm the float16 layer runs the float32 x86 kernel between casts."""
    model, feeds = _recurrent(kind, attributes, direction, inputs)
    assert _relative_error(model, "llvm", "float16", feeds) < FLOAT16_RTOL


@pytest.mark.parametrize("case", RECURRENT[:2], ids=["gru", "gru-lbr0"])
def test_float16_cuda_build_runs_the_persistent_kernel_in_half(case):
    """sm_90a source, no GPU: GRU (both linear_before_reset) on the float16 persistent kernel,
    h and U in half."""
    model, _ = _recurrent(*case)
    executable, _, _, decisions = build_onnx_with_decisions(model, target="cuda", dtype="float16")
    persistent = [d for d in decisions if d.variant is KernelVariant.PERSISTENT]
    assert persistent and all(" float16 " in d.detail for d in persistent)
    two_phase = case[1] is None  # ONNX's default linear_before_reset=0
    assert all((" two-phase " in d.detail) == two_phase for d in persistent)
    kernels = dict(re.findall(KERNEL_PARAMS, cuda_source(executable.mod)))
    (params,) = [
        p for name, p in kernels.items() if name.startswith("rnn_persistent") and "U_" in p
    ]
    for buffer in ("U", "h0", "out"):
        assert f"half* __restrict__ {buffer}_ptr" in params
    assert "float* __restrict__ rbias_ptr" in params


def test_float16_per_step_fallback_builds_for_cuda():
    """sequence_lens keeps the layer off the persistent kernel: per step, in float32, casts."""
    model, _ = _recurrent(*RECURRENT[-1])
    _, _, _, decisions = build_onnx_with_decisions(model, target="cuda", dtype="float16")
    assert [d.variant for d in decisions if "RNN" in d.detail] == [KernelVariant.PER_STEP]


def test_float16_layers_still_go_sparse():
    decisions = {
        d.layer: d.variant
        for d in plan_onnx(build_demo_model(**MLP), target="llvm", dtype="float16")
    }
    assert decisions["fc1"] is KernelVariant.SPARSE_DENSE
    assert decisions["fc2"] is KernelVariant.SPARSE_DENSE
    assert decisions["classifier"] is KernelVariant.DENSE


#: The name and parameter list of every ``__global__`` function in CUDA source.
KERNEL_PARAMS = r"__global__ void (?:__launch_bounds__\(\d+\) )?(\w+)\(([^)]*)\)"


def _kernel_body(source: str, name: str) -> str:
    """The definition of ``__global__`` function ``name`` in CUDA ``source``."""
    (body,) = [
        part
        for part in source.split('extern "C" __global__')
        if re.match(rf"\s*void (?:__launch_bounds__\(\d+\) )?{name}\([^)]*\)\s*{{", part)
    ]
    return body


def test_float16_cuda_build_runs_the_sparse_kernels_on_tensor_cores():
    """sm_90a source, no GPU: fc1 and fc2 (16 rows) read half pair words and multiply with
    wmma; the decisions say so."""
    executable, _, _, decisions = build_onnx_with_decisions(
        build_demo_model(**MLP), target="cuda", dtype="float16"
    )
    variants = {d.layer: d.variant for d in decisions}
    assert variants["fc1"] is variants["fc2"] is KernelVariant.TENSOR_CORE
    assert variants["classifier"] is KernelVariant.SPARSE_DENSE  # the dense matmul: 1 CTA
    source = cuda_source(executable.mod)
    kernels = dict(re.findall(KERNEL_PARAMS, source))  # name -> parameters
    sparse = [name for name, params in kernels.items() if "words" in params]
    assert len(sparse) == 2, "fc1 and fc2 run a tensor-core kernel"
    for name in sparse:
        assert "half* __restrict__ x" in kernels[name]
        assert "uint* __restrict__ words" in kernels[name]
        assert "nvcuda::wmma::mma_sync" in _kernel_body(source, name)
    (classifier,) = [name for name in kernels if "bsr" in name]
    assert "float4" in _kernel_body(source, classifier)  # float32 accumulators


def _matmul_module(k: int) -> tvm.IRModule:
    """``main(a [4, k], b [k, 8]) = R.matmul(a, b, out_dtype="float16")``, all float16."""
    bb = relax.BlockBuilder()
    a = relax.Var("a", relax.TensorType((4, k), "float16"))
    b = relax.Var("b", relax.TensorType((k, 8), "float16"))
    with bb.function("main", [a, b]):
        with bb.dataflow():
            y = bb.emit_output(relax.op.matmul(a, b, out_dtype="float16"))
        bb.emit_func_output(y)
    return bb.get()


def test_accumulate_in_float32_rewrites_half_matmuls_and_is_more_accurate():
    k = 4096
    mod = _matmul_module(k)
    wide = AccumulateInFloat32()(mod)
    text = wide.script()
    assert 'out_dtype="float32"' in text and "R.astype(" in text
    rng = np.random.default_rng(0)
    a = rng.random((4, k)).astype("float16")  # positive: the sum grows, half rounding shows
    b = rng.random((k, 8)).astype("float16")
    exact = a.astype(np.float64) @ b.astype(np.float64)

    def run(m):
        vm = relax.VirtualMachine(tvm.compile(m, "llvm"), tvm.cpu())
        return vm["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b)).numpy()

    narrow_err = np.abs(run(mod) - exact).max() / exact.max()
    wide_err = np.abs(run(wide) - exact).max() / exact.max()
    assert wide_err < 1e-3  # one rounding to half at the end
    assert wide_err < narrow_err / 4


def test_accumulate_in_float32_rewrites_half_convolutions():
    """A float16 Conv1d of 64 x 48 products per output: float32 sums, one rounding (llvm)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 64, 100), "float16"))
    w = relax.Var("w", relax.TensorType((8, 64, 48), "float16"))
    with bb.function("main", [x, w]):
        with bb.dataflow():
            y = relax.op.nn.conv1d(x, w, strides=2, padding=1, out_dtype="float16")
            y = bb.emit_output(y)
        bb.emit_func_output(y)
    mod = bb.get()
    wide = AccumulateInFloat32()(mod)
    text = wide.script()
    assert 'out_dtype="float32"' in text and "strides=[2]" in text and "R.astype(" in text
    rng = np.random.default_rng(1)
    xs, ws = rng.random((1, 64, 100)).astype("float16"), rng.random((8, 64, 48)).astype("float16")
    padded = np.pad(xs.astype(np.float64), ((0, 0), (0, 0), (1, 1)))
    frames = (100 + 2 - 48) // 2 + 1
    cols = np.stack([padded[0, :, 2 * t : 2 * t + 48] for t in range(frames)])
    exact = np.einsum("tck,ock->ot", cols, ws.astype(np.float64))[None]

    def run(m):
        vm = relax.VirtualMachine(tvm.compile(m, "llvm"), tvm.cpu())
        return vm["main"](tvm.runtime.tensor(xs), tvm.runtime.tensor(ws)).numpy()

    narrow_err = np.abs(run(mod) - exact).max() / exact.max()
    wide_err = np.abs(run(wide) - exact).max() / exact.max()
    assert wide_err < 1e-3 and wide_err < narrow_err / 4


def test_to_float16_keeps_the_signature_and_stores_half_weights():
    mod = ToFloat16()(from_onnx(build_demo_model(**MLP)))
    main_fn = mod["main"]
    assert [str(p.ty.dtype) for p in main_fn.params] == ["float32"]
    assert str(main_fn.ret_ty.dtype) == "float32"
    assert 'out_dtype="float16"' in mod.script(show_meta=False)


def test_unknown_dtype_is_a_typed_error(tmp_path):
    with pytest.raises(UnsupportedError, match=r"'bfloat16'.*float32, float16"):
        sparse_pipeline("llvm", dtype="bfloat16")
    path = tmp_path / "mlp.onnx"
    path.write_bytes(build_demo_model(**MLP).SerializeToString())
    assert main(["inspect", str(path), "--dtype", "bfloat16"]) == 2  # argparse choices


def test_cli_compiles_and_runs_in_float16(tmp_path):
    model = build_demo_model(**MLP)
    path, library = tmp_path / "mlp.onnx", tmp_path / "mlp16.so"
    path.write_bytes(model.SerializeToString())
    assert main(["compile", str(path), "--dtype", "float16", "-o", str(library)]) == 0
    feeds = random_inputs(model_signature(model, None)[0])
    np.savez(tmp_path / "in.npz", **feeds)
    out = tmp_path / "out.npz"
    assert main(["run", str(library), "--inputs", str(tmp_path / "in.npz"), "-o", str(out)]) == 0
    got = np.load(out)[model.graph.output[0].name]
    ref = ort.InferenceSession(model.SerializeToString()).run(None, feeds)[0]
    assert np.abs(got - ref).max() / np.abs(ref).max() < FLOAT16_RTOL


@pytest.mark.gpu
@pytest.mark.parametrize("config", [MLP, WITH_RNN], ids=["mlp", "rnn+mlp"])
def test_float16_build_matches_onnxruntime_on_the_gpu(config):
    model = build_demo_model(**config)
    assert _relative_error(model, "cuda", "float16") < FLOAT16_RTOL


@pytest.mark.gpu
@pytest.mark.parametrize(("kind", "attributes", "direction", "inputs"), RECURRENT)
def test_float16_recurrent_layers_match_onnxruntime_on_the_gpu(kind, attributes, direction, inputs):
    """The float16 persistent kernel (GRU of both linear_before_reset, LSTM) and the per-step
    fallback (sequence_lens)."""
    model, feeds = _recurrent(kind, attributes, direction, inputs)
    assert _relative_error(model, "cuda", "float16", feeds) < FLOAT16_RTOL


def test_bench_builds_and_checks_in_float16(tmp_path):
    """``bench --dtype float16`` times the float16 build and checks it with float16 tolerances."""
    path, report = tmp_path / "mlp.onnx", tmp_path / "bench.json"
    path.write_bytes(build_demo_model(**MLP).SerializeToString())
    argv = ["bench", str(path), "--dtype", "float16", "--repeat", "2", "--warmup", "0"]
    assert main([*argv, "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["dtype"] == "float16" and result["matches"]
    assert 0 < result["max_abs_err"]["tvm-sparse-rnn"] < 1e-2
