"""Measure what the DenseToSparse cost rule estimates: sparse kernel time / dense layer time.

For each block size, a 1024x1024 weight pruned to 90 % in that block shape is timed as the
``sparse_dense`` kernel (default schedule) and as the dense layer this package compiles
(``tvm_sparse_rnn.compile.build``: ``ScheduleDenseCPU`` on llvm, dlight on cuda), both with TVM's
``time_evaluator`` (device time, no Python overhead), next to the rule's estimated ``cost``. The
measured ratio should be about ``cost / E`` for one constant ``E``; ``break_even`` is chosen
below ``E`` (see ``tvm_sparse_rnn/transform/block_size.py``).

Usage::

    python benchmarks/calibrate_cost_rule.py --target llvm
    python benchmarks/calibrate_cost_rule.py --target cuda     # on the GPU machine

Writes ``docs/results/cost_rule_<target>.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from tvm_sparse_rnn.bsr import BSRWeight
from tvm_sparse_rnn.cli.bench import describe_host
from tvm_sparse_rnn.cli.table import format_table
from tvm_sparse_rnn.demo import pruned_weight
from tvm_sparse_rnn.pipeline import build
from tvm_sparse_rnn.runtime.sparse_dense import build_sparse_dense
from tvm_sparse_rnn.transform.dispatch import DispatchOptions
from tvm_sparse_rnn.transform.dispatch.cost_model import block_stats, cost_params

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"
BLOCKS = ((1, 1), (1, 4), (2, 2), (1, 8), (8, 1), (1, 16), (4, 4), (16, 1), (8, 8))


def dense_ms(weight: np.ndarray, m: int, target: str, x: np.ndarray) -> float:
    """Best-of-3 device milliseconds of ``x @ weight.T`` compiled dense by this package."""
    bb = relax.BlockBuilder()
    xv = relax.Var("x", relax.TensorType((m, weight.shape[1]), "float32"))
    with bb.function("main", [xv]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.matmul(xv, relax.const(np.ascontiguousarray(weight.T))))
        bb.emit_func_output(out)
    dev = tvm.cuda(0) if target == "cuda" else tvm.cpu(0)
    executable, _ = build(bb.get(), target, DispatchOptions(sparsity_threshold=1.0))  # dense
    vm = relax.VirtualMachine(executable, dev)
    timer = vm.time_evaluator("main", dev, number=50, repeat=3)
    return 1e3 * min(timer(tvm.runtime.tensor(x, dev)).results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=("llvm", "cuda"), default="llvm")
    parser.add_argument("--rows", type=int, nargs="*", default=[1, 16])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    params = cost_params(args.target)
    rng = np.random.default_rng(0)
    records = []
    for block in BLOCKS:
        w = pruned_weight(rng, (args.size, args.size), args.sparsity, block)
        stats = block_stats(w != 0, block, params.block_overhead)
        bsr = BSRWeight.from_dense(w, block)
        for m in args.rows:
            x = rng.standard_normal((m, args.size)).astype("float32")
            sparse = 1e3 * min(build_sparse_dense(bsr, m, args.target).time(x, number=50, repeat=3))
            dense = dense_ms(w, m, args.target, x)
            records.append(
                {
                    "block": list(block),
                    "m": m,
                    "sparse_ms": sparse,
                    "dense_ms": dense,
                    "ratio": sparse / dense,
                    "cost": stats.cost,
                }
            )
            print(f"{block} M={m}: ratio {sparse / dense:.2f}, cost {stats.cost:.2f}", flush=True)
    rows = [
        [f"{r['block'][0]}x{r['block'][1]}", r["m"], f"{r['sparse_ms']:.4f}",
         f"{r['dense_ms']:.4f}", f"{r['ratio']:.2f}", f"{r['cost']:.2f}"]
        for r in records
    ]  # fmt: skip
    print(format_table(["block", "M", "sparse ms", "dense ms", "sparse/dense", "rule cost"], rows))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"cost_rule_{args.target}.json"
    command = f"python benchmarks/calibrate_cost_rule.py --target {args.target}"
    meta = {"command": command, "host": describe_host(args.target), "params": vars(params)}
    path.write_text(json.dumps({**meta, "records": records}, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
