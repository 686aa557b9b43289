"""End-to-end pruned models: tvm-sparse-rnn vs the same model dense in TVM vs onnxruntime.

Models (90 % pruned, generated in code by :mod:`tvm_sparse_rnn.demo`):

* ``mlp3_m4``, ``mlp3_m32`` -- 3-layer MLP 512 -> 1024 -> 1024 -> 256 on 4 and 32 rows (a
  latency-bound and a larger batch), weights pruned in 1x16 / 4x4 / 1x16 blocks;
* ``mlp3_4096_m4``, ``mlp3_4096_m16`` -- the same MLP at the width of a speech/LM layer
  (4096 -> 4096 -> 4096 -> 4096) on 4 and 16 rows;
* ``rnn``   -- one ONNX ``RNN`` (T=8, B=4, I=256, H=512, unstructured);
* ``demo``  -- the CLI demo: that RNN feeding the MLP (classifier 50 % pruned, kept dense).

All engines run in the same process, timed the same way
(:func:`tvm_sparse_rnn.cli.bench.benchmark_model`: numpy in, numpy out, median of ``--repeat``
calls). The target is >= 2x onnxruntime on the CPU at 90 % sparsity. Results go to
``docs/results/bench_models_<target>.json`` and ``.png``.

Usage::

    python benchmarks/bench_models.py --target llvm            # CPU
    python benchmarks/bench_models.py --target cuda            # GPU machine (onnxruntime on CPU)
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from tvm_sparse_rnn.cli.bench import DENSE, ORT, SPARSE, benchmark_model, format_result
from tvm_sparse_rnn.demo import build_demo_model, build_recurrent_model

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"


def models() -> dict:
    """The benchmarked ONNX models by name."""
    mlp = {"recurrent": False, "classifier_sparsity": 0.9, "classifier_block": (1, 16)}
    wide = {"hidden": 4096, "mlp": 4096, "classes": 4096}
    return {
        "mlp3_m4": build_demo_model(seq_len=1, batch=4, **mlp),
        "mlp3_m32": build_demo_model(seq_len=8, batch=4, **mlp),
        "mlp3_4096_m4": build_demo_model(seq_len=1, batch=4, **mlp, **wide),
        "mlp3_4096_m16": build_demo_model(seq_len=4, batch=4, **mlp, **wide),
        "rnn": build_recurrent_model("RNN"),
        "demo": build_demo_model(),
    }


def plot(results: dict, target: str, path: Path) -> None:
    """Grouped bars of median ms per model and engine (log scale)."""
    engines = [SPARSE, DENSE, ORT]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / len(engines)
    for i, engine in enumerate(engines):
        values = [results[m]["median_ms"][engine] for m in results]
        xs = [j + (i - 1) * width for j in range(len(results))]
        ax.bar(xs, values, width, label=engine)
    ax.set_xticks(range(len(results)), list(results))
    ax.set_yscale("log")
    ax.set_ylabel("median ms per call (lower is better)")
    host = next(iter(results.values()))["host"]
    ax.set_title(f"Pruned models end to end, {target}: {host}", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=("llvm", "cuda"), default="llvm")
    parser.add_argument("--repeat", type=int, default=100)
    parser.add_argument("--models", nargs="*", default=None, help="subset of the model names above")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results = {}
    for name, model in models().items():
        if args.models and name not in args.models:
            continue
        result = benchmark_model(model, target=args.target, repeat=args.repeat)
        print(f"\n== {name} ({args.target}) ==")
        print(format_result(result))
        results[name] = result.to_json()
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"bench_models_{args.target}"
    command = f"python benchmarks/bench_models.py --target {args.target} --repeat {args.repeat}"
    command += f" --models {' '.join(args.models)}" if args.models else ""
    stem.with_suffix(".json").write_text(
        json.dumps({"command": command, "results": results}, indent=2) + "\n"
    )
    plot(results, args.target, stem.with_suffix(".png"))
    print(f"\nwrote {stem}.json and {stem}.png")


if __name__ == "__main__":
    main()
