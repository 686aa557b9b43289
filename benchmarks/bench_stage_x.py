"""A/B of the CUDA ``sparse_dense`` knob ``stage_x`` (``X`` gathered from shared memory).

``stage_x`` changes the loop nest, so MetaSchedule does not sample it
(:class:`~tvm_sparse_rnn.kernels.cuda.sparse_dense.CudaConfig`); this benchmark measures it:
per case (``N = K``, block, ``M``, dtype; 90 % sparse) the shipped (or default) config with
and without staging and a small grid of staged geometries, interleaved in one run (median of
``--repeat`` rounds of ``kernel.time``), and the dense layer in torch (cuBLAS) in the same run;
whole models: ``bench_gpu_models.py`` with the shipped configs. With ``--ship`` the fastest
staged config becomes the case's shipped entry where it beats the shipped one by more than
``--margin``. Run on the GPU::

    python benchmarks/bench_stage_x.py --cases 4096:1x1:4:float16 4096:4x4:4:float16 --ship
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
from pathlib import Path

import numpy as np
import tvm
from common import (
    RESULTS_DIR,
    SCHEDULES_DIR,
    cuda_event_time,
    device_info,
    format_table,
    median,
    plot_speedups,
    ship_entries,
    write_json,
)

from tvm_sparse_rnn.kernels.cuda.sparse_dense import CudaConfig
from tvm_sparse_rnn.runtime.sparse_dense import build_sparse_dense
from tvm_sparse_rnn.target import resolve_target
from tvm_sparse_rnn.testing import random_bsr, reference_sparse_dense
from tvm_sparse_rnn.tuning.database import device_tag
from tvm_sparse_rnn.tuning.lookup import lookup_config
from tvm_sparse_rnn.tuning.sparse_dense_space import sparse_dense_tune_task

#: Staged geometries tried besides the shipped config with ``stage_x = 1``.
GRID = {"rows_per_cta": (4, 16), "threads_x": (16, 32), "m_tile": (1, 2, 4)}


def parse_case(text: str) -> tuple[int, tuple[int, int], int, str]:
    """``"4096:1x1:4:float16"`` -> ``(4096, (1, 1), 4, "float16")``."""
    n, block, m, dtype = text.split(":")
    rows, cols = (int(v) for v in block.split("x"))
    return int(n), (rows, cols), int(m), dtype


def candidates(shipped: CudaConfig) -> list[CudaConfig]:
    """The shipped config, it staged, and the staged grid (no duplicates)."""
    grid = [
        dataclasses.replace(shipped, stage_x=1, **dict(zip(GRID, values, strict=True)))
        for values in itertools.product(*GRID.values())
    ]
    return list(dict.fromkeys([shipped, dataclasses.replace(shipped, stage_x=1), *grid]))


def _cublas_us(x: np.ndarray, weight) -> float:
    """Median us of the dense ``x @ W.T`` in torch (cuBLAS) in ``x``'s dtype, the layer a user
    runs without sparsity (timed right after the candidates)."""
    import torch

    xt = torch.from_numpy(x).cuda()
    wt = torch.from_numpy(weight.toarray().astype(x.dtype)).cuda()
    return median(cuda_event_time(lambda: xt @ wt.T, calls=50, repeat=7)) * 1e6


def bench_case(case: tuple, args: argparse.Namespace) -> tuple[dict, dict]:
    """Check and time every candidate of one case; ``(row, shipped entry)``."""
    n, block, m, dtype = case
    target = resolve_target("cuda")
    weight = random_bsr(n, n, block, args.density, dtype=dtype, seed=0)
    task = sparse_dense_tune_task(weight, m, target)
    shipped, source = lookup_config(task, target)
    x = np.random.default_rng(1).uniform(-1, 1, (m, n)).astype(dtype)
    ref = reference_sparse_dense(x, weight)
    kernels = {}
    for config in candidates(shipped):
        kernel = build_sparse_dense(weight, m, target, config)
        np.testing.assert_allclose(kernel(x), ref, rtol=2e-2, atol=2e-2)
        kernels[config] = kernel
    times = {config: [] for config in kernels}
    for _ in range(args.repeat):
        for config, kernel in kernels.items():
            times[config].append(median(kernel.time(x, number=20, repeat=3)))
    us = {config: median(t) * 1e6 for config, t in times.items()}
    cublas_us = _cublas_us(x, weight)
    staged = dataclasses.replace(shipped, stage_x=1)
    best = min((c for c in us if c.stage_x), key=us.get)
    row = {
        "case": f"{n} {block[0]}x{block[1]} m{m} {dtype}",
        "shipped_us": round(us[shipped], 2),
        "shipped_staged_us": round(us[staged], 2),
        "best_staged_us": round(us[best], 2),
        "gain": round(us[shipped] / us[best], 3),
        "cublas_us": round(cublas_us, 2),
        "x_cublas": round(cublas_us / min(us.values()), 3),
        "shipped": f"{shipped} ({source})",
        "best_staged": str(best),
    }
    entry = {
        "meta": task.meta,
        "config": vars(best),
        "default_us": round(us[shipped], 2),
        "tuned_us": round(us[best], 2),
        "produced_by": "python " + " ".join(sys.argv),
    }
    return row, entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=parse_case, nargs="+", required=True)
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--ship", action="store_true", help="update the shipped configs")
    parser.add_argument("--margin", type=float, default=0.03, help="gain needed to ship")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--schedules-dir", type=Path, default=SCHEDULES_DIR)
    args = parser.parse_args()
    rows, entries = [], []
    for case in args.cases:
        row, entry = bench_case(case, args)
        rows.append(row)
        print(format_table([row], list(row)), flush=True)
        if row["gain"] > 1 + args.margin:
            entries.append(entry)
    print(format_table(rows, list(rows[0])))
    command, info = "python " + " ".join(sys.argv), device_info(gpu=True)
    write_json(
        args.out_dir / "bench_stage_x.json", {"command": command, "device": info, "rows": rows}
    )
    plot_speedups(
        args.out_dir / "bench_stage_x.png",
        [r["case"] for r in rows],
        {"best staged vs shipped": [r["gain"] for r in rows]},
        title=f"stage_x A/B ({tvm.cuda(0).device_name})",
    )
    if args.ship and entries:
        shipped = args.schedules_dir / device_tag(resolve_target("cuda")) / "sparse_dense.json"
        ship_entries(shipped, entries, info, command)


if __name__ == "__main__":
    main()
