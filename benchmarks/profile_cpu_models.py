"""Where a compiled zoo model spends its time vs onnxruntime, per op class (CPU).

The TVM build is profiled with a Relax VM instrument (:class:`VMTimer`: TVM 0.27's VM has no
``profile=True``), onnxruntime with its session profiler (``enable_profiling``, first run
dropped); both run ``--runs`` times, their kernel times summed per op class (dense matmul,
sparse matmul, batch matmul / attention, layernorm, softmax, gelu, conv1d, recurrent, layout,
VM builtins, other) per call, and the smallest per-call value over the runs is reported (the
machine is shared; minima are the least disturbed). ``overhead`` is the smallest wall time
per call measured without profiling minus the classes' sum (negative when profiling costs).

Usage::

    python benchmarks/profile_cpu_models.py bert_4x4 deepspeech2
    python benchmarks/profile_cpu_models.py bert_unstructured --forced   # 1x1 forced sparse
    python benchmarks/profile_cpu_models.py deepspeech2 --top 10         # + the slowest kernels
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cpu_models import FORCED_BLOCK
from common import RESULTS_DIR, format_table, write_json

from tvm_sparse_rnn.transform.dispatch.cost_model import COST_PARAMS
from tvm_sparse_rnn.zoo import ZOO, parse_pruning

logger = logging.getLogger(__name__)

#: ONNX / onnxruntime op types per class (onnxruntime fuses e.g. Gelu, FusedMatMul).
ORT_CLASSES = {
    "layernorm": {"LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization"},
    "softmax": {"Softmax"},
    "gelu": {"Gelu", "BiasGelu", "FastGelu", "Erf"},
    "conv1d": {"Conv", "FusedConv"},
    "recurrent": {"GRU", "LSTM", "RNN"},
    "layout": {"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Concat", "Gather", "Slice"},
}

#: TVM kernel-name patterns per class, tried in order (fused kernels are named after their ops;
#: a matmul with a fused epilogue counts as matmul).
TVM_PATTERNS = [
    ("sparse matmul", r"sparse_dense|bsr|csr_spmm"),
    ("recurrent", r"gru|lstm|rnn|recurrent"),
    ("conv1d", r"conv1d|conv"),
    ("batch matmul", r"attention_scores|attention_context"),
    ("matmul", r"matmul|dense"),
    ("layernorm", r"layer_norm"),
    ("softmax", r"softmax"),
    ("gelu", r"erf|gelu|tanh"),
    ("layout", r"transpose|reshape|squeeze|concat|take|strided_slice|split|permute"),
]


def tvm_class(symbol: str, args: tuple) -> str:
    """Op class of a VM call: its kernel name, ``matmul`` split by the second argument's rank."""
    if symbol.startswith("vm.builtin"):
        return "vm builtins"
    for cls, pattern in TVM_PATTERNS:
        if re.search(pattern, symbol):
            if cls == "matmul":
                rank = len(args[1].shape) if len(args) > 1 and hasattr(args[1], "shape") else 0
                return "batch matmul" if rank >= 3 else "dense matmul"
            return cls
    return "other"


class VMTimer:
    """Relax VM instrument: wall time of every ``Call`` instruction, summed per op class.

    The VM of TVM 0.27 has no ``profile=True``; ``set_instrument`` calls this before and after
    each call (kernels and VM builtins alike).
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.per_kernel: dict[str, float] = defaultdict(float)
        self._start = 0.0

    def __call__(self, func: Any, symbol: str, before_run: bool, ret: Any, *args: Any) -> int:
        """Start the clock before a call; charge the call's class after it."""
        from tvm.relax import VMInstrumentReturnKind

        now = time.perf_counter()
        if before_run:
            self._start = now
        else:
            self.seconds[tvm_class(str(symbol), args)] += now - self._start
            self.per_kernel[str(symbol)] += now - self._start
        return VMInstrumentReturnKind.NO_OP


def ort_class(op: str, node: str, constant_b: set[str]) -> str:
    """Op class of an onnxruntime node (MatMul/Gemm split by a constant second input)."""
    if op in {"MatMul", "Gemm", "FusedMatMul", "FusedGemm", "MatMulNBits"}:
        return "dense matmul" if node in constant_b else "batch matmul"
    return next((cls for cls, ops in ORT_CLASSES.items() if op in ops), "other")


def min_per_class(per_run: list[dict[str, float]]) -> dict[str, float]:
    """Per class, the smallest time over the runs (the least disturbed on a shared machine)."""
    classes = {c for run in per_run for c in run}
    return {c: min(run.get(c, 0.0) for run in per_run) for c in classes}


def _wall_us(fn: Any, runs: int) -> float:
    """Smallest wall time of ``fn()`` over ``runs`` calls, in microseconds."""
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return 1e6 * best


def profile_tvm(model: onnx.ModelProto, feeds: dict[str, np.ndarray], runs: int, **options: Any):
    """Per-class microseconds of one call of the package's build, and its wall time per call."""
    import tvm
    from tvm import relax

    from tvm_sparse_rnn.compile import build_onnx, load_executable

    executable, inputs, outputs = build_onnx(model, target="llvm", **options)
    compiled = load_executable(executable, inputs, outputs, "llvm")
    compiled.run(feeds)
    wall = _wall_us(lambda: compiled.run(feeds), runs)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    timer = VMTimer()
    vm.set_instrument(timer)
    args = [tvm.runtime.tensor(feeds[spec.name]) for spec in inputs]
    vm["main"](*args)
    per_run, per_kernel = [], []
    for _ in range(runs):
        timer.seconds.clear()
        timer.per_kernel.clear()
        vm["main"](*args)
        per_run.append({cls: 1e6 * sec for cls, sec in timer.seconds.items()})
        per_kernel.append({name: 1e6 * sec for name, sec in timer.per_kernel.items()})
    return min_per_class(per_run), wall, min_per_class(per_kernel)


def profile_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray], runs: int, tmp: Path):
    """Per-class microseconds of one onnxruntime call (default options), and its wall time."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp / "ort_optimized.onnx")
    session = ort.InferenceSession(model.SerializeToString(), options)
    session.run(None, feeds)
    wall = _wall_us(lambda: session.run(None, feeds), runs)
    optimized = onnx.load(options.optimized_model_filepath, load_external_data=False)
    consts = {i.name for i in optimized.graph.initializer}
    constant_b = {n.name for n in optimized.graph.node if len(n.input) > 1 and n.input[1] in consts}
    profiled = ort.SessionOptions()
    profiled.enable_profiling = True
    profiled.profile_file_prefix = str(tmp / "ort_profile")
    session = ort.InferenceSession(model.SerializeToString(), profiled)
    for _ in range(runs + 1):
        session.run(None, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    model_runs = sorted(
        (e["ts"], e["ts"] + e["dur"])
        for e in events
        if e.get("cat") == "Session" and e["name"] == "model_run"
    )[1:]
    per_run: list[dict[str, float]] = [defaultdict(float) for _ in model_runs]
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        run = next((k for k, (a, b) in enumerate(model_runs) if a <= event["ts"] <= b), None)
        if run is not None:
            node = event["name"][: -len("_kernel_time")]
            per_run[run][ort_class(event["args"].get("op_name", ""), node, constant_b)] += event[
                "dur"
            ]
    return min_per_class(per_run), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", choices=list(ZOO))
    parser.add_argument("--forced", action="store_true", help="force the FORCED_BLOCK pruning")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--top", type=int, default=0, help="also list the N slowest kernels")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import tempfile

    from tvm_sparse_rnn.demo import random_inputs
    from tvm_sparse_rnn.frontend.onnx import model_signature

    results = {}
    for name in args.models:
        model = ZOO[name]()
        feeds = random_inputs(model_signature(model, None)[0])
        options: dict[str, Any] = {}
        if args.forced and name in FORCED_BLOCK:
            always = replace(COST_PARAMS["llvm"], break_even=float("inf"))
            options = {"block_size": parse_pruning(FORCED_BLOCK[name]), "params": always}
        with tempfile.TemporaryDirectory() as tmp:
            tvm_us, tvm_wall, kernels_us = profile_tvm(model, feeds, args.runs, **options)
            ort_us, ort_wall = profile_ort(model, feeds, args.runs, Path(tmp))
        tvm_us["overhead"] = tvm_wall - sum(tvm_us.values())
        ort_us["overhead"] = ort_wall - sum(ort_us.values())
        classes = sorted(set(tvm_us) | set(ort_us), key=lambda c: -tvm_us.get(c, 0.0))
        rows = [
            {"class": c, "tvm (us)": tvm_us.get(c), "onnxruntime (us)": ort_us.get(c)}
            for c in [*classes, "total"]
        ]
        rows[-1].update({"tvm (us)": tvm_wall, "onnxruntime (us)": ort_wall})
        for row in rows:
            t, o = row["tvm (us)"], row["onnxruntime (us)"]
            row["tvm / ort"] = t / o if t and o else None
        label = f"{name}{' (forced)' if options else ''}"
        print(f"\n== {label} ==\n" + format_table(rows, list(rows[0])))
        if args.top:
            slowest = sorted(kernels_us.items(), key=lambda kv: -kv[1])[: args.top]
            top = [{"kernel": name, "tvm (us, all calls)": us} for name, us in slowest]
            print(f"\nslowest kernels:\n{format_table(top, list(top[0]))}")
        results[label] = rows
    suffix = "_forced" if args.forced else ""
    write_json(args.out_dir / f"profile_cpu_models{suffix}.json", {"models": results})


if __name__ == "__main__":
    main()
