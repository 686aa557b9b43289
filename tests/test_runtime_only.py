"""A compiled model runs with TVM's runtime library alone (``TVM_USE_RUNTIME_LIB=1``): no
compiler library, no onnx, the same numbers as onnxruntime."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tvm_sparse_rnn.compile import compile_onnx
from tvm_sparse_rnn.demo import build_demo_model, random_inputs
from tvm_sparse_rnn.errors import ModelError
from tvm_sparse_rnn.frontend.onnx import model_signature
from tvm_sparse_rnn.runtime.compiled import load_compiled
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


def _views_model(tmp_path):
    """A compiled ``x (2, 6)`` -> ``view`` (Reshape to 3 x 4), ``double`` (x + x) model."""
    x_info = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 6])
    outputs = [
        onnx.helper.make_tensor_value_info("view", onnx.TensorProto.FLOAT, [3, 4]),
        onnx.helper.make_tensor_value_info("double", onnx.TensorProto.FLOAT, [2, 6]),
    ]
    shape = onnx.numpy_helper.from_array(np.array([3, 4], np.int64), "shape")
    nodes = [
        onnx.helper.make_node("Reshape", ["x", "shape"], ["view"]),
        onnx.helper.make_node("Add", ["x", "x"], ["double"]),
    ]
    graph = onnx.helper.make_graph(nodes, "views", [x_info], outputs, [shape])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    library, _ = compile_onnx(model, tmp_path / "views.so", target="llvm")
    return load_compiled(library)


def test_run_returns_arrays_of_the_callers_own(tmp_path):
    """``CompiledModel.run`` stages inputs in tensors it reuses: an output that is a view of an
    input (a Reshape) and an output of an earlier call keep their values through the next call,
    and changing a fed array after the call changes nothing."""
    compiled = _views_model(tmp_path)
    rng = np.random.default_rng(0)
    x1, x2 = (rng.standard_normal((2, 6)).astype(np.float32) for _ in range(2))
    first = compiled.run({"x": x1})
    x1_fed = x1.copy()
    x1 += 1.0
    second = compiled.run({"x": x2})
    np.testing.assert_array_equal(first["view"], x1_fed.reshape(3, 4))
    np.testing.assert_array_equal(first["double"], 2 * x1_fed)
    np.testing.assert_array_equal(second["view"], x2.reshape(3, 4))
    second["double"][:] = 0.0
    np.testing.assert_array_equal(compiled.run({"x": x2})["double"], 2 * x2)


def test_run_checks_what_is_not_an_array_as_declared(tmp_path):
    """Arrays of the declared dtype and shape go in as they are; a float64 array, a transposed
    view and a nested list are converted to the same numbers; a wrong name, shape or dtype is a
    ``ModelError`` naming the input."""
    compiled = _views_model(tmp_path)
    x = np.random.default_rng(1).standard_normal((2, 6)).astype(np.float32)
    assert compiled.check_inputs({"x": x})[0] is x
    want = compiled.run({"x": x})["double"]
    for fed in (x.astype(np.float64), np.asfortranarray(x), x.tolist()):
        np.testing.assert_array_equal(compiled.run({"x": fed})["double"], want)
    with pytest.raises(ModelError, match="unknown"):
        compiled.run({"y": x})
    with pytest.raises(ModelError, match="'x' has shape"):
        compiled.run({"x": x.reshape(3, 4)})
    with pytest.raises(ModelError, match="'x' has dtype complex64"):
        compiled.run({"x": x.astype(np.complex64)})
