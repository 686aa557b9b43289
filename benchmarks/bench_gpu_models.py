"""Pruned zoo models on the GPU: this package (float32, float16) vs torch CUDA graphs.

Models: :data:`tvm_sparse_rnn.zoo.TORCH_ZOO` (90 % pruned, generated in code): the BERT-like
encoder (2 layers, d 768, seq 128, batch 1; unstructured and 4x4), the 3-layer 4096 MLP on 4
rows (unstructured and 4x4) and the DeepSpeech2-like model (Conv1d, 2-layer bidirectional GRU
1024, Linear; T = 200) at batch 1 and 16. Engines, inputs and outputs resident on the GPU:

* ``tvm-fp32``, ``tvm-fp16`` -- :func:`tvm_sparse_rnn.compile.build_onnx` of the exported model
  (``dtype="float16"`` computes in half precision), called through the Relax VM as a user calls
  it: its kernels replay as CUDA graphs (``cuda_graph=True``, the default);
  ``tvm-fp16-seq`` (on request) the float16 build with the two directions of each bidirectional
  recurrent layer in two launches one after the other (``concurrent_directions=False``), to
  measure what one concurrent launch gains;
* ``torch-fp32``, ``torch-fp16`` -- the same torch module (``.half()`` for fp16) in eval mode
  under ``torch.inference_mode``, captured once in a CUDA graph and replayed -- what a torch user
  deploying on a GPU runs.

Timing is interleaved: each of ``--repeat`` rounds times every engine in turn over ``--calls``
back-to-back calls between CUDA events; the result is the median per call. Numerics: every
engine's output vs the torch module in float64 on the CPU (max error over max magnitude).
``--profile`` adds, per model, the GPU kernels of the ``tvm-fp16`` engine by total time (torch's
CUPTI profiler sees TVM's kernels too). Results: ``docs/results/bench_gpu_models.{json,md,png}``.

Usage (on the GPU machine)::

    python benchmarks/bench_gpu_models.py --repeat 15 --profile
    python benchmarks/bench_gpu_models.py --models bert_4x4 mlp4096_4x4 --repeat 5
    python benchmarks/bench_gpu_models.py --plot docs/results/bench_gpu_models.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tvm_sparse_rnn.zoo import TORCH_ZOO, TorchModel, export

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    RESULTS_DIR,
    cuda_event_time,
    device_info,
    format_table,
    median,
    plot_speedups,
    save_results,
)

logger = logging.getLogger("bench_gpu_models")

TVM32, TVM16, TORCH32, TORCH16 = "tvm-fp32", "tvm-fp16", "torch-fp32", "torch-fp16"
TVM16_SEQ = "tvm-fp16-seq"
ENGINES = (TVM32, TVM16, TORCH32, TORCH16)
#: Every engine: the default ones and those run on request.
ALL_ENGINES = (*ENGINES, TVM16_SEQ)
#: Keywords of :func:`tvm_sparse_rnn.compile.build_onnx` per package engine.
PACKAGE_BUILDS = {
    TVM32: {"dtype": "float32"},
    TVM16: {"dtype": "float16"},
    TVM16_SEQ: {"dtype": "float16", "concurrent_directions": False},
}


@dataclass(frozen=True)
class Case:
    """One benchmarked model: a zoo name and the keywords that size it."""

    label: str
    zoo: str
    kwargs: tuple[tuple[str, Any], ...] = ()

    def torch_model(self) -> TorchModel:
        """The seeded torch model of this case."""
        return TORCH_ZOO[self.zoo](**dict(self.kwargs))


CASES = (
    Case("bert_unstructured", "bert_unstructured"),
    Case("bert_4x4", "bert_4x4"),
    Case("mlp4096_unstructured", "mlp4096_unstructured"),
    Case("mlp4096_4x4", "mlp4096_4x4"),
    Case("deepspeech2_b1", "deepspeech2", (("batch", 1),)),
    Case("deepspeech2_b16", "deepspeech2", (("batch", 16),)),
)


@dataclass
class TorchGraph:
    """A torch module in one dtype on the GPU, captured in a CUDA graph with its static input.

    The graph reads the module's parameters and ``x`` in place: the object keeps them alive.
    """

    module: Any
    x: Any
    graph: Any
    y: Any

    @classmethod
    def capture(cls, model: TorchModel, dtype: Any) -> TorchGraph:
        """Move a copy of ``model.module`` to the GPU in ``dtype``, warm it up, capture it."""
        import copy

        import torch

        module = copy.deepcopy(model.module).to("cuda", dtype).eval()
        x = model.example.to("cuda", dtype)
        with torch.inference_mode():
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):
                    module(x)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                y = module(x)
        return cls(module, x, graph, y)

    def run(self) -> None:
        """One call: replay the graph."""
        self.graph.replay()

    def output(self) -> np.ndarray:
        """The last call's output in float32 on the CPU."""
        return self.y.float().cpu().numpy()


@dataclass
class PackageBuild:
    """A zoo model built by the package for cuda, called through the Relax VM as a user calls it,
    on an input resident on the GPU."""

    main: Any
    x: Any
    decisions: list
    y: Any = None

    @classmethod
    def build(cls, model: TorchModel, **options: Any) -> PackageBuild:
        """Export ``model``, build it with ``options`` of ``build_onnx`` (CUDA graphs on, the
        default), load it."""
        import tvm

        from tvm_sparse_rnn.compile import build_onnx_with_decisions, load_executable

        executable, inputs, outputs, decisions = build_onnx_with_decisions(
            export(model), target="cuda", **options
        )
        compiled = load_executable(executable, inputs, outputs, "cuda")
        x = tvm.runtime.tensor(model.example.numpy(), compiled.device)
        return cls(compiled.vm["main"], x, decisions)

    def run(self) -> None:
        """One call."""
        self.y = self.main(self.x)

    def output(self) -> np.ndarray:
        """The last call's output in float32 on the CPU."""
        return self.y.numpy().astype("float32")


def reference(model: TorchModel) -> np.ndarray:
    """The module's output in float64 on the CPU."""
    import copy

    import torch

    with torch.inference_mode():
        return copy.deepcopy(model.module).double()(model.example.double()).numpy()


def relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    """``max |got - ref| / max |ref|``."""
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))


def profile_kernels(call: Callable[[], Any], calls: int = 10, top: int = 12) -> list[dict]:
    """The GPU kernels ``call`` launches, by total time over ``calls`` calls (us per call)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            call()
        torch.cuda.synchronize()
    rows = [
        {
            "kernel": e.key[:70],
            "us_per_call": e.device_time_total / calls,
            "launches_per_call": e.count / calls,
        }
        for e in prof.key_averages()
        if e.device_time_total > 0
    ]
    return sorted(rows, key=lambda r: -r["us_per_call"])[:top]


def run_case(case: Case, args: argparse.Namespace) -> dict[str, Any]:
    """Build every engine of ``case``, check it, time the engines interleaved."""
    import torch

    model = case.torch_model()
    ref = reference(model)
    engines: dict[str, TorchGraph | PackageBuild] = {}
    row: dict[str, Any] = {"model": case.label}
    for engine in args.engines:
        if engine in (TORCH32, TORCH16):
            dtype = torch.float32 if engine == TORCH32 else torch.float16
            engines[engine] = TorchGraph.capture(model, dtype)
        else:
            built = PackageBuild.build(model, **PACKAGE_BUILDS[engine])
            row[f"{engine}_kernels"] = sorted({d.variant.value for d in built.decisions})
            engines[engine] = built
    for engine, runner in engines.items():
        runner.run()
        torch.cuda.synchronize()
        row[f"{engine}_error"] = relative_error(runner.output(), ref)
    times: dict[str, list[float]] = {engine: [] for engine in engines}
    for _ in range(args.repeat):
        for engine, runner in engines.items():
            times[engine] += cuda_event_time(runner.run, calls=args.calls, repeat=1)
    for engine, values in times.items():
        row[f"{engine}_ms"] = median(values) * 1e3
    for ours in PACKAGE_BUILDS:
        for base in (TORCH32, TORCH16):
            if ours in times and base in times:
                row[f"{ours}_x_{base}"] = row[f"{base}_ms"] / row[f"{ours}_ms"]
    if args.profile and TVM16 in engines:
        row["tvm-fp16_profile"] = profile_kernels(engines[TVM16].run)
    logger.info("%s: %s", case.label, {k: v for k, v in row.items() if k.endswith("_ms")})
    return row


def table(rows: list[dict]) -> str:
    """The timing table and, where profiled, the top kernels of each model."""
    columns = ["model", *(f"{e}_ms" for e in ALL_ENGINES), *(f"{e}_error" for e in ALL_ENGINES)]
    columns += [f"{o}_x_{b}" for o in PACKAGE_BUILDS for b in (TORCH32, TORCH16)]
    present = [c for c in columns if any(c in r for r in rows)]
    text = format_table(rows, present)
    for row in rows:
        if "tvm-fp16_profile" in row:
            text += f"\n\n{row['model']}: tvm-fp16 kernels\n"
            text += format_table(
                row["tvm-fp16_profile"], ["kernel", "us_per_call", "launches_per_call"]
            )
    return text + "\n"


def plot(results: dict[str, Any], out_dir: Path) -> None:
    """Speed-ups of ``tvm-fp16`` and ``tvm-fp32`` over torch fp16 (CUDA graphs), per model."""
    rows = results["results"]
    series = {
        f"{o} vs {TORCH16}": [r.get(f"{o}_x_{TORCH16}") for r in rows] for o in (TVM16, TVM32)
    }
    plot_speedups(
        out_dir / f"{results['name']}.png",
        [r["model"] for r in rows],
        series,
        f"Pruned models on {results['device'].get('gpu', 'GPU')} vs torch fp16 CUDA graph",
        targets={"1x": 1.0, "1.5x (#12 BERT)": 1.5},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", choices=[c.label for c in CASES])
    parser.add_argument("--engines", nargs="*", choices=ALL_ENGINES, default=list(ENGINES))
    parser.add_argument("--repeat", type=int, default=15, help="interleaved rounds")
    parser.add_argument("--calls", type=int, default=50, help="calls per round and engine")
    parser.add_argument("--profile", action="store_true", help="top kernels of tvm-fp16")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--name", default="bench_gpu_models")
    parser.add_argument("--plot", type=Path, help="redraw the plot of an existing JSON file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.plot:
        results = json.loads(args.plot.read_text())
        plot(results, args.plot.parent)
        print(table(results["results"]))
        return 0
    cases = [c for c in CASES if not args.models or c.label in args.models]
    rows = [run_case(case, args) for case in cases]
    results = {"name": args.name, "device": device_info(gpu=True), "results": rows}
    save_results(args.out_dir, args.name, results, table(rows), plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
