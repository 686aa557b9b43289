"""Benchmark the recurrent sequence op on the CPU against the baselines a user would pick.

One pruned ONNX-style layer (``W`` and ``R`` at the same density, ``I = H``, forward, zero initial
state) per case, timed end to end (input projection + all ``T`` steps) in the same run:

* **ours**: :func:`tvm_sparse_rnn.runtime.sequence.build_recurrent_sequence` for llvm (sparse x86
  projection + recurrent kernels, all physical cores: ``TVM_NUM_THREADS`` as set by
  :mod:`tvm_sparse_rnn.cpu_threads`, recorded in the JSON);
* **numpy dense**: one BLAS GEMM for ``X @ W^T`` and a per-step ``h @ R^T`` loop (R transposed
  once, contiguous), gate math in numpy;
* **scipy CSR**: the same loop with ``W`` and ``R`` as ``scipy.sparse.csr_array``;
* **onnxruntime**: the same model as an ONNX ``RNN``/``GRU``/``LSTM`` node (CPU provider).

All four are timed round-robin (medians over ``--repeat`` rounds, an idle pause before each
timing) so that they see the same state of a shared machine. Target (issue 4): at H=1792, B=4,
10 % density, ours >= 5x faster than each baseline.

Usage::

    python benchmarks/bench_rnn_cpu.py                 # docs/results/rnn_cpu.{json,png}
    python benchmarks/bench_rnn_cpu.py --quick         # small sizes, a smoke run
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
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
    time_callable,
    write_json,
)

from tvm_sparse_rnn.cpu_threads import pool_threads
from tvm_sparse_rnn.ops.cells import CellConfig, gru_gates, gru_output, lstm_cell, rnn_cell
from tvm_sparse_rnn.ops.reference import NumpyOps, recurrent_sequence_reference
from tvm_sparse_rnn.runtime.sequence import RecurrentWeights, build_recurrent_sequence
from tvm_sparse_rnn.testing import (
    TOLERANCES,
    random_recurrent_weights,
    recurrent_onnx_model,
    run_onnxruntime,
)

logger = logging.getLogger("bench_rnn_cpu")

BASELINES = ("numpy_dense", "scipy_csr", "onnxruntime")
TARGET_SPEEDUP = 5.0
#: Idle pause before each timing (see :func:`_interleaved`).
SETTLE_S = 0.3


@dataclass(frozen=True)
class Case:
    """One benchmark point: a ``kind`` layer of hidden size ``hidden`` (= input size)."""

    kind: str
    hidden: int
    batch: int
    seq_len: int
    density: float

    @property
    def label(self) -> str:
        return f"{self.kind} H={self.hidden} B={self.batch} T={self.seq_len} d={self.density:g}"


def _loop_baseline(
    cfg: CellConfig,
    x: np.ndarray,
    w: Any,
    r: Any,
    b: np.ndarray,
    matmul: Callable[[Any, np.ndarray], np.ndarray],
) -> Callable[[], np.ndarray]:
    """A per-step loop in float32: ``matmul(weight, v)`` returns ``v @ weight^T``."""
    seq_len, batch, input_size = x.shape
    H, G = cfg.hidden_size, cfg.num_gates
    wb, rb = b[: G * H], b[G * H :]
    ops = NumpyOps()

    def run() -> np.ndarray:
        u = (matmul(w, x.reshape(seq_len * batch, input_size)) + wb).reshape(seq_len, batch, -1)
        h = np.zeros((batch, H), np.float32)
        c = np.zeros((batch, H), np.float32)
        ys = np.empty((seq_len, batch, H), np.float32)
        for t in range(seq_len):
            xs = np.split(u[t], G, axis=1)
            if cfg.kind == "GRU":  # lbr = 0: the h gate multiplies reset * h
                rzr = matmul(r[0], h) + rb[: 2 * H]
                z, reset = gru_gates(ops, cfg, 0, xs, np.split(rzr, 2, axis=1))
                r_h = matmul(r[1], reset * h) + rb[2 * H :]
                h = gru_output(ops, cfg, 0, z, reset, xs[2], r_h, h)
            else:
                rs = np.split(matmul(r, h) + rb, G, axis=1)
                if cfg.kind == "RNN":
                    h = rnn_cell(ops, cfg, 0, xs, rs)
                else:
                    h, c = lstm_cell(ops, cfg, 0, xs, rs, c)
            ys[t] = h
        return ys

    return run


def _dense_matmul(w_t: np.ndarray, v: np.ndarray) -> np.ndarray:
    return v @ w_t


def _csr_matmul(w: sp.csr_array, v: np.ndarray) -> np.ndarray:
    return (w @ v.T).T


def _interleaved(fns: dict[str, Callable[[], Any]], repeat: int) -> dict[str, float]:
    """Median seconds per call of every function, timed round-robin (``repeat`` rounds) so that
    all see the same machine state on a shared host. Each timing starts after
    :data:`SETTLE_S` idle seconds: thread pools spin for a while after their last task (TVM's
    workers yield-spin 300k times), which would otherwise steal cores from the next library."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            time.sleep(SETTLE_S)
            times[name] += time_callable(fn, repeat=1)
    return {name: median(values) for name, values in times.items()}


def run_case(case: Case, repeat: int) -> dict[str, Any]:
    """Time ours and the baselines on one case; check ours against the float64 reference."""
    cfg = CellConfig(case.kind, case.hidden)
    H = case.hidden
    wts = random_recurrent_weights(
        case.kind, H, H, 1, case.density, input_density=case.density, seed=0
    )
    rng = np.random.default_rng(1)
    x = rng.standard_normal((case.seq_len, case.batch, H)).astype("float32")
    w, r, b = wts["W"][0], wts["R"][0], wts["B"][0]
    row: dict[str, Any] = {"case": case.label}

    layer = build_recurrent_sequence(cfg, RecurrentWeights(**wts), x.shape, 0, "llvm")
    got = layer(x)
    ref = recurrent_sequence_reference(cfg, x, wts["W"], wts["R"], wts["B"])
    rtol, atol = TOLERANCES["float32"]
    row["max_abs_err"] = float(np.abs(got[0] - ref[0]).max())
    if not np.allclose(got[0], ref[0], rtol=rtol, atol=atol):
        logger.error("%s: ours differs from the reference by %.3g", case.label, row["max_abs_err"])
    gru_split = [np.ascontiguousarray(r[: 2 * H]), np.ascontiguousarray(r[2 * H :])]
    dense_r = [m.T.copy() for m in gru_split] if case.kind == "GRU" else r.T.copy()
    csr_r = [sp.csr_array(m) for m in gru_split] if case.kind == "GRU" else sp.csr_array(r)
    fns: dict[str, Callable[[], Any]] = {
        "ours": lambda: layer(x),
        "numpy_dense": _loop_baseline(cfg, x, w.T.copy(), dense_r, b, _dense_matmul),
        "scipy_csr": _loop_baseline(cfg, x, sp.csr_array(w), csr_r, b, _csr_matmul),
    }
    for name in ("numpy_dense", "scipy_csr"):
        np.testing.assert_allclose(fns[name](), ref[0][:, 0], rtol=1e-3, atol=1e-3)
    model = recurrent_onnx_model(case.kind, wts, case.seq_len, case.batch, H, H)
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(run_onnxruntime(model, {"X": x})[0], ref[0], atol=1e-3)
    fns["onnxruntime"] = lambda: sess.run(None, {"X": x})
    for name, seconds in _interleaved(fns, repeat).items():
        row[f"{name}_ms"] = seconds * 1e3
    for name in BASELINES:
        row[f"vs_{name}"] = ratio(row[f"{name}_ms"], row["ours_ms"])
    row["target_met"] = all((row[f"vs_{n}"] or 0) >= TARGET_SPEEDUP for n in BASELINES)
    logger.info("%s done", case.label)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kinds", nargs="+", default=["RNN", "GRU", "LSTM"])
    parser.add_argument("--hidden", nargs="+", type=int, default=[1792, 512])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="H=256, T=16: a smoke run")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    hidden, seq_len = ([256], 16) if args.quick else (args.hidden, args.seq_len)
    cases = [Case(k, h, args.batch, seq_len, args.density) for h in hidden for k in args.kinds]
    rows = [run_case(c, args.repeat) for c in cases]
    columns = ["case", "ours_ms", *(f"{n}_ms" for n in BASELINES)]
    columns += [*(f"vs_{n}" for n in BASELINES), "target_met"]
    print(format_table(rows, columns))
    name = "rnn_cpu_quick" if args.quick else "rnn_cpu"
    write_json(
        args.out_dir / f"{name}.json",
        {
            "device": device_info(),
            "tvm_threads": pool_threads(),
            "target_speedup": TARGET_SPEEDUP,
            "results": rows,
        },
    )
    plot_speedups(
        args.out_dir / f"{name}.png",
        [r["case"] for r in rows],
        {n: [r[f"vs_{n}"] for r in rows] for n in BASELINES},
        "Sparse recurrent sequence op (x86) vs CPU baselines",
        {f"target {TARGET_SPEEDUP:g}x": TARGET_SPEEDUP},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
