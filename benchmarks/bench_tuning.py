"""Default vs MetaSchedule-tuned ``sparse_dense`` schedules, and the shipped configs.

For each case (90 % sparsity, the block sizes and batches of the ``sparse_dense`` targets) this
tunes the kernel with the real sparsity pattern, then re-times the default and the tuned config
in this process with ``time_evaluator`` (median of repeats, interleaved so both see the same
machine state). A tuned config that does not re-measure faster than the default is not shipped
(the default is kept, gain 1.0). It prints a table and writes:

* ``docs/results/tuning_<device>.json`` (+ ``.png``): default vs tuned per case;
* ``schedules/<device>/sparse_dense.json``: the tuned configs, shipped as package data
  (see ``schedules/README.md``).

Usage::

    python benchmarks/bench_tuning.py --target llvm --trials 24
    python benchmarks/bench_tuning.py --target cuda --trials 24 --cost-model random   # H100
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import tvm
from common import RESULTS_DIR, device_info, format_table, median, plot_speedups, write_json

from tvm_sparse_rnn.sparse_dense import build_sparse_dense, tune_task
from tvm_sparse_rnn.target import resolve_target
from tvm_sparse_rnn.testing import random_bsr
from tvm_sparse_rnn.tuning.database import device_tag
from tvm_sparse_rnn.tuning.tune import tune

SCHEDULES_DIR = Path(__file__).resolve().parent.parent / "schedules"
CASES = {
    "llvm": [(n, b, m) for n in (1792, 4096) for b in ((1, 16), (4, 4)) for m in (1, 4, 16)],
    "cuda": [(4096, b, m) for b in ((1, 16), (4, 4)) for m in (1, 4, 16, 64)],
}


def _time(kernel, x: np.ndarray, repeat: int) -> float:
    return median(kernel.time(x, number=20, repeat=repeat))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", choices=("llvm", "cuda"), default="llvm")
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--cost-model", choices=("xgb", "random"), default="xgb")
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--quick", action="store_true", help="the first two cases only")
    parser.add_argument("--m", type=int, nargs="*", help="only these batch sizes")
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temp dir")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--schedules-dir", type=Path, default=SCHEDULES_DIR)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    target = resolve_target(args.target)
    cases = [c for c in CASES[args.target] if not args.m or c[2] in args.m]
    cases = cases[: 2 if args.quick else None]
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="tune_"))
    rows, entries = [], []
    for n, block, m in cases:
        weight = random_bsr(n, n, block, args.density, seed=0)
        task = tune_task(weight, m, target)
        (result,) = tune(
            [task], target, work_dir, args.trials, cost_model=args.cost_model, progress=False
        )
        x = np.random.default_rng(1).uniform(-1, 1, (m, n)).astype("float32")
        default_k = build_sparse_dense(weight, m, target, task.default_config)
        tuned_k = (
            default_k
            if result.best_config == task.default_config  # the search kept the default
            else build_sparse_dense(weight, m, target, result.best_config)
        )
        times = {"default": [], "tuned": []}
        for _ in range(3):  # interleave: both configs see the same machine state
            times["default"].append(_time(default_k, x, 5))
            times["tuned"].append(
                times["default"][-1] if tuned_k is default_k else _time(tuned_k, x, 5)
            )
        default_us, tuned_us = (median(times[k]) * 1e6 for k in ("default", "tuned"))
        kept_default = tuned_us >= default_us  # validation: ship only a measured improvement
        best = task.default_config if kept_default else result.best_config
        tuned_us = min(tuned_us, default_us)
        case = f"{n} {block[0]}x{block[1]} m{m}"
        rows.append(
            {
                "case": case,
                "trials": result.trials,
                "default_us": round(default_us, 2),
                "tuned_us": round(tuned_us, 2),
                "gain": round(default_us / tuned_us, 3),
                "tuned_config": str(best),
                "kept_default": kept_default,
            }
        )
        entries.append(
            {
                "meta": task.meta,
                "config": vars(best),
                "default_us": round(default_us, 2),
                "tuned_us": round(tuned_us, 2),
            }
        )
        print(format_table(rows[-1:], list(rows[-1])), flush=True)
    command = "python " + " ".join(sys.argv)
    info = device_info(gpu=args.target == "cuda")
    tag = device_tag(target)
    print(format_table(rows, list(rows[0])))
    gains = [r["gain"] for r in rows]
    print(f"gain: median {median(gains):.2f}x, min {min(gains):.2f}x, max {max(gains):.2f}x")
    write_json(
        args.out_dir / f"tuning_{tag}.json",
        {
            "command": command,
            "device": info,
            "tvm": tvm.__version__,
            "trials": args.trials,
            "cost_model": args.cost_model,
            "density": args.density,
            "rows": rows,
        },
    )
    plot_speedups(
        args.out_dir / f"tuning_{tag}.png",
        [r["case"] for r in rows],
        {"tuned vs default": gains},
        title=f"sparse_dense: tuned vs default ({tag})",
    )
    shipped = args.schedules_dir / tag / "sparse_dense.json"
    shipped.parent.mkdir(parents=True, exist_ok=True)
    shipped.write_text(
        json.dumps(
            {
                "device": info,
                "tvm": tvm.__version__,
                "produced_by": command,
                "entries": entries,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"wrote {shipped}")


if __name__ == "__main__":
    main()
