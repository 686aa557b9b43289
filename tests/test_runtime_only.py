"""A compiled model runs with TVM's runtime library alone (``TVM_USE_RUNTIME_LIB=1``): no
compiler library, no onnx, the same numbers as onnxruntime."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnxruntime as ort

from tvm_sparse_rnn.compile import compile_onnx
from tvm_sparse_rnn.demo import build_demo_model, random_inputs
from tvm_sparse_rnn.frontend.onnx import model_signature
from tvm_sparse_rnn.testing import TOLERANCES

_CHILD = """
import json, sys
import numpy as np
import tvm
from tvm_sparse_rnn.runtime.compiled import load_compiled
model = load_compiled(sys.argv[1])
with np.load(sys.argv[2]) as data:
    feeds = {name: data[name] for name in data.files}
np.savez(sys.argv[3], **model.run(feeds))
print(json.dumps({"compiler": "tvm_compiler" in tvm.base._LOADED_LIBS,
                  "heavy": sorted(m for m in ("onnx", "tvm.relax.transform") if m in sys.modules)}))
"""


def test_compiled_model_runs_with_the_runtime_library_only(tmp_path):
    """The demo model (GRU + pruned MLP) compiled here, loaded and run in a fresh process whose
    TVM has no compiler: outputs match onnxruntime, and neither the compiler nor onnx loaded."""
    model = build_demo_model(seq_len=4, batch=2, input_size=32, hidden=48, mlp=64, classes=16)
    library, _ = compile_onnx(model, tmp_path / "demo.so", target="llvm")
    feeds = random_inputs(model_signature(model, None)[0], seed=3)
    np.savez(tmp_path / "feeds.npz", **feeds)
    env = {**os.environ, "TVM_USE_RUNTIME_LIB": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _CHILD,
            str(library),
            str(tmp_path / "feeds.npz"),
            str(tmp_path / "out.npz"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded == {"compiler": False, "heavy": []}
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    rtol, atol = TOLERANCES["float32"]
    with np.load(tmp_path / "out.npz") as got:
        for name, want in zip(names, session.run(None, feeds), strict=True):
            np.testing.assert_allclose(got[name], want, rtol=rtol, atol=atol)
