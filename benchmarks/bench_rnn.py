"""Benchmark: sparse persistent RNN (TVM) vs torch cuBLAS / cuSPARSE loops and cuDNN nn.RNN.

Vanilla RNN ``h_t = tanh(R h_{t-1} + u_t)``, fp32, T = 256, on one GPU, all in one run:

* the seed's sweeps: batch 1-64 at H=1792/10%; density at H=1792/B=4 and H=2304/B=4;
  H=5760/B=2/10%; fixed parameter count 2304@25%, 3456@11%, 4608@6.25%, 5760@4% (B=4);
* per case the best of the planner's top geometries (one replica) and its best geometry for
  every replica count (batch slices run at once on their own CTAs), for every barrier (flag,
  grid, and the cluster barrier where a replica fits a cluster), and ``auto``: what
  ``build_persistent_rnn`` picks without a tuning record;
* baselines: cuBLAS ``addmm`` loop eager and as a CUDA graph, cuSPARSE CSR ``mm`` loop as a CUDA
  graph, cuDNN ``nn.RNN`` fp32 and fp16 (``input_size = H``, so it also does ``W x_t``);
* the ablation naive (scalar loads, naive order, grid barrier) -> +LDS.128 -> +guided layout
  -> +flag (Lamport) barrier -> +pipelined (double-buffered h, one CTA barrier per step),
  at H=1152/B=8/23% and H=1792/B=4/10%.

GRU / LSTM and fp16 (issue 4) are in :mod:`bench_rnn_cells` (``--cells`` runs that sweep).

Run on the GPU machine (``--quick`` for a smoke run)::

    python benchmarks/bench_rnn.py --out docs/results
    python benchmarks/bench_rnn.py --cells --out docs/results
    ncu --metrics l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum \\
        python benchmarks/bench_rnn.py --ncu-case guided
    python benchmarks/bench_rnn.py --plot docs/results/bench_rnn.json   # plots only (no GPU)
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import bench_rnn_cells
import numpy as np
import scipy.sparse as sp
from common import cuda_event_time, median, save_results

logger = logging.getLogger("bench_rnn")

STEPS = 256
SWEEPS = {
    "batch": [(1792, b, 0.10) for b in (1, 2, 4, 8, 16, 32, 64)],
    "density_1792": [(1792, 4, d) for d in (0.01, 0.05, 0.10, 0.20, 0.30)],
    "density_2304": [(2304, 4, d) for d in (0.01, 0.05, 0.10, 0.20, 0.30)],
    "large": [(5760, 2, 0.10)],
    "fixed_params": [(2304, 4, 0.25), (3456, 4, 0.11), (4608, 4, 0.0625), (5760, 4, 0.04)],
}
ABLATION_CASES = [(1152, 8, 0.23), (1792, 4, 0.10)]
#: (label, vector loads, nonzero order, barrier, double-buffered h)
ABLATION = [
    ("naive", False, "naive", "grid", False),
    ("+LDS.128", True, "naive", "grid", False),
    ("+guided", True, "guided", "grid", False),
    ("+Lamport", True, "guided", "flag", False),
    ("+pipelined", True, "guided", "flag", True),
]
TARGETS_MS = {
    (1792, 4, 0.10): 0.30,
    (1792, 16, 0.10): 0.40,
    (1792, 64, 0.10): 0.8,
    (1152, 8, 0.23): 0.5,
    (5760, 2, 0.10): 0.8,
}


def random_recurrent(hidden: int, density: float, seed: int = 0) -> sp.csr_array:
    """Seeded sparse ``R`` with spectral radius about 0.5."""
    rng = np.random.default_rng(seed)
    mask = rng.random((hidden, hidden)) < density
    scale = 0.5 / np.sqrt(max(density * hidden, 1.0))
    return sp.csr_array((rng.standard_normal((hidden, hidden)) * mask * scale).astype(np.float32))


def _candidates(R: sp.csr_array, batch: int, count: int) -> list:
    """The planner's best geometry per lanes-per-row, ``count`` of them, best first (one
    replica), then its best geometry per replica count and the best that fits a cluster."""
    from tvm_sparse_rnn.kernels.cuda.persistent import planner
    from tvm_sparse_rnn.target import device_limits

    longest = int(planner.row_lengths(R).max())
    seen, out = set(), []
    limits = device_limits("cuda")
    for plan in planner.candidate_plans(R.shape[0], longest, batch, device=limits):
        if plan.lanes_per_row not in seen:
            seen.add(plan.lanes_per_row)
            out.append(plan)
    out = out[:count]
    for replicas in planner.replica_options(batch, 1, limits)[1:]:
        plans = planner.candidate_plans(
            R.shape[0], longest, batch, device=limits, replicas=replicas
        )
        clustered = [p for p in plans if p.num_ctas <= planner.PORTABLE_CLUSTER_SIZE]
        out += list(dict.fromkeys(plans[:1] + clustered[:1]))
    return out


def _barriers(plan) -> tuple[str, ...]:
    from tvm_sparse_rnn.kernels.cuda.persistent.planner import PORTABLE_CLUSTER_SIZE

    fits = plan.num_ctas <= PORTABLE_CLUSTER_SIZE
    return ("flag", "grid", "cluster") if fits else ("flag", "grid")


def _label(plan, barrier: str, vector: bool) -> str:
    replicas = f"/x{plan.replicas}" if plan.replicas > 1 else ""
    return f"{barrier}/KS{plan.lanes_per_row}{'' if vector else '/scalar'}{replicas}"


def _tvm_time(rnn, U: np.ndarray, h0: np.ndarray) -> dict:
    """Median and min ms of the kernel over all ``T`` steps and every batch chunk (a batch
    larger than ``h`` fits in shared memory runs as identical launches: one is timed). Every
    replica of the launch runs the first ``batch_kernel`` samples."""
    import tvm

    dev = rnn.device
    p = rnn.plan
    n = min(p.batch, p.batch_kernel)
    uk = np.zeros((U.shape[0], p.batch_kernel, p.hidden_padded), np.float32)
    uk[:, :n, : p.hidden] = U[:, :n]
    hk = np.zeros((p.hidden_padded, p.batch_kernel), np.float32)
    hk[: p.hidden, :n] = h0[:n].T
    uk, hk = np.tile(uk, (1, p.replicas, 1)), np.tile(hk, (p.streams, 1))
    out = np.zeros(p.out_shape(U.shape[0]), np.float32)
    args = rnn.kernel_args(*(tvm.runtime.tensor(a, dev) for a in (uk, hk, out)))
    ev = rnn.module.time_evaluator("main", dev, number=20, repeat=7)
    res = [r * 1e3 * p.num_batch_chunks for r in ev(*args).results]
    return {"ms_median": statistics.median(res), "ms_min": min(res)}


def _torch_baselines(R: sp.csr_array, U: np.ndarray, h0: np.ndarray) -> dict:
    import torch

    dev = torch.device("cuda")
    H = R.shape[0]
    Rt = torch.tensor(R.toarray(), device=dev)
    Ut = torch.tensor(U, device=dev)
    h0t = torch.tensor(h0, device=dev)
    out: dict[str, float | str] = {}

    def timed(fn, reps: int = 20) -> float:
        """Median milliseconds of one call, between CUDA events."""
        return 1e3 * median(cuda_event_time(fn, calls=1, repeat=reps))

    def dense_loop():
        h = h0t
        for t in range(Ut.shape[0]):
            h = torch.tanh(torch.addmm(Ut[t], h, Rt.T))
        return h

    out["cublas_eager"] = timed(dense_loop)

    def graphed(loop):
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            loop()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            loop()
        return g.replay

    out["cublas_graph"] = timed(graphed(dense_loop))
    Rcsr = Rt.to_sparse_csr()
    UtT = Ut.transpose(1, 2).contiguous()

    def sparse_loop():
        h = h0t.T.contiguous()
        for t in range(UtT.shape[0]):
            h = torch.tanh(torch.mm(Rcsr, h) + UtT[t])
        return h

    try:
        out["cusparse_graph"] = timed(graphed(sparse_loop))
    except RuntimeError as e:  # capture of cuSPARSE can fail on some versions
        out["cusparse_graph"] = f"error: {e}"[:200]
        out["cusparse_eager"] = timed(sparse_loop)
    for dtype, name in ((torch.float32, "cudnn_fp32"), (torch.float16, "cudnn_fp16")):
        rnn = torch.nn.RNN(H, H, nonlinearity="tanh").to(dev, dtype)
        x = Ut.to(dtype)
        h = h0t[None].to(dtype)
        with torch.no_grad():
            out[name] = timed(lambda rnn=rnn, x=x, h=h: rnn(x, h))
    return out


def _reference(R: sp.csr_array, U: np.ndarray, h0: np.ndarray) -> np.ndarray:
    Rd = R.astype(np.float64)
    h = h0.astype(np.float64)
    out = np.empty(U.shape)
    for t in range(U.shape[0]):
        h = np.tanh((Rd @ h.T).T + U[t])
        out[t] = h
    return out


def run(args: argparse.Namespace) -> dict:
    import tvm

    from tvm_sparse_rnn.kernels.cuda.persistent.bank_conflicts import conflicts_per_step
    from tvm_sparse_rnn.kernels.cuda.persistent.packing import pack
    from tvm_sparse_rnn.kernels.cuda.persistent.planner import default_knobs, plan_persistent
    from tvm_sparse_rnn.runtime.persistent import PersistentRNN, build_kernel, prebuild
    from tvm_sparse_rnn.target import device_limits

    sweeps = {k: v[:2] for k, v in SWEEPS.items()} if args.quick else SWEEPS
    ablation = set(ABLATION_CASES)
    if args.sweep:
        sweeps, ablation = {args.sweep: SWEEPS[args.sweep]}, set()
    cases = sorted({c for v in sweeps.values() for c in v} | ablation)
    weights = {(h, d): random_recurrent(h, d) for h, _, d in cases}
    specs, jobs = [], []  # jobs: (case, label, plan, order, vector, barrier)
    for h, b, d in cases:
        # B >= 8: vector (LDS.128) and scalar loads are both tried (scalar won at 116x160).
        vectors = (True, False) if b >= 8 else (True,)
        for plan in _candidates(weights[(h, d)], b, args.candidates):
            for barrier, vector in itertools.product(_barriers(plan), vectors):
                label = _label(plan, barrier, vector)
                jobs.append(((h, b, d), label, plan, "guided", vector, barrier))
        auto = plan_persistent(weights[(h, d)], b, device=device_limits("cuda"))
        barrier, vector = default_knobs(auto)
        jobs.append(((h, b, d), "auto", auto, "guided", vector, barrier))
        if (h, b, d) in ablation:
            best = _candidates(weights[(h, d)], b, 1)[0]
            for label, vector, order, barrier, double in ABLATION:
                plan = dataclasses.replace(best, double_buffer=double)
                jobs.append(((h, b, d), f"ablation/{label}", plan, order, vector, barrier))
    specs = [(plan, "tanh", barrier, vector) for _, _, plan, _, vector, barrier in jobs]
    cache = args.cache or tempfile.mkdtemp(prefix="sprnn_bench_")
    t0 = time.time()
    prebuild(specs, cache)
    logger.info("built %d kernels in %.1f s", len(set(specs)), time.time() - t0)
    dev = tvm.cuda(0)
    results: dict = {"device": dev.device_name, "steps": STEPS, "cases": []}
    rng = np.random.default_rng(1)
    for h, b, d in cases:
        R = weights[(h, d)]
        U = rng.standard_normal((STEPS, b, h)).astype(np.float32)
        h0 = np.zeros((b, h), np.float32)
        ref = _reference(R, U, h0)
        entry = {"hidden": h, "batch": b, "density": d, "ours": {}}
        for case, label, plan, order, vector, barrier in jobs:
            if case != (h, b, d):
                continue
            packed = pack(R, plan, order, vector)
            module = build_kernel(plan, "tanh", barrier, vector, "cuda", cache)
            rnn = PersistentRNN(plan, packed, "tanh", barrier, module, dev)
            err = float(np.abs(rnn(U=U, h0=h0) - ref).max())
            timing = _tvm_time(rnn, U, h0)
            conf = conflicts_per_step(packed)
            entry["ours"][label] = {
                **timing,
                "max_abs_err": err,
                "plan": plan.describe(),
                "model_conflicts_per_step": conf.conflicts,
                "model_wavefronts": conf.wavefronts,
            }
            logger.info(
                "%s %s: %.3f ms (err %.1e) %s",
                (h, b, d),
                label,
                timing["ms_median"],
                err,
                plan.describe(),
            )
        timed = [
            (v["ms_median"], k)
            for k, v in entry["ours"].items()
            if not k.startswith("ablation") and k != "auto"
        ]
        if not timed:
            logger.warning("%s does not fit on chip; skipped", (h, b, d))
            continue
        best = min(timed)
        entry["best"] = {"label": best[1], "ms": best[0]}
        if not args.no_baselines:
            entry["baselines"] = _torch_baselines(R, U, h0)
        entry["target_ms"] = TARGETS_MS.get((h, b, d))
        results["cases"].append(entry)
        logger.info(
            "%s best %s %.3f ms; baselines %s", (h, b, d), best[1], best[0], entry.get("baselines")
        )
    results["sweeps"] = {k: [list(c) for c in v] for k, v in sweeps.items()}
    return results


def ncu_case(order: str) -> None:
    """One T=256 run of H=1152/B=8/23% (grid barrier) with ``order``, for ncu."""
    import tvm

    from tvm_sparse_rnn.kernels.cuda.persistent.packing import pack
    from tvm_sparse_rnn.runtime.persistent import PersistentRNN, build_kernel

    R = random_recurrent(1152, 0.23)
    plan = _candidates(R, 8, 1)[0]
    module = build_kernel(plan, "tanh", "grid", True)
    rnn = PersistentRNN(plan, pack(R, plan, order), "tanh", "grid", module, tvm.cuda(0))
    rng = np.random.default_rng(1)
    rnn(U=rng.standard_normal((STEPS, 8, 1152)).astype(np.float32))
    print(f"ncu case {order}: {plan.describe()}")


def table(results: dict) -> str:
    """Markdown table of the cases."""
    rows = [
        "| H | B | density | ours best (ms) | config | auto (ms) | cuBLAS graph | "
        "cuSPARSE graph | cuDNN fp32 | cuDNN fp16 | x cuDNN fp32 | target |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in results["cases"]:
        bl = c.get("baselines", {})

        def f(k, bl=bl):
            v = bl.get(k)
            return f"{v:.3f}" if isinstance(v, float) else "-"

        speed = (
            f"{bl['cudnn_fp32'] / c['best']['ms']:.1f}x"
            if isinstance(bl.get("cudnn_fp32"), float)
            else "-"
        )
        auto = c["ours"].get("auto", {}).get("ms_median")
        rows.append(
            f"| {c['hidden']} | {c['batch']} | {c['density']:.4g} | {c['best']['ms']:.3f} | "
            f"{c['best']['label']} | {f'{auto:.3f}' if auto else '-'} | "
            f"{f('cublas_graph')} | {f('cusparse_graph')} | "
            f"{f('cudnn_fp32')} | {f('cudnn_fp16')} | {speed} | {c.get('target_ms') or '-'} |"
        )
    return "\n".join(rows)


def ablation_table(results: dict) -> str:
    """Markdown table of the ablation (ms and modelled bank conflicts per step)."""
    labels = [a[0] for a in ABLATION]
    rows = ["| case | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for c in results["cases"]:
        abl = {k.split("/", 1)[1]: v for k, v in c["ours"].items() if k.startswith("ablation/")}
        if not abl:
            continue
        cells = [
            f"{abl[a]['ms_median']:.3f} ({abl[a]['model_conflicts_per_step']})" if a in abl else "-"
            for a in labels
        ]
        rows.append(
            f"| H={c['hidden']} B={c['batch']} {c['density']:.0%} | " + " | ".join(cells) + " |"
        )
    return "\n".join(rows)


def plot(results: dict, out_dir: Path) -> None:
    """One figure per sweep: ms vs the swept parameter, ours vs baselines (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_case = {(c["hidden"], c["batch"], c["density"]): c for c in results["cases"]}
    for name, cases in results["sweeps"].items():
        cs = [by_case[tuple(c)] for c in cases if tuple(c) in by_case]
        if not cs:
            continue
        key = {"batch": "batch", "large": "hidden"}.get(name, "density")
        if name == "fixed_params":
            key = "hidden"
        xs = [c[key] for c in cs]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(xs, [c["best"]["ms"] for c in cs], "o-", label="sparse persistent (TVM)")
        for bl in ("cublas_graph", "cusparse_graph", "cudnn_fp32", "cudnn_fp16"):
            ys = [c.get("baselines", {}).get(bl) for c in cs]
            if all(isinstance(y, float) for y in ys):
                ax.plot(xs, ys, "s--", label=bl)
        ax.set_yscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(f"ms for T={results['steps']}")
        ax.set_title(f"{name} ({results['device']})")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / f"bench_rnn_{name}.png", dpi=110)
        plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench_rnn_cells.add_arguments(ap)
    ap.add_argument("--ncu-case", choices=("naive", "guided"))
    ap.add_argument("--cells", action="store_true", help="the GRU/LSTM/fp16 sweep instead")
    ap.add_argument("--sweep", choices=SWEEPS, help="only this sweep, without the ablation")
    args = ap.parse_args()
    if args.cells:
        bench_rnn_cells.main(args)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.ncu_case:
        ncu_case(args.ncu_case)
        return
    if args.plot:
        results = json.loads(args.plot.read_text())
        plot(results, args.plot.parent)
        print(table(results) + "\n\n" + ablation_table(results))
        return
    results = run(args)
    text = table(results) + "\n\nAblation: ms (modelled bank conflicts per step)\n\n"
    text += ablation_table(results) + "\n"
    save_results(args.out, "bench_rnn", results, text, plot)


if __name__ == "__main__":
    main()
