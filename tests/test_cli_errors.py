"""CLI failures: each is one ``error: ...`` line on stderr and a documented exit code.

Covers file-system errors, Ctrl-C (also when a library turns it into another exception), bad
counts, ``run --inputs x.npy``, ``-o`` paths that would overwrite an input or the signature,
missing ``--tuning-logs``, and unexpected exceptions.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import tvm_sparse_rnn.compile
from tvm_sparse_rnn.cli.main import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OS_ERROR,
    EXIT_USAGE,
    main,
)

MODEL_ERROR = 3


def _model(n_inputs: int = 1):
    """``Y = X0 @ W (+ X1)``: a tiny model with one or two inputs."""
    w = np.random.default_rng(0).standard_normal((8, 4)).astype("float32")
    nodes = [helper.make_node("MatMul", ["X0", "W"], ["Y" if n_inputs == 1 else "P"])]
    inputs = [helper.make_tensor_value_info("X0", TensorProto.FLOAT, [2, 8])]
    if n_inputs == 2:
        nodes.append(helper.make_node("Add", ["P", "X1"], ["Y"]))
        inputs.append(helper.make_tensor_value_info("X1", TensorProto.FLOAT, [2, 4]))
    graph = helper.make_graph(
        nodes,
        "g",
        inputs,
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 4])],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, w


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "model.onnx"
    path.write_bytes(_model()[0].SerializeToString())
    return path


@pytest.fixture(scope="module")
def library(model_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("lib") / "model.so"
    assert main(["compile", str(model_path), "-o", str(out)]) == 0
    return out


def _one_error_line(capsys) -> str:
    """The single stderr line of a failed command (asserts it is one ``error:`` line)."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: "), lines
    return lines[0]


# ------------------------------------------------------------------ usage errors (exit 2)
@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["bench", "m.onnx", "--repeat", "0"], "--repeat: must be >= 1, got 0"),
        (["bench", "m.onnx", "--repeat", "-3"], "--repeat: must be >= 1"),
        (["bench", "m.onnx", "--repeat", "x"], "not an integer"),
        (["bench", "m.onnx", "--warmup", "-1"], "--warmup: must be >= 0"),
        (["tune", "--op", "sparse_dense", "--seed", "-1"], "--seed: must be >= 0"),
        (["tune", "--op", "sparse_dense", "--trials", "0"], "--trials: must be >= 1"),
        (["tune"], "give either MODEL.onnx or --op"),
        (["tune", "m.onnx", "--op", "rnn"], "give either MODEL.onnx or --op"),
        (["tune", "--op", "rnn", "--target", "cuda"], "use --target llvm"),
        (["tune", "--op", "persistent"], "use --target cuda"),
        (["compile", "m.onnx"], "-o/--output"),
        (["compile", "m.onnx", "-o", "x.so", "--tuning-logs", "/nonexistent/logs"], "does not"),
        (["compile", "m.onnx", "-o", "x.so", "--shape", "x=1.5"], "NAME=D1,D2"),
        (["compile", "m.onnx", "-o", "x.so", "--target", "metal"], "invalid choice"),
        (["frobnicate"], "invalid choice"),
        (["run", "lib.so", "--inputs", "a.npz", "-o", "o.npz", "--bogus"], "unrecognized"),
    ],
)
def test_usage_errors_are_one_line(argv, needle, capsys):
    assert main(argv) == EXIT_USAGE
    assert needle in _one_error_line(capsys)


def test_tuning_logs_must_be_a_directory(model_path, tmp_path, capsys):
    not_dir = tmp_path / "logs.txt"
    not_dir.write_text("x")
    argv = ["compile", str(model_path), "-o", str(tmp_path / "x.so"), "--tuning-logs"]
    assert main([*argv, str(not_dir)]) == EXIT_USAGE
    assert "is not a directory" in _one_error_line(capsys)


def test_tune_work_dir_must_be_a_directory(tmp_path, capsys):
    not_dir = tmp_path / "file"
    not_dir.write_text("x")
    assert main(["tune", "--op", "sparse_dense", "--work-dir", str(not_dir)]) == EXIT_USAGE
    assert "--work-dir" in _one_error_line(capsys)


# ------------------------------------------------------------------ -o never overwrites inputs
def _overwrite_cases(model_path):
    d = model_path.parent
    return {
        "-o lib.json (the signature)": d / "lib.json",
        "-o the input model": model_path,
        "-o the input model, other spelling": d / "sub" / ".." / model_path.name,
        "-o a directory": d,
    }


@pytest.mark.parametrize(
    "case",
    [
        "-o lib.json (the signature)",
        "-o the input model",
        "-o the input model, other spelling",
        "-o a directory",
    ],
)
def test_compile_output_never_overwrites(model_path, case, capsys):
    output = _overwrite_cases(model_path)[case]
    (model_path.parent / "sub").mkdir(exist_ok=True)
    before = model_path.read_bytes()
    assert main(["compile", str(model_path), "-o", str(output)]) == EXIT_USAGE
    line = _one_error_line(capsys)
    assert "-o" in line and str(output) in line
    assert model_path.read_bytes() == before


def test_compile_signature_never_overwrites_model(tmp_path, capsys):
    """An input named model.json: ``-o model.so`` would write its signature over it."""
    model = tmp_path / "model.json"
    model.write_bytes(_model()[0].SerializeToString())
    assert main(["compile", str(model), "-o", str(tmp_path / "model.so")]) == EXIT_USAGE
    assert "the signature of -o" in _one_error_line(capsys)


def test_compile_output_via_symlink(model_path, tmp_path, capsys):
    link = tmp_path / "link.onnx"
    link.symlink_to(model_path)
    assert main(["compile", str(model_path), "-o", str(link)]) == EXIT_USAGE
    assert "would overwrite the input model" in _one_error_line(capsys)


def test_bench_json_never_overwrites_model(model_path, capsys):
    assert main(["bench", str(model_path), "--json", str(model_path)]) == EXIT_USAGE
    assert "--json" in _one_error_line(capsys)


def test_run_output_never_overwrites_inputs(library, tmp_path, capsys):
    inputs = tmp_path / "in.npz"
    np.savez(inputs, X0=np.ones((2, 8), "float32"))
    argv = ["run", str(library), "--inputs", str(inputs)]
    assert main([*argv, "-o", str(inputs)]) == EXIT_USAGE
    assert "would overwrite the inputs" in _one_error_line(capsys)
    npz_library = tmp_path / "lib.npz"
    npz_library.write_bytes(b"")
    assert main(["run", str(npz_library), "--inputs", str(inputs), "-o", str(tmp_path / "lib")])
    assert "would overwrite the compiled model" in _one_error_line(capsys)


# ------------------------------------------------------------------ run --inputs
def test_run_accepts_a_single_npy_for_a_one_input_model(library, tmp_path, capsys):
    x = np.random.default_rng(1).standard_normal((2, 8)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "y"  # numpy's rule: .npz is appended
    assert main(["run", str(library), "--inputs", str(tmp_path / "x.npy"), "-o", str(out)]) == 0
    assert "y.npz" in capsys.readouterr().out
    got = np.load(tmp_path / "y.npz")["Y"]
    np.testing.assert_allclose(got, x @ _model()[1], rtol=1e-4, atol=1e-4)


def test_run_npy_for_a_two_input_model_is_a_clear_error(tmp_path, capsys):
    model = tmp_path / "two.onnx"
    model.write_bytes(_model(2)[0].SerializeToString())
    lib = tmp_path / "two.so"
    assert main(["compile", str(model), "-o", str(lib)]) == 0
    np.save(tmp_path / "x.npy", np.ones((2, 8), "float32"))
    argv = ["run", str(lib), "--inputs", str(tmp_path / "x.npy"), "-o", str(tmp_path / "o.npz")]
    assert main(argv) == MODEL_ERROR
    line = _one_error_line(capsys)
    assert "one array (.npy)" in line and "['X0', 'X1']" in line


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"garbage, not numpy", "not a readable .npz or .npy"),
        (b"\x93NUMPY\x01\x00", "not a readable .npz or .npy"),
        (None, "is a directory"),
        ("missing", "does not exist"),
    ],
    ids=["garbage", "truncated npy", "directory", "missing"],
)
def test_run_bad_inputs_file(library, tmp_path, content, needle, capsys):
    path = tmp_path / "in.npy"
    if content is None:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    argv = ["run", str(library), "--inputs", str(path), "-o", str(tmp_path / "o.npz")]
    assert main(argv) == MODEL_ERROR
    assert needle in _one_error_line(capsys)


# ------------------------------------------------------------------ file system, Ctrl-C, bugs
def test_compile_missing_model(tmp_path, capsys):
    argv = ["compile", str(tmp_path / "nope.onnx"), "-o", str(tmp_path / "x.so")]
    assert main(argv) == MODEL_ERROR
    assert "does not exist" in _one_error_line(capsys)


def test_compile_unwritable_output_is_an_os_error(model_path, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where the output's parent directory should be
    assert main(["compile", str(model_path), "-o", str(blocker / "x.so")]) == EXIT_OS_ERROR
    assert str(blocker) in _one_error_line(capsys)


def _patch_compile(monkeypatch, action):
    def fake(*args, **kwargs):
        return action()

    monkeypatch.setattr(tvm_sparse_rnn.compile, "compile_onnx", fake)


def _raise(err):
    def action():
        raise err

    return action


def _sigint_turned_into_runtime_error():
    """What XGBoost does: the interrupt hits a callback and comes back as RuntimeError."""
    try:
        os.kill(os.getpid(), signal.SIGINT)  # the handler runs when os.kill returns
    except KeyboardInterrupt as err:
        raise RuntimeError("[xgboost] callback raised an exception") from err
    raise AssertionError("SIGINT was not delivered")


@pytest.mark.parametrize(
    ("action", "code", "needle"),
    [
        (
            _raise(PermissionError(13, "Permission denied", "/ro/x.so")),
            EXIT_OS_ERROR,
            "cannot access '/ro/x.so': Permission denied",
        ),
        (_raise(OSError(28, "No space left on device")), EXIT_OS_ERROR, "No space left"),
        (_raise(KeyboardInterrupt()), EXIT_INTERRUPTED, "error: interrupted"),
        (_sigint_turned_into_runtime_error, EXIT_INTERRUPTED, "error: interrupted"),
        (
            _raise(RuntimeError("TVM check failed\n  at line 1\n  at line 2")),
            EXIT_INTERNAL,
            "internal error: RuntimeError: TVM check failed | at line 1",
        ),
    ],
    ids=["PermissionError", "ENOSPC", "Ctrl-C", "Ctrl-C inside xgboost", "internal error"],
)
def test_unexpected_failures_are_one_line(
    model_path, tmp_path, monkeypatch, capsys, action, code, needle
):
    _patch_compile(monkeypatch, action)
    assert main(["compile", str(model_path), "-o", str(tmp_path / "x.so")]) == code
    assert needle in _one_error_line(capsys)


def test_sigint_handler_restored(model_path, tmp_path, monkeypatch):
    before = signal.getsignal(signal.SIGINT)
    _patch_compile(monkeypatch, _raise(KeyboardInterrupt()))
    main(["compile", str(model_path), "-o", str(tmp_path / "x.so")])
    assert signal.getsignal(signal.SIGINT) is before


def test_subprocess_error_is_one_line(tmp_path):
    """As a user sees it: no traceback, one line, the exit code."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tvm_sparse_rnn",
            "compile",
            str(tmp_path / "m.onnx"),
            "-o",
            "x.json",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        timeout=300,
        check=False,
    )
    assert proc.returncode == EXIT_USAGE
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: -o 'x.json'"), proc.stderr
