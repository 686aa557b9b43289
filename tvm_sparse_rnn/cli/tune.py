"""``tvm-sparse-rnn tune``: tune a model's sparse kernels, or one op, with MetaSchedule.

Examples
--------
``tvm-sparse-rnn tune model.onnx --target llvm --trials 32 --work-dir tuning_logs``
``tvm-sparse-rnn tune --op sparse_dense --m 4 --n 1792 --k 1792 --block-size 1x16 --density 0.1``
``tvm-sparse-rnn tune --op rnn --cell LSTM --hidden 1792 --seq-len 64 --m 4 --density 0.1``
``tvm-sparse-rnn tune --op persistent --target cuda --cell LSTM --hidden 1024 --m 4 --density 0.1``
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..errors import UsageError
from ..kernels.x86.recurrent import UNROLL, pack_weight
from ..ops.cells import CellConfig
from ..target import device_limits, resolve_target
from ..testing import random_bsr, random_recurrent_weights
from ..transform.dispatch.cost_model import parse_block_size
from ..tuning.database import default_work_dir
from ..tuning.lookup import collect_tasks
from ..tuning.persistent_space import persistent_tune_task
from ..tuning.rnn_x86_space import recurrent_tune_task
from ..tuning.sparse_dense_space import sparse_dense_tune_task
from ..tuning.task import TuneTask
from ..tuning.tune import TaskResult, tune
from .options import (
    add_compile_options,
    dispatch_kwargs,
    non_negative_int,
    positive_int,
    unit_fraction,
)
from .table import format_table

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``tune`` subcommand."""
    parser = subparsers.add_parser(
        "tune",
        help="tune the sparse kernels of a model (or one op) with MetaSchedule",
        description="Tune every sparse kernel MODEL.onnx compiles to (or one --op), measured "
        "with the real sparsity structure. Records go to the MetaSchedule JSON database in "
        "--work-dir/<device>/ (append-only, resumable); `compile --tuning-logs DIR` applies them.",
    )
    parser.add_argument("model", type=Path, nargs="?", metavar="MODEL.onnx")
    parser.add_argument(
        "--op",
        choices=("sparse_dense", "rnn", "persistent"),
        help="tune one op instead of a model: sparse_dense, or rnn (the x86 recurrent kernel "
        "of one forward RNN/GRU/LSTM layer, llvm only), or persistent (the persistent GPU "
        "kernel of one RNN/GRU/LSTM recurrent weight, cuda only)",
    )
    parser.add_argument("--m", type=positive_int, default=4, help="--op: batch (default 4)")
    parser.add_argument("--n", type=positive_int, default=1792, help="--op: output features")
    parser.add_argument("--k", type=positive_int, default=1792, help="--op: input features")
    parser.add_argument(
        "--density",
        type=unit_fraction,
        default=0.1,
        help="--op: kept fraction (of W's blocks, or of R's entries for rnn; default 0.1)",
    )
    parser.add_argument(
        "--cell", choices=("RNN", "GRU", "LSTM"), default="LSTM", help="--op rnn (default LSTM)"
    )
    parser.add_argument(
        "--linear-before-reset",
        type=int,
        choices=(0, 1),
        default=0,
        help="--op rnn/persistent, GRU: ONNX linear_before_reset (default 0 as in ONNX; torch "
        "exports 1)",
    )
    parser.add_argument(
        "--hidden", type=positive_int, default=1792, help="--op rnn: hidden size (default 1792)"
    )
    parser.add_argument(
        "--seq-len", type=positive_int, default=64, help="--op rnn: steps (default 64)"
    )
    parser.add_argument(
        "--seed", type=non_negative_int, default=0, help="--op: seed of the random pattern"
    )
    add_compile_options(parser)
    parser.add_argument(
        "--trials", type=positive_int, default=32, help="records per task (default 32)"
    )
    parser.add_argument("--trials-per-iter", type=positive_int, default=8, help="default 8")
    parser.add_argument(
        "--cost-model",
        choices=("xgb", "random"),
        default="xgb",
        help="xgb (default) or random: a search without cost model, for hosts without xgboost",
    )
    parser.add_argument("--work-dir", type=Path, default=Path("tuning_logs"), metavar="DIR")
    parser.set_defaults(func=run)
    return parser


def _tasks(args: argparse.Namespace) -> list[TuneTask]:
    target = resolve_target(args.target)
    if args.op == "sparse_dense":
        block = (1, 1) if args.block_size == "auto" else parse_block_size(args.block_size)
        weight = random_bsr(args.n, args.k, block, args.density, args.dtype, args.seed)
        return [sparse_dense_tune_task(weight, args.m, target)]
    if args.op == "rnn":
        return [_rnn_task(args)]
    if args.op == "persistent":
        return _persistent_tasks(args)
    from ..compile import plan_onnx  # onnx loads when a command runs, not on --help

    with collect_tasks() as found:  # the tasks whose configs the dispatch pass looks up
        options = dispatch_kwargs(args) | {"tuning_logs": None}  # defaults, not earlier records
        plan_onnx(args.model, target=target, **options)
    return list(found.values())


def _cell(args: argparse.Namespace) -> CellConfig:
    """The forward layer of ``--cell`` (``--linear-before-reset`` for GRU)."""
    gru = {"linear_before_reset": bool(args.linear_before_reset)} if args.cell == "GRU" else {}
    return CellConfig(args.cell, args.hidden, **gru)


def _rnn_task(args: argparse.Namespace) -> TuneTask:
    """The x86 recurrent kernel of a random ``--density`` pruned ``--cell`` layer."""
    cfg = _cell(args)
    r = random_recurrent_weights(args.cell, args.hidden, 1, 1, args.density, seed=args.seed)["R"]
    dense = args.density > 1.0 - args.sparsity_threshold
    packed = pack_weight(r[0], cfg.num_gates, dense=dense, row_multiple=UNROLL)
    return recurrent_tune_task(cfg, 0, args.seq_len, args.m, packed)


def _persistent_tasks(args: argparse.Namespace) -> list[TuneTask]:
    """The persistent GPU kernel of a random ``--density`` pruned ``--cell`` recurrent weight
    (none when it does not fit on chip: the per-step fallback has no knobs)."""
    r = random_recurrent_weights(args.cell, args.hidden, 1, 1, args.density, seed=args.seed)["R"]
    cell, _ = _cell(args).persistent_cell(0)
    target = resolve_target(args.target)
    task = persistent_tune_task(r[0], args.m, cell, args.dtype, device_limits(target))
    return [] if task is None else [task]


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse argument combinations that cannot work.

    Raises
    ------
    UsageError
        Neither or both of MODEL.onnx and ``--op``; ``--op rnn`` off llvm or ``--op persistent``
        off cuda; a ``--work-dir`` that exists but is not a directory.
    """
    if (args.model is None) == (args.op is None):
        raise UsageError("tvm-sparse-rnn tune: give either MODEL.onnx or --op")
    if args.op == "rnn" and args.target != "llvm":
        raise UsageError("tvm-sparse-rnn tune: --op rnn tunes the x86 kernel: use --target llvm")
    if args.op == "persistent" and args.target != "cuda":
        raise UsageError(
            "tvm-sparse-rnn tune: --op persistent tunes a GPU kernel: use --target cuda"
        )
    if args.work_dir.exists() and not args.work_dir.is_dir():
        raise UsageError(
            f"tvm-sparse-rnn tune: --work-dir {str(args.work_dir)!r} is not a directory"
        )


def run(args: argparse.Namespace) -> int:
    """List the tasks, tune them, print the default-vs-tuned summary."""
    check_arguments(args)
    target = resolve_target(args.target)
    tasks = _tasks(args)
    if not tasks:
        print(f"{args.model}: no sparse kernel to tune (no layer passed the sparsity threshold)")
        return 0
    work_dir = default_work_dir(target, args.work_dir)
    print(f"{len(tasks)} task(s) on {target.kind.name}, {args.trials} trials each -> {work_dir}")
    for i, task in enumerate(tasks, 1):
        print(f"  [{i}] {task.name}")
    results = tune(
        tasks,
        target,
        work_dir,
        args.trials,
        num_trials_per_iter=args.trials_per_iter,
        cost_model=args.cost_model,
    )
    print(
        format_table(
            ["task", "trials", "default (us)", "tuned (us)", "speed-up", "best config"],
            [_row(r) for r in results],
        )
    )
    return 0


def _row(result: TaskResult) -> list[str]:
    return [
        result.name,
        str(result.trials),
        f"{result.default_s * 1e6:.1f}",
        f"{result.tuned_s * 1e6:.1f}",
        f"{result.speedup:.2f}x",
        str(result.best_config),
    ]
