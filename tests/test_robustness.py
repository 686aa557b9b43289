"""Crash and silent-wrong cases of issue 14 that now raise a typed error or give the right
answer: the int32 limit of sparse_dense, NaN weights, concurrent tuning runs, read-only lookup."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tvm_sparse_rnn.compile import build_onnx_with_decisions, load_executable
from tvm_sparse_rnn.errors import TuningError, UnsupportedError
from tvm_sparse_rnn.kernels.sparse_dense import INDEX_LIMIT, SparseDenseLayout, unscheduled_func
from tvm_sparse_rnn.target import resolve_target
from tvm_sparse_rnn.transform import KernelVariant
from tvm_sparse_rnn.tuning.database import RECORD_FILE, WORKLOAD_FILE, open_database
from tvm_sparse_rnn.tuning.tune import exclusive


def test_sparse_dense_index_limit_is_a_typed_error():
    layout = SparseDenseLayout((4096, 64), (1, 1), 10, "float32")
    m = INDEX_LIMIT // 4096 + 1  # M * N just past int32
    with pytest.raises(UnsupportedError, match="int32 indexing"):
        unscheduled_func(layout, m, resolve_target("llvm"))
    unscheduled_func(layout, m - 1, resolve_target("llvm"))  # at the limit: fine


def _matmul_model(w: np.ndarray):
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["Y"], "mm")],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [4, w.shape[0]])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [4, w.shape[1]])],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_nan_in_a_pruned_weight_keeps_the_layer_dense_and_matches_onnxruntime():
    rng = np.random.default_rng(0)
    w = np.where(rng.random((64, 32)) < 0.1, rng.standard_normal((64, 32)), 0).astype("float32")
    w[3, 5] = np.nan
    model = _matmul_model(w)
    executable, inputs, outputs, decisions = build_onnx_with_decisions(model, target="llvm")
    (decision,) = decisions
    assert decision.variant is KernelVariant.DENSE and "NaN" in decision.reason
    x = rng.standard_normal((4, 64)).astype("float32")
    got = load_executable(executable, inputs, outputs, "llvm").run({"X": x})["Y"]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(got, session.run(None, {"X": x})[0], rtol=1e-5, atol=1e-5)


def _hold_lock(work_dir: str, ready, release) -> None:
    with exclusive(work_dir):
        ready.set()
        release.wait(30)


def test_concurrent_tuning_runs_on_one_work_dir_are_refused(tmp_path: Path):
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(tmp_path), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(TuningError, match="another tuning run holds"), exclusive(tmp_path):
            pass
    finally:
        release.set()
        holder.join(30)
    with exclusive(tmp_path):  # free again
        pass


def test_lookup_never_rewrites_a_truncated_database(tmp_path: Path):
    open_database(tmp_path)  # creates the two files
    for name in (WORKLOAD_FILE, RECORD_FILE):
        with open(tmp_path / name, "a") as f:
            f.write('{"truncated": ')  # a run killed mid-write
    before = {n: (tmp_path / n).read_bytes() for n in (WORKLOAD_FILE, RECORD_FILE)}
    open_database(tmp_path, create=False)
    assert {n: (tmp_path / n).read_bytes() for n in (WORKLOAD_FILE, RECORD_FILE)} == before
    open_database(tmp_path)  # tuning repairs it in place
    assert b"truncated" not in (tmp_path / RECORD_FILE).read_bytes()
