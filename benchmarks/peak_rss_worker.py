"""Peak resident memory of one engine running one model, in a fresh process.

``bench_cpu_models.py`` runs this once per model for this package's compiled library and for
onnxruntime: the worker imports the engine's runtime, records its resident set (the interpreter,
numpy and the runtime's own libraries), loads the model, runs it three times on the inputs
(``arr_0``, ... of ``FEEDS.npz`` in the model's input order) and prints one JSON line::

    {"peak_rss_mb": ..., "baseline_rss_mb": ...}

``peak_rss_mb`` is the process's high-water mark (``VmHWM``), ``baseline_rss_mb`` the
resident set before the model was loaded. torch is hidden from the worker: ``tvm_ffi`` imports
torch whenever it is importable (~195 MiB more on this VM, where torch is installed to export the
zoo), and a deployment running a compiled model needs no torch. The package's engine runs as a
deployment would: TVM's runtime library only (``TVM_USE_RUNTIME_LIB=1``,
:mod:`tvm_sparse_rnn.runtime.compiled`).

Usage (by the benchmark)::

    python benchmarks/peak_rss_worker.py tvm LIBRARY.so FEEDS.npz
    python benchmarks/peak_rss_worker.py onnxruntime MODEL.onnx FEEDS.npz
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np


def _status_mb(field: str) -> float:
    """A ``kB`` field of ``/proc/self/status`` in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def current_rss_mb() -> float:
    """The resident set of this process now, in MiB."""
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    """The high-water mark of this process's resident set, in MiB (``VmHWM``: unlike
    ``ru_maxrss``, which Linux carries across ``execve`` from the forking parent, it starts
    with the process's own image)."""
    return _status_mb("VmHWM")


def main() -> None:
    sys.modules["torch"] = None  # import torch -> ImportError (see the module docstring)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("engine", choices=("tvm", "onnxruntime"))
    parser.add_argument("model", type=Path, help="compiled library (tvm) or ONNX file")
    parser.add_argument("feeds", type=Path, help="npz of the inputs in the model's order")
    args = parser.parse_args()
    with np.load(args.feeds) as data:
        arrays = [data[f"arr_{i}"] for i in range(len(data.files))]
    if args.engine == "tvm":
        os.environ["TVM_USE_RUNTIME_LIB"] = "1"  # TVM's runtime library only, as a deployment
        from tvm_sparse_rnn.runtime.compiled import load_compiled

        baseline = current_rss_mb()
        compiled = load_compiled(args.model)
        feeds = {spec.name: a for spec, a in zip(compiled.inputs, arrays, strict=True)}
        run = lambda: compiled.run(feeds)  # noqa: E731
    else:
        import onnxruntime as ort

        baseline = current_rss_mb()
        session = ort.InferenceSession(str(args.model), providers=["CPUExecutionProvider"])
        feeds = {i.name: a for i, a in zip(session.get_inputs(), arrays, strict=True)}
        run = lambda: session.run(None, feeds)  # noqa: E731
    for _ in range(3):
        run()
    print(json.dumps({"peak_rss_mb": peak_rss_mb(), "baseline_rss_mb": baseline}))


if __name__ == "__main__":
    main()
