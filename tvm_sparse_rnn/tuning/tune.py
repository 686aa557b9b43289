"""Tune tasks with MetaSchedule: default first, resumable, with progress and a summary.

For every task the hand-picked default config is measured first and stored as a record, so the
best record is never slower than the default (up to measurement noise). A task that already has
records in the database only runs the remaining trials: an interrupted run resumes.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm
from tvm import s_tir
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from ..errors import TuningError
from .database import median_seconds, open_database, task_records
from .measure import make_builder, make_runner
from .task import TuneTask

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskResult:
    """Outcome of tuning one task.

    Attributes
    ----------
    name : str
        Task name.
    trials : int
        Records of the task in the database after this run.
    default_s, tuned_s : float
        Median runtime of the default config and of the best record, in seconds, measured by the
        same runner.
    best_config : object
        The knob config of the best record.
    """

    name: str
    trials: int
    default_s: float
    tuned_s: float
    best_config: Any

    @property
    def speedup(self) -> float:
        """``default_s / tuned_s``."""
        return self.default_s / self.tuned_s


def _measure_default(
    task: TuneTask, target: Target, db: ms.database.Database, runner: ms.runner.Runner
) -> None:
    trace = task.default_trace()
    sch = s_tir.Schedule(task.mod)
    trace.apply_to_schedule(sch, remove_postproc=True)
    (built,) = make_builder().build([ms.builder.BuilderInput(sch.mod, target)])
    if built.error_msg:
        raise RuntimeError(f"default config of {task.name} does not build: {built.error_msg}")
    args_info = ms.arg_info.ArgInfo.from_prim_func(task.func)
    (future,) = runner.run(
        [
            ms.runner.RunnerInput(
                built.artifact_path, "cuda" if target.kind.name == "cuda" else "cpu", args_info
            )
        ]
    )
    result = future.result()
    if result.error_msg:
        raise RuntimeError(f"default config of {task.name} failed to run: {result.error_msg}")
    workload = db.commit_workload(task.mod)
    db.commit_tuning_record(
        ms.database.TuningRecord(
            trace, workload, [float(s) for s in result.run_secs], target, args_info
        )
    )


@derived_object
class _Progress(ms.measure_callback.PyMeasureCallback):
    """Advance a tqdm bar per measured batch and show the current and best time."""

    def __init__(self, bar: tqdm, best_s: float) -> None:
        super().__init__()
        self.bar, self.best_s = bar, best_s

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
        secs = [
            float(np.median([float(s) for s in r.run_secs]))
            for r in runner_results
            if r.run_secs and not r.error_msg
        ]
        if secs:
            self.best_s = min(self.best_s, *secs)
            self.bar.set_postfix(
                current=f"{min(secs) * 1e6:.1f}us", best=f"{self.best_s * 1e6:.1f}us"
            )
        self.bar.update(len(runner_results))


def tune(
    tasks: Sequence[TuneTask],
    target: Target,
    work_dir: str | os.PathLike,
    trials: int,
    *,
    num_trials_per_iter: int = 8,
    cost_model: str = "xgb",
    seed: int = 0,
    progress: bool = True,
) -> list[TaskResult]:
    """Tune ``tasks`` until each has ``trials`` records in the database in ``work_dir``.

    Parameters
    ----------
    tasks : sequence of TuneTask
        What to tune.
    target : Target
        Complete target (see :func:`tvm_sparse_rnn.target.resolve_target`).
    work_dir : path
        MetaSchedule JSON database directory (created if missing, repaired if truncated).
    trials : int
        Records wanted per task, the default config's included; at most the number of distinct
        configs of the task's space (the search would otherwise re-measure duplicates).
    num_trials_per_iter : int
        Candidates measured per search iteration.
    cost_model : str
        ``"xgb"`` (XGBoost) or ``"random"`` (no cost model, for machines without xgboost).
    seed : int
        Seed of the search.
    progress : bool
        Show a progress bar per task.
    """
    with exclusive(work_dir), private_tmpdir():
        return _tune(
            tasks, target, work_dir, trials, num_trials_per_iter, cost_model, seed, progress
        )


@contextlib.contextmanager
def exclusive(work_dir: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``work_dir`` (``.lock``, ``fcntl.flock``), so that two tuning
    runs on one database do not interleave their records.

    Raises
    ------
    TuningError
        If another process holds the lock.
    """
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(work_dir) / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TuningError(
                f"another tuning run holds {str(work_dir)!r}; wait for it or use another --work-dir"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def private_tmpdir() -> Iterator[None]:
    """Point ``TMPDIR`` (inherited by MetaSchedule's builder and runner workers) to a directory
    removed afterwards, so that no build artifact is left behind."""
    previous = os.environ.get("TMPDIR")
    with tempfile.TemporaryDirectory(prefix="tvm_sparse_rnn_tune_") as tmp:
        os.environ["TMPDIR"], tempfile.tempdir = tmp, None
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop("TMPDIR", None)
            else:
                os.environ["TMPDIR"] = previous
            tempfile.tempdir = None


def _tune(
    tasks: Sequence[TuneTask],
    target: Target,
    work_dir: str | os.PathLike,
    trials: int,
    num_trials_per_iter: int,
    cost_model: str,
    seed: int,
    progress: bool,
) -> list[TaskResult]:
    db = open_database(work_dir)
    results = []
    for index, task in enumerate(tasks):
        logger.info("task %d/%d: %s", index + 1, len(tasks), task.name)
        runner = make_runner(task.fixed_args)
        workload = db.commit_workload(task.mod)
        if not db.get_top_k(workload, 1):
            _measure_default(task, target, db, runner)
        done = len(db.get_top_k(workload, 1 << 30))
        space = math.prod(len(c) for c in task.choices.values())
        if trials > space:
            logger.info(
                "%s: the space has %d configs; tuning %d, not %d", task.name, space, space, trials
            )
        remaining = max(min(trials, space) - done, 0)
        if remaining:
            bar = tqdm(
                total=remaining,
                desc=f"[{index + 1}/{len(tasks)}] {task.name}",
                disable=not progress,
                leave=True,
            )
            model = (
                ms.cost_model.XGBModel(num_warmup_samples=4, num_tuning_cores=os.cpu_count())
                if cost_model == "xgb"
                else ms.cost_model.RandomModel()
            )
            ctx = ms.TuneContext(
                mod=task.mod,
                target=target,
                space_generator=task.space(target),
                search_strategy=ms.search_strategy.EvolutionarySearch(
                    population_size=32, init_measured_ratio=0.2, genetic_num_iters=3
                ),
                task_name=task.name,
                num_threads=os.cpu_count(),
                rand_state=seed + index,
            )
            callbacks = [
                *ms.measure_callback.MeasureCallback.create("default"),
                _Progress(bar, median_seconds(task_records(db, task.mod)[0])),
            ]
            ms.tune_tasks(
                tasks=[ctx],
                task_weights=[1.0],
                work_dir=str(work_dir),
                max_trials_global=remaining,
                max_trials_per_task=remaining,
                num_trials_per_iter=num_trials_per_iter,
                builder=make_builder(),
                runner=runner,
                database=db,
                cost_model=model,
                measure_callbacks=callbacks,
            )
            bar.close()
        records = task_records(db, task.mod)
        default = task.default_config
        default_s = min(
            (median_seconds(r) for r in records if task.decode(r.trace) == default),
            default=float("nan"),
        )
        results.append(
            TaskResult(
                task.name,
                len(records),
                default_s,
                median_seconds(records[0]),
                task.decode(records[0].trace),
            )
        )
    return results
