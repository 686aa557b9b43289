"""Pruned zoo models on the CPU: this package vs dense TVM, onnxruntime, OpenVINO and DeepSparse.

Models: :data:`tvm_sparse_rnn.zoo.ZOO` (BERT-like encoder, DeepSpeech2-like, 4096-wide MLP; 90 %
pruned, generated in code). Engines, every call numpy in / numpy out:

* ``tvm-sparse-rnn`` -- :func:`tvm_sparse_rnn.compile.build_onnx` (``block_size="auto"``: the cost
  rule may keep a layer dense);
* ``tvm-sparse-forced`` -- the same with the pruning block forced on every layer and the cost
  rule's break-even lifted (:data:`FORCED_BLOCK`: the unstructured models ``auto`` keeps dense);
* ``tvm-dense`` -- ``build_onnx(..., sparse=False)`` (no ``DenseToSparse``; recurrent layers still
  use the package's x86 recurrent kernel);
* ``onnxruntime`` -- CPU execution provider, default threads (the numerics reference);
* ``openvino-f32`` (``INFERENCE_PRECISION_HINT=f32``) and ``openvino`` (its default precision,
  bf16 on CPUs with AMX/AVX-512 BF16);
* ``deepsparse`` -- DeepSparse in its own virtual environment (it pins ``onnx<1.15``), driven
  through a worker subprocess (:mod:`deepsparse_worker`) that loads the model file and times the
  calls it is asked for.

Timing is interleaved: every repetition runs each engine in turn (``number`` calls, calibrated
to about ``--min-ms`` per engine, then 0.25 s of sleep so spinning thread pools park); the result
is the median over ``--repeat`` repetitions, and the paired speed-up the median over
repetitions of each engine's time over ours in that repetition. OpenVINO and DeepSparse are
skipped, with the reason logged, when they are not installed. Results:
``docs/results/bench_cpu_models.json``, ``.md`` and ``.png``.

Usage::

    python -m venv .venvs/deepsparse && .venvs/deepsparse/bin/pip install deepsparse==1.8.0
    pip install openvino
    python benchmarks/bench_cpu_models.py --repeat 15
    python benchmarks/bench_cpu_models.py --plot docs/results/bench_cpu_models.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from tvm_sparse_rnn.transform.dispatch.cost_model import COST_PARAMS
from tvm_sparse_rnn.zoo import ZOO, parse_pruning

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, device_info, format_table, median, save_results

logger = logging.getLogger(__name__)

SPARSE, FORCED, DENSE = "tvm-sparse-rnn", "tvm-sparse-forced", "tvm-dense"
ORT, OV_F32, OV, DS = "onnxruntime", "openvino-f32", "openvino", "deepsparse"
ENGINES = (SPARSE, FORCED, DENSE, ORT, OV_F32, OV, DS)

#: Block forced on every layer by ``tvm-sparse-forced`` (with the cost rule's break-even lifted),
#: for the models whose pruned layers the ``auto`` rule keeps dense: on llvm it charges 16
#: multiply-adds per stored block, so unstructured (1x1) 90 % pruning never pays by its estimate.
FORCED_BLOCK = {"bert_unstructured": "unstructured", "mlp4096_unstructured": "unstructured"}

DEFAULT_DEEPSPARSE = Path(__file__).resolve().parent.parent / ".venvs" / "deepsparse" / "bin"
WORKER = Path(__file__).resolve().parent / "deepsparse_worker.py"
RSS_WORKER = Path(__file__).resolve().parent / "peak_rss_worker.py"

Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


@dataclass
class Engine:
    """One engine of one model: a callable from feeds to outputs, and how it is timed.

    Attributes
    ----------
    name : str
        One of :data:`ENGINES`.
    run : callable
        ``run(feeds) -> list of numpy.ndarray`` (outputs in the model's order).
    timed : callable
        ``timed(number) -> float``: seconds for ``number`` back-to-back calls.
    close : callable
        Releases the engine (the DeepSparse worker); a no-op elsewhere.
    """

    name: str
    run: Runner
    timed: Callable[[int], float]
    close: Callable[[], None] = lambda: None


def _local_engine(name: str, run: Runner, feeds: dict[str, np.ndarray]) -> Engine:
    """An in-process engine timed with ``time.perf_counter`` around ``number`` calls."""

    def timed(number: int) -> float:
        start = time.perf_counter()
        for _ in range(number):
            run(feeds)
        return time.perf_counter() - start

    return Engine(name, run, timed)


def tvm_engine(
    name: str,
    model: onnx.ModelProto,
    feeds: dict[str, np.ndarray],
    library: Path,
    **options: Any,
) -> tuple[Engine, float]:
    """Compile ``model`` to ``library`` with :func:`compile_onnx` (``options`` forwarded) and
    load it as an engine, the way a user runs a compiled model.

    Returns
    -------
    tuple
        ``(engine, build seconds)``.
    """
    from tvm_sparse_rnn.compile import compile_onnx, load_compiled

    start = time.perf_counter()
    compile_onnx(model, library, target="llvm", shape_dict=None, **options)
    seconds = time.perf_counter() - start
    compiled = load_compiled(library)

    def run(f: dict[str, np.ndarray]) -> list[np.ndarray]:
        got = compiled.run(f)
        return [got[spec.name] for spec in compiled.outputs]

    return _local_engine(name, run, feeds), seconds


def peak_rss(engine: str, model_file: Path, feeds_path: Path) -> dict[str, float]:
    """Peak and baseline resident MiB of ``engine`` running ``model_file`` in a fresh process
    (:mod:`peak_rss_worker`)."""
    out = subprocess.run(
        [sys.executable, str(RSS_WORKER), engine, str(model_file), str(feeds_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def ort_engine(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> Engine:
    """onnxruntime, CPU execution provider, default thread pool."""
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return _local_engine(ORT, lambda f: session.run(None, f), feeds)


def openvino_engine(
    name: str, path: Path, feeds: dict[str, np.ndarray], precision: str | None
) -> Engine:
    """OpenVINO on the CPU; ``precision="f32"`` sets ``INFERENCE_PRECISION_HINT``.

    Raises
    ------
    ImportError
        If ``openvino`` is not installed.
    """
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": precision} if precision else {}
    compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    request = compiled.create_infer_request()
    outputs = list(compiled.outputs)

    def run(f: dict[str, np.ndarray]) -> list[np.ndarray]:
        request.infer(f)
        return [request.get_tensor(o).data.copy() for o in outputs]

    return _local_engine(name, run, feeds)


def deepsparse_engine(
    bin_dir: Path, path: Path, feeds_path: Path, batch: int, workdir: Path
) -> Engine:
    """DeepSparse in the worker subprocess (its own venv's ``python``).

    Raises
    ------
    RuntimeError
        If the venv is missing or the worker fails to compile the model.
    """
    python = bin_dir / "python"
    if not python.exists():
        raise RuntimeError(f"no DeepSparse venv at {bin_dir} (see the module docstring)")
    proc = subprocess.Popen(
        [str(python), str(WORKER), str(path), str(feeds_path), str(batch)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )

    def ask(request: dict[str, Any]) -> dict[str, Any]:
        proc.stdin.write(json.dumps(request) + "\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"DeepSparse worker exited (rc {proc.wait()})")
        return json.loads(line)

    ready = json.loads(proc.stdout.readline() or "{}")
    if not ready.get("ready"):
        proc.kill()
        raise RuntimeError(f"DeepSparse worker failed: {ready.get('error', 'no reply')}")

    def run(_: dict[str, np.ndarray]) -> list[np.ndarray]:
        out = workdir / "deepsparse_out.npz"
        ask({"op": "outputs", "path": str(out)})
        with np.load(out) as data:
            return [data[f"arr_{i}"] for i in range(len(data.files))]

    def close() -> None:
        ask({"op": "quit"})
        proc.wait()

    return Engine(DS, run, lambda number: ask({"op": "time", "number": number})["seconds"], close)


def errors(got: list[np.ndarray], ref: list[np.ndarray]) -> dict[str, float]:
    """Max absolute error and that error relative to the largest ``|ref|``, over all outputs."""
    abs_err = max(
        float(np.max(np.abs(g.astype("float64") - r))) for g, r in zip(got, ref, strict=True)
    )
    scale = max(float(np.max(np.abs(r))) for r in ref)
    return {"max_abs": abs_err, "rel": abs_err / scale if scale else abs_err}


def make_engines(
    name: str, model: onnx.ModelProto, args: argparse.Namespace, workdir: Path
) -> tuple[list[Engine], dict[str, np.ndarray], dict[str, Any]]:
    """Build every available engine for one model; return engines, feeds and build notes."""
    from tvm_sparse_rnn.demo import random_inputs
    from tvm_sparse_rnn.frontend.onnx import model_signature

    inputs, _ = model_signature(model, None)
    feeds = random_inputs(inputs, seed=1)
    path = workdir / f"{name}.onnx"
    onnx.save(model, path)
    feeds_path = workdir / f"{name}_feeds.npz"
    np.savez(feeds_path, *[feeds[spec.name] for spec in inputs])
    notes: dict[str, Any] = {"build_s": {}, "skipped": {}}
    engines = [ort_engine(model, feeds)]
    tvm_builds = [(SPARSE, {}), (DENSE, {"sparse": False})]
    if name in FORCED_BLOCK:
        always = replace(COST_PARAMS["llvm"], break_even=float("inf"))
        block = parse_pruning(FORCED_BLOCK[name])
        tvm_builds.append((FORCED, {"block_size": block, "params": always}))
    for engine_name, options in tvm_builds:
        library = workdir / f"{name}_{engine_name}.so"
        engine, notes["build_s"][engine_name] = tvm_engine(
            engine_name, model, feeds, library, **options
        )
        engines.append(engine)
    notes["peak_rss_mb"] = {
        SPARSE: peak_rss("tvm", workdir / f"{name}_{SPARSE}.so", feeds_path),
        ORT: peak_rss("onnxruntime", path, feeds_path),
    }
    for engine_name, precision in ((OV_F32, "f32"), (OV, None)):
        try:
            engines.append(openvino_engine(engine_name, path, feeds, precision))
        except Exception as err:  # ImportError, or OpenVINO rejecting the model
            logger.warning("%s skipped for %s: %s", engine_name, name, err)
            notes["skipped"][engine_name] = str(err)
    if not args.no_deepsparse:
        batch = int(next(iter(feeds.values())).shape[0])
        try:
            engines.append(deepsparse_engine(args.deepsparse_bin, path, feeds_path, batch, workdir))
        except (RuntimeError, OSError, json.JSONDecodeError) as err:
            logger.warning("deepsparse skipped for %s: %s", name, err)
            notes["skipped"][DS] = str(err)
    order = {e: i for i, e in enumerate(ENGINES)}
    return sorted(engines, key=lambda e: order[e.name]), feeds, notes


def interleaved_samples(
    engines: list[Engine], repeat: int, min_seconds: float, warmup: float = 1.0, pause: float = 0.25
) -> dict[str, list[float]]:
    """Seconds per call of each engine in every repetition, timed in turns.

    Each engine first runs warm-up calls for ``warmup`` seconds (at least three; DeepSparse's
    first tens of calls are up to 20x slower than its steady state), then ``number`` calls per
    repetition with ``number`` sized so a repetition lasts about ``min_seconds`` (at least 1).
    """
    numbers = {}
    for engine in engines:
        calls, spent = 0, 0.0
        while calls < 3 or spent < warmup:
            once = max(engine.timed(1), 1e-7)
            calls, spent = calls + 1, spent + once
        numbers[engine.name] = max(1, int(min_seconds / once))
        time.sleep(pause)
    samples: dict[str, list[float]] = {e.name: [] for e in engines}
    for _ in range(repeat):
        for engine in engines:
            samples[engine.name].append(engine.timed(numbers[engine.name]) / numbers[engine.name])
            time.sleep(pause)
    return samples


def paired_speedups(samples: dict[str, list[float]]) -> dict[str, float]:
    """Median over repetitions of ``engine / ours`` within each repetition.

    The VM's speed drifts by up to 1.5x over tens of seconds (other tenants): a ratio taken
    inside one repetition, where the engines ran seconds apart, is steadier than the ratio of
    medians taken over the whole run.
    """
    ours = samples[SPARSE]
    return {
        e: median([v / o for v, o in zip(values, ours, strict=True)])
        for e, values in samples.items()
        if e != SPARSE
    }


def bench_model(name: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Build, check and time every engine on zoo model ``name``."""
    logger.info("model %s: building", name)
    model = ZOO[name]()
    engines, feeds, notes = make_engines(name, model, args, workdir)
    try:
        reference = next(e for e in engines if e.name == ORT).run(feeds)
        errs = {e.name: errors(e.run(feeds), reference) for e in engines if e.name != ORT}
        logger.info("model %s: timing %s", name, [e.name for e in engines])
        samples = interleaved_samples(engines, args.repeat, args.min_ms * 1e-3)
    finally:
        for engine in engines:
            engine.close()
    ms = {e: 1e3 * median(v) for e, v in samples.items()}
    min_ms = {e: 1e3 * min(v) for e, v in samples.items()}
    return {
        "median_ms": ms,
        "min_ms": min_ms,
        "errors": errs,
        "speedup_vs": _speedups(ms),
        "speedup_vs_min": _speedups(min_ms),
        "speedup_paired": paired_speedups(samples),
        **notes,
    }


def _speedups(ms: dict[str, float]) -> dict[str, float]:
    """``ms[engine] / ms[SPARSE]`` for every other engine (> 1: this package is faster)."""
    return {e: v / ms[SPARSE] for e, v in ms.items() if e != SPARSE}


def table(results: dict[str, Any]) -> str:
    """Markdown table: ms per engine per model, then this package's speed-up over each."""
    engines = [e for e in ENGINES if any(e in r["median_ms"] for r in results["models"].values())]
    header = ["model", *[f"{e} (ms)" for e in engines], *[f"x {e}" for e in engines[1:]]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = []
    for name, r in results["models"].items():
        ms, sp = r["median_ms"], r["speedup_vs"]
        cells = [f"{ms[e]:.3g}" if e in ms else "-" for e in engines]
        cells += [f"{sp[e]:.2f}" if e in sp else "-" for e in engines[1:]]
        lines.append("| " + " | ".join([name, *cells]) + " |")
        rows.append({"model": name, **{e: ms.get(e) for e in engines}})
    errs = [
        {"model": n, "engine": e, "max_abs": v["max_abs"], "rel": v["rel"]}
        for n, r in results["models"].items()
        for e, v in r["errors"].items()
    ]
    paired = [
        {"model": n, **{f"x {e}": round(v, 2) for e, v in r["speedup_paired"].items()}}
        for n, r in results["models"].items()
        if "speedup_paired" in r
    ]
    text = "\n".join(lines)
    if paired:
        text += "\n\nPaired speed-ups (median over repetitions of engine / ours in each):\n\n"
        text += format_table(paired, list(paired[0]))
    text += "\n\nErrors vs onnxruntime:\n\n"
    text += format_table(errs, ["model", "engine", "max_abs", "rel"]) + "\n"
    models = results["models"].items()
    rss = [_rss_row(n, r["peak_rss_mb"]) for n, r in models if "peak_rss_mb" in r]
    if rss:
        text += "\nPeak RSS (MiB; a fresh process loads the model and runs it 3 times):\n\n"
        text += format_table(rss, list(rss[0])) + "\n"
    return format_table(rows, ["model", *engines]) + "\n\n" + text


def _rss_row(model: str, rss: dict[str, dict[str, float]]) -> dict[str, Any]:
    """One row of the memory table: peak RSS per engine, the ratio, the growth past loading."""
    ours, ort = rss[SPARSE], rss[ORT]
    return {
        "model": model,
        f"{SPARSE} peak": ours["peak_rss_mb"],
        f"{ORT} peak": ort["peak_rss_mb"],
        "peak ratio": ours["peak_rss_mb"] / ort["peak_rss_mb"],
        f"{SPARSE} model": ours["peak_rss_mb"] - ours["baseline_rss_mb"],
        f"{ORT} model": ort["peak_rss_mb"] - ort["baseline_rss_mb"],
    }


def plot(results: dict[str, Any], out_dir: Path) -> None:
    """Grouped bars: median ms per model and engine (log scale), minima as black dashes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(results["models"])
    engines = [e for e in ENGINES if any(e in r["median_ms"] for r in results["models"].values())]
    fig, ax = plt.subplots(figsize=(max(7.0, 1.6 * len(models)), 4.0))
    width = 0.8 / len(engines)
    for i, engine in enumerate(engines):
        values = [results["models"][m]["median_ms"].get(engine, 0.0) for m in models]
        xs = [j + (i - (len(engines) - 1) / 2) * width for j in range(len(models))]
        ax.bar(xs, values, width, label=engine)
        minima = [results["models"][m].get("min_ms", {}).get(engine) for m in models]
        points = [(x, v) for x, v in zip(xs, minima, strict=True) if v]
        if points:
            ax.plot(*zip(*points, strict=True), "k_", markersize=6)
    ax.set_xticks(range(len(models)), models, rotation=20, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("ms per call: bar median, dash minimum")
    ax.set_title(f"Pruned zoo models, CPU: {results['device']['cpu']}", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out_dir / "bench_cpu_models.png", dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(ZOO), choices=list(ZOO))
    parser.add_argument("--repeat", type=int, default=15, help="interleaved repetitions")
    parser.add_argument("--min-ms", type=float, default=50.0, help="ms per engine per repetition")
    parser.add_argument("--deepsparse-bin", type=Path, default=DEFAULT_DEEPSPARSE)
    parser.add_argument("--no-deepsparse", action="store_true")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--plot", type=Path, metavar="JSON", help="only re-draw the plot")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("tvm_sparse_rnn").setLevel(logging.WARNING)
    if args.plot:
        plot(json.loads(args.plot.read_text()), args.plot.parent)
        return
    results: dict[str, Any] = {
        "device": {**device_info(), "threads": os.environ.get("TVM_NUM_THREADS")},
        "repeat": args.repeat,
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            results["models"][name] = bench_model(name, args, Path(tmp))
            print(json.dumps({name: results["models"][name]["median_ms"]}), flush=True)
    save_results(args.out_dir, "bench_cpu_models", results, table(results), plot)


if __name__ == "__main__":
    main()
