"""FuseLinearEpilogue: bias add, ReLU / GELU and cast folded into linear layers; kernels applying
them."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import tvm
from tvm import relax, tirx

from tvm_sparse_rnn.demo import pruned_weight
from tvm_sparse_rnn.kernels.cuda.sparse_dense import CudaConfig
from tvm_sparse_rnn.kernels.sparse_dense import SparseDenseLayout, sparse_dense_func
from tvm_sparse_rnn.ops.epilogue import Activation, Epilogue
from tvm_sparse_rnn.ops.placeholders import LINEAR, LinearCall
from tvm_sparse_rnn.pipeline import build, sparse_pipeline
from tvm_sparse_rnn.target import resolve_target
from tvm_sparse_rnn.testing import TOLERANCES, random_bsr, reference_sparse_dense
from tvm_sparse_rnn.transform import (
    DenseToSparse,
    DispatchOptions,
    FuseLinearEpilogue,
    KernelVariant,
    ToFloat16,
)
from tvm_sparse_rnn.transform.dispatch.cost_model import CostParams

LLVM = resolve_target("llvm")
CUDA = resolve_target("cuda")
#: The llvm rule judged by the blocks alone (as in test_dense_to_sparse), CSR kernel included.
WORK_ONLY = CostParams(block_overhead=16.0, break_even=0.45, csr_factor=2.0)
N, K = 48, 64


def _torch_gelu(bb, h):
    """GELU as torch exports it to ONNX: ``h * (erf(h / sqrt 2) + 1) * 0.5``."""
    op, dtype = relax.op, h.ty.dtype
    erf = bb.emit(op.erf(bb.emit(op.divide(h, relax.const(np.sqrt(2), dtype)))))
    product = bb.emit(op.multiply(h, bb.emit(op.add(erf, relax.const(1.0, dtype)))))
    return bb.emit(op.multiply(product, relax.const(0.5, dtype)))


def _half_first_gelu(bb, h):
    """GELU grouped the other way: ``0.5 * (h * (1 + erf(h * (1 / sqrt 2))))``."""
    op, dtype = relax.op, h.ty.dtype
    erf = bb.emit(op.erf(bb.emit(op.multiply(relax.const(np.sqrt(0.5), dtype), h))))
    product = bb.emit(op.multiply(bb.emit(op.add(relax.const(1.0, dtype), erf)), h))
    return bb.emit(op.multiply(relax.const(0.5, dtype), product))


def _mlp(x_shape, layers, dtype="float32", relu=True, cast=None, bias_shape=None, act=None):
    """``main(x)``: per ``(W, b)`` layer ``relu(x @ W.T + b)`` (or ``act(bb, x @ W.T + b)``);
    optionally cast at the end."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(x_shape, dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            h = x
            for w, b in layers:
                h = bb.emit(relax.op.matmul(h, relax.const(np.ascontiguousarray(w.T))))
                bias = b if bias_shape is None else np.broadcast_to(b, bias_shape).copy()
                h = bb.emit(relax.op.add(relax.const(bias), h))
                if act is not None:
                    h = act(bb, h)
                elif relu:
                    h = bb.emit(relax.op.nn.relu(h))
            if cast is not None:
                h = bb.emit(relax.op.astype(h, cast))
            out = bb.emit_output(h)
        bb.emit_func_output(out)
    return bb.get()


def _layers(rng, count=2, pruning=(4, 4), dtype="float32", sparsity=0.9):
    shapes = [(N, K)] + [(N, N)] * (count - 1)
    return [
        (
            pruned_weight(rng, shape, sparsity, pruning).astype(dtype),
            rng.uniform(-1, 1, shape[0]).astype(dtype),
        )
        for shape in shapes
    ]


def _reference(x, layers, activation=Activation.RELU):
    h = x.astype("float64")
    for w, b in layers:
        h = activation.reference(h @ w.astype("float64").T + b)
    return h


def _placeholders(mod):
    """The linear placeholders of ``main`` (matched back to :class:`LinearCall`)."""
    found = []

    def visit(expr):
        call = LinearCall.match(expr)
        if call is not None:
            found.append(call)

    relax.analysis.post_order_visit(mod["main"], visit)
    return found


def _ops(mod):
    names = []

    def visit(expr):
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
            names.append(expr.op.name)

    relax.analysis.post_order_visit(mod["main"], visit)
    return names


def _fused(mod):
    return FuseLinearEpilogue()(DenseToSparse()(mod))


# ----------------------------------------------------------------------------- the pass
def test_bias_relu_and_cast_fold_into_each_layer():
    layers = _layers(np.random.default_rng(0))
    mod = _fused(_mlp((4, K), layers, cast="float16"))
    calls = _placeholders(mod)
    assert [c.epilogue for c in calls] == [
        Epilogue(bias=True, activation=Activation.RELU),
        Epilogue(bias=True, activation=Activation.RELU, out_dtype="float16"),
    ]
    for call, (_, b) in zip(calls, layers, strict=True):
        np.testing.assert_array_equal(call.bias, b)
    assert not {"relax.add", "relax.nn.relu", "relax.astype"} & set(_ops(mod))
    assert mod["main"].ret_ty.dtype == "float16"


def test_a_bias_of_shape_1_n_folds():
    layers = _layers(np.random.default_rng(1), count=1)
    (call,) = _placeholders(_fused(_mlp((4, K), layers, bias_shape=(1, N))))
    assert call.epilogue.bias and call.bias.shape == (N,)


def test_a_bias_that_broadcasts_the_output_is_not_folded():
    """``(1, K) @ W.T + b[4, N]`` is a ``(4, N)`` result: not a per-column bias."""
    layers = _layers(np.random.default_rng(2), count=1)
    mod = _fused(_mlp((1, K), layers, bias_shape=(4, N)))
    (call,) = _placeholders(mod)
    assert call.epilogue == Epilogue()
    assert "relax.add" in _ops(mod) and "relax.nn.relu" in _ops(mod)


def _one_layer(seed, after):
    """``main(x)`` returning ``after(bb, x @ W.T, b)`` for one pruned layer ``(W, b)``."""
    w, b = _layers(np.random.default_rng(seed), count=1)[0]
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4, K), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.matmul(x, relax.const(np.ascontiguousarray(w.T))))
            out = bb.emit_output(after(bb, y, relax.const(b)))
        bb.emit_func_output(out)
    return bb.get()


def test_an_output_used_twice_is_not_folded():
    def after(bb, y, b):
        return relax.Tuple([bb.emit(relax.op.nn.relu(bb.emit(relax.op.add(y, b)))), y])

    (call,) = _placeholders(_fused(_one_layer(3, after)))
    assert call.epilogue == Epilogue()


def test_a_bias_after_the_activation_stays_an_add():
    def after(bb, y, b):
        return bb.emit(relax.op.add(bb.emit(relax.op.nn.relu(y)), b))

    mod = _fused(_one_layer(4, after))
    (call,) = _placeholders(mod)
    assert call.epilogue == Epilogue(activation=Activation.RELU)
    assert "relax.add" in _ops(mod)


@pytest.mark.parametrize("gelu", [_torch_gelu, _half_first_gelu], ids=["torch", "half-first"])
def test_erf_gelu_folds_into_each_layer(gelu):
    layers = _layers(np.random.default_rng(13))
    mod = _fused(_mlp((4, K), layers, act=gelu))
    calls = _placeholders(mod)
    assert [c.epilogue for c in calls] == [Epilogue(bias=True, activation=Activation.GELU)] * 2
    assert not {"relax.erf", "relax.multiply", "relax.divide"} & set(_ops(mod))


def test_erf_gelu_folds_after_the_float16_cast():
    """``ToFloat16`` turns the GELU's scalars into casts of float32 constants: still a GELU."""
    layers = _layers(np.random.default_rng(13))
    mod = FuseLinearEpilogue()(DenseToSparse()(ToFloat16()(_mlp((4, K), layers, act=_torch_gelu))))
    calls = _placeholders(mod)
    assert [c.epilogue.activation for c in calls] == [Activation.GELU] * 2
    assert "relax.erf" not in _ops(mod)


def test_a_gelu_whose_input_is_used_elsewhere_is_not_folded():
    """``y * (1 + erf(y / sqrt 2)) * 0.5 + y``: ``y`` has a third use, the GELU stays."""
    w, b = _layers(np.random.default_rng(14), count=1)[0]

    def gelu_plus_input(bb, h):
        return bb.emit(relax.op.add(_torch_gelu(bb, h), h))

    mod = _fused(_mlp((4, K), [(w, b)], act=gelu_plus_input))
    (call,) = _placeholders(mod)
    assert call.epilogue == Epilogue(bias=True)
    assert "relax.erf" in _ops(mod)


def test_a_product_that_is_not_a_gelu_is_not_folded():
    """``y * (1 + erf(y / sqrt 2)) * 0.25``: not GELU's factor one half."""
    w, b = _layers(np.random.default_rng(15), count=1)[0]

    def quarter_gelu(bb, h):
        op = relax.op
        erf = bb.emit(op.erf(bb.emit(op.divide(h, relax.const(np.sqrt(2), "float32")))))
        product = bb.emit(op.multiply(h, bb.emit(op.add(erf, relax.const(1.0, "float32")))))
        return bb.emit(op.multiply(product, relax.const(0.25, "float32")))

    (call,) = _placeholders(_fused(_mlp((4, K), [(w, b)], act=quarter_gelu)))
    assert call.epilogue == Epilogue(bias=True)


def test_placeholder_round_trips_its_epilogue():
    w, b = _layers(np.random.default_rng(5), count=1)[0]
    x = relax.Var("x", relax.TensorType((4, K), "float32"))
    epilogue = Epilogue(bias=True, activation=Activation.RELU, out_dtype="float16")
    call = LinearCall("fc", x, w, epilogue, b)
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        out = call.emit(bb)
        bb.emit_func_output(out)
    (matched,) = _placeholders(bb.get())
    assert matched.epilogue == epilogue and matched.name == "fc"
    np.testing.assert_array_equal(matched.bias, b)
    with pytest.raises(ValueError, match="bias"):
        LinearCall("fc", x, w, Epilogue(bias=True))
    assert json.loads(bb.get()["main"].body.blocks[0].bindings[0].value.args[-1].value) == {
        "name": "fc",
        "activation": "relu",
        "out_dtype": "float16",
    }
    assert LINEAR in bb.get().script()


# ----------------------------------------------------------------------------- numerics (llvm)
@pytest.mark.parametrize(
    ("pruning", "sparsity", "block", "variant"),
    [
        ((4, 4), 0.9, (4, 4), KernelVariant.SPARSE_DENSE),
        ((1, 1), 0.9, "auto", KernelVariant.CSR_SPMM),
        ((4, 4), 0.9, "auto", KernelVariant.CSR_SPMM),
        ((1, 1), 0.2, "auto", KernelVariant.DENSE),
    ],
    ids=["bsr", "csr", "csr-row-groups", "dense"],
)
def test_every_variant_applies_the_epilogue(pruning, sparsity, block, variant):
    """The block-sparse kernel applies the epilogue in its store, the CSR kernel (rows alone or
    in groups of 4) the bias, the dense matmul none: the results match float64 numpy alike."""
    rng = np.random.default_rng(6)
    layers = _layers(rng, pruning=pruning, sparsity=sparsity)
    mod = _mlp((8, K), layers)
    options = DispatchOptions(block_size=block, cost_params=WORK_ONLY)
    executable, decisions = build(mod, LLVM, options)
    assert [d.variant for d in decisions] == [variant] * 2
    assert all("epilogue bias + relu" in d.detail for d in decisions)
    x = rng.uniform(-1, 1, (8, K)).astype("float32")
    vm = relax.VirtualMachine(executable, tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(got, _reference(x, layers), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("pruning", "rows", "block", "detail"),
    [
        ((4, 4), 8, (4, 4), "block 4x4"),
        ((1, 1), 8, "auto", "CSR, rows, 8-column tiles, epilogue"),
        ((4, 4), 8, "auto", "CSR, rows in groups of 4"),
        ((1, 1), 128, "auto", "CSR, K panels"),
    ],
    ids=["bsr", "csr", "csr-row-groups", "csr-k-panels"],
)
def test_every_sparse_kernel_applies_a_gelu_in_its_store(pruning, rows, block, detail):
    """A GELU after each layer runs in the kernel (no erf op left in the model) and matches
    float64 with scipy's erf (``topi.fast_erf``'s approximation: a few 1e-7)."""
    rng = np.random.default_rng(16)
    layers = _layers(rng, pruning=pruning)
    options = DispatchOptions(block_size=block, cost_params=WORK_ONLY)
    mod = _mlp((rows, K), layers, act=_torch_gelu)
    with LLVM:
        lowered = sparse_pipeline(LLVM, options).front()(mod)
    assert "relax.erf" not in _ops(lowered)
    executable, decisions = build(mod, LLVM, options)
    assert detail in decisions[0].detail
    assert all("epilogue bias + gelu (in the kernel)" in d.detail for d in decisions)
    x = rng.uniform(-1, 1, (rows, K)).astype("float32")
    vm = relax.VirtualMachine(executable, tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    ref = _reference(x, layers, Activation.GELU)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_a_symbolic_batch_gets_the_epilogue_too():
    rng = np.random.default_rng(7)
    layers = _layers(rng)
    options = DispatchOptions(block_size=(4, 4), cost_params=WORK_ONLY)
    executable, decisions = build(_mlp((tirx.Var("m", "int64"), K), layers), LLVM, options)
    assert all(d.variant is KernelVariant.SPARSE_DENSE for d in decisions)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    for m in (1, 5):
        x = rng.uniform(-1, 1, (m, K)).astype("float32")
        got = vm["main"](tvm.runtime.tensor(x)).numpy()
        np.testing.assert_allclose(got, _reference(x, layers), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize(
    "epilogue",
    [
        Epilogue(bias=True),
        Epilogue(activation=Activation.RELU),
        Epilogue(bias=True, activation=Activation.RELU, out_dtype="float32"),
        Epilogue(bias=True, activation=Activation.GELU),
    ],
    ids=["bias", "relu", "bias-relu-f32", "bias-gelu"],
)
def test_kernel_epilogue_matches_numpy_on_x86(epilogue, dtype):
    weight = random_bsr(N, K, (4, 4), 0.2, dtype=dtype, seed=8)
    rng = np.random.default_rng(9)
    bias = rng.uniform(-1, 1, N).astype(dtype)
    func = sparse_dense_func(
        SparseDenseLayout.of(weight), tirx.Var("m", "int64"), LLVM, None, epilogue
    )
    ex = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), "llvm")
    x = rng.uniform(-1, 1, (3, K)).astype(dtype)
    out_dtype = epilogue.output_dtype(dtype)
    out = tvm.runtime.tensor(np.full((3, N), np.nan, out_dtype))
    args = [x, *weight.kernel_arrays(), *([bias] if epilogue.bias else [])]
    ex(*[tvm.runtime.tensor(a) for a in args], out)
    ref = epilogue.reference(reference_sparse_dense(x, weight).astype("float64"), bias, dtype)
    rtol, atol = TOLERANCES[dtype]
    assert out.numpy().dtype == np.dtype(out_dtype)
    np.testing.assert_allclose(out.numpy(), ref, rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------- cuda
def test_float16_cuda_build_has_no_elementwise_kernel_after_the_layers():
    """On cuda in float16 the three layers' bias, ReLU and the final cast run in the block
    kernels' stores (2 rows: from 4 on, 4x4 blocks go to the CSR-vector kernel): the only other
    kernel left is the input cast."""
    layers = _layers(np.random.default_rng(10), count=3)
    pipeline = sparse_pipeline(CUDA, DispatchOptions(block_size=(4, 4)), dtype="float16")
    with CUDA:
        mod = pipeline(_mlp((2, K), layers))
    kernels = [gv.name_hint for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)]
    assert sum(name.startswith("sparse_dense_bsr") for name in kernels) == 3
    assert not any("relu" in name or "add" in name for name in kernels), kernels
    (cast,) = [name for name in kernels if not name.startswith("sparse_dense_bsr")]
    assert "cast" in cast


def _block_kernel_cuda_source(activation, seed):
    """CUDA source of the float16 block kernel (4x4, 10 %, 4 rows) with a bias and
    ``activation`` in its epilogue."""
    weight = random_bsr(256, 512, (4, 4), 0.1, dtype="float16", seed=seed)
    epilogue = Epilogue(bias=True, activation=activation)
    func = sparse_dense_func(SparseDenseLayout.of(weight), 4, CUDA, CudaConfig(), epilogue)
    ex = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), CUDA)
    (cuda,) = [m for m in ex.mod.imports if m.kind == "cuda"]
    return cuda.inspect_source()


def test_cuda_kernel_source_applies_a_gelu_without_libm_erf():
    """The block kernel's GELU is ``fast_erf``'s rational function: no ``erff`` call."""
    source = _block_kernel_cuda_source(Activation.GELU, seed=17)
    assert not re.search(r"\berff?\(", source)
    assert "-2.726142e-10" in source and "-1.456607e-05" in source


def test_cuda_kernel_source_applies_bias_and_relu_before_the_store():
    source = _block_kernel_cuda_source(Activation.RELU, seed=12)
    store = r"sparse_dense_output\w*\[.*\] = \(\(half\)max\(\(red_buf0\w*\[0\] \+ \(\(float\)bias"
    assert re.search(store, source), source[-1500:]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize(
    ("pruning", "rows", "kernel"),
    [
        ((4, 4), 2, KernelVariant.SPARSE_DENSE),
        ((4, 4), 4, KernelVariant.CSR_VECTOR),  # block weights from 4 rows (cost model)
        ((1, 1), 4, KernelVariant.CSR_VECTOR),
    ],
    ids=["4x4-block-kernel", "4x4-csr-vector", "unstructured"],
)
@pytest.mark.parametrize("activation", [Activation.RELU, Activation.GELU], ids=["relu", "gelu"])
def test_cuda_epilogue_matches_numpy_on_the_gpu(pruning, rows, kernel, dtype, activation):
    rng = np.random.default_rng(11)
    layers = _layers(rng, count=3, pruning=pruning)
    act = _torch_gelu if activation is Activation.GELU else None
    executable, decisions = build(_mlp((rows, K), layers, act=act), CUDA, dtype=dtype)
    assert any(d.variant is kernel for d in decisions)
    assert all(activation.value in d.detail for d in decisions)
    x = rng.uniform(-1, 1, (rows, K)).astype("float32")
    vm = relax.VirtualMachine(executable, tvm.cuda())
    got = vm["main"](tvm.runtime.tensor(x, tvm.cuda())).numpy()
    ref = _reference(x, layers, activation)
    rtol = 1e-5 if dtype == "float32" else 2e-2
    assert np.abs(got - ref).max() / np.abs(ref).max() < rtol
