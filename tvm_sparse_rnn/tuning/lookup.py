"""Which config a kernel is compiled with: tuned record, else shipped config, else default.

Lookup order, logged in one line per kernel:

1. the best record of the task's exact workload (shape *and* sparsity structure) in the tuning
   database given by :func:`use_tuning_logs` (or ``$TVM_SPARSE_RNN_TUNING_LOGS``);
2. a reviewed config shipped in ``schedules/<device>/<op>.json`` (package data) for the same
   op, shapes, block size and dtype, the nearest density winning; ``<device>`` is the target's
   own tag (``llvm-<mcpu>``), else its ISA family (``llvm-avx512``, ``llvm-avx2``:
   :func:`~tvm_sparse_rnn.target.cpu_isa_family`);
3. the schedule's hand-picked default.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import logging
import os
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from tvm.target import Target

from ..target import cpu_isa_family
from .database import WORKLOAD_FILE, device_tag, median_seconds, open_database, task_records
from .task import TuneTask

logger = logging.getLogger(__name__)

ENV_TUNING_LOGS = "TVM_SPARSE_RNN_TUNING_LOGS"
_TUNING_LOGS: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "tvm_sparse_rnn_tuning_logs", default=None
)
_COLLECTED: contextvars.ContextVar[dict[str, TuneTask] | None] = contextvars.ContextVar(
    "tvm_sparse_rnn_collected_tasks", default=None
)


@contextlib.contextmanager
def use_tuning_logs(path: str | os.PathLike | None) -> Iterator[None]:
    """Compile kernels inside this context with the records under ``path``.

    ``path`` is either a database directory or a root holding one per device
    (``tuning_logs/<device>/``, as ``tvm-sparse-rnn tune`` writes).
    """
    token = _TUNING_LOGS.set(Path(path) if path is not None else None)
    try:
        yield
    finally:
        _TUNING_LOGS.reset(token)


@contextlib.contextmanager
def collect_tasks() -> Iterator[dict[str, TuneTask]]:
    """Record every task whose config is resolved inside this context (e.g. while importing a
    model), keyed by name, so ``tvm-sparse-rnn tune MODEL.onnx`` tunes exactly those kernels."""
    tasks: dict[str, TuneTask] = {}
    token = _COLLECTED.set(tasks)
    try:
        yield tasks
    finally:
        _COLLECTED.reset(token)


def _database_dir(target: Target) -> Path | None:
    root = _TUNING_LOGS.get() or (
        Path(os.environ[ENV_TUNING_LOGS]) if os.environ.get(ENV_TUNING_LOGS) else None
    )
    if root is None:
        return None
    for candidate in (root, root / device_tag(target)):
        if (candidate / WORKLOAD_FILE).exists():
            return candidate
    return None


@functools.lru_cache(maxsize=8)
def _cached_database(path: str, mtime_ns: int):
    return open_database(path, create=False)


def _tuned_config(task: TuneTask, target: Target) -> tuple[Any, str] | None:
    path = _database_dir(target)
    if path is None:
        return None
    db = _cached_database(str(path), (path / WORKLOAD_FILE).stat().st_mtime_ns)
    records = task_records(db, task.mod)
    if not records:
        return None
    best_us = median_seconds(records[0]) * 1e6
    return task.decode(records[0].trace), f"tuned record ({best_us:.1f} us) in {path}"


def shipped_device_tags(target: Target) -> list[str]:
    """Folders of shipped configs that serve ``target``, most specific first."""
    tags = [device_tag(target)]
    family = cpu_isa_family(target)
    if family is not None:
        tags.append(f"{target.kind.name}-{family}")
    return tags


def _shipped_entries(tag: str, op: str) -> list[dict]:
    path = resources.files("tvm_sparse_rnn._schedules").joinpath(tag).joinpath(f"{op}.json")
    return json.loads(path.read_text())["entries"] if path.is_file() else []


def _shipped_config(task: TuneTask, target: Target) -> tuple[Any, str] | None:
    exact = {k: v for k, v in task.meta.items() if k not in ("density", "structure_key")}
    density = task.meta.get("density", 0.0)
    for tag in shipped_device_tags(target):
        matches = [
            e
            for e in _shipped_entries(tag, task.op)
            if {k: v for k, v in e["meta"].items() if k in exact} == exact
        ]
        if matches:
            best = min(matches, key=lambda e: abs(e["meta"].get("density", 0.0) - density))
            return task.config_cls(**best["config"]), f"shipped config schedules/{tag}"
    return None


def lookup_config(task: TuneTask, target: Target) -> tuple[Any, str]:
    """``(config, source)`` to compile ``task`` with (see the module docstring for the order);
    ``source`` says where the config came from, for the dispatch decisions."""
    collected = _COLLECTED.get()
    if collected is not None:
        collected.setdefault(task.name, task)
    for find in (_tuned_config, _shipped_config):
        found = find(task, target)
        if found is not None:
            config, source = found
            logger.info("%s: using %s: %s", task.name, source, config)
            return config, source
    logger.info("%s: using the default config: %s", task.name, task.default_config)
    return task.default_config, "default config"


def resolve_config(task: TuneTask, target: Target) -> Any:
    """The config to compile ``task`` with (:func:`lookup_config` without the source)."""
    return lookup_config(task, target)[0]
