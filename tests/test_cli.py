"""The ``tvm-sparse-rnn`` CLI: every subcommand, round trips vs onnxruntime, errors, exit codes."""

from __future__ import annotations

import json
import re

import numpy as np
import onnxruntime as ort
import pytest
import tvm
from onnx import TensorProto, helper

from tvm_sparse_rnn.cli.main import EXIT_CODES, main
from tvm_sparse_rnn.demo import build_demo_model
from tvm_sparse_rnn.errors import ModelError, UnsupportedError

CODE = dict(EXIT_CODES)
#: Big enough for the cost rule's per-kernel overhead: fc1 1024x512 and fc2 1024x1024 go sparse.
MLP = {"seq_len": 4, "batch": 4, "hidden": 512, "mlp": 1024, "classes": 16, "recurrent": False}


@pytest.fixture(scope="module")
def mlp_path(tmp_path_factory):
    """The demo MLP without its RNN on 16 rows: fc1 1x16, fc2 4x4, classifier dense."""
    path = tmp_path_factory.mktemp("models") / "mlp.onnx"
    path.write_bytes(build_demo_model(**MLP).SerializeToString())
    return path


@pytest.fixture(scope="module")
def compiled(mlp_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("build") / "mlp.so"
    assert main(["compile", str(mlp_path), "--target", "llvm", "-o", str(out)]) == 0
    return out


def _ort(path, feeds):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def test_compile_then_run_round_trip(mlp_path, compiled, tmp_path, capsys):
    signature = json.loads(compiled.with_suffix(".json").read_text())
    assert signature["inputs"] == [{"name": "frames", "shape": [16, 512], "dtype": "float32"}]
    assert signature["outputs"][0]["name"] == "logits"
    x = np.random.default_rng(0).standard_normal((16, 512)).astype("float32")
    np.savez(tmp_path / "in.npz", frames=x)
    rc = main(
        ["run", str(compiled), "--inputs", str(tmp_path / "in.npz"), "-o", str(tmp_path / "o.npz")]
    )
    assert rc == 0
    assert "logits (16, 16)" in capsys.readouterr().out
    got = np.load(tmp_path / "o.npz")["logits"]  # np.savez appends .npz
    np.testing.assert_allclose(got, _ort(mlp_path, {"frames": x}), rtol=1e-4, atol=1e-4)


def test_library_loads_with_plain_tvm(mlp_path, compiled):
    """The .so is self-contained: tvm.runtime.load_module + the Relax VM run it."""
    x = np.random.default_rng(1).standard_normal((16, 512)).astype("float32")
    vm = tvm.relax.VirtualMachine(tvm.runtime.load_module(str(compiled)), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(got, _ort(mlp_path, {"frames": x}), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (
            {"frame": np.zeros((16, 512), "float32")},
            "unknown \\['frame'\\], missing \\['frames'\\]",
        ),
        ({"frames": np.zeros((16, 511), "float32")}, "'frames' has shape \\(16, 511\\)"),
        ({"frames": np.zeros((16, 512), "complex64")}, "'frames' has dtype complex64"),
    ],
)
def test_run_rejects_wrong_inputs(compiled, tmp_path, capsys, arrays, message):
    np.savez(tmp_path / "in.npz", **arrays)
    rc = main(
        ["run", str(compiled), "--inputs", str(tmp_path / "in.npz"), "-o", str(tmp_path / "o.npz")]
    )
    assert rc == CODE[ModelError]
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("error: ModelError:")
    assert re.search(message, err), err


def test_inspect_reports_per_layer_choice(mlp_path, capsys):
    assert main(["inspect", str(mlp_path)]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[3:]}
    # 32 rows of input: the x86 CSR kernel beats the block kernels (1x16, 4x4) there
    assert rows["fc1"].split()[1] == "csr_spmm" and "W 1024x512, sparsity 90.3%" in rows["fc1"]
    assert rows["fc2"].split()[1] == "csr_spmm" and "W 1024x1024" in rows["fc2"]
    assert rows["classifier"].split()[1] == "dense" and "block 16x16" in rows["classifier"]


def test_inspect_fixed_block_and_threshold(mlp_path, capsys):
    args = ["inspect", str(mlp_path), "--block-size", "2x2", "--sparsity-threshold", "0.95"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "2x2" in out and "sparse " not in out and "threshold 95.0%" in out


def test_bad_models_and_usage(tmp_path, capsys):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07not an onnx model\xff")
    assert main(["compile", str(corrupt), "-o", str(tmp_path / "x.so")]) == CODE[ModelError]
    assert "corrupt.onnx" in capsys.readouterr().err
    graph = helper.make_graph(
        [helper.make_node("FancyOp", ["X"], ["Y"], "odd_node", domain="com.example")],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    )
    model.ir_version = 8
    (tmp_path / "odd.onnx").write_bytes(model.SerializeToString())
    assert main(["inspect", str(tmp_path / "odd.onnx")]) == CODE[UnsupportedError]
    assert "odd_node" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.so"), "--inputs", "a", "-o", "b"]) == 3
    assert main(["compile", "m.onnx", "--block-size", "4"]) == 2
    assert main(["compile", "m.onnx", "-o", "x.so", "--sparsity-threshold", "2"]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["--help"]) == 0


def test_bench_writes_json(mlp_path, tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", str(mlp_path), "--repeat", "3", "--warmup", "1", "--json", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["matches"]
    assert set(result["median_ms"]) == {"tvm-sparse-rnn", "tvm-dense", "onnxruntime-cpu"}
    assert result["max_abs_err"]["tvm-sparse-rnn"] < 1e-3
    assert "speed-up" in capsys.readouterr().out


def test_demo_runs_end_to_end(capsys):
    """The README's main job exactly as users run it (the embedded default model)."""
    assert main(["demo", "--repeat", "2"]) == 0
    out = capsys.readouterr().out
    fc2 = next(line for line in out.splitlines() if line.startswith("fc2"))
    assert "csr_spmm" in fc2 and "W 1024x1024" in fc2  # 32 rows: the CSR kernel
    assert any(line.startswith("rnn[0]") and "recurrent_x86" in line for line in out.splitlines())
    assert "check: matches onnxruntime" in out and "vs dense TVM" in out


def test_compile_verbose_with_tuning_logs(mlp_path, tmp_path, capsys, caplog):
    """An empty tuning database falls back to the defaults; -v logs each layer's decision."""
    (tmp_path / "logs").mkdir()
    out = tmp_path / "t.so"
    args = ["-v", "compile", str(mlp_path), "--tuning-logs", str(tmp_path / "logs"), "-o", str(out)]
    with caplog.at_level("INFO", logger="tvm_sparse_rnn"):
        assert main(args) == 0
    assert out.is_file()
    assert "dispatch dense1 -> csr_spmm: W 1024x1024, sparsity 90.2%, CSR" in caplog.text


@pytest.mark.gpu
def test_cuda_compile_then_run_round_trip(mlp_path, tmp_path):
    out = tmp_path / "mlp_cuda.so"
    assert main(["compile", str(mlp_path), "--target", "cuda", "-o", str(out)]) == 0
    x = np.random.default_rng(2).standard_normal((16, 512)).astype("float32")
    np.savez(tmp_path / "in.npz", frames=x)
    assert (
        main(["run", str(out), "--inputs", str(tmp_path / "in.npz"), "-o", str(tmp_path / "o")])
        == 0
    )
    got = np.load(tmp_path / "o.npz")["logits"]
    np.testing.assert_allclose(got, _ort(mlp_path, {"frames": x}), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("flag", "expected"), [([], True), (["--no-cuda-graph"], False)])
def test_compile_passes_the_cuda_graph_switch(mlp_path, tmp_path, monkeypatch, flag, expected):
    """``--no-cuda-graph`` reaches the build (``cuda_graph=False``); CUDA graphs by default."""
    import tvm_sparse_rnn.compile as compile_module

    seen = {}

    def fake_compile(model, output, **kwargs):
        seen.update(kwargs)
        return output, []

    monkeypatch.setattr(compile_module, "compile_onnx", fake_compile)
    out = tmp_path / "m.so"
    assert main(["compile", str(mlp_path), "--target", "cuda", *flag, "-o", str(out)]) == 0
    assert seen["cuda_graph"] is expected and seen["target"] == "cuda"
