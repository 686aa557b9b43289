"""MetaSchedule space of the persistent RNN/GRU/LSTM GPU kernel: knobs, real packed weights,
workload keys, builds for sm_90a (no GPU needed), lookup; a tiny tuning run on the GPU."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
from pathlib import Path

import numpy as np
import pytest
from tvm import s_tir, tirx
from tvm.s_tir import meta_schedule as ms

from tvm_sparse_rnn.kernels.cuda.persistent import planner
from tvm_sparse_rnn.kernels.cuda.persistent.packing import pack, unit_major
from tvm_sparse_rnn.kernels.cuda.persistent.planner import Barrier, default_knobs
from tvm_sparse_rnn.ops.cells import PersistentCell
from tvm_sparse_rnn.target import device_limits, resolve_target
from tvm_sparse_rnn.testing import random_recurrent_weights
from tvm_sparse_rnn.tuning.database import open_database
from tvm_sparse_rnn.tuning.generated import build_pipeline, realize, sampled_knobs
from tvm_sparse_rnn.tuning.lookup import use_tuning_logs
from tvm_sparse_rnn.tuning.measure import build_kernel
from tvm_sparse_rnn.tuning.persistent_space import (
    BARRIERS,
    MEASURE_STEPS,
    PersistentConfig,
    knob_choices,
    persistent_tune_task,
    slot_of,
    task_plans,
    tuned_persistent_config,
)

LIMITS = device_limits("cuda")  # the lent GPU's limits (the H200 tag when no GPU is present)
plan_persistent = functools.partial(planner.plan_persistent, device=LIMITS)

CUDA = resolve_target("cuda")
ONNX_KIND = {"tanh": "RNN", "relu": "RNN", "gru": "GRU", "lstm": "LSTM"}


def _task(R, batch: int, cell: str, **kwargs):
    return persistent_tune_task(R, batch, PersistentCell(cell), "float32", LIMITS, **kwargs)


def _tuned(R, batch: int, cell: str):
    """``(plan, barrier, vector, order)`` the lookup gives (or None)."""
    found = tuned_persistent_config(R, batch, PersistentCell(cell), "float32", CUDA, LIMITS)
    return None if found is None else found[0]


def _weights(cell: str = "gru", hidden: int = 48, seed: int = 0, density: float = 0.2) -> dict:
    return random_recurrent_weights(ONNX_KIND[cell], hidden, 16, 1, density, seed=seed)


def _trace(task, config: PersistentConfig) -> s_tir.Trace:
    """The space's trace with its decisions set to ``config``."""
    trace = task.default_trace()
    insts = [i for i in trace.insts if i.kind.name == "SampleCategorical"]
    for inst, value in zip(insts, dataclasses.astuple(config), strict=True):
        trace = trace.with_decision(inst, value, True)
    return trace


def _scheduled(task, config: PersistentConfig):
    sch = s_tir.Schedule(task.mod)
    _trace(task, config).apply_to_schedule(sch, remove_postproc=True)
    return sch.mod


def test_default_config_is_the_untuned_build() -> None:
    """Geometry 0 + default_knobs + guided: what build_persistent_rnn picks without a record."""
    w = _weights("lstm", 64)
    task = _task(w["R"][0], 4, "lstm")
    plan, barrier, vector, order = task.default_config.resolve(task_plans(task))
    assert plan == plan_persistent(unit_major(w["R"][0], 4), 4, gates=4)
    assert (barrier, vector, order) == (*default_knobs(plan), "guided")
    assert task.decode(task.default_trace()) == task.default_config
    assert len(task_plans(task)) == 4 and len(set(task_plans(task))) == 4


def test_space_samples_valid_distinct_configs() -> None:
    w = _weights("gru")
    task = _task(w["R"][0], 2, "gru")
    undecided = s_tir.Trace(task.default_trace().insts, {})  # the space, decisions re-sampled
    seen = set()
    for seed in range(1, 25):
        sch = s_tir.Schedule(task.mod, seed=seed)
        undecided.apply_to_schedule(sch, remove_postproc=True)
        config = task.decode(sch.trace)
        assert all(getattr(config, k) in v for k, v in task.choices.items())
        assert sampled_knobs(sch.mod["main"]) == dataclasses.asdict(config)
        seen.add(config)
    assert len(seen) >= 8


def test_every_candidate_builds_for_sm90a_with_its_own_packing() -> None:
    """Each knob combination round-trips through its trace, and the builder hook turns it into
    the real kernel (the chosen slot's packed arrays in place) that builds for sm_90a."""
    w = _weights("gru")
    task = _task(w["R"][0], 2, "gru", num_geometries=2)
    stub_sig = [(p.dtype, [int(d) for d in p.shape]) for p in task.func.params]
    for values in itertools.product(*task.choices.values()):
        config = PersistentConfig(*values)
        mod = _scheduled(task, config)
        assert task.decode(_trace(task, config)) == config
        assert sampled_knobs(mod["main"]) == dataclasses.asdict(config)
        real = realize(mod)["main"]
        assert "stub" not in real.script()
        _, _, vector, order = config.resolve(task_plans(task))
        slot = slot_of(config.geometry, vector, order)
        names = [p.name for p in real.params]
        assert names[3 * slot : 3 * slot + 3] == ["vals", "idx", "spairs"]
        assert len(names) == len(stub_sig)
        launch_batch = task_plans(task)[0].launch_batch
        for p, (dtype, shape) in zip(real.params, stub_sig, strict=True):
            symbolic = iter((MEASURE_STEPS, launch_batch))  # T, and U's samples
            dims = [int(d) if isinstance(d, tirx.IntImm) else next(symbolic) for d in p.shape]
            assert (p.dtype, dims) == (dtype, shape)
        if config.order == 0:  # the order changes the packing only, not the code
            assert build_pipeline(mod, CUDA) == "tvm_sparse_rnn"
            built = build_kernel(mod, CUDA, None)
            source = built.imports[0].inspect_source()
            assert ("grid_sync" in source or "this_grid" in source) == (config.barrier == 0)


def test_cluster_barrier_is_a_choice_only_for_plans_that_fit_a_cluster() -> None:
    cluster = BARRIERS.index(Barrier.CLUSTER)
    plans = planner.candidate_plans(1792, 215, 16, device=LIMITS, replicas=8)
    small = next(i for i, p in enumerate(plans) if p.num_ctas <= planner.PORTABLE_CLUSTER_SIZE)
    large = next(i for i, p in enumerate(plans) if p.num_ctas > planner.PORTABLE_CLUSTER_SIZE)
    assert cluster in knob_choices(plans)["barrier"]
    assert cluster not in knob_choices([plans[large]])["barrier"]
    assert PersistentConfig(small, cluster).resolve(plans)[1] is Barrier.CLUSTER
    with pytest.raises(ValueError, match="at most 8 form a cluster"):
        PersistentConfig(large, cluster).resolve(plans)


def test_measured_arrays_are_the_real_packings() -> None:
    w = _weights("lstm", 32)
    R = unit_major(w["R"][0], PersistentCell("lstm").gates)
    task = _task(w["R"][0], 4, "lstm", num_geometries=2)
    arrays = dict(task.fixed_args)
    params = task.func.params
    assert len(arrays) == 3 * 3 * 2
    for pos, array in arrays.items():
        assert list(array.shape) == [int(d) for d in params[pos].shape]
        assert str(array.dtype) == params[pos].dtype
    for g, plan in enumerate(task_plans(task)):
        for order, vector in (("guided", True), ("guided", False), ("naive", True)):
            packed = pack(R, plan, order, vector)
            base = 3 * slot_of(g, vector, order)
            np.testing.assert_array_equal(arrays[base], packed.vals)
            np.testing.assert_array_equal(arrays[base + 1], packed.idx)
            np.testing.assert_array_equal(arrays[base + 2], packed.spairs)
            np.testing.assert_allclose(packed.to_dense(), R.toarray(), rtol=1e-6)


def test_two_direction_task_measures_the_stacked_launch() -> None:
    """A bidirectional layer's task: plans for half of the SMs each, ``R`` packed for both
    directions (the shapes of the real launch), its own workload and no shipped config."""
    w = _weights("gru", 48)
    one, two = _task(w["R"][0], 2, "gru"), _task(w["R"][0], 2, "gru", directions=2)
    plans = task_plans(two)
    assert all(p.directions == 2 and p.grid_ctas <= LIMITS.num_sms for p in plans)
    assert two.meta["directions"] == 2 and "directions" not in one.meta
    assert " x2 " in two.name and two.meta["structure_key"] == one.meta["structure_key"]
    params = two.func.params
    for pos, array in dict(two.fixed_args).items():
        assert list(array.shape) == [int(d) for d in params[pos].shape]
    db = ms.database.MemoryDatabase()
    db.commit_workload(one.mod)
    assert not db.has_workload(two.mod)


def test_workload_keys_tell_patterns_apart() -> None:
    a, b = _weights(seed=0)["R"][0], _weights(seed=1)["R"][0]
    ta, tb = _task(a, 2, "gru"), _task(b, 2, "gru")
    assert ta.meta["structure_key"] != tb.meta["structure_key"]
    db = ms.database.MemoryDatabase()
    db.commit_workload(ta.mod)
    assert db.has_workload(_task(a, 2, "gru").mod)
    assert not db.has_workload(tb.mod)
    assert not db.has_workload(_task(a, 4, "gru").mod)  # other batch


def test_lookup_record_then_shipped_then_default(tmp_path: Path, monkeypatch, caplog) -> None:
    """``tuned_persistent_config``: a record of the exact workload wins, then a shipped entry
    (a geometry rank beyond the candidates falls back to the default), then the default."""
    from tvm_sparse_rnn.tuning import lookup

    caplog.set_level(logging.INFO, logger="tvm_sparse_rnn")
    R = _weights("gru")["R"][0]
    task = _task(R, 2, "gru")
    plans = task_plans(task)
    default = task.default_config.resolve(plans)
    assert _tuned(R, 2, "gru") == default
    assert f"{task.name}: using the default config" in caplog.text

    shipped = PersistentConfig(geometry=2, barrier=1, vector=0, order=1)
    entry = {"meta": {**task.meta, "density": 0.3}, "config": dataclasses.asdict(shipped)}
    monkeypatch.setattr(lookup, "_shipped_entries", lambda target, op: [entry])
    assert _tuned(R, 2, "gru") == shipped.resolve(plans)
    bad = {**entry, "config": {**entry["config"], "geometry": 9}}
    monkeypatch.setattr(lookup, "_shipped_entries", lambda target, op: [bad])
    assert _tuned(R, 2, "gru") == default

    tuned = PersistentConfig(geometry=1, barrier=0, vector=1, order=1)
    db = open_database(tmp_path)
    workload = db.commit_workload(task.mod)
    args_info = ms.arg_info.ArgInfo.from_prim_func(task.func)
    for config, secs in ((task.default_config, 2e-4), (tuned, 1e-4)):
        record = ms.database.TuningRecord(_trace(task, config), workload, [secs], CUDA, args_info)
        db.commit_tuning_record(record)
    with use_tuning_logs(tmp_path):
        assert _tuned(R, 2, "gru") == tuned.resolve(plans)
    assert f"{task.name}: using tuned record (100.0 us)" in caplog.text


def test_no_task_when_nothing_fits() -> None:
    import scipy.sparse as sp

    dense = sp.csr_array(np.ones((4096, 4096), np.float32))
    assert _task(dense, 16, "tanh") is None
    assert _tuned(dense, 16, "tanh") is None
    with pytest.raises(ValueError, match="mgu"):
        _task(dense, 1, "mgu")


def test_tune_cli_op_persistent() -> None:
    from tvm_sparse_rnn.cli.main import build_parser
    from tvm_sparse_rnn.cli.tune import _tasks

    parser = build_parser()
    args = ["tune", "--op", "persistent", "--target", "cuda", "--cell", "LSTM", "--hidden", "64"]
    (task,) = _tasks(parser.parse_args([*args, "--m", "4", "--density", "0.2"]))
    assert task.op == "persistent_rnn" and task.name.startswith("persistent_rnn lstm H=64 B=4")
    gru = ["tune", "--op", "persistent", "--target", "cuda", "--cell", "GRU", "--hidden", "64"]
    (task,) = _tasks(parser.parse_args(gru))  # ONNX's default: linear_before_reset=0
    assert task.name.startswith("persistent_rnn gru_lbr0 H=64") and task.meta["cell"] == "gru_lbr0"
    (task,) = _tasks(parser.parse_args([*gru, "--linear-before-reset", "1"]))
    assert task.name.startswith("persistent_rnn gru H=64")


@pytest.mark.gpu
def test_tiny_tuning_run_matches_default_and_reference(tmp_path: Path) -> None:
    """4 trials (random cost model); the tuned kernel's output equals the default's and the
    float64 ONNX reference."""
    import tvm

    from tvm_sparse_rnn.ops.cells import CellConfig
    from tvm_sparse_rnn.ops.reference import recurrent_sequence_reference
    from tvm_sparse_rnn.runtime.persistent import PersistentRNN, build_kernel
    from tvm_sparse_rnn.transform.dispatch.recurrent_persistent import split_onnx_bias
    from tvm_sparse_rnn.tuning.tune import tune

    cell, hidden, batch, steps = "lstm", 256, 4, 7
    w = _weights(cell, hidden, density=0.1)
    task = _task(w["R"][0], batch, cell)
    (result,) = tune([task], CUDA, tmp_path, 4, num_trials_per_iter=2, cost_model="random")
    assert result.trials >= 2 and result.tuned_s <= result.default_s
    with use_tuning_logs(tmp_path):
        tuned = _tuned(w["R"][0], batch, cell)
    assert tuned == result.best_config.resolve(task_plans(task))
    G = PersistentCell(cell).gates
    bias, rbias = split_onnx_bias(
        PersistentCell(cell), w["B"][0, : G * hidden], w["B"][0, G * hidden :]
    )
    rng = np.random.default_rng(11)
    X = rng.standard_normal((steps, batch, 16)).astype(np.float32)
    h0 = (rng.standard_normal((batch, hidden)) * 0.5).astype(np.float32)
    c0 = (rng.standard_normal((batch, hidden)) * 0.5).astype(np.float32)
    outs = []
    for plan, barrier, vector, order in (task.default_config.resolve(task_plans(task)), tuned):
        packed = pack(unit_major(w["R"][0], G), plan, order, vector)
        module = build_kernel(plan, cell, barrier, vector, "cuda")
        rnn = PersistentRNN(plan, packed, cell, barrier, module, tvm.cuda(0))
        outs.append(rnn.run(h0=h0, c0=c0, X=X, W=w["W"][0], b=bias, rbias=rbias))
    cfg = CellConfig(ONNX_KIND[cell], hidden)
    y, _, y_c = recurrent_sequence_reference(
        cfg, X, w["W"], w["R"], w["B"], initial_h=h0[None], initial_c=c0[None]
    )
    np.testing.assert_allclose(outs[1].h, outs[0].h, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outs[1].h, y[:, 0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(outs[1].c, y_c[0], rtol=1e-4, atol=1e-4)


def _commit(work_dir: Path, task, configs_secs) -> None:
    """Store records of ``task`` for ``(config, seconds)`` pairs (as a tuning run would)."""
    db = open_database(work_dir)
    workload = db.commit_workload(task.mod)
    args_info = ms.arg_info.ArgInfo.from_prim_func(task.func)
    for config, secs in configs_secs:
        record = ms.database.TuningRecord(_trace(task, config), workload, [secs], CUDA, args_info)
        db.commit_tuning_record(record)


def test_tuned_record_reaches_the_kernel_built_from_onnx(tmp_path: Path) -> None:
    """A tuned record (geometry 1, grid barrier; the default is geometry 0 with the flag
    barrier at this size) is what the dispatch pass builds for the ONNX model: the decision,
    the emitted kernel's launch geometry and barrier in the CUDA source."""
    from tvm_sparse_rnn.compile import build_onnx_with_decisions, plan_onnx
    from tvm_sparse_rnn.testing import recurrent_onnx_model
    from tvm_sparse_rnn.transform import KernelVariant

    hidden, batch = 128, 4
    w = random_recurrent_weights("RNN", hidden, 16, 1, 0.1, seed=5)
    model = recurrent_onnx_model("RNN", w, 6, batch, 16, hidden)
    task = _task(w["R"][0], batch, "tanh")
    plans = task_plans(task)
    default = task.default_config.resolve(plans)
    assert default[0] == plans[0] and default[1] is Barrier.FLAG
    tuned = PersistentConfig(geometry=1, barrier=BARRIERS.index(Barrier.GRID), vector=0, order=0)
    _commit(tmp_path, task, [(task.default_config, 2e-4), (tuned, 1e-4)])

    def persistent(decisions):
        (decision,) = [d for d in decisions if d.variant is KernelVariant.PERSISTENT]
        return decision

    untuned = persistent(plan_onnx(model, target="cuda"))
    assert plans[0].describe() in untuned.detail and "flag barrier" in untuned.detail
    planned = plan_onnx(model, target="cuda", tuning_logs=tmp_path)
    decision = persistent(planned)
    assert plans[1].describe() in decision.detail and "grid barrier, scalar" in decision.detail
    assert decision.config.startswith("tuned record (100.0 us)")
    executable, *_, built = build_onnx_with_decisions(model, target="cuda", tuning_logs=tmp_path)
    assert built == planned  # compile decides what inspect printed
    (cuda,) = [m for m in executable.mod.imports[0].imports if m.kind == "cuda"]
    source = cuda.inspect_source()
    kernel = source.split("rnn_persistent_tanh_kernel(")[0].rsplit("__global__", 1)[1]
    assert f"__launch_bounds__({plans[1].threads})" in kernel
    assert "cg::this_grid().sync()" in source


def test_inspect_and_compile_report_the_same_decisions(tmp_path: Path) -> None:
    """The CLI: ``compile`` prints the decision table ``inspect`` prints (same model, target)."""
    from tvm_sparse_rnn.cli.main import main
    from tvm_sparse_rnn.demo import build_demo_model

    path = tmp_path / "demo.onnx"
    path.write_bytes(build_demo_model(seq_len=3, batch=2, hidden=128, mlp=128).SerializeToString())
    tables = []
    for argv in (["inspect", str(path)], ["compile", str(path), "-o", str(tmp_path / "m.so")]):
        import contextlib
        import io

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main([*argv, "--target", "cuda"]) == 0
        lines = out.getvalue().splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("layer"))
        tables.append(lines[start : start + 2 + 5])
    assert tables[0] == tables[1]
    assert any("persistent" in line for line in tables[0])
