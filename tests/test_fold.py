"""``fold_constants``: shape subgraphs that are constant once input shapes are fixed fold away,
so that TVM's importer takes models it rejects as dynamic (Silero VAD among them)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx as tvm_from_onnx

from tvm_sparse_rnn.compile import build_onnx, load_executable
from tvm_sparse_rnn.errors import ModelError
from tvm_sparse_rnn.frontend.fold import fold_constants


def _dynamic_pad_model() -> onnx.ModelProto:
    """``Y = Reshape(Pad(X, [0, 0, 0, (4 - T % 4) % 4]), [1, -1, 4])`` with T = X's dynamic dim:
    pads come from ``Shape -> Gather -> Mod -> Sub -> Concat``."""
    inits = [
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.array(4, np.int64), "four"),
        numpy_helper.from_array(np.zeros(3, np.int64), "zeros3"),
        numpy_helper.from_array(np.array([1, -1, 4], np.int64), "shape_tail"),
    ]
    nodes = [
        helper.make_node("Shape", ["X"], ["s"]),
        helper.make_node("Gather", ["s", "one"], ["t"], axis=0),
        helper.make_node("Mod", ["t", "four"], ["r"]),
        helper.make_node("Sub", ["four", "r"], ["p0"]),
        helper.make_node("Mod", ["p0", "four"], ["p"]),
        helper.make_node("Concat", ["zeros3", "p"], ["pads"], axis=0),
        helper.make_node("Pad", ["X", "pads"], ["xp"], mode="reflect"),
        helper.make_node("Reshape", ["xp", "shape_tail"], ["Y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "dynamic_pad",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, "T"])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, None, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _ort(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _tvm_plain(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    executable = tvm.compile(tvm_from_onnx(model), target="llvm")
    vm = relax.VirtualMachine(executable, tvm.cpu())
    out = vm["main"](*(tvm.runtime.tensor(feeds[i.name]) for i in model.graph.input))
    return [o.numpy() for o in ([out] if isinstance(out, tvm.runtime.Tensor) else out)]


@pytest.mark.parametrize("t", [10, 12, 13])
def test_dynamic_pad_fails_before_and_imports_after(t):
    model = _dynamic_pad_model()
    with pytest.raises(Exception, match="Dynamic pads are not supported"):
        tvm_from_onnx(model, shape_dict={"X": (1, t)})
    folded = fold_constants(model, {"X": (1, t)})
    assert [n.op_type for n in folded.graph.node] == ["Pad", "Reshape"]
    x = np.random.default_rng(t).standard_normal((1, t)).astype("float32")
    (expected,) = _ort(model, {"X": x})
    (got,) = _tvm_plain(folded, {"X": x})
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(_ort(folded, {"X": x})[0], expected)


def test_input_model_untouched_and_shapes_fixed():
    model = _dynamic_pad_model()
    before = model.SerializeToString()
    folded = fold_constants(model, {"X": (1, 7)})
    assert model.SerializeToString() == before
    dims = [d.dim_value for d in folded.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 7]
    assert [d.dim_value for d in folded.graph.output[0].type.tensor_type.shape.dim] == [1, 2, 4]


def test_if_on_a_pinned_input_folds_to_its_branch():
    untyped = onnx.TypeProto()
    then = helper.make_graph(
        [helper.make_node("Mul", ["X", "two"], ["a"])],
        "then",
        [],
        [helper.make_value_info("a", untyped)],
    )
    other = helper.make_graph(
        [helper.make_node("Neg", ["X"], ["b"])], "else", [], [helper.make_value_info("b", untyped)]
    )
    nodes = [
        helper.make_node("Equal", ["sr", "rate"], ["is16k"]),
        helper.make_node("If", ["is16k"], ["Y"], then_branch=then, else_branch=other),
    ]
    graph = helper.make_graph(
        nodes,
        "if",
        [
            helper.make_tensor_value_info("X", TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2])],
        [
            numpy_helper.from_array(np.array(2.0, np.float32), "two"),
            numpy_helper.from_array(np.array(16000, np.int64), "rate"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = np.array([1.0, -3.0], np.float32)
    for sr, expected in ((16000, 2 * x), (8000, -x)):
        folded = fold_constants(model, None, constant_inputs={"sr": np.int64(sr)})
        assert "If" not in [n.op_type for n in folded.graph.node]
        assert [i.name for i in folded.graph.input] == ["X"]
        np.testing.assert_array_equal(_ort(folded, {"X": x})[0], expected)


@pytest.mark.parametrize(
    ("shapes", "constants", "match"),
    [
        ({"Z": (1, 4)}, None, "unknown inputs"),
        ({"X": (1, 4, 1)}, None, "rank 2"),
        ({"X": (1, 0)}, None, ">= 1"),
        ({"X": (2, 4)}, None, "dim 0 is 1 in the model"),
        ({"X": (1, 2.5)}, None, "integer dims"),
        (None, {"nope": 1}, "constant_inputs names unknown"),
    ],
)
def test_bad_shape_dict_is_a_model_error(shapes, constants, match):
    with pytest.raises(ModelError, match=match):
        fold_constants(_dynamic_pad_model(), shapes, constant_inputs=constants)


# ------------------------------------------------------------------ Silero VAD (real model)
def _silero_dir() -> Path | None:
    """``silero_vad/data`` of the installed ``silero-vad`` wheel, without importing it (its
    ``__init__`` imports torch)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        return None
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    return data if data.is_dir() else None


SILERO = _silero_dir()
needs_silero = pytest.mark.skipif(SILERO is None, reason="pip install silero-vad (no torch needed)")


def _silero_case(name: str):
    model = onnx.load(str(SILERO / name))
    rng = np.random.default_rng(0)
    names = [i.name for i in model.graph.input]
    if "sr" in names:
        shapes = {"input": (1, 512), "state": (2, 1, 128)}
        constants = {"sr": np.array(16000, np.int64)}
        feeds = {
            "input": rng.uniform(-0.5, 0.5, (1, 512)).astype("float32"),
            "state": rng.uniform(-0.5, 0.5, (2, 1, 128)).astype("float32"),
        }
        return model, shapes, constants, feeds, {"sr": constants["sr"]}
    shapes = {"input": (4, 576)}
    feeds = {
        "input": rng.uniform(-0.5, 0.5, (4, 576)).astype("float32"),
        "h": rng.uniform(-0.5, 0.5, (1, 1, 128)).astype("float32"),
        "c": rng.uniform(-0.5, 0.5, (1, 1, 128)).astype("float32"),
    }
    return model, shapes, {}, feeds, {}


def _prune(model: onnx.ModelProto, fraction: float) -> onnx.ModelProto:
    """Zero the smallest ``fraction`` of every LSTM W/R and every >= 2-D float initializer
    with at least 4096 entries (magnitude pruning)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for i, init in enumerate(out.graph.initializer):
        w = numpy_helper.to_array(init)
        if w.dtype != np.float32 or w.ndim < 2 or w.size < 4096:
            continue
        cut = np.quantile(np.abs(w), fraction)
        out.graph.initializer[i].CopyFrom(
            numpy_helper.from_array(np.where(np.abs(w) < cut, 0, w).astype(np.float32), init.name)
        )
    return out


SILERO_MODELS = [
    "silero_vad.onnx",
    "silero_vad_16k_op15.onnx",
    "silero_vad_op18_ifless.onnx",
    "silero_vad_16k_sequence.onnx",
]


@needs_silero
@pytest.mark.parametrize("pruned", [0.0, 0.8], ids=["unpruned", "pruned80"])
@pytest.mark.parametrize("name", SILERO_MODELS)
def test_silero_vad_folds_compiles_and_matches_onnxruntime(name, pruned):
    model, shapes, constants, feeds, pinned = _silero_case(name)
    if pruned:
        model = _prune(model, pruned)
    expected = _ort(model, {**feeds, **pinned})
    folded = fold_constants(model, shapes, constant_inputs=constants)
    executable, inputs, outputs = build_onnx(folded, target="llvm")
    got = load_executable(executable, inputs, outputs, "llvm").run(feeds)
    for spec, ref in zip(outputs, expected, strict=True):
        np.testing.assert_allclose(got[spec.name], ref, rtol=1e-4, atol=2e-5)


# ------------------------------------------------------------------ CLI
def test_cli_compile_folds_by_default_and_no_fold_opts_out(tmp_path, capsys):
    from tvm_sparse_rnn.cli.main import main

    path = tmp_path / "dyn.onnx"
    path.write_bytes(_dynamic_pad_model().SerializeToString())
    argv = ["compile", str(path), "--shape", "X=1,10", "-o", str(tmp_path / "dyn.so")]
    assert main(argv) == 0
    x = np.random.default_rng(3).standard_normal((1, 10)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    run = ["run", str(tmp_path / "dyn.so"), "--inputs", str(tmp_path / "x.npy")]
    assert main([*run, "-o", str(tmp_path / "y.npz")]) == 0
    expected = _ort(_dynamic_pad_model(), {"X": x})[0]
    np.testing.assert_array_equal(np.load(tmp_path / "y.npz")["Y"], expected)
    capsys.readouterr()
    assert main([*argv, "--no-fold"]) == 3  # ModelError: TVM's importer rejects dynamic pads
    assert "Dynamic pads" in capsys.readouterr().err
