"""``sparse_dense`` on the CPU vs Intel MKL (sparse-dot-mkl), torch CSR and dense BLAS, same run.

``Y[M, N] = X[M, K] @ W.T`` with ``W`` 90 % pruned: unstructured at M in {1, 4, 16, 64, 128},
4x4 and 1x16 blocks at M in {16, 64, 128}; N = K in {1024, 4096}; fp32. Engines:

* ``ours`` -- :func:`tvm_sparse_rnn.build_sparse_dense` with the pruning block
  (``BSRWeight.from_dense(w, block_size=...)``), called from Python (numpy in / numpy out);
* ``ours-model`` -- the layer as a model gets it: a one-matmul Relax module built with the
  package's pipeline (:func:`tvm_sparse_rnn.build`), whose dispatch pass picks the kernel (the
  x86 CSR kernel along M for unstructured weights and from 16 rows, else the block kernel),
  called as a compiled model is (``CompiledModel.run``: numpy in / out through the Relax VM);
* ``mkl`` -- ``sparse_dot_mkl.dot_product_mkl(W_csr, X.T).T`` (MKL's own thread count);
* ``torch-csr`` -- ``torch.sparse.mm(W_csr, X.T).T`` (torch's CPU threads);
* ``dense`` -- ``x @ W.T`` in numpy (OpenBLAS), the dense reference.

Every repetition times the engines in turn (``number`` calls each, calibrated to about
``--min-ms``, then ``--pause-ms`` of sleep so spinning OpenMP pools park); the medians over
``--repeat`` repetitions are compared in the same run. MKL and torch are optional (skipped with
a logged reason). ``MKL_RT`` is pointed at the environment's ``libmkl_rt.so.*`` before
``sparse_dot_mkl`` is imported, unless it is set. The machine is shared (other jobs run on its
two cores), so single cases move by 2x or more between runs. Results:
``docs/results/bench_cpu_kernels.{json,md,png}``.

Usage::

    pip install sparse-dot-mkl mkl
    TVM_NUM_THREADS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \
        python benchmarks/bench_cpu_kernels.py --repeat 7
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    RESULTS_DIR,
    device_info,
    format_table,
    median,
    plot_speedups,
    ratio,
    save_results,
)
from tvm import relax

from tvm_sparse_rnn import BSRWeight, build, build_sparse_dense
from tvm_sparse_rnn.compile import load_executable
from tvm_sparse_rnn.demo import pruned_weight
from tvm_sparse_rnn.signature import TensorSpec

logger = logging.getLogger(__name__)

OURS, MODEL, MKL, TORCH, DENSE = "ours", "ours-model", "mkl", "torch-csr", "dense"
SPARSITY = 0.9
#: Thread-count variables recorded with the results (the table in docs/results was run with 1).
THREAD_VARS = ("TVM_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

Call = Callable[[], np.ndarray]


def cases(sizes: list[int]) -> list[tuple[int, tuple[int, int], int]]:
    """``(N=K, block, M)`` of the table: unstructured at every M, blocks at M >= 16."""
    out = [(n, (1, 1), m) for n in sizes for m in (1, 4, 16, 64, 128)]
    out += [(n, b, m) for n in sizes for b in ((4, 4), (1, 16)) for m in (16, 64, 128)]
    return out


def mkl_call(x: np.ndarray, w: np.ndarray) -> Call:
    """MKL sparse x dense: ``(W_csr @ X.T).T`` (``X.T`` C-contiguous, made once).

    Of the orientations sparse-dot-mkl offers this is the fastest measured here (dense x CSR
    ``x @ W.T`` was 2-8x slower at M = 1..64, N = K = 4096, one thread; ``X.T`` in Fortran
    order 4x slower at M >= 16).

    Raises
    ------
    ImportError
        If sparse-dot-mkl (or MKL) is not installed.
    """
    if "MKL_RT" not in os.environ:
        libs = sorted(glob.glob(os.path.join(sys.prefix, "lib", "libmkl_rt.so*")))
        if libs:
            os.environ["MKL_RT"] = libs[-1]
    from sparse_dot_mkl import dot_product_mkl

    w_csr = sp.csr_matrix(w)
    xt = np.ascontiguousarray(x.T)
    return lambda: dot_product_mkl(w_csr, xt).T


def torch_call(x: np.ndarray, w: np.ndarray) -> Call:
    """torch CSR SpMM: ``(W_csr @ X.T).T``, numpy in and out.

    Raises
    ------
    ImportError
        If torch is not installed.
    """
    import torch

    w_csr = torch.from_numpy(w).to_sparse_csr()
    xt = torch.from_numpy(np.ascontiguousarray(x.T))
    return lambda: torch.sparse.mm(w_csr, xt).t().numpy()


def model_call(x: np.ndarray, w: np.ndarray, notes: dict) -> Call:
    """``x @ w.T`` compiled as a one-layer model by the package's pipeline (see the docstring)."""
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType(x.shape, "float32"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.matmul(xv, relax.const(np.ascontiguousarray(w.T))))
        bb.emit_func_output(out)
    executable, (decision,) = build(bb.get(), "llvm")
    notes["model_kernel"] = decision.variant.value
    inputs = [TensorSpec("x", x.shape, "float32")]
    outputs = [TensorSpec("y", (x.shape[0], w.shape[0]), "float32")]
    model = load_executable(executable, inputs, outputs, "llvm")
    return lambda: model.run({"x": x})["y"]


def engines(x: np.ndarray, w: np.ndarray, block: tuple[int, int], notes: dict) -> dict[str, Call]:
    """Every available engine for one case; skipped ones go to ``notes['skipped']``."""
    kernel = build_sparse_dense(BSRWeight.from_dense(w, block_size=block), m=x.shape[0])
    calls: dict[str, Call] = {
        OURS: lambda: kernel(x),
        MODEL: model_call(x, w, notes),
        DENSE: lambda: x @ w.T,
    }
    for name, make in ((MKL, mkl_call), (TORCH, torch_call)):
        try:
            calls[name] = make(x, w)
        except (ImportError, OSError) as err:
            notes.setdefault("skipped", {})[name] = str(err)
    notes["ours_device_us"] = 1e6 * median(kernel.time(x, number=20, repeat=5))
    return calls


def interleaved(
    calls: dict[str, Call], repeat: int, min_seconds: float, pause: float
) -> dict[str, list[float]]:
    """Seconds per call of every engine in each repetition, the engines timed in turns.

    ``pause`` seconds of sleep follow every engine's turn, so that thread pools that spin after
    a call (Intel OpenMP in MKL spins for ``KMP_BLOCKTIME`` = 200 ms by default) have parked
    before the next engine runs; without it MKL's spinning threads halved the others' speed.
    """
    numbers = {}
    for name, fn in calls.items():
        fn()
        start = time.perf_counter()
        fn()
        numbers[name] = max(1, int(min_seconds / max(time.perf_counter() - start, 1e-7)))
        time.sleep(pause)
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeat):
        for name, fn in calls.items():
            start = time.perf_counter()
            for _ in range(numbers[name]):
                fn()
            samples[name].append((time.perf_counter() - start) / numbers[name])
            time.sleep(pause)
    return samples


def paired_ratio(samples: dict[str, list[float]], baseline: str, ours: str) -> float | None:
    """Median over repetitions of ``baseline / ours`` within each repetition (the VM's speed
    drifts between repetitions; a ratio inside one is steadier), ``None`` without ``baseline``."""
    if baseline not in samples:
        return None
    return median([b / o for b, o in zip(samples[baseline], samples[ours], strict=True)])


def bench_case(n: int, block: tuple[int, int], m: int, args: argparse.Namespace) -> dict[str, Any]:
    """Check and time one case."""
    rng = np.random.default_rng(0)
    w = pruned_weight(rng, (n, n), SPARSITY, block)
    x = rng.standard_normal((m, n)).astype("float32")
    notes: dict[str, Any] = {}
    calls = engines(x, w, block, notes)
    ref = x @ w.T
    errs = {
        name: float(np.max(np.abs(np.asarray(fn()) - ref)))
        for name, fn in calls.items()
        if name != DENSE
    }
    samples = interleaved(calls, args.repeat, args.min_ms * 1e-3, args.pause_ms * 1e-3)
    medians = {name: median(v) for name, v in samples.items()}
    minima = {name: min(v) for name, v in samples.items()}
    us = {name: 1e6 * v for name, v in medians.items()}
    label = f"{n} {'unstr' if block == (1, 1) else 'x'.join(map(str, block))} m{m}"
    return {
        "case": label,
        "n": n,
        "block": list(block),
        "m": m,
        "us": us,
        "min_us": {name: 1e6 * v for name, v in minima.items()},
        "max_abs_err": errs,
        "x_mkl": ratio(us.get(MKL), us[OURS]),
        "x_mkl_model": ratio(us.get(MKL), us[MODEL]),
        "x_mkl_model_paired": paired_ratio(samples, MKL, MODEL),
        "x_torch": ratio(us.get(TORCH), us[OURS]),
        "x_dense": ratio(us[DENSE], us[OURS]),
        "x_mkl_min": ratio(minima.get(MKL), minima[OURS]),
        **notes,
    }


def table(results: dict[str, Any]) -> str:
    """Markdown table of the cases."""
    header = "| case (N=K, block, M) | ours (us) | ours device (us) | ours-model (us) [kernel] |"
    header += " MKL (us) | torch CSR (us) | dense (us) | x MKL | x MKL (ours-model) |"
    header += " x MKL (ours-model, paired) | x torch CSR | x dense | x MKL (minima) |"
    lines = [header, "|" + "---|" * 13]

    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.3g}" if v < 1000 else f"{v:.0f}"

    for r in results["cases"]:
        us = r["us"]
        model = f"{f(us.get(MODEL))} [{r.get('model_kernel', '-')}]"
        cells = [f(us.get(OURS)), f(r["ours_device_us"]), model]
        cells += map(f, [us.get(MKL), us.get(TORCH), us.get(DENSE), r["x_mkl"]])
        cells += map(f, [r.get("x_mkl_model"), r.get("x_mkl_model_paired"), r["x_torch"]])
        cells += map(f, [r["x_dense"], r["x_mkl_min"]])
        lines.append("| " + " | ".join([r["case"], *cells]) + " |")
    rows = [{"case": r["case"], **r["max_abs_err"]} for r in results["cases"]]
    return (
        "\n".join(lines)
        + "\n\nmax |err| vs numpy:\n\n"
        + format_table(rows, ["case", OURS, MODEL, MKL, TORCH])
    )


def plot(results: dict[str, Any], out_dir: Path) -> None:
    """Speed-ups of ours over MKL, torch CSR and dense, per case."""
    rs = results["cases"]
    plot_speedups(
        out_dir / "bench_cpu_kernels.png",
        [r["case"] for r in rs],
        {
            "x MKL": [r["x_mkl"] for r in rs],
            "x torch CSR": [r["x_torch"] for r in rs],
            "x dense": [r["x_dense"] for r in rs],
        },
        f"sparse_dense 90 % pruned, fp32: {results['device']['cpu']}",
        targets={"1x": 1.0},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1024, 4096])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--min-ms", type=float, default=20.0)
    parser.add_argument("--pause-ms", type=float, default=250.0, help="sleep after each turn")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--plot", type=Path, metavar="JSON", help="only re-draw the plot")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.plot:
        plot(json.loads(args.plot.read_text()), args.plot.parent)
        return
    threads = {v: os.environ.get(v) for v in THREAD_VARS if v in os.environ}
    device = {**device_info(), "thread_env": threads}
    results: dict[str, Any] = {"device": device, "repeat": args.repeat, "cases": []}
    for n, block, m in cases(args.sizes):
        results["cases"].append(bench_case(n, block, m, args))
        logger.info("%s: %s", results["cases"][-1]["case"], results["cases"][-1]["us"])
    save_results(args.out_dir, "bench_cpu_kernels", results, table(results), plot)


if __name__ == "__main__":
    main()
