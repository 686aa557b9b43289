"""``tvm-sparse-rnn bench MODEL.onnx``: this package vs dense TVM vs onnxruntime, same run.

:func:`benchmark_model` is also what ``demo`` and ``benchmarks/bench_models.py`` run. Every
engine is timed the same way: one call = numpy inputs in, numpy outputs out (host copies
included, as a user calls them), ``warmup`` calls discarded, then the median of ``repeat``
calls. onnxruntime runs on the CPU with its default thread pool (all cores).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import tvm

from ..optional import require
from ..testing import TOLERANCES
from ..transform.to_float16 import Precision
from .options import (
    add_compile_options,
    add_fold_option,
    check_output,
    dispatch_kwargs,
    non_negative_int,
    positive_int,
)
from .table import format_table

if TYPE_CHECKING:  # onnx, the frontend and onnxruntime load when a benchmark runs, not on --help
    import onnx

logger = logging.getLogger(__name__)

SPARSE, DENSE, ORT = "tvm-sparse-rnn", "tvm-dense", "onnxruntime-cpu"


@dataclass
class BenchResult:
    """Medians and checks of one model on one target.

    Attributes
    ----------
    target : str
        ``"llvm"`` or ``"cuda"``.
    host : str
        The machine: CPU model and core count, plus the GPU for ``cuda``.
    median_ms : dict of str to float
        Median milliseconds per call, per engine (:data:`SPARSE`, :data:`DENSE`, :data:`ORT`).
    max_abs_err : dict of str to float
        Largest absolute difference from onnxruntime, per TVM engine.
    matches : bool
        Whether every TVM engine is within :data:`tvm_sparse_rnn.testing.TOLERANCES` of
        onnxruntime (those of float16 for a float16 build).
    repeat : int
        Timed calls per engine.
    dtype : str
        The dtype the TVM builds compute in (``--dtype``).
    """

    target: str
    host: str
    median_ms: dict[str, float] = field(default_factory=dict)
    max_abs_err: dict[str, float] = field(default_factory=dict)
    matches: bool = True
    repeat: int = 0
    dtype: str = Precision.FLOAT32.value

    def speedup(self, baseline: str) -> float:
        """``median_ms[baseline] / median_ms[SPARSE]``."""
        return self.median_ms[baseline] / self.median_ms[SPARSE]

    def to_json(self) -> dict:
        """A JSON-serializable dict including the speed-ups."""
        out = asdict(self)
        out["speedup"] = {b: self.speedup(b) for b in self.median_ms if b != SPARSE}
        return out


def describe_host(target: str) -> str:
    """CPU model and core count (and the GPU's name for ``cuda``), for result files."""
    cpu = platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    host = f"{cpu}, {os.cpu_count()} cores"
    return f"{tvm.cuda(0).device_name} + {host}" if target == "cuda" else host


def median_ms(fn: Callable[[], object], warmup: int, repeat: int) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``repeat`` calls after ``warmup``.

    Raises
    ------
    ValueError
        If ``repeat < 1`` (no sample to take the median of) or ``warmup < 0``.
    """
    if repeat < 1 or warmup < 0:
        raise ValueError(f"median_ms: need repeat >= 1 and warmup >= 0, got {repeat}, {warmup}")
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return 1e3 * statistics.median(samples)


def _tolerance(output_dtype: str, compute_dtype: str) -> tuple[float, float]:
    """``(rtol, atol)`` of an output: float16's for a float16 build, else its own dtype's."""
    key = compute_dtype if compute_dtype == Precision.FLOAT16 else output_dtype
    return TOLERANCES.get(key, (0.0, 0.0))


def benchmark_model(
    model_or_path: onnx.ModelProto | str | Path,
    *,
    target: str = "llvm",
    warmup: int = 5,
    repeat: int = 50,
    dense: bool = True,
    seed: int = 1,
    dtype: str = Precision.FLOAT32.value,
    **build_options: object,
) -> BenchResult:
    """Build ``model`` sparse (and dense) with TVM, check both against onnxruntime, time all.

    Parameters
    ----------
    model_or_path : onnx.ModelProto or path
        The pruned model.
    target : str
        ``"llvm"`` or ``"cuda"`` for the TVM builds.
    warmup, repeat : int
        Discarded and timed calls per engine.
    dense : bool
        Also build and time the dense TVM model.
    seed : int
        Seed of the random inputs.
    dtype : str
        ``"float32"`` or ``"float16"``: the dtype both TVM builds compute in.
    **build_options
        The other options of :func:`tvm_sparse_rnn.compile.build_onnx` (``shape_dict``,
        ``sparsity_threshold``, ``block_size``, ``fold``, ``tuning_logs``,
        ``concurrent_directions``, ``half_accumulation``), the same for both builds.
    """
    from ..compile import build_onnx, load_executable
    from ..demo import random_inputs
    from ..frontend.onnx import load_onnx

    ort = require("onnxruntime", None, "bench checks and times against onnxruntime")
    model = load_onnx(model_or_path)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    engines = {}
    inputs = outputs = None
    for name, sparse in ((SPARSE, True), (DENSE, False))[: 2 if dense else 1]:
        logger.info("building %s for %s", name, target)
        executable, inputs, outputs = build_onnx(
            model, target=target, sparse=sparse, dtype=dtype, **build_options
        )
        engines[name] = load_executable(executable, inputs, outputs, target).run
    feeds = random_inputs(inputs, seed)
    reference = session.run(None, feeds)
    result = BenchResult(target, describe_host(target), repeat=repeat, dtype=dtype)
    for name, run in engines.items():
        got = run(feeds)
        errs = []
        for spec, ref in zip(outputs, reference, strict=True):
            rtol, atol = _tolerance(spec.dtype, dtype)
            errs.append(float(np.max(np.abs(got[spec.name] - ref), initial=0.0)))
            result.matches &= bool(np.allclose(got[spec.name], ref, rtol=rtol, atol=atol))
        result.max_abs_err[name] = max(errs)
    engines[ORT] = lambda f: session.run(None, f)
    for name, run in engines.items():
        result.median_ms[name] = median_ms(lambda run=run: run(feeds), warmup, repeat)
    return result


def format_result(result: BenchResult) -> str:
    """The result as a table: engine, median ms, this package's speed-up over it, error."""
    rows = [
        [
            name,
            f"{ms:.3f}",
            f"{result.speedup(name):.2f}x" if name != SPARSE else "-",
            f"{result.max_abs_err[name]:.2e}" if name in result.max_abs_err else "reference",
        ]
        for name, ms in result.median_ms.items()
    ]
    header = ["engine", "median ms", f"{SPARSE} speed-up", "max |err| vs onnxruntime"]
    return format_table(header, rows)


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand."""
    parser = subparsers.add_parser(
        "bench",
        help="time the model sparse vs dense in TVM vs onnxruntime, same run",
        description="Build MODEL.onnx with sparse kernels and dense, check both against "
        "onnxruntime, and print median times and speed-ups.",
    )
    parser.add_argument("model", type=Path, metavar="MODEL.onnx")
    add_compile_options(parser)
    add_fold_option(parser)
    parser.add_argument(
        "--repeat", type=positive_int, default=50, help="timed calls, >= 1 (default 50)"
    )
    parser.add_argument(
        "--warmup", type=non_negative_int, default=5, help="discarded calls (default 5)"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the result here")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Benchmark, print, optionally save; exit 1 if the TVM outputs do not match."""
    if args.json:
        check_output("--json", args.json, {"the input model": args.model})
    result = benchmark_model(
        args.model,
        target=args.target,
        warmup=args.warmup,
        repeat=args.repeat,
        **dispatch_kwargs(args),
    )
    print(format_result(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return 0 if result.matches else 1
