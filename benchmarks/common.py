"""Helpers shared by the benchmark scripts: timing, device description, tables, JSON and plots.

Every benchmark reports the median of several repeats, names the device and the command line,
and writes ``docs/results/<name>.json`` (+ ``.png``) next to a printed table.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: Where results land unless ``--out-dir`` says otherwise.
RESULTS_DIR = Path(__file__).resolve().parent.parent / "docs" / "results"
#: Shipped schedule configs (package data ``tvm_sparse_rnn._schedules`` links here).
SCHEDULES_DIR = Path(__file__).resolve().parent.parent / "schedules"


def median(values: Sequence[float]) -> float:
    """Median of ``values``."""
    return float(statistics.median(values))


def ratio(baseline: float | None, ours: float | None) -> float | None:
    """``baseline / ours`` (the speed-up of ours), ``None`` when either is missing."""
    if baseline is None or ours is None or ours <= 0:
        return None
    return baseline / ours


def time_callable(
    fn: Callable[[], Any], repeat: int = 7, min_seconds: float = 0.05, max_number: int = 10_000
) -> list[float]:
    """Seconds per call of ``fn``, one value per repeat.

    Each repeat runs ``fn`` ``number`` times back to back, with ``number`` calibrated so that a
    repeat lasts about ``min_seconds``. Take the :func:`median` of the result.
    """
    fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-7)
    number = int(min(max_number, max(1, min_seconds / once)))
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        out.append((time.perf_counter() - t0) / number)
    return out


def cuda_graph_time(fn: Callable[[], Any], calls: int = 50, repeat: int = 7) -> list[float]:
    """GPU seconds per call of ``fn``, measured by replaying a CUDA graph of ``calls`` calls.

    ``fn`` may launch torch kernels or TVM kernels (captured on torch's stream through
    ``tvm_ffi.use_torch_stream``). Launch overhead is excluded, as in a CUDA-graph inference
    loop. Raises whatever capture raises for ops that cannot be captured.
    """
    import torch
    import tvm_ffi

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with tvm_ffi.use_torch_stream(torch.cuda.stream(stream)):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with tvm_ffi.use_torch_stream(torch.cuda.graph(graph)):
        for _ in range(calls):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    out = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end) * 1e-3 / calls)
    return out


def cuda_event_time(fn: Callable[[], Any], calls: int = 200, repeat: int = 7) -> list[float]:
    """GPU seconds per call of ``fn`` launched eagerly ``calls`` times between CUDA events."""
    import torch

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end) * 1e-3 / calls)
    return out


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(gpu: bool = False) -> dict[str, Any]:
    """Description of the machine and library versions for the results file."""
    import numpy as np
    import scipy

    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
    }
    try:
        import tvm

        info["tvm"] = tvm.__version__
    except ImportError:
        pass
    if gpu:
        import torch

        info["gpu"] = torch.cuda.get_device_name(0)
        info["torch"] = torch.__version__
        info["cuda"] = torch.version.cuda
    return info


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A plain-text table of ``rows`` (dicts) with the given ``columns``."""

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def ship_entries(path: Path, entries: list[dict], device: dict[str, Any], command: str) -> None:
    """Add ``entries`` to the shipped-config file ``path`` (``schedules/<device>/<op>.json``),
    replacing those of the same kernel (every ``meta`` field but the structure key equal); the
    file's top-level ``device``, ``tvm`` and ``produced_by`` become this run's."""
    import tvm

    def kernel(entry: dict) -> str:
        return json.dumps({k: v for k, v in entry["meta"].items() if k != "structure_key"})

    old = json.loads(path.read_text())["entries"] if path.exists() else []
    new = {kernel(e) for e in entries}
    payload = {
        "device": device,
        "tvm": tvm.__version__,
        "produced_by": command,
        "entries": [e for e in old if kernel(e) not in new] + entries,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {len(entries)} entries to {path}")


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus the command line) to ``path``, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"command": " ".join([Path(sys.executable).name, *sys.argv]), **payload}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    logger.info("wrote %s", path)
    return path


def save_results(
    out_dir: Path,
    name: str,
    results: dict[str, Any],
    text: str,
    plot: Callable[[dict[str, Any], Path], None],
) -> None:
    """Write ``<name>.json`` (with the command line) and ``<name>.md``, draw the plot, print.

    matplotlib is optional on the GPU machine: without it the plot is skipped with a hint to
    re-draw it later from the JSON (the scripts' ``--plot``).
    """
    write_json(out_dir / f"{name}.json", results)
    (out_dir / f"{name}.md").write_text(text)
    try:
        plot(results, out_dir)
    except ImportError:
        logger.warning("matplotlib missing: run --plot %s", out_dir / f"{name}.json")
    print(text)


def plot_speedups(
    path: Path,
    labels: Sequence[str],
    series: dict[str, Sequence[float | None]],
    title: str,
    targets: dict[str, float] | None = None,
) -> Path | None:
    """Grouped bar chart of speed-ups (one group per label, one bar per series).

    Returns ``None`` (and logs) when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib missing: no plot written")
        return None
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(labels) * len(series)), 4.5))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(labels))]
        ax.bar(xs, [v if v is not None else 0.0 for v in values], width, label=name)
    for name, value in (targets or {}).items():
        ax.axhline(value, linestyle="--", linewidth=1, color="gray")
        ax.text(len(labels) - 0.5, value, f" {name}", va="bottom", ha="right", fontsize=8)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("speed-up (baseline time / ours)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    logger.info("wrote %s", path)
    return path
