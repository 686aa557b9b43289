"""The llvm pipeline's remainder: ScheduleRemainderCPU gives softmax, layer norm, GELU and layout
functions parallel, vectorized schedules, FastMath their approximations, VectorLayerNorm a
vector layer norm kernel; the numbers stay (numpy float64 / scipy references)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import scipy.special
import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

from tvm_sparse_rnn.frontend import from_onnx
from tvm_sparse_rnn.kernels.x86.layer_norm import make_layer_norm
from tvm_sparse_rnn.kernels.x86.row_reduction import ReducedAxis, column_strip
from tvm_sparse_rnn.kernels.x86.softmax import make_softmax
from tvm_sparse_rnn.kernels.x86.vector import vector_lanes
from tvm_sparse_rnn.pipeline import build, sparse_pipeline
from tvm_sparse_rnn.target import resolve_target
from tvm_sparse_rnn.transform import (
    CancelTransposes,
    FastMath,
    ScheduleDenseCPU,
    ScheduleRemainderCPU,
    VectorLayerNorm,
)
from tvm_sparse_rnn.zoo import build_bert_encoder

LLVM = resolve_target("llvm")
op = relax.op


def _encoder_tail(shape: tuple[int, ...]) -> tvm.IRModule:
    """``main(x, g, b) = (layer_norm(gelu(x)), softmax(x), transpose(x))`` on ``x`` of ``shape``."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    g = relax.Var("g", relax.TensorType(shape[-1:], "float32"))
    b = relax.Var("b", relax.TensorType(shape[-1:], "float32"))
    with bb.function("main", [x, g, b]):
        with bb.dataflow():
            half = relax.const(0.5, "float32")
            erf = op.erf(op.divide(x, relax.const(np.sqrt(2.0), "float32")))
            gelu = bb.emit(op.multiply(op.multiply(x, half), op.add(erf, relax.const(1.0))))
            norm = bb.emit(op.nn.layer_norm(gelu, g, b, axes=[-1], epsilon=1e-5))
            soft = bb.emit(op.nn.softmax(x, axis=-1))
            moved = bb.emit(op.permute_dims(x, [1, 0, 2]))
            out = bb.emit_output(relax.Tuple([norm, soft, moved]))
        bb.emit_func_output(out)
    return bb.get()


def _reference(x: np.ndarray, g: np.ndarray, b: np.ndarray) -> list[np.ndarray]:
    x = x.astype(np.float64)
    gelu = 0.5 * x * (1.0 + scipy.special.erf(x / np.sqrt(2.0)))
    mean, var = gelu.mean(-1, keepdims=True), gelu.var(-1, keepdims=True)
    norm = (gelu - mean) / np.sqrt(var + 1e-5) * g + b
    soft = np.exp(x - x.max(-1, keepdims=True))
    return [norm, soft / soft.sum(-1, keepdims=True), x.transpose(1, 0, 2)]


@pytest.mark.parametrize("shape", [(2, 8, 64), (3, 5, 7)])  # 7: no whole vector
def test_remainder_functions_are_scheduled_and_exact(shape):
    with LLVM:
        lowered = tvm.transform.Sequential(
            cpu_generic.library_dispatch_passes(LLVM)
            + cpu_generic.legalize_passes(LLVM)
            + [ScheduleDenseCPU, ScheduleRemainderCPU]
        )(_encoder_tail(shape))
    funcs = [f for _, f in lowered.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert len(funcs) >= 3
    for func in funcs:
        assert func.attrs["tirx.is_scheduled"]
        assert "T.parallel" in func.script()
    if shape[-1] % 16 == 0:
        assert any("T.vectorized" in f.script() for f in funcs)

    rng = np.random.default_rng(0)
    args = [rng.standard_normal(s).astype("float32") for s in (shape, shape[-1:], shape[-1:])]
    executable, _ = build(_encoder_tail(shape), "llvm")
    vm = relax.VirtualMachine(executable, tvm.cpu())
    got = vm["main"](*(tvm.runtime.tensor(a) for a in args))
    for out, ref in zip(got, _reference(*args), strict=True):
        np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("shape", "rows"), [((1, 48, 32), 16), ((2, 48, 24), 8), ((1, 20, 24), None)]
)
def test_transposes_are_tiled_and_exact(shape, rows):
    """A function whose output's last axis is not its input's gets a ``rows x lanes`` tile (the
    widest of 16, 8, 4, 2 dividing the output rows; none where the columns are no whole number of
    vectors)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(op.permute_dims(x, [0, 2, 1]))
        bb.emit_func_output(out)
    with LLVM:
        lowered = tvm.transform.Sequential(
            [*cpu_generic.legalize_passes(LLVM), ScheduleRemainderCPU]
        )(bb.get())
    (func,) = [f for _, f in lowered.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    script = func.script()
    assert "T.parallel" in script
    if rows is None:
        assert "T.unroll" not in script
    else:
        lanes = vector_lanes(LLVM, 32)
        assert f"T.unroll(T.int64({rows}))" in script
        assert f"T.vectorized(T.int64({lanes}))" in script
    data = np.random.default_rng(1).standard_normal(shape).astype("float32")
    vm = relax.VirtualMachine(build(bb.get(), "llvm")[0], tvm.cpu())
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(data)).numpy(), data.swapaxes(1, 2))


def test_fast_math_keeps_calls_of_other_functions():
    """TVM 0.27's FastMathTransform raises on a call of a Relax function; FastMath rewrites the
    operators around it and leaves the call alone."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((8,), "float32"))
    with bb.function("helper", [x], private=True):
        with bb.dataflow():
            out = bb.emit_output(op.exp(x))
        bb.emit_func_output(out)
    helper = bb.get().get_global_var("helper")
    y = relax.Var("y", relax.TensorType((8,), "float32"))
    with bb.function("main", [y]):
        inner = bb.emit(relax.Call(helper, [y]))
        bb.emit_func_output(bb.emit(op.erf(inner)))
    mod = FastMath()(bb.get())
    text = mod.script()
    assert "fast_exp" in text and "fast_erf" in text and "cls.helper(y)" in text
    data = np.linspace(-3, 3, 8, dtype="float32")
    vm = relax.VirtualMachine(build(bb.get(), "llvm")[0], tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(data)).numpy()
    np.testing.assert_allclose(got, scipy.special.erf(np.exp(data.astype(np.float64))), atol=1e-5)


def _softmax_module(shape: tuple[int, ...], axis: int) -> tvm.IRModule:
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(op.nn.softmax(x, axis))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize(
    ("shape", "axis", "vector"),
    [
        ((1, 12, 128, 128), -1, True),  # BERT's attention probabilities
        ((3, 5, 48), 2, True),
        ((2, 4, 16), -1, True),  # one vector per row on AVX-512 (a BERT of seq 16 crashed)
        ((4, 36), -1, False),  # 36 does not divide by the lanes: TOPI's fast_softmax
        ((12, 128, 128), -2, True),  # feature-major attention: over the keys, axis -2
        ((16, 8, 32), 1, True),
        ((4, 6, 48), -2, True),  # 48 columns: strips of one vector, not 32 columns
        ((2, 8, 32), 0, False),  # neither of the last two axes
        ((3, 8, 36), 1, False),  # columns of 36 do not divide by the lanes
    ],
)
def test_softmax_runs_a_vector_kernel_on_the_last_two_axes(shape, axis, vector):
    """The pipeline's FastMath gives a softmax over the last axis (two-step lane-wise max and
    sum) or the one before it (column reductions, vectors along the last axis) a vector kernel
    when the last axis divides by the lanes; numbers vs float64 numpy either way."""
    lanes = vector_lanes(resolve_target("llvm"), 32)
    mod = FastMath(lanes)(_softmax_module(shape, axis))
    assert ("softmax_vector" in mod.script()) is (vector and shape[-1] % lanes == 0)
    data = np.random.default_rng(2).standard_normal(shape).astype("float32") * 4
    vm = relax.VirtualMachine(build(_softmax_module(shape, axis), "llvm")[0], tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(data)).numpy()
    ref = scipy.special.softmax(data.astype(np.float64), axis=axis)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def _layer_norm_module(shape: tuple[int, ...], axis: int) -> tvm.IRModule:
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "float32"))
    g = relax.Var("g", relax.TensorType((shape[axis],), "float32"))
    b = relax.Var("b", relax.TensorType((shape[axis],), "float32"))
    with bb.function("main", [x, g, b]):
        with bb.dataflow():
            out = bb.emit_output(op.nn.layer_norm(x, g, b, axes=[axis], epsilon=1e-5))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize(
    ("shape", "axis", "vector"),
    [
        ((128, 768), -1, True),  # BERT's hidden states
        ((2, 4, 16), 2, True),  # one vector per row on AVX-512
        ((4, 36), -1, False),  # 36 does not divide by the lanes: TVM's layer norm
        ((3, 32, 5), 1, False),  # columns of 5 do not divide by the lanes
        ((768, 128), 0, True),  # BERT's feature-major hidden states
        ((2, 64, 32), -2, True),
        ((4, 8, 32), 0, False),  # neither of the last two axes
    ],
)
def test_layer_norm_runs_a_vector_kernel_on_the_last_two_axes(shape, axis, vector):
    """The pipeline's VectorLayerNorm gives a layer norm over the last axis (lane-wise mean and
    variance) or the one before it (column sums, vectors along the last axis) a vector kernel
    when the last axis divides by the lanes; numbers vs float64 numpy either way."""
    lanes = vector_lanes(resolve_target("llvm"), 32)
    mod = VectorLayerNorm(lanes)(_layer_norm_module(shape, axis))
    assert ("layer_norm_vector" in mod.script()) is (vector and shape[-1] % lanes == 0)
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype("float32") * 3 + 1
    g, b = (rng.standard_normal(shape[axis]).astype("float32") for _ in range(2))
    vm = relax.VirtualMachine(build(_layer_norm_module(shape, axis), "llvm")[0], tvm.cpu())
    got = vm["main"](*(tvm.runtime.tensor(a) for a in (x, g, b))).numpy()
    x64 = x.astype(np.float64)
    mean, var = x64.mean(axis, keepdims=True), x64.var(axis, keepdims=True)
    gb = [
        v.reshape([-1 if d == axis % len(shape) else 1 for d in range(len(shape))]) for v in (g, b)
    ]
    ref = (x64 - mean) / np.sqrt(var + 1e-5) * gb[0] + gb[1]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("shape", "axis"), [((128, 768), ReducedAxis.LAST), ((768, 128), ReducedAxis.SECOND_LAST)]
)
def test_layer_norm_kernels_with_a_residual_match_numpy(shape, axis):
    """``residual=True`` normalizes ``x + r`` (both read by the kernel) over its axis."""
    func = make_layer_norm(shape, "float32", 1e-5, 16, axis, residual=True)
    func = func.with_attr("global_symbol", "main")
    lib = tvm.compile(tvm.IRModule({"main": func}), target="llvm")
    rng = np.random.default_rng(4)
    x, r = (rng.standard_normal(shape).astype("float32") * 2 for _ in range(2))
    g, b = (rng.standard_normal(shape[axis.value]).astype("float32") for _ in range(2))
    out = tvm.runtime.tensor(np.zeros(shape, "float32"))
    lib["main"](*(tvm.runtime.tensor(a) for a in (x, r, g, b)), out)
    s = x.astype(np.float64) + r
    norm = (s - s.mean(axis.value, keepdims=True)) / np.sqrt(
        s.var(axis.value, keepdims=True) + 1e-5
    )
    along = [-1 if d == axis.value % 2 else 1 for d in range(2)]  # gamma, beta along the axis
    ref = norm * g.reshape(along) + b.reshape(along)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "make",
    [
        functools.partial(make_softmax, (12, 128, 128), "float32", 16),
        functools.partial(make_layer_norm, (128, 768), "float32", 1e-5, 16),
    ],
    ids=["softmax", "layer_norm"],
)
def test_row_kernels_keep_their_row_buffers_on_the_stack(make):
    """A row's lane-wise partials and exponentials are constant-size buffers inside the parallel
    row loop: "global" scope (an ``alloca``), not "local", which is one
    ``TVMBackendAllocWorkspace`` and free per row (BERT's softmax: 155 -> 47 us a layer on the
    2-core AMD VM)."""
    asm = tvm.compile(make(), target=resolve_target("llvm")).mod.inspect_source("asm")
    assert "vmaxps" in asm or "vaddps" in asm
    assert "TVMBackendAllocWorkspace" not in asm


def _ffn_gap_module(second_operand_is_constant: bool) -> tvm.IRModule:
    """``xt = permute(reshape(gelu(permute(yt) + b)))``: the activations between two CSR
    kernels, as the dispatch emits them (``yt`` (1, N, M) -> ``xt`` (N, M))."""
    n, m = 8, 6
    bb = relax.BlockBuilder()
    yt = relax.Var("yt", relax.TensorType((1, n, m), "float32"))
    other = relax.Var("other", relax.TensorType((1, m, n), "float32"))
    bias = np.linspace(-1, 1, n, dtype="float32")
    with bb.function("main", [yt, other]):
        with bb.dataflow():
            y = bb.emit(op.reshape(op.permute_dims(yt, [0, 2, 1]), [1, m, n]))
            z = bb.emit(op.add(relax.const(bias) if second_operand_is_constant else other, y))
            half = bb.emit(op.multiply(z, relax.const(0.5, "float32")))
            erf = bb.emit(op.erf(op.divide(z, relax.const(1.4142135, "float32"))))
            g = bb.emit(op.multiply(half, op.add(erf, relax.const(1.0, "float32"))))
            out = bb.emit_output(op.permute_dims(op.reshape(g, [m, n]), [1, 0]))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("constant", [True, False])
def test_cancel_transposes_runs_the_chain_feature_major(constant):
    """The chain runs on ``reshape(yt, [N, M])``: with constant operands (bias as (N, 1)) no
    transpose is left, with another tensor operand that operand's (one transpose for two).
    Same numbers either way."""
    mod = _ffn_gap_module(constant)
    after = CancelTransposes(mod)
    assert mod.script().count("permute_dims") == 2
    assert after.script().count("permute_dims") == (0 if constant else 1)
    rng = np.random.default_rng(3)
    args = [rng.standard_normal((1, 8, 6)).astype("float32"), rng.standard_normal((1, 6, 8))]
    args = [tvm.runtime.tensor(a.astype("float32")) for a in args]
    results = []
    for module in (mod, after):
        ex = tvm.compile(module, target="llvm")
        results.append(relax.VirtualMachine(ex, tvm.cpu())["main"](*args).numpy())
    np.testing.assert_array_equal(results[0], results[1])


def test_cancel_transposes_between_the_demo_mlps_csr_layers():
    """fc1 -> ReLU -> fc2 of the demo MLP (16 rows, both on the CSR kernel): the transpose
    after fc1 and the one before fc2 cancel; the pipeline's build still matches onnxruntime."""
    from tvm_sparse_rnn.compile import build_onnx_with_decisions, load_executable
    from tvm_sparse_rnn.demo import build_demo_model, random_inputs
    from tvm_sparse_rnn.frontend.onnx import from_onnx
    from tvm_sparse_rnn.pipeline import sparse_pipeline
    from tvm_sparse_rnn.testing import run_onnxruntime

    model = build_demo_model(seq_len=4, batch=4, hidden=512, mlp=1024, classes=16, recurrent=False)
    pipeline = sparse_pipeline("llvm")
    with pipeline.target:
        front = pipeline.front()(from_onnx(model))
    assert front.script().count("permute_dims") == 4
    assert CancelTransposes(front).script().count("permute_dims") == 2
    executable, inputs, outputs, _ = build_onnx_with_decisions(model, target="llvm")
    feeds = random_inputs(inputs)
    got = load_executable(executable, inputs, outputs, "llvm").run(feeds)
    for spec, ref in zip(outputs, run_onnxruntime(model, feeds), strict=True):
        np.testing.assert_allclose(got[spec.name], ref, rtol=1e-4, atol=1e-4)


def test_residual_adds_run_inside_the_layer_norms():
    """An encoder layer's residual adds (after the output projection and after the FFN) are
    read by the layer norms that follow (VectorLayerNorm, as onnxruntime's
    SkipLayerNormalization): no kernel of its own adds them; the only adds left are the
    GEMMs' bias epilogues."""
    pytest.importorskip("torch")
    model = build_bert_encoder(layers=1, d_model=64, heads=4, ffn=128, seq_len=16)
    mod = sparse_pipeline("llvm")(from_onnx(model))
    names = [gv.name_hint for gv in mod.get_global_vars()]
    assert all("matmul" in n for n in names if "add" in n), names
    calls = [line for line in mod["main"].script().splitlines() if "layer_norm_vector(" in line]
    # x, residual, gamma, beta, output
    assert [line.count(",") + 1 for line in calls] == [5, 5], calls


@pytest.mark.parametrize(
    ("columns", "lanes", "strip"), [(128, 8, 32), (128, 16, 32), (48, 8, 8), (64, 64, 64)]
)
def test_column_kernels_span_two_cache_lines_where_they_divide(columns, lanes, strip):
    assert column_strip(columns, lanes) == strip
