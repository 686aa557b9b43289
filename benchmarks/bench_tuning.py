"""Default vs MetaSchedule-tuned schedules (sparse_dense, x86 recurrent op, persistent GPU RNN)
and shipped configs.

For each case (90 % sparsity, the block sizes and batches of the ``sparse_dense`` targets; on
llvm also the x86 recurrent kernel of RNN/GRU/LSTM at H=1792, B=4, T=64, 10 % density; on cuda
also the persistent RNN/GRU/LSTM kernel of ``PERSISTENT_CASES``, timed over 64 steps) this
tunes the kernel with the real sparsity pattern, then re-times the default and the tuned config
in this process (median of repeats, interleaved so both see the same machine state). A tuned
config that does not re-measure faster than the default is not shipped (the default is kept,
gain 1.0). It prints a table and writes:

* ``docs/results/tuning_<device>.json`` (+ ``.png``): default vs tuned per case
  (``tuning_<device>_<op>.json`` when ``--ops`` selects one op);
* ``schedules/<device>/<op>.json`` (``sparse_dense``, ``rnn_x86``, ``persistent_rnn``): the
  tuned configs, shipped as package data (see ``schedules/README.md``); entries of other
  kernels already in the file are kept, each entry names the command that produced it.

Usage::

    python benchmarks/bench_tuning.py --target llvm --trials 24
    python benchmarks/bench_tuning.py --target llvm --ops rnn --trials 12
    python benchmarks/bench_tuning.py --target cuda --trials 24 --cost-model random   # H100
    python benchmarks/bench_tuning.py --target cuda --ops sparse_dense --m 4 --blocks 1x1 4x4 \
        --dtype float16 --trials 16 --cost-model random   # the fp16 MLP layers
    python benchmarks/bench_tuning.py --target cuda --ops persistent --trials 32 --cost-model random
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import tvm
from common import (
    RESULTS_DIR,
    SCHEDULES_DIR,
    device_info,
    format_table,
    median,
    plot_speedups,
    ship_entries,
    write_json,
)

from tvm_sparse_rnn.kernels.cuda.persistent.packing import pack, unit_major
from tvm_sparse_rnn.kernels.x86.recurrent import pack_weight
from tvm_sparse_rnn.ops.cells import CellConfig, PersistentCell
from tvm_sparse_rnn.runtime.persistent import PersistentRNN, build_kernel
from tvm_sparse_rnn.runtime.sparse_dense import build_sparse_dense
from tvm_sparse_rnn.target import device_limits, resolve_target
from tvm_sparse_rnn.testing import random_bsr, random_recurrent_weights
from tvm_sparse_rnn.tuning.database import device_tag
from tvm_sparse_rnn.tuning.persistent_space import MEASURE_STEPS, persistent_tune_task, task_plans
from tvm_sparse_rnn.tuning.rnn_x86_space import recurrent_tune_task
from tvm_sparse_rnn.tuning.sparse_dense_space import sparse_dense_tune_task
from tvm_sparse_rnn.tuning.task import TuneTask
from tvm_sparse_rnn.tuning.tune import tune

CASES = {
    "llvm": [(n, b, m) for n in (1792, 4096) for b in ((1, 16), (4, 4)) for m in (1, 4, 16)],
    "cuda": [(4096, b, m) for b in ((1, 16), (4, 4)) for m in (1, 4, 16, 64)],
}


#: x86 recurrent op cases: (cell, hidden, batch, steps); R at --density.
RNN_CASES = {"llvm": [(kind, 1792, 4, 64) for kind in ("RNN", "GRU", "LSTM")], "cuda": []}
#: persistent GPU kernel cases: (ONNX cell, hidden, batch); R at --density.
PERSISTENT_CASES = {
    "llvm": [],
    "cuda": [("RNN", 1792, 4), ("GRU", 1152, 4), ("LSTM", 1024, 4), ("LSTM", 1024, 16)],
}


def _block_size(text: str) -> tuple[int, int]:
    """``"4x4"`` -> ``(4, 4)`` (an ``--blocks`` value)."""
    try:
        rows, cols = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"block size {text!r} is not ROWSxCOLS") from None
    return rows, cols


def _sparse_dense_cases(args: argparse.Namespace) -> list[tuple[int, tuple[int, int], int]]:
    """``(N = K, block, M)`` of the run: the target's cases, or with ``--blocks`` their sizes
    and batches for those blocks; only the ``--m`` batches when given."""
    cases = CASES[args.target]
    if args.blocks:
        shapes = dict.fromkeys((n, m) for n, _, m in cases)
        cases = [(n, block, m) for block in args.blocks for n, m in shapes]
    return [c for c in cases if not args.m or c[2] in args.m]


def _time(kernel, x: np.ndarray, repeat: int) -> float:
    return median(kernel.time(x, number=20, repeat=repeat))


def _sparse_dense_case(n, block, m, args, target):
    """``(case, task, time(config) -> seconds)`` of one ``sparse_dense`` kernel."""
    weight = random_bsr(n, n, block, args.density, dtype=args.dtype, seed=0)
    task = sparse_dense_tune_task(weight, m, target)
    x = np.random.default_rng(1).uniform(-1, 1, (m, n)).astype(args.dtype)

    def timer(config):
        kernel = build_sparse_dense(weight, m, target, config)
        return lambda: _time(kernel, x, 5)

    dtype = "" if args.dtype == "float32" else f" {args.dtype}"
    return f"{n} {block[0]}x{block[1]} m{m}{dtype}", task, timer


def _rnn_case(kind, hidden, batch, seq_len, args, target):
    """``(case, task, time(config) -> seconds)`` of one x86 recurrent kernel (real packed R)."""
    cfg = CellConfig(kind, hidden)
    r = random_recurrent_weights(kind, hidden, 1, 1, args.density, seed=0)["R"][0]
    task: TuneTask = recurrent_tune_task(
        cfg, 0, seq_len, batch, pack_weight(r, cfg.num_gates, dense=False)
    )
    rng = np.random.default_rng(1)
    dev = tvm.cpu()
    tensors = []
    for i, param in enumerate(task.func.params):
        shape = [int(d) for d in param.shape]
        value = task.fixed_args.get(i)
        if value is None:
            value = rng.uniform(-1, 1, shape).astype(param.dtype)
        tensors.append(tvm.runtime.tensor(value, dev))

    def timer(config):
        ex = tvm.compile(task.scheduled(config), target=target)
        evaluator = ex.mod.time_evaluator("main", dev, number=3, repeat=5)
        return lambda: median(list(evaluator(*tensors).results))

    return f"rnn_x86 {kind} H={hidden} B={batch} T={seq_len}", task, timer


def _persistent_case(kind, hidden, batch, args, target):
    """``(case, task, time(config) -> seconds)`` of one persistent GPU kernel (real packed R)."""
    cell = {"RNN": "tanh", "GRU": "gru", "LSTM": "lstm"}[kind]
    r = random_recurrent_weights(kind, hidden, 1, 1, args.density, seed=0)["R"][0]
    task = persistent_tune_task(
        r, batch, PersistentCell(cell), "float32", device_limits(resolve_target("cuda"))
    )
    plans = task_plans(task)
    p = plans[0]
    rng = np.random.default_rng(1)
    dev = tvm.cuda(0)
    states, bk = p.streams * p.hidden_padded, p.batch_kernel  # the plans share one replica count
    U = tvm.runtime.tensor(rng.uniform(-1, 1, p.u_shape(MEASURE_STEPS)).astype(p.dtype), dev)
    h0 = tvm.runtime.tensor(np.zeros((states, bk), p.dtype), dev)
    out = tvm.runtime.tensor(np.zeros(p.out_shape(MEASURE_STEPS), p.dtype), dev)

    def timer(config):
        plan, barrier, vector, order = config.resolve(plans)
        module = build_kernel(plan, cell, barrier, vector, target)
        packed = pack(unit_major(r, p.gates), plan, order, vector)
        rnn = PersistentRNN(plan, packed, cell, barrier, module, dev)
        evaluator = module.time_evaluator("main", dev, number=20, repeat=5)
        kernel_args = rnn.kernel_args(U, h0, out)
        return lambda: median(list(evaluator(*kernel_args).results))

    return f"persistent {kind} H={hidden} B={batch} T={MEASURE_STEPS}", task, timer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", choices=("llvm", "cuda"), default="llvm")
    parser.add_argument(
        "--ops", nargs="+", choices=("sparse_dense", "rnn", "persistent"), default=None
    )
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--cost-model", choices=("xgb", "random"), default="xgb")
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--quick", action="store_true", help="the first two cases only")
    parser.add_argument("--m", type=int, nargs="*", help="only these sparse_dense batch sizes")
    parser.add_argument(
        "--blocks",
        type=_block_size,
        nargs="*",
        help="sparse_dense block sizes (e.g. 1x1 4x4) instead of the default cases'",
    )
    parser.add_argument(
        "--dtype",
        choices=("float32", "float16"),
        default="float32",
        help="sparse_dense weight and activation dtype (float16: cuda only)",
    )
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temp dir")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--schedules-dir", type=Path, default=SCHEDULES_DIR)
    args = parser.parse_args()
    if args.dtype == "float16" and args.target != "cuda":
        parser.error("--dtype float16 needs --target cuda")
    logging.basicConfig(level=logging.WARNING)
    target = resolve_target(args.target)
    ops = args.ops or ["sparse_dense", "rnn", "persistent"]
    cases = []
    if "sparse_dense" in ops:
        cases += [(_sparse_dense_case, c) for c in _sparse_dense_cases(args)]
    if "rnn" in ops:
        cases += [(_rnn_case, c) for c in RNN_CASES[args.target]]
    if "persistent" in ops:
        cases += [(_persistent_case, c) for c in PERSISTENT_CASES[args.target]]
    cases = cases[: 2 if args.quick else None]
    command = "python " + " ".join(sys.argv)
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="tune_"))
    rows, entries = [], {}
    for make_case, params in cases:
        case, task, timer = make_case(*params, args, target)
        (result,) = tune(
            [task], target, work_dir, args.trials, cost_model=args.cost_model, progress=False
        )
        default_t = timer(task.default_config)
        same = result.best_config == task.default_config  # the search kept the default
        tuned_t = default_t if same else timer(result.best_config)
        times = {"default": [], "tuned": []}
        for _ in range(3):  # interleave: both configs see the same machine state
            times["default"].append(default_t())
            times["tuned"].append(times["default"][-1] if same else tuned_t())
        default_us, tuned_us = (median(times[k]) * 1e6 for k in ("default", "tuned"))
        kept_default = tuned_us >= default_us  # validation: ship only a measured improvement
        best = task.default_config if kept_default else result.best_config
        tuned_us = min(tuned_us, default_us)
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
        entries.setdefault(task.op, []).append(
            {
                "meta": task.meta,
                "config": vars(best),
                "default_us": round(default_us, 2),
                "tuned_us": round(tuned_us, 2),
                "produced_by": command,
            }
        )
        print(format_table(rows[-1:], list(rows[-1])), flush=True)
    info = device_info(gpu=args.target == "cuda")
    tag = device_tag(target)
    print(format_table(rows, list(rows[0])))
    gains = [r["gain"] for r in rows]
    print(f"gain: median {median(gains):.2f}x, min {min(gains):.2f}x, max {max(gains):.2f}x")
    name = f"tuning_{tag}" if args.ops is None else f"tuning_{tag}_{'_'.join(ops)}"
    write_json(
        args.out_dir / f"{name}.json",
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
        args.out_dir / f"{name}.png",
        [r["case"] for r in rows],
        {"tuned vs default": gains},
        title=f"tuned vs default ({tag})",
    )
    for op, op_entries in entries.items():
        ship_entries(args.schedules_dir / tag / f"{op}.json", op_entries, info, command)


if __name__ == "__main__":
    main()
