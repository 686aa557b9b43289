"""Two commits of the package on the same zoo models, CPU, timed in one process.

Whole-model changes on this shared 2-core VM are smaller than the drift between runs (the
engines of ``bench_cpu_models.py`` move together by 20 % from one session to the next), so a
change is measured against the commit before it in one process: a ``git worktree`` of each
commit exports each model's library (``compile_onnx``, the checkout first on ``PYTHONPATH``, in
a subprocess), then this process loads every library with TVM's runtime and calls them
alternately. Reported: medians, the paired ratio (median over rounds of base / head time) and
each library's largest error vs onnxruntime. Both commits build the head's zoo model.

    python benchmarks/bench_commits_cpu.py --base 349d0d5 --models bert_4x4 bert_unstructured
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import RESULTS_DIR, device_info, format_table, median, plot_speedups, save_results

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
#: Run by each commit's interpreter: export the given ONNX file's library for llvm.
EXPORT = (
    "import sys; from tvm_sparse_rnn.compile import compile_onnx; "
    "compile_onnx(sys.argv[1], sys.argv[2], target='llvm')"
)


def export(revision: str, model: Path, library: Path, workdir: Path) -> None:
    """Build ``model``'s library with the package as of ``revision``."""
    checkout = workdir / revision
    if not checkout.exists():
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(checkout), revision],
            check=True,
            capture_output=True,
        )
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    subprocess.run(
        [sys.executable, "-c", EXPORT, str(model), str(library)], check=True, env=env, cwd=checkout
    )


def time_alternately(libraries: list[Path], feeds: np.ndarray, rounds: int) -> list[list[float]]:
    """Seconds of each library's call, round by round, the libraries called in turn."""
    import tvm
    from tvm import relax

    machines = [relax.VirtualMachine(tvm.runtime.load_module(str(p)), tvm.cpu()) for p in libraries]
    data = tvm.runtime.tensor(feeds)
    for vm in machines:
        vm["main"](data)
    times: list[list[float]] = [[] for _ in machines]
    for _ in range(rounds):
        for vm, seconds in zip(machines, times, strict=True):
            start = time.perf_counter()
            vm["main"](data)
            seconds.append(time.perf_counter() - start)
    return times


def measure(name: str, revisions: list[str], rounds: int, workdir: Path) -> dict[str, Any]:
    """One model: both commits' libraries, their times and errors."""
    import onnx
    import onnxruntime as ort
    import tvm
    from tvm import relax

    from tvm_sparse_rnn.zoo import ZOO

    model = ZOO[name]()
    path = workdir / f"{name}.onnx"
    onnx.save(model, path)
    session = ort.InferenceSession(str(path))
    spec = session.get_inputs()[0]
    feeds = np.random.default_rng(0).standard_normal(spec.shape).astype(np.float32)
    reference = session.run(None, {spec.name: feeds})[0]
    libraries = [workdir / f"{name}_{rev}.so" for rev in revisions]
    for rev, library in zip(revisions, libraries, strict=True):
        export(rev, path, library, workdir)
    errors = []
    for library in libraries:
        vm = relax.VirtualMachine(tvm.runtime.load_module(str(library)), tvm.cpu())
        got = vm["main"](tvm.runtime.tensor(feeds)).numpy()
        errors.append(float(np.abs(got - reference).max() / np.abs(reference).max()))
    base, head = time_alternately(libraries, feeds, rounds)
    return {
        "model": name,
        "base_ms": 1e3 * median(base),
        "head_ms": 1e3 * median(head),
        "paired": median([b / h for b, h in zip(base, head, strict=True)]),
        "base_rel_err": errors[0],
        "head_rel_err": errors[1],
    }


def plot(results: dict[str, Any], out_dir: Path) -> None:
    rows = results["rows"]
    plot_speedups(
        out_dir / f"{results['name']}.png",
        [r["model"] for r in rows],
        {f"{results['base']} / {results['head']} (paired)": [r["paired"] for r in rows]},
        f"{results['head']} vs {results['base']}, CPU, one process",
        targets={"1x": 1.0},
    )


def main() -> None:
    from tvm_sparse_rnn.zoo import ZOO

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the commit to compare against")
    parser.add_argument("--head", default="HEAD", help="the commit measured (default HEAD)")
    parser.add_argument("--models", nargs="+", choices=sorted(ZOO), default=["bert_4x4"])
    parser.add_argument("--rounds", type=int, default=60, help="alternating calls of each")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--name", default="bench_commits_cpu")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    revisions = [
        subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", rev],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
        for rev in (args.base, args.head)
    ]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        try:
            rows = [measure(name, revisions, args.rounds, workdir) for name in args.models]
        finally:
            for rev in revisions:
                subprocess.run(
                    ["git", "-C", str(REPO), "worktree", "remove", "--force", str(workdir / rev)],
                    check=False,
                    capture_output=True,
                )
    base, head = revisions
    columns = ["model", "base_ms", "head_ms", "paired", "base_rel_err", "head_rel_err"]
    text = f"{head} vs {base} (base / head, paired median of {args.rounds} rounds):\n\n"
    text += format_table(rows, columns) + "\n"
    results = {"name": args.name, "device": device_info(), "base": base, "head": head}
    save_results(args.out_dir, args.name, {**results, "rows": rows}, text, plot)


if __name__ == "__main__":
    main()
