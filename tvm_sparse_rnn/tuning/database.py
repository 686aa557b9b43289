"""MetaSchedule JSON databases under ``tuning_logs/<device>/``: location, repair, opening.

MetaSchedule's :class:`~tvm.s_tir.meta_schedule.database.JSONDatabase` appends one JSON line per
workload and per measured record. A run killed mid-write leaves a truncated last line, which
makes the whole database unreadable; :func:`repair_database` drops such lines so an interrupted
run can be resumed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import tvm
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from ..errors import TuningError

logger = logging.getLogger(__name__)

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"


def device_tag(target: Target) -> str:
    """A directory-safe name of the device a target describes, e.g. ``cuda-sm_90a``.

    For llvm targets it is ``llvm-<mcpu>``: records measured on one CPU model are not reused
    on another.
    """
    kind = target.kind.name
    detail = target.attrs.get("arch") if kind == "cuda" else target.attrs.get("mcpu", "generic")
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{kind}-{detail}")


def default_work_dir(target: Target, root: str | os.PathLike = "tuning_logs") -> Path:
    """``<root>/<device_tag>``, where records of one device live."""
    return Path(root) / device_tag(target)


def repair_database(work_dir: str | os.PathLike) -> int:
    """Drop unreadable lines (a run killed mid-write) from both database files.

    Returns
    -------
    int
        Number of lines dropped.
    """
    dropped = 0
    for name in (WORKLOAD_FILE, RECORD_FILE):
        path = Path(work_dir) / name
        if not path.exists():
            continue
        lines = path.read_text().splitlines()
        good = []
        for line in lines:
            try:
                json.loads(line)
            except json.JSONDecodeError:
                dropped += 1
                continue
            good.append(line)
        if len(good) != len(lines):
            path.write_text("".join(f"{line}\n" for line in good))
    if dropped:
        logger.warning("dropped %d truncated line(s) from the database in %s", dropped, work_dir)
    return dropped


def _unreadable_lines(work_dir: Path) -> int:
    bad = 0
    for name in (WORKLOAD_FILE, RECORD_FILE):
        path = work_dir / name
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    json.loads(line)
                except json.JSONDecodeError:
                    bad += 1
    return bad


def open_database(work_dir: str | os.PathLike, *, create: bool = True) -> ms.database.JSONDatabase:
    """Open or create the JSON database in ``work_dir``.

    ``create=True`` (tuning) repairs a truncated database in place; ``create=False`` (lookup)
    never writes to ``work_dir``: a truncated database is repaired in a private copy.

    Raises
    ------
    TuningError
        If ``create`` is False and no database exists there.
    """
    path = Path(work_dir)
    if not (path / WORKLOAD_FILE).exists():
        if not create:
            raise TuningError(f"no tuning database in {path} (expected {WORKLOAD_FILE})")
        path.mkdir(parents=True, exist_ok=True)
    if create:
        repair_database(path)
    elif _unreadable_lines(path):
        copy = Path(tempfile.mkdtemp(prefix="tvm_sparse_rnn_db_"))
        for name in (WORKLOAD_FILE, RECORD_FILE):
            if (path / name).exists():
                shutil.copy(path / name, copy / name)
        repair_database(copy)
        path = copy
    return ms.database.JSONDatabase(work_dir=str(path))


def median_seconds(record: ms.database.TuningRecord) -> float:
    """Median of a record's measured run times (``inf`` for a failed run)."""
    secs = [float(s) for s in record.run_secs or []]
    return float(np.median(secs)) if secs else float("inf")


def task_records(db: ms.database.Database, mod: tvm.IRModule) -> list[ms.database.TuningRecord]:
    """All successful records of ``mod``'s workload, fastest (by median) first."""
    if not db.has_workload(mod):
        return []
    records = db.get_top_k(db.commit_workload(mod), 1 << 30)
    return sorted(records, key=median_seconds)
