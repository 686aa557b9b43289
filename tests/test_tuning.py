"""MetaSchedule tuning: spaces, resumable databases, structure keys, lookup at compile time."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tvm import s_tir
from tvm.s_tir import meta_schedule as ms

from tvm_sparse_rnn.kernels.cuda import sparse_dense as sparse_dense_cuda
from tvm_sparse_rnn.kernels.x86 import sparse_dense as sparse_dense_x86
from tvm_sparse_rnn.kernels.x86.recurrent import pack_weight
from tvm_sparse_rnn.ops.cells import CellConfig
from tvm_sparse_rnn.ops.reference import recurrent_sequence_reference
from tvm_sparse_rnn.runtime.sequence import RecurrentWeights, build_recurrent_sequence
from tvm_sparse_rnn.runtime.sparse_dense import build_sparse_dense
from tvm_sparse_rnn.target import resolve_target
from tvm_sparse_rnn.testing import (
    TOLERANCES,
    random_bsr,
    random_recurrent_weights,
    recurrent_onnx_model,
    reference_sparse_dense,
)
from tvm_sparse_rnn.tuning.database import RECORD_FILE, open_database, repair_database
from tvm_sparse_rnn.tuning.generated import build_pipeline, realize, sampled_knobs
from tvm_sparse_rnn.tuning.lookup import use_tuning_logs
from tvm_sparse_rnn.tuning.mutator import MutateCategorical
from tvm_sparse_rnn.tuning.rnn_x86_space import recurrent_tune_task
from tvm_sparse_rnn.tuning.sparse_dense_space import sparse_dense_tune_task as tune_task
from tvm_sparse_rnn.tuning.tune import tune

LLVM = resolve_target("llvm")
CUDA = resolve_target("cuda")


def test_structure_keys_tell_patterns_apart() -> None:
    a = random_bsr(256, 256, (4, 4), 0.1, seed=0)
    b = random_bsr(256, 256, (4, 4), 0.1, seed=1)
    assert a.nnzb == b.nnzb and a.shape == b.shape
    assert a.structure_key() != b.structure_key()
    ta, tb = tune_task(a, 4, LLVM), tune_task(b, 4, LLVM)
    # same shapes, same kernel code, yet different workloads for MetaSchedule's database
    db = ms.database.MemoryDatabase()
    db.commit_workload(ta.mod)
    assert db.has_workload(tune_task(a, 4, LLVM).mod)
    assert not db.has_workload(tb.mod)


@pytest.mark.parametrize("target", [LLVM, CUDA], ids=["llvm", "cuda"])
def test_default_trace_decodes_to_default(target) -> None:
    weight = random_bsr(128, 256, (1, 16), 0.1, seed=2)
    task = tune_task(weight, 16, target)
    trace = task.default_trace()
    assert task.decode(trace) == task.default_config
    mutated = MutateCategorical(seed=3).apply(trace)
    assert mutated is not None and task.decode(mutated) != task.default_config
    # every sampled config is a valid schedule of the same function
    sch = s_tir.Schedule(task.mod)
    mutated.apply_to_schedule(sch, remove_postproc=True)
    assert "sparse_dense" in sch.mod["main"].script()


def test_knob_choices_contain_defaults() -> None:
    for module, cfg in (
        (sparse_dense_x86, sparse_dense_x86.X86Config()),
        (sparse_dense_cuda, sparse_dense_cuda.CudaConfig()),
    ):
        for name, choices in module.KNOB_CHOICES.items():
            assert getattr(cfg, name) in choices, (module.__name__, name)


def test_tune_resume_and_compile_with_record(tmp_path: Path, caplog) -> None:
    weight = random_bsr(256, 512, (1, 16), 0.1, seed=4)
    task = tune_task(weight, 4, LLVM)
    first = tune([task], LLVM, tmp_path, trials=5, num_trials_per_iter=4, progress=False)
    assert first[0].trials == 5
    assert np.isfinite(first[0].default_s) and first[0].tuned_s <= first[0].default_s
    lines = (tmp_path / RECORD_FILE).read_text().splitlines()
    assert len(lines) == 5
    # resume: only the missing trials run, earlier records are kept (append-only)
    second = tune([task], LLVM, tmp_path, trials=8, num_trials_per_iter=4, progress=False)
    assert second[0].trials == 8
    assert (tmp_path / RECORD_FILE).read_text().splitlines()[:5] == lines
    # compile picks the best record and still computes the right numbers
    caplog.set_level(logging.INFO, logger="tvm_sparse_rnn")
    with use_tuning_logs(tmp_path):
        kernel = build_sparse_dense(weight, 4, "llvm")
    assert any("tuned record" in r.getMessage() for r in caplog.records)
    assert str(second[0].best_config) in caplog.text
    x = np.random.default_rng(5).uniform(-1, 1, (4, 512)).astype("float32")
    np.testing.assert_allclose(kernel(x), reference_sparse_dense(x, weight), *TOLERANCES["float32"])


def test_compile_without_record_uses_default(caplog) -> None:
    weight = random_bsr(64, 64, (4, 4), 0.2, seed=6)
    caplog.set_level(logging.INFO, logger="tvm_sparse_rnn")
    build_sparse_dense(weight, 2, "llvm")
    assert "using the default config" in caplog.text


def test_truncated_database_is_repaired(tmp_path: Path) -> None:
    weight = random_bsr(128, 128, (4, 4), 0.1, seed=7)
    task = tune_task(weight, 2, LLVM)
    tune([task], LLVM, tmp_path, trials=2, num_trials_per_iter=2, progress=False)
    path = tmp_path / RECORD_FILE
    text = path.read_text()
    path.write_text(text + text.splitlines()[-1][:40])  # a killed writer's partial line
    assert repair_database(tmp_path) == 1
    assert len(open_database(tmp_path)) == 2


@pytest.mark.slow
def test_interrupted_tune_cli_leaves_readable_database(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "tvm_sparse_rnn",
        "tune",
        "--op",
        "sparse_dense",
        "--m",
        "2",
        "--n",
        "256",
        "--k",
        "256",
        "--block-size",
        "4x4",
        "--density",
        "0.1",
        "--trials",
        "64",
        "--trials-per-iter",
        "4",
        "--work-dir",
        str(tmp_path),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(records) < 3 and proc.poll() is None:
        time.sleep(1)
        records = list(tmp_path.glob(f"*/{RECORD_FILE}"))
        records = records[0].read_text().splitlines() if records else []
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(records) >= 3, "tuning produced no records in time"
    (db_dir,) = [p.parent for p in tmp_path.glob(f"*/{RECORD_FILE}")]
    repair_database(db_dir)
    db = open_database(db_dir, create=False)
    assert len(db) >= 3
    for line in (db_dir / RECORD_FILE).read_text().splitlines():
        json.loads(line)


def test_tune_model_cli_then_compile_uses_records(tmp_path: Path, caplog) -> None:
    from tvm_sparse_rnn.cli.main import main
    from tvm_sparse_rnn.demo import build_demo_model

    model = tmp_path / "mlp.onnx"
    model.write_bytes(build_demo_model(recurrent=False, seq_len=1, batch=4).SerializeToString())
    logs = tmp_path / "logs"
    args = ["tune", str(model), "--trials", "2", "--trials-per-iter", "2", "--work-dir", str(logs)]
    assert main(args) == 0
    assert list(logs.glob(f"*/{RECORD_FILE}"))
    out = tmp_path / "mlp.so"
    # -v: the CLI sets the package's log level itself (INFO), which caplog then captures
    assert main(["-v", "compile", str(model), "--tuning-logs", str(logs), "-o", str(out)]) == 0
    assert out.exists()
    assert "using tuned record" in caplog.text


@pytest.mark.parametrize(
    "argv",
    [
        ["tune"],  # neither a model nor --op
        ["tune", "--op", "sparse_dense", "--trials", "0"],
        ["tune", "--op", "sparse_dense", "--density", "1.5"],
        ["tune", "--op", "sparse_dense", "--block-size", "3x"],
        ["tune", "--op", "rnn", "--target", "cuda"],  # the x86 recurrent kernel only
        ["tune", "--op", "rnn", "--cell", "MGU"],
    ],
)
def test_tune_cli_usage_errors(argv) -> None:
    from tvm_sparse_rnn.cli.main import main

    assert main(argv) == 2


# ---- the x86 recurrent kernel: a generated kernel tuned through a stub + the builder hook


def _rnn_task(kind: str = "GRU", hidden: int = 24, seed: int = 0):
    cfg = CellConfig(kind, hidden)
    w = random_recurrent_weights(kind, hidden, hidden, 1, 0.3, seed=seed)
    return cfg, w, recurrent_tune_task(cfg, 0, 8, 4, pack_weight(w["R"][0], cfg.num_gates, False))


def test_rnn_space_stub_and_builder_hook() -> None:
    """The stub has the kernel's signature and a structure key; a mutated trace's knobs reach
    the builder hook, which builds the kernel they generate."""
    _, _, task = _rnn_task()
    _, _, other = _rnn_task(seed=1)  # same shapes, another pattern: another workload
    db = ms.database.MemoryDatabase()
    db.commit_workload(task.mod)
    assert not db.has_workload(other.mod)
    assert task.default_config in [task.decode(task.default_trace())]
    for name, choices in task.choices.items():
        assert getattr(task.default_config, name) in choices
    real = task.scheduled(task.default_config)
    stub_sig = [(p.name, [int(d) for d in p.shape], p.dtype) for p in task.func.params]
    assert stub_sig == [(p.name, [int(d) for d in p.shape], p.dtype) for p in real.params]
    mutated = MutateCategorical(seed=5).apply(task.default_trace())
    config = task.decode(mutated)
    assert config != task.default_config
    sch = s_tir.Schedule(task.mod)
    mutated.apply_to_schedule(sch, remove_postproc=True)
    assert sampled_knobs(sch.mod["main"]) == vars(config)
    built = realize(sch.mod)["main"]  # what measure.build_kernel compiles
    assert build_pipeline(sch.mod, LLVM) == "default"
    assert "stub" not in built.script() and "R_indptr" in built.script()
    assert built.script() == task.scheduled(config).script()


def test_rnn_tune_resume_and_compile_with_record(tmp_path: Path, caplog) -> None:
    cfg, w, task = _rnn_task()
    first = tune([task], LLVM, tmp_path, trials=3, num_trials_per_iter=2, progress=False)
    assert first[0].trials == 3 and np.isfinite(first[0].default_s)
    assert first[0].tuned_s <= first[0].default_s
    lines = (tmp_path / RECORD_FILE).read_text().splitlines()
    second = tune([task], LLVM, tmp_path, trials=5, num_trials_per_iter=2, progress=False)
    assert second[0].trials == 5
    assert (tmp_path / RECORD_FILE).read_text().splitlines()[:3] == lines
    # the layer built inside use_tuning_logs takes the best record and stays correct
    caplog.set_level(logging.INFO, logger="tvm_sparse_rnn")
    x = np.random.default_rng(3).standard_normal((8, 4, 24)).astype("float32")
    with use_tuning_logs(tmp_path):
        layer = build_recurrent_sequence(cfg, RecurrentWeights(**w), x.shape)
    assert f"{task.name}: using tuned record" in caplog.text
    assert str(second[0].best_config) in caplog.text
    ref = recurrent_sequence_reference(cfg, x, w["W"], w["R"], w["B"])
    for got, want in zip(layer(x), ref, strict=False):
        np.testing.assert_allclose(got, want, *TOLERANCES["float32"])


def test_tune_cli_collects_recurrent_tasks(tmp_path: Path) -> None:
    """``tune MODEL.onnx`` finds the recurrent kernels of a model's LSTM (both directions);
    ``--op rnn`` makes one."""
    from tvm_sparse_rnn.cli.main import build_parser
    from tvm_sparse_rnn.cli.tune import _tasks

    w = random_recurrent_weights("LSTM", 16, 8, 2, 0.2, seed=2)
    model = tmp_path / "lstm.onnx"
    onnx_model = recurrent_onnx_model("LSTM", w, 4, 2, 8, 16, direction="bidirectional")
    model.write_bytes(onnx_model.SerializeToString())
    parser = build_parser()
    names = [t.name for t in _tasks(parser.parse_args(["tune", str(model)]))]
    assert len(names) == 2 and all(n.startswith("rnn_x86 LSTM H=16 T=4 N=2") for n in names)
    args = ["tune", "--op", "rnn", "--cell", "GRU", "--hidden", "32", "--seq-len", "4"]
    (task,) = _tasks(parser.parse_args(args))
    assert task.op == "rnn_x86" and task.name.startswith("rnn_x86 GRU H=32 T=4 N=4")


def test_rnn_lookup_order_shipped_then_default(monkeypatch, caplog) -> None:
    """Without a record: a shipped entry with the same cell, shapes and core count wins (nearest
    density), else the default; one log line each time."""
    from tvm_sparse_rnn.tuning import lookup
    from tvm_sparse_rnn.tuning.rnn_x86_space import recurrent_config

    cfg, w, task = _rnn_task()
    packed = pack_weight(w["R"][0], cfg.num_gates, False)
    caplog.set_level(logging.INFO, logger="tvm_sparse_rnn")
    assert recurrent_config(cfg, 0, 8, 4, packed)[0] == task.default_config
    assert f"{task.name}: using the default config" in caplog.text
    shipped = {"meta": {**task.meta, "density": 0.25}, "config": {"accumulators": 2}}
    far = {"meta": {**task.meta, "density": 0.9}, "config": {"accumulators": 1}}
    monkeypatch.setattr(lookup, "_shipped_entries", lambda target, op: [far, shipped])
    got, _ = recurrent_config(cfg, 0, 8, 4, packed)
    assert got.accumulators == 2 and f"{task.name}: using shipped config" in caplog.text


@pytest.mark.parametrize(
    ("mcpu", "family"),
    [
        ("emeraldrapids", "avx512"),
        ("znver5", "avx512"),
        ("rocketlake", "avx512"),
        ("haswell", "avx2"),
    ],
)
def test_shipped_cpu_configs_are_looked_up_by_isa_family(mcpu, family) -> None:
    """The same VM class reports several mcpu names: the ISA family folder serves them all."""
    from tvm.target import Target

    from tvm_sparse_rnn.target import cpu_isa_family
    from tvm_sparse_rnn.tuning.lookup import shipped_device_tags

    target = Target({"kind": "llvm", "mcpu": mcpu})
    assert cpu_isa_family(target) == family
    assert shipped_device_tags(target) == [f"llvm-{mcpu}", f"llvm-{family}"]
    assert cpu_isa_family(resolve_target("cuda")) is None


def test_shipped_avx512_config_reaches_a_cpu_it_was_not_measured_on() -> None:
    """An entry of ``schedules/llvm-avx512`` (measured on emeraldrapids) resolves on znver5."""
    from tvm.target import Target

    from tvm_sparse_rnn.tuning.lookup import lookup_config

    weight = random_bsr(1792, 1792, (1, 16), 0.1, "float32", seed=0)
    target = Target({"kind": "llvm", "mcpu": "znver5"})
    config, source = lookup_config(tune_task(weight, 1, target), target)
    assert source == "shipped config schedules/llvm-avx512"
    assert (config.m_tile, config.unroll) == (4, 64)
