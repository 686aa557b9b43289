"""ONNX ``RNN``/``GRU``/``LSTM`` layers on CUDA use the sparse persistent kernel (one launch).

CPU: the imported module holds one ``call_tir`` of the persistent kernel per layer (both
directions in one launch; one per direction with ``concurrent_directions=False``), the
CUDA source has the register arrays and the grid sync in exactly one kernel, the library is
tagged for a cooperative launch, nvcc compiles it for sm_90a; layers that do not qualify keep the
per-step path, and kernels other than the persistent one build exactly as with TVM's default.
GPU: models compiled for cuda match onnxruntime.
"""

from __future__ import annotations

import dataclasses
import re
import shutil

import numpy as np
import onnx
import pytest
import tvm
from tvm import relax
from tvm.support import nvcc

from tvm_sparse_rnn.frontend.onnx import from_onnx
from tvm_sparse_rnn.kernels.cuda.persistent import planner
from tvm_sparse_rnn.ops.cells import CellConfig
from tvm_sparse_rnn.pipeline import build, sparse_pipeline
from tvm_sparse_rnn.target import device_limits, resolve_target
from tvm_sparse_rnn.testing import (
    random_recurrent_weights,
    recurrent_onnx_model,
    recurrent_onnxruntime,
)
from tvm_sparse_rnn.transform import DispatchOptions, KernelVariant
from tvm_sparse_rnn.transform.dispatch.recurrent import full_lengths, persistent_choice
from tvm_sparse_rnn.transform.dispatch.recurrent_persistent import from_streams, to_streams

T, N, IN, H = 12, 3, 16, 128
CUDA = resolve_target("cuda")
COOPERATIVE_TAG = b"tirx.use_cooperative_launch"


def _model(
    kind: str = "RNN",
    direction: str = "forward",
    inputs: tuple[str, ...] = (),
    attributes: dict | None = None,
    density: float = 0.1,
    shape: tuple[int, int, int, int] = (T, N, IN, H),
    layout: int = 0,
    seed: int = 3,
) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    seq_len, batch, input_size, hidden = shape
    d = 2 if direction == "bidirectional" else 1
    w = random_recurrent_weights(kind, hidden, input_size, d, density=density, seed=seed)
    model = recurrent_onnx_model(
        kind, w, seq_len, batch, input_size, hidden, direction, layout, inputs, attributes
    )
    return model, w


def _dispatched(model: onnx.ModelProto, **options: object) -> tuple[tvm.IRModule, list]:
    """The model imported and dispatched for cuda (no build); ``(module, decisions)``."""
    pipeline = sparse_pipeline(CUDA, DispatchOptions(**options))
    with CUDA:
        mod = pipeline.front()(from_onnx(model))
    return mod, pipeline.decisions


def _build(model: onnx.ModelProto, **options: object) -> tvm.runtime.Executable:
    return build(from_onnx(model), CUDA, DispatchOptions(**options))[0]


def _persistent_calls(mod: tvm.IRModule) -> int:
    """Number of ``call_tir`` of the persistent kernel in ``main``."""
    return len(re.findall(r"R\.call_tir\(cls\.rnn_persistent_", mod.script()))


def _cuda_source(executable: tvm.runtime.Executable) -> str:
    (cuda,) = [m for m in executable.mod.imports[0].imports if m.kind == "cuda"]
    return cuda.inspect_source()


def _kernels(source: str) -> dict[str, str]:
    """Kernel name -> body text, for every ``__global__`` definition of ``source``."""
    parts = re.split(r'extern "C" __global__ void ', source)[1:]
    bodies = {}
    for part in parts:
        name = re.match(r"(?:__launch_bounds__\(\d+\) )?(\w+)\(", part).group(1)
        bodies[name] = part
    return bodies


@pytest.mark.parametrize("concurrent", [True, False])
def test_rnn_uses_one_persistent_launch_per_layer(concurrent, tmp_path):
    model, _ = _model(direction="bidirectional", inputs=("initial_h",))
    mod, decisions = _dispatched(model, concurrent_directions=concurrent)
    assert _persistent_calls(mod) == (1 if concurrent else 2)
    script = mod["main"].script()
    # the input projections only (no per-step mat-vecs): one GEMM for both directions of a launch
    assert script.count("R.matmul(") == (1 if concurrent else 2)
    persistent = [d for d in decisions if d.variant is KernelVariant.PERSISTENT]
    assert [d.layer for d in persistent] == ["rnn[fw]", "rnn[bw]"]
    assert all("flag barrier" in d.detail for d in persistent)  # small h: the faster barrier
    assert all(("2 directions x " in d.detail) == concurrent for d in persistent)
    executable = _build(model, concurrent_directions=concurrent)
    source = _cuda_source(executable)
    kernels = _kernels(source)
    waiting = [name for name, body in kernels.items() if "sprnn_ready16(" in body]
    # one kernel per launch (a reverse direction alone reads U backwards: its own kernel);
    # <name>_kernel is the sentinel fill, <name>_kernel_1 the recurrence
    assert len(waiting) == (1 if concurrent else 2)
    assert all(re.fullmatch(r"rnn_persistent_tanh\d*_kernel_1", name) for name in waiting)
    body = kernels[waiting[0]]
    assert re.search(r"float wv_ptr\[\d+\];", body) and re.search(r"int wi_ptr\[\d+\];", body)
    assert not re.search(r"wv_ptr\[[a-z_(]", body)  # constant indices only: registers
    assert "sprnn_cp16(" in body and "cp.async.cg.shared.global" in source and "tanhf" in body
    assert len(kernels) <= 16  # a fixed number of kernels, independent of T
    library = tmp_path / "rnn.so"
    executable.export_library(str(library))
    assert COOPERATIVE_TAG in library.read_bytes()
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not available")
    with CUDA:
        cubin = nvcc.compile_cuda(source, target_format="cubin", arch="sm_90a", compiler="nvcc")
    assert len(cubin) > 0


def test_the_input_gemm_output_is_the_kernel_u():
    """A bidirectional GRU in one launch: one GEMM of both directions' unit-major ``W`` rows,
    whose output reshaped is the kernel's ``U`` (no transpose, pad or flip before the launch;
    the one flip is the reverse direction's output back into time order)."""
    model, _ = _model("GRU", direction="bidirectional", attributes={"linear_before_reset": 1})
    mod, decisions = _dispatched(model)
    script = mod["main"].script()
    assert script.count("R.matmul(") == 1 and script.count("R.flip(") == 1
    (launch,) = re.findall(r"R\.call_tir\((?:cls\.)?rnn_persistent_gru, \((.*?)\)", script)
    u = launch.split(", ")[3]  # vals, idx, spairs, U, ...
    (binding,) = re.findall(rf"\b{u}: ([^\n]*)", script)
    assert f"R.Tensor(({T}, {N}, {2 * 3 * H})" in binding and "= R.reshape(" in binding
    assert "gru[fw].W+gru[bw].W" in {d.layer for d in decisions}


def test_streams_stack_each_direction_batch_slices_along_the_rows():
    """2 directions x 3 replicas of 2 samples: ``to_streams`` puts direction ``d``'s samples
    ``2r .. 2r+1`` at stream ``3d + r``; ``from_streams`` undoes it (run on llvm)."""
    plan = dataclasses.replace(
        planner.plan_persistent(
            hidden=8, max_row_nnz=2, batch=6, device=device_limits("cuda"), replicas=1
        ),
        directions=2,
        replicas=3,
        batch_kernel=2,
    )
    x = np.arange(5 * 2 * 8 * 6, dtype=np.float32).reshape(5, 16, 6)  # (T, D * rows, samples)
    bb = relax.BlockBuilder()
    arg = relax.Var("x", relax.TensorType(x.shape, "float32"))
    with bb.function("main", [arg]):
        with bb.dataflow():
            streams = bb.emit(to_streams(arg, plan))
            back = bb.emit(from_streams(streams, plan))
            out = bb.emit_output(relax.Tuple([streams, back]))
        bb.emit_func_output(out)
    vm = relax.VirtualMachine(tvm.compile(bb.get(), "llvm"), tvm.cpu())
    streams, back = (a.numpy() for a in vm["main"](tvm.runtime.tensor(x)))
    assert streams.shape == (5, 2 * 3 * 8, 2)
    for d in range(2):
        for r in range(3):
            s0 = (3 * d + r) * 8
            np.testing.assert_array_equal(
                streams[:, s0 : s0 + 8], x[:, 8 * d : 8 * d + 8, 2 * r : 2 * r + 2]
            )
    np.testing.assert_array_equal(back, x)


@pytest.mark.parametrize(
    ("kind", "inputs", "attributes", "density"),
    [
        ("GRU", (), {"linear_before_reset": 1, "activations": ["Sigmoid", "Relu"]}, 0.1),
        ("LSTM", (), {"activations": ["Sigmoid", "Tanh", "Relu"]}, 0.1),
        ("RNN", ("sequence_lens",), None, 0.1),
        ("RNN", (), None, 0.9),  # dense R
        ("RNN", (), {"clip": 0.5}, 0.1),
        ("RNN", (), {"activations": ["Sigmoid"]}, 0.1),
    ],
)
def test_non_qualifying_layers_keep_the_per_step_path(kind, inputs, attributes, density):
    model, _ = _model(
        kind, inputs=inputs, attributes=attributes, density=density, shape=(3, N, IN, 32)
    )
    mod, decisions = _dispatched(model)
    assert _persistent_calls(mod) == 0
    assert "R.matmul(" in mod["main"].script()
    assert KernelVariant.PER_STEP in [d.variant for d in decisions]


def test_plan_conditions():
    r = random_recurrent_weights("RNN", 64, 8, 2, density=0.1, seed=0)["R"]
    cfg = CellConfig("RNN", 64, "bidirectional", activations=("Relu", "Sigmoid"))
    options = DispatchOptions()

    def choice(cfg, d, R, lengths_full=True, options=options):
        return persistent_choice(cfg, (d,), [R], 5, lengths_full, CUDA, options)

    found, source, _ = choice(cfg, 0, r[0])
    assert found.plan.kind == "persistent" and found.plan.launch_batch >= 5
    assert found.plan.directions == 1 and source == "default config"
    assert choice(cfg, 1, r[1])[0] is None  # Sigmoid
    both = persistent_choice(cfg, (0, 1), list(r), 5, True, CUDA, options)
    assert both[0] is None and "Sigmoid" in both[2]
    assert choice(cfg, 0, r[0], lengths_full=False)[2] == "sequence_lens given"
    assert "R density" in choice(cfg, 0, r[0], options=DispatchOptions(0.95))[2]
    r4 = random_recurrent_weights("LSTM", 64, 8, 2, density=0.1, seed=0)["R"]
    assert choice(CellConfig("LSTM", 64), 0, r4[0])[0].plan.gates == 4
    assert choice(CellConfig("LSTM", 64, peepholes=True), 0, r4[0])[2] == "LSTM peepholes"
    pair, _, reason = persistent_choice(
        CellConfig("LSTM", 64, "bidirectional"), (0, 1), list(r4), 5, True, CUDA, options
    )
    longest = max(int(np.count_nonzero(rd, axis=1).max()) for rd in r4)
    assert pair.plan.directions == 2 and pair.plan.nz_per_row >= longest
    assert reason.count("0.1") == 2  # both densities
    assert full_lengths(None, 4)
    assert full_lengths(relax.const(np.full(3, 4, np.int64)), 4)
    assert not full_lengths(relax.const(np.array([4, 2, 4], np.int64)), 4)
    assert not full_lengths(relax.Var("lens", relax.TensorType((3,), "int64")), 4)


@pytest.mark.parametrize(
    ("kind", "attributes", "cell"),
    [("GRU", {"linear_before_reset": 1}, "gru"), ("GRU", {}, "gru_lbr0"), ("LSTM", {}, "lstm")],
)
def test_gated_layers_use_the_persistent_kernel(kind, attributes, cell):
    model, _ = _model(kind, "bidirectional", ("initial_h",), attributes, shape=(3, N, IN, 64))
    mod, decisions = _dispatched(model)
    assert _persistent_calls(mod) == 1  # both directions in one launch
    assert re.search(rf"R\.call_tir\(cls\.rnn_persistent_{cell}\b", mod.script())
    persistent = [d for d in decisions if d.variant is KernelVariant.PERSISTENT]
    assert len(persistent) == 2
    assert all(("two-phase" in d.detail) == (cell == "gru_lbr0") for d in persistent)


def test_other_kernels_build_as_with_the_default_pipeline(tmp_path):
    """``pipeline.build`` keeps dlight and TVM's default TIR pipeline for the other kernels."""
    model, _ = _model("RNN", attributes={"clip": 0.5}, shape=(2, N, IN, 32))  # per-step path
    ours = _build(model)
    mod, _ = _dispatched(model)
    with CUDA:
        default = tvm.compile(mod, target=CUDA)
    assert _cuda_source(ours) == _cuda_source(default)
    assert "blockIdx.x" in _cuda_source(ours)  # scheduled by dlight
    library = tmp_path / "gru.so"
    ours.export_library(str(library))
    assert COOPERATIVE_TAG not in library.read_bytes()


def _launches(direction: str, concurrent: bool, decisions: list) -> int:
    """Persistent ``call_tir``s of a layer: one per launch of directions and batch chunk."""
    (chunks,) = {
        int(re.search(r" B=[\dx]*x(\d+) ", d.detail).group(1))
        for d in decisions
        if d.variant is KernelVariant.PERSISTENT
    }
    return (2 if direction == "bidirectional" and not concurrent else 1) * chunks


def _with_sequential(cases: list[tuple]) -> list[tuple]:
    """``cases`` with the concurrent flag, bidirectional ones also with sequential directions."""
    return [(*c, True) for c in cases] + [(*c, False) for c in cases if "bidirectional" in c]


GPU_CASES = [
    # (direction, initial_h, activation, layout, (T, N, I, H))
    ("forward", False, "Tanh", 0, (20, 4, 32, 256)),
    ("forward", True, "Relu", 0, (20, 4, 32, 256)),
    ("forward", True, "Tanh", 0, (9, 3, 24, 250)),
    ("forward", False, "Relu", 0, (7, 1, 16, 130)),
    ("reverse", False, "Relu", 0, (20, 4, 32, 256)),
    ("reverse", True, "Tanh", 0, (20, 4, 32, 256)),
    ("reverse", True, "Relu", 0, (9, 3, 24, 250)),
    ("bidirectional", False, "Tanh", 0, (20, 4, 32, 256)),
    ("bidirectional", True, "Relu", 0, (20, 4, 32, 256)),
    ("bidirectional", True, "Tanh", 1, (9, 6, 24, 250)),
    ("bidirectional", False, "Relu", 0, (7, 2, 16, 1152)),
]


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("direction", "initial_h", "activation", "layout", "shape", "concurrent"),
    _with_sequential(GPU_CASES),
)
def test_persistent_rnn_model_matches_onnxruntime(
    direction, initial_h, activation, layout, shape, concurrent
):
    seq_len, batch, input_size, hidden = shape
    d = 2 if direction == "bidirectional" else 1
    inputs = ("initial_h",) if initial_h else ()
    attributes = {"activations": [activation] * d}
    model, w = _model("RNN", direction, inputs, attributes, 0.1, shape, layout, seed=hidden)
    mod, decisions = _dispatched(model, concurrent_directions=concurrent)
    assert _persistent_calls(mod) == _launches(direction, concurrent, decisions)
    rng = np.random.default_rng(batch)
    x_shape = (seq_len, batch, input_size) if layout == 0 else (batch, seq_len, input_size)
    feeds = {"X": rng.standard_normal(x_shape).astype("float32")}
    if initial_h:
        h_shape = (d, batch, hidden) if layout == 0 else (batch, d, hidden)
        feeds["initial_h"] = rng.standard_normal(h_shape).astype("float32")
    vm = relax.VirtualMachine(_build(model, concurrent_directions=concurrent), tvm.cuda(0))
    names = [i.name for i in model.graph.input]
    got = vm["main"](*(tvm.runtime.tensor(feeds[n], tvm.cuda(0)) for n in names))
    expected = recurrent_onnxruntime("RNN", w, feeds, hidden, direction, layout, attributes)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g.numpy(), e, rtol=2e-4, atol=2e-4)


LBR1 = {"linear_before_reset": 1}
GATED_GPU_CASES = [
    # (kind, attributes, direction, initial states, layout, (T, N, I, H))
    ("GRU", LBR1, "forward", False, 0, (20, 4, 32, 256)),
    ("GRU", LBR1, "reverse", True, 0, (9, 3, 24, 250)),
    ("GRU", LBR1, "bidirectional", True, 1, (16, 16, 32, 1024)),
    ("GRU", LBR1, "bidirectional", False, 0, (8, 64, 32, 1024)),  # B = 64
    ("GRU", {}, "forward", True, 0, (20, 4, 32, 256)),  # linear_before_reset=0: two phases
    ("GRU", {}, "reverse", False, 0, (9, 3, 24, 250)),
    ("GRU", {}, "bidirectional", True, 1, (16, 16, 32, 1024)),
    ("GRU", {}, "bidirectional", False, 0, (8, 64, 32, 1024)),
    ("LSTM", {}, "forward", True, 0, (20, 4, 32, 256)),
    ("LSTM", {}, "reverse", False, 0, (9, 1, 24, 250)),
    ("LSTM", {}, "bidirectional", True, 1, (16, 4, 32, 1792)),
]


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("kind", "attributes", "direction", "states", "layout", "shape", "concurrent"),
    _with_sequential(GATED_GPU_CASES),
)
def test_persistent_gated_model_matches_onnxruntime(
    kind, attributes, direction, states, layout, shape, concurrent
):
    seq_len, batch, input_size, hidden = shape
    d = 2 if direction == "bidirectional" else 1
    inputs = (("initial_h", "initial_c") if kind == "LSTM" else ("initial_h",)) if states else ()
    model, w = _model(kind, direction, inputs, attributes, 0.1, shape, layout, seed=hidden)
    mod, decisions = _dispatched(model, concurrent_directions=concurrent)
    assert _persistent_calls(mod) == _launches(direction, concurrent, decisions)
    rng = np.random.default_rng(batch)
    x_shape = (seq_len, batch, input_size) if layout == 0 else (batch, seq_len, input_size)
    feeds = {"X": rng.standard_normal(x_shape).astype("float32")}
    s_shape = (d, batch, hidden) if layout == 0 else (batch, d, hidden)
    for name in inputs:
        feeds[name] = rng.standard_normal(s_shape).astype("float32")
    vm = relax.VirtualMachine(_build(model, concurrent_directions=concurrent), tvm.cuda(0))
    names = [i.name for i in model.graph.input]
    got = vm["main"](*(tvm.runtime.tensor(feeds[n], tvm.cuda(0)) for n in names))
    expected = recurrent_onnxruntime(kind, w, feeds, hidden, direction, layout, attributes)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g.numpy(), e, rtol=2e-4, atol=2e-4)
