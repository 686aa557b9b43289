"""Benchmark: sparse persistent GRU / LSTM (TVM, fp32 and fp16) vs cuDNN ``nn.GRU`` / ``nn.LSTM``.

Issue 4's GPU sweep, all in one run on one GPU: cell in {GRU (``linear_before_reset`` 1 and 0),
LSTM} x dtype in {fp32, fp16} x H in {1024, 1792, 2304} x B in {1, 4, 16}, ``R`` 10 % dense,
T = 256; plus the on-chip capacity case: a vanilla tanh RNN at H = 8192, 10 %, fp16, B = 4.
cuDNN has no ``linear_before_reset=0`` GRU: ``gru_lbr0`` (two state exchanges per step) is
compared with cuDNN's GRU, the layer a user would otherwise run.

* ours: the persistent kernel alone (``u_t`` given; the best of the planner's top geometries of
  one batch slice and its best geometry per replica count, for both barriers), and
  ``+GEMM``: plus one cuBLAS GEMM of the input projection ``X W^T`` for all ``T * B`` rows
  (dense ``W`` of ``I = H`` inputs, what cuDNN computes too) in the same run;
* cuDNN: ``torch.nn.GRU`` / ``torch.nn.LSTM`` (``input_size = H``, one layer) in fp32 and fp16;
* every kernel's result is checked against the float64 ONNX-semantics reference on a short
  sequence (fp16: the reference runs on the fp16-rounded weights).

Target (issue 4): ours >= 8x cuDNN fp32 at B = 4. Run on the GPU machine::

    python benchmarks/bench_rnn.py --cells --out docs/results     # or this script directly
    python benchmarks/bench_rnn_cells.py --plot docs/results/bench_rnn_cells.json
    python benchmarks/bench_rnn_cells.py --cell gru gru_lbr0 lstm --hidden 1792 --batch 4
    python benchmarks/bench_rnn_cells.py --cell tanh --hidden 1792 --batch 4 16 64  # vs nn.RNN
    python benchmarks/bench_rnn_cells.py --cell gru lstm --hidden 1792 --batch 4 \\
        --fp16-chunks 0 16 --barriers flag        # fp16: float32 vs packed-half FMAs
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import logging
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from common import cuda_event_time, median, save_results

logger = logging.getLogger("bench_rnn_cells")

STEPS = 256
CHECK_STEPS = 16
CELLS = ("gru", "gru_lbr0", "lstm")
#: Also offered by ``--cell``: the vanilla RNN (``bench_rnn.py`` sweeps it in fp32) in both dtypes.
EXTRA_CELLS = ("tanh",)
DTYPES = ("float32", "float16")
HIDDEN = (1024, 1792, 2304)
BATCH = (1, 4, 16)
DENSITY = 0.10
BARRIERS = ("flag", "grid", "cluster")
CAPACITY_CASE = ("tanh", "float16", 8192, 4)
ONNX_KIND = {"gru": "GRU", "gru_lbr0": "GRU", "lstm": "LSTM", "tanh": "RNN"}
#: Issue 13's bar at B = 4: the speed-up over the best cuDNN in the same dtype.
TARGET_X_CUDNN = 10.0


def _weights(cell: str, hidden: int, dtype: str) -> dict[str, np.ndarray]:
    from tvm_sparse_rnn.testing import random_recurrent_weights

    w = random_recurrent_weights(ONNX_KIND[cell], hidden, hidden, density=DENSITY, seed=hidden)
    if dtype == "float16":
        w = {k: v.astype(np.float16).astype(np.float32) for k, v in w.items()}
    return w


def _plans(R, cell: str, batch: int, dtype: str, count: int) -> list:
    """The planner's best geometry per lanes-per-row, ``count`` of them (one slice of the
    batch), then its ``count`` best geometries per replica count (or the fallback)."""
    from tvm_sparse_rnn.kernels.cuda.persistent.packing import unit_major
    from tvm_sparse_rnn.kernels.cuda.persistent.planner import (
        candidate_plans,
        plan_persistent,
        replica_options,
        row_lengths,
    )
    from tvm_sparse_rnn.ops.cells import PersistentCell
    from tvm_sparse_rnn.target import device_limits

    limits = device_limits("cuda")

    gates, two_phase = PersistentCell(cell).gates, PersistentCell(cell).two_phase
    longest = int(row_lengths(R).max())
    plans_for = functools.partial(
        candidate_plans,
        R.shape[1],
        longest,
        batch,
        dtype,
        device=limits,
        gates=gates,
        two_phase=two_phase,
    )
    seen, out = set(), []
    for plan in plans_for():
        if plan.lanes_per_row not in seen:
            seen.add(plan.lanes_per_row)
            out.append(plan)
    out = out[:count]
    for replicas in replica_options(batch, 1, limits)[1:]:
        out += plans_for(replicas=replicas)[:count]
    fallback = plan_persistent(
        unit_major(R, gates), batch, dtype, device=limits, gates=gates, two_phase=two_phase
    )
    return out or [fallback]


def _with_fp16_chunks(plans: list, args: argparse.Namespace) -> list:
    """Each float16 persistent plan once per ``--fp16-chunks`` value (0: float32 FMAs); the
    planner's plans as they are without the option."""
    if args.fp16_chunks is None:
        return plans
    return [
        dataclasses.replace(plan, fp16_chunk=chunk)
        for plan in plans
        for chunk in (
            args.fp16_chunks if plan.dtype == "float16" and plan.kind == "persistent" else (0,)
        )
    ]


def _barriers(plan, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """The ``allowed`` barriers the plan can run: flag and grid, and the cluster barrier when
    its CTAs per recurrence fit one portable cluster; the per-step fallback has only its
    launches."""
    from tvm_sparse_rnn.kernels.cuda.persistent.planner import PORTABLE_CLUSTER_SIZE

    if plan.kind != "persistent":
        return ("grid",)
    fitting = ("flag", "grid", "cluster")[: 3 if plan.num_ctas <= PORTABLE_CLUSTER_SIZE else 2]
    return tuple(b for b in fitting if b in allowed)


def _check(rnn, cell: str, w: dict, batch: int, hidden: int) -> float:
    """Max |error| of a short run against the float64 ONNX reference."""
    from tvm_sparse_rnn.ops.cells import CellConfig, PersistentCell
    from tvm_sparse_rnn.ops.reference import recurrent_sequence_reference
    from tvm_sparse_rnn.transform.dispatch.recurrent_persistent import split_onnx_bias

    G = rnn.plan.gates
    rng = np.random.default_rng(2)
    X = rng.standard_normal((CHECK_STEPS, batch, hidden)).astype(np.float32)
    bias, rbias = split_onnx_bias(
        PersistentCell(cell), w["B"][0, : G * hidden], w["B"][0, G * hidden :]
    )
    got = rnn.run(X=X, W=w["W"][0], b=bias, rbias=rbias).h.astype(np.float64)
    cfg = CellConfig(ONNX_KIND[cell], hidden, linear_before_reset=cell == "gru")
    y = recurrent_sequence_reference(cfg, X, w["W"], w["R"], w["B"])[0][:, 0]
    return float(np.abs(got - y).max())


def _kernel_ms(rnn, steps: int) -> float:
    """Median ms of one launch over ``steps`` steps (per-step plans: one launch per step)."""
    import tvm

    p, dev = rnn.plan, rnn.device
    rng = np.random.default_rng(1)
    rows = p.streams * p.hidden_padded
    shape = p.u_shape(steps)
    u = tvm.runtime.tensor((rng.standard_normal(shape) * 0.5).astype(p.dtype), dev)
    h = tvm.runtime.tensor(np.zeros((rows, p.batch_kernel), p.dtype), dev)
    out = tvm.runtime.tensor(np.zeros(p.out_shape(steps), p.dtype), dev)
    args = rnn.kernel_args(u, h, out)
    if p.kind == "persistent":
        ev = rnn.module.time_evaluator("main", dev, number=5, repeat=5)
        return median([r * 1e3 for r in ev(*args).results]) * p.num_batch_chunks
    step = rnn.module["main"]
    t0 = time.perf_counter()
    for t in range(steps):
        step(*args, t)
    dev.sync()
    return (time.perf_counter() - t0) * 1e3 * p.num_batch_chunks


def _torch_baselines(cell: str, hidden: int, batch: int) -> dict[str, float]:
    """cuDNN fp32/fp16 and the cuBLAS input-projection GEMM, median ms."""
    import torch

    dev = torch.device("cuda")
    out = {}
    kind = ONNX_KIND[cell]
    gates = {"RNN": 1, "GRU": 3, "LSTM": 4}[kind]
    for dtype, name in ((torch.float32, "cudnn_fp32"), (torch.float16, "cudnn_fp16")):
        cls = {"RNN": torch.nn.RNN, "GRU": torch.nn.GRU, "LSTM": torch.nn.LSTM}[kind]
        layer = cls(hidden, hidden).to(dev, dtype)
        x = torch.randn(STEPS, batch, hidden, device=dev, dtype=dtype)
        with torch.no_grad():
            out[name] = 1e3 * median(cuda_event_time(lambda m=layer, x=x: m(x), calls=1, repeat=15))
        w = torch.randn(gates * hidden, hidden, device=dev, dtype=dtype)
        xs = x.reshape(STEPS * batch, hidden)
        out[f"gemm_{name[-4:]}"] = 1e3 * median(
            cuda_event_time(lambda xs=xs, w=w: xs @ w.T, calls=1, repeat=15)
        )
    return out


def run(args: argparse.Namespace) -> dict:
    import tvm

    from tvm_sparse_rnn.kernels.cuda.persistent.packing import pack, unit_major
    from tvm_sparse_rnn.kernels.cuda.persistent.planner import default_knobs
    from tvm_sparse_rnn.ops.cells import PersistentCell
    from tvm_sparse_rnn.runtime.persistent import PersistentRNN, build_kernel, prebuild

    hiddens = args.hidden or (HIDDEN[:1] if args.quick else HIDDEN)
    cells = [c for c in args.cell if c != "capacity"] if args.cell else CELLS
    cases = list(itertools.product(cells, DTYPES, hiddens, args.batch or BATCH))
    if not args.cell or "capacity" in args.cell:
        cases.append(CAPACITY_CASE)
    weights = {(c, h, dt): _weights(c, h, dt) for c, dt, h, _ in cases}
    jobs = []
    for cell, dtype, hidden, batch in cases:
        R = unit_major(weights[(cell, hidden, dtype)]["R"][0], PersistentCell(cell).gates)
        for plan in _with_fp16_chunks(_plans(R, cell, batch, dtype, args.candidates), args):
            vector = default_knobs(plan)[1]
            for barrier in _barriers(plan, args.barriers):
                jobs.append(((cell, dtype, hidden, batch), plan, barrier, vector))
    cache = args.cache or tempfile.mkdtemp(prefix="sprnn_cells_")
    t0 = time.time()
    prebuild([(plan, case[0], barrier, vector) for case, plan, barrier, vector in jobs], cache)
    logger.info("built %d kernels in %.1f s", len(jobs), time.time() - t0)
    t0 = time.time()
    with ProcessPoolExecutor() as pool:  # packing is a Python loop over rows: in parallel
        keys = list(dict.fromkeys((case, plan, vector) for case, plan, _, vector in jobs))
        futures = [
            pool.submit(
                pack,
                unit_major(weights[(c[0], c[2], c[1])]["R"][0], PersistentCell(c[0]).gates),
                plan,
                "guided" if plan.kind == "persistent" else "naive",
                vector,
            )
            for c, plan, vector in keys
        ]
        packs = {k: f.result() for k, f in zip(keys, futures, strict=True)}
    logger.info("packed %d layouts in %.1f s", len(packs), time.time() - t0)
    dev = tvm.cuda(0)
    results: dict = {"device": dev.device_name, "steps": STEPS, "density": DENSITY, "cases": []}
    for case in cases:
        cell, dtype, hidden, batch = case
        w = weights[(cell, hidden, dtype)]
        entry = {"cell": cell, "dtype": dtype, "hidden": hidden, "batch": batch, "ours": {}}
        for job_case, plan, barrier, vector in jobs:
            if job_case != case:
                continue
            module = build_kernel(plan, cell, barrier, vector, "cuda", cache)
            rnn = PersistentRNN(plan, packs[(case, plan, vector)], cell, barrier, module, dev)
            replicas = f"/x{plan.replicas}" if plan.replicas > 1 else ""
            half = f"/f16x2-{plan.fp16_chunk}" if plan.fp16_chunk else ""
            label = (
                f"{plan.kind}/{barrier}/KS{plan.lanes_per_row}{replicas}"
                f"/{plan.num_ctas}x{plan.threads}{half}"
            )
            entry["ours"][label] = {
                "ms": _kernel_ms(rnn, STEPS),
                "max_abs_err": _check(rnn, cell, w, batch, hidden),
                "plan": plan.describe(),
                "resident": plan.kind == "persistent",
            }
            logger.info("%s %s: %s", case, label, entry["ours"][label])
        best = min(entry["ours"].items(), key=lambda kv: kv[1]["ms"])
        entry["best"] = {"label": best[0], **best[1]}
        if not args.no_baselines and case != CAPACITY_CASE:
            bl = _torch_baselines(cell, hidden, batch)
            entry["baselines"] = bl
            gemm = bl["gemm_fp16" if dtype == "float16" else "gemm_fp32"]
            entry["best"]["ms_with_gemm"] = best[1]["ms"] + gemm
            entry["x_cudnn_fp32"] = bl["cudnn_fp32"] / best[1]["ms"]
            entry["x_cudnn_fp32_with_gemm"] = bl["cudnn_fp32"] / entry["best"]["ms_with_gemm"]
            entry["x_cudnn_same_dtype"] = (
                bl["cudnn_fp16" if dtype == "float16" else "cudnn_fp32"] / best[1]["ms"]
            )
        results["cases"].append(entry)
    return results


def table(results: dict) -> str:
    """Markdown table of the sweep."""
    rows = [
        "| cell | dtype | H | B | ours (ms) | ours+GEMM (ms) | config | cuDNN fp32 | cuDNN fp16 | "
        "x cuDNN fp32 | x cuDNN fp32 (+GEMM) | x cuDNN same dtype | max err |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def f(v: object, spec: str = ".3f") -> str:
        return format(v, spec) if isinstance(v, float) else "-"

    for c in results["cases"]:
        b, bl = c["best"], c.get("baselines", {})
        rows.append(
            f"| {c['cell']} | {c['dtype']} | {c['hidden']} | {c['batch']} | {b['ms']:.3f} | "
            f"{f(b.get('ms_with_gemm'))} | {b['label']} | {f(bl.get('cudnn_fp32'))} | "
            f"{f(bl.get('cudnn_fp16'))} | {f(c.get('x_cudnn_fp32'), '.1f')} | "
            f"{f(c.get('x_cudnn_fp32_with_gemm'), '.1f')} | "
            f"{f(c.get('x_cudnn_same_dtype'), '.1f')} | {b['max_abs_err']:.1e} |"
        )
    return "\n".join(rows)


def plot(results: dict, out_dir: Path) -> None:
    """Speed-up over cuDNN in the same dtype per case (bars), the target as a line, drawn to
    ``<results["name"]>.png`` (the JSON's name)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [c for c in results["cases"] if c.get("x_cudnn_same_dtype")]
    labels = [f"{c['cell']}/{c['dtype'][-2:]}\nH{c['hidden']} B{c['batch']}" for c in cases]
    fig, ax = plt.subplots(figsize=(max(8, len(cases) * 0.45), 4))
    ax.bar(range(len(cases)), [c["x_cudnn_same_dtype"] for c in cases])
    ax.axhline(TARGET_X_CUDNN, color="r", ls="--", label=f"target {TARGET_X_CUDNN:g}x at B=4")
    ax.set_xticks(range(len(cases)), labels, fontsize=6, rotation=90)
    ax.set_ylabel("speed-up over cuDNN, same dtype")
    ax.set_title(f"sparse persistent GRU/LSTM, 10 %, T={results['steps']} ({results['device']})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / f"{results.get('name', 'bench_rnn_cells')}.png", dpi=110)
    plt.close(fig)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """Options of this benchmark (shared with ``bench_rnn.py --cells``)."""
    ap.add_argument("--out", type=Path, default=Path("docs/results"))
    ap.add_argument("--quick", action="store_true", help="smoke run (fewer cases)")
    ap.add_argument(
        "--cell",
        nargs="+",
        choices=(*CELLS, *EXTRA_CELLS, "capacity"),
        help="only these parts of the sweep",
    )
    ap.add_argument("--hidden", type=int, nargs="+", help=f"hidden sizes (default {HIDDEN})")
    ap.add_argument("--batch", type=int, nargs="+", help=f"batch sizes (default {BATCH})")
    ap.add_argument(
        "--candidates",
        type=int,
        default=3,
        help="geometries tried per case: per lanes-per-row of one slice and per replica count",
    )
    ap.add_argument(
        "--fp16-chunks",
        type=int,
        nargs="+",
        default=None,
        help="float16 plans: pairs per packed-half FMA chunk to try (0: float32 FMAs); default:"
        " the planner's (packed halves, what a float16 build runs)",
    )
    ap.add_argument(
        "--barriers",
        nargs="+",
        choices=BARRIERS,
        default=BARRIERS,
        help="barriers to time (each where the plan can run it)",
    )
    ap.add_argument("--cache", help="build cache directory")
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--plot", type=Path, help="only plot an existing JSON")


def main(args: argparse.Namespace | None = None) -> None:
    if args is None:
        ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        add_arguments(ap)
        args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.plot:
        results = json.loads(args.plot.read_text())
        plot(results, args.plot.parent)
        print(table(results))
        return
    results = run(args)
    results["name"] = f"bench_rnn_cells{'_' + '_'.join(args.cell) if args.cell else ''}"
    save_results(args.out, results["name"], results, table(results) + "\n", plot)


if __name__ == "__main__":
    main()
