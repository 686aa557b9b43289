"""The CSR-vector ``sparse_dense`` kernel (unstructured W, a few rows of X): packing, source
(no GPU), numerics vs float64 (gpu)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import scipy.sparse as sp
import tvm
from tvm import relax

from tvm_sparse_rnn.errors import UnsupportedError
from tvm_sparse_rnn.kernels.cuda.csr_vector.kernel import (
    CsrVectorConfig,
    make_csr_vector_kernel,
)
from tvm_sparse_rnn.kernels.cuda.csr_vector.packing import pack_csr_vector
from tvm_sparse_rnn.kernels.cuda.sparse_dense import CudaConfig
from tvm_sparse_rnn.kernels.cuda.tensor_core.kernel import TensorCoreConfig
from tvm_sparse_rnn.ops.epilogue import Activation, Epilogue
from tvm_sparse_rnn.pipeline import build
from tvm_sparse_rnn.runtime.persistent import cuda_source
from tvm_sparse_rnn.runtime.sparse_dense import build_sparse_dense, dispatched_config
from tvm_sparse_rnn.target import resolve_target, shared_memory_per_block
from tvm_sparse_rnn.testing import random_bsr
from tvm_sparse_rnn.transform import KernelVariant

TARGET = resolve_target({"kind": "cuda", "arch": "sm_90a"})
SHARED = shared_memory_per_block(TARGET)
NUM_SMS = 132
#: Result vs float64 reference, relative to the largest |reference|.
RTOL = {"float16": 2e-3, "float32": 1e-5}


def _weight(n: int, k: int, density: float, seed: int = 0) -> np.ndarray:
    """Unstructured ``(n, k)`` float32 weight with an empty row and a row of 9 nonzeros."""
    rng = np.random.default_rng(seed)
    w = np.where(rng.random((n, k)) < density, rng.uniform(-1, 1, (n, k)), 0).astype(np.float32)
    w[0] = 0
    if n > 1:
        w[1] = 0
        w[1, rng.choice(k, min(9, k), replace=False)] = 1.5
    return w


def _unpack(packed) -> np.ndarray:
    """The dense weight the packed arrays describe (padding entries add zeros)."""
    n, k = packed.layout.shape
    group = packed.layout.group
    columns = packed.columns.view(np.uint16).astype(np.int64)
    rows = np.repeat(np.arange(n), np.diff(packed.indptr) * group)
    w = np.zeros((n, k), np.float64)
    np.add.at(w, (rows, columns[: rows.size]), packed.values[: rows.size].astype(np.float64))
    return w


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize(("n", "k", "density"), [(100, 72, 0.3), (64, 4096, 0.1), (8, 16, 0.0)])
def test_packing_round_trips_in_16_byte_groups(dtype, n, k, density):
    w = _weight(n, k, density).astype(dtype)
    packed = pack_csr_vector(sp.csr_array(w.astype(np.float32)), dtype)
    group = 16 // np.dtype(dtype).itemsize
    assert packed.layout.group == group
    assert packed.values.size == packed.layout.groups * group
    assert packed.columns.dtype == np.uint32 and packed.columns.size * 2 == packed.values.size
    assert np.array_equal(_unpack(packed), w.astype(np.float64))
    assert packed.nonzeros == np.count_nonzero(w)
    counts = np.count_nonzero(w, axis=1)
    assert np.array_equal(np.diff(packed.indptr), -(-counts // group))


def test_padding_repeats_the_rows_last_column():
    w = np.zeros((2, 40), np.float32)
    w[0, [3, 17, 30]] = 1
    packed = pack_csr_vector(w, "float16")
    cols = packed.columns.view(np.uint16)
    assert list(cols[:8]) == [3, 17, 30, 30, 30, 30, 30, 30]
    assert np.count_nonzero(packed.values[3:8]) == 0


def test_packing_and_kernel_reject_what_they_cannot_take():
    with pytest.raises(UnsupportedError, match="16-bit columns address at most 65536"):
        pack_csr_vector(sp.csr_array((4, 70000), dtype=np.float32), "float16")
    with pytest.raises(UnsupportedError, match="dtype must be one of"):
        pack_csr_vector(np.zeros((4, 8), np.float32), "int8")
    layout = pack_csr_vector(_weight(64, 4096, 0.1), "float16").layout
    with pytest.raises(UnsupportedError, match=r"rows of X must be 1\.\.16, got 17"):
        make_csr_vector_kernel(layout, 17, CsrVectorConfig(), NUM_SMS, SHARED)
    with pytest.raises(UnsupportedError, match="bytes of shared memory"):
        make_csr_vector_kernel(layout, 8, CsrVectorConfig(), NUM_SMS, 32 * 1024)
    odd = pack_csr_vector(_weight(8, 12, 0.5), "float16").layout
    with pytest.raises(UnsupportedError, match="whole 16-byte loads"):
        make_csr_vector_kernel(odd, 1, CsrVectorConfig(), NUM_SMS, SHARED)


def test_cuda_source_loads_16_byte_groups_and_reduces_by_shuffles():
    """sm_90a source, no GPU: X staged once, 16-byte value and column loads, the butterfly, the
    epilogue in the store."""
    layout = pack_csr_vector(_weight(256, 4096, 0.1), "float16").layout
    epilogue = Epilogue(bias=True, activation=Activation.RELU)
    func = make_csr_vector_kernel(layout, 4, CsrVectorConfig(), NUM_SMS, SHARED, epilogue)
    assert [p.name for p in func.params] == ["x", "values", "columns", "indptr", "bias", "y"]
    source = tvm.compile(tvm.IRModule({"main": func}), target=TARGET).mod.imports[0]
    source = source.inspect_source()
    assert "*(uint4*)(wv_ptr + 0) = *(uint4*)(values_ptr" in source
    assert "*(uint4*)(wc_ptr + 0) = *(uint4*)(columns_ptr" in source
    assert "*(uint4*)(xs_ptr" in source and source.count("__syncthreads()") == 1
    # a nonzero's 4 values of X: one 8-byte load of the column-major staged X
    assert "*(half4*)(xv_ptr + 0) = *(half4*)(xs_ptr + (col_ptr[0] * 4));" in source
    assert source.count("__shfl_xor_sync") == 4 * 5
    assert "max((acc_ptr[0] + ((float)bias_ptr[" in source


def test_kernel_without_bias_takes_no_bias_argument():
    layout = pack_csr_vector(_weight(32, 64, 0.2), "float32").layout
    func = make_csr_vector_kernel(layout, 2, CsrVectorConfig(warps=4), NUM_SMS, SHARED)
    assert [p.name for p in func.params] == ["x", "values", "columns", "indptr", "y"]


def _linear_relu_module(
    rows: int, k: int, dtype: str, layers: int = 2, block: tuple[int, int] = (1, 1)
) -> tvm.IRModule:
    """``main(x (rows, k))``: ``layers`` x ``relu(x @ W.T + b)``, W 90 % pruned in ``block``
    blocks (``(1, 1)``: unstructured)."""
    rng = np.random.default_rng(rows + k)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((rows, k), dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            h = x
            for _ in range(layers):
                seed = int(rng.integers(1 << 16))
                if block == (1, 1):
                    w = _weight(k, k, 0.1, seed=seed).astype(dtype)
                else:
                    w = random_bsr(k, k, block, 0.1, dtype=dtype, seed=seed).toarray().astype(dtype)
                h = bb.emit(relax.op.matmul(h, relax.const(np.ascontiguousarray(w.T))))
                h = bb.emit(relax.op.add(h, relax.const(rng.uniform(-1, 1, k).astype(dtype))))
                h = bb.emit(relax.op.nn.relu(h))
            out = bb.emit_output(h)
        bb.emit_func_output(out)
    return bb.get()


def test_cuda_dispatch_runs_few_rows_of_unstructured_layers_on_csr_vector():
    """sm_90a build, no GPU: 4 rows of float16 go to the CSR-vector kernel with the bias and
    ReLU in its store: the model has no other kernel."""
    executable, decisions = build(_linear_relu_module(4, 1024, "float16"), TARGET)
    assert [d.variant for d in decisions] == [KernelVariant.CSR_VECTOR] * 2
    assert all("epilogue bias + relu (in the kernel)" in d.detail for d in decisions)
    source = cuda_source(executable.mod)
    kernels = set(re.findall(r"__global__ void __launch_bounds__\(\d+\) (\w+)\(", source))
    assert kernels and all(name.startswith("sparse_dense_csr_vector") for name in kernels)


def test_float16_build_of_a_float32_model_casts_the_input_while_staging_it():
    """``--dtype float16`` on a float32 model: the first layer reads the float32 input (no cast
    kernel); its staging copy converts the float32 values."""
    executable, decisions = build(_linear_relu_module(4, 1024, "float32"), TARGET, dtype="float16")
    assert [d.variant for d in decisions] == [KernelVariant.CSR_VECTOR] * 2
    source = cuda_source(executable.mod)
    kernels = set(re.findall(r"__global__ void __launch_bounds__\(\d+\) (\w+)\(", source))
    assert kernels and all(name.startswith("sparse_dense_csr_vector") for name in kernels)
    assert "((half)x_ptr[" in source  # layer 1 converts while staging


@pytest.mark.parametrize(
    ("rows", "k", "dtype", "variant"),
    [
        (32, 1024, "float32", KernelVariant.SPARSE_DENSE),  # more rows than registers hold
        (16, 1024, "float16", KernelVariant.TENSOR_CORE),  # 16 rows of float16: tensor cores
        (4, 1020, "float16", KernelVariant.SPARSE_DENSE),  # rows of X not whole 16-byte loads
        (16, 1024, "float32", KernelVariant.CSR_VECTOR),
    ],
)
def test_cuda_dispatch_keeps_other_kernels_where_csr_vector_does_not_apply(rows, k, dtype, variant):
    _, decisions = build(_linear_relu_module(rows, k, dtype, layers=1), TARGET)
    assert [d.variant for d in decisions] == [variant]


@pytest.mark.parametrize(
    ("block", "rows", "k", "dtype", "kernel"),
    [
        ((1, 1), 4, 1024, "float16", CsrVectorConfig),
        ((1, 1), 16, 1024, "float32", CsrVectorConfig),
        ((1, 1), 16, 1024, "float16", TensorCoreConfig),
        ((1, 1), 16, 4096, "float32", CudaConfig),  # X does not fit shared memory
        ((4, 4), 4, 1024, "float16", CsrVectorConfig),  # one 8-byte load of X per nonzero
        ((16, 16), 8, 1024, "float16", CsrVectorConfig),
        ((4, 4), 1, 1024, "float16", CudaConfig),  # one row: the block kernel
        ((1, 16), 8, 1024, "float32", CudaConfig),  # 32 bytes of X per nonzero
    ],
)
def test_build_sparse_dense_defaults_to_the_dispatched_kernel(block, rows, k, dtype, kernel):
    """``build_sparse_dense`` without a config runs what the linear dispatch would, and the
    dispatch of a block-pruned layer agrees."""
    weight = random_bsr(256, k, block, 0.1, dtype=dtype)
    assert isinstance(dispatched_config(weight, rows, TARGET), kernel)
    variant = {
        CsrVectorConfig: KernelVariant.CSR_VECTOR,
        TensorCoreConfig: KernelVariant.TENSOR_CORE,
        CudaConfig: KernelVariant.SPARSE_DENSE,
    }[kernel]
    _, decisions = build(_linear_relu_module(rows, k, dtype, layers=1, block=block), TARGET)
    assert [d.variant for d in decisions] == [variant]


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("dtype", "m", "n", "k", "config"),
    [
        ("float16", 4, 4096, 4096, CsrVectorConfig()),
        ("float16", 1, 1000, 1032, CsrVectorConfig(warps=4, ctas_per_sm=1)),
        ("float16", 16, 777, 2048, CsrVectorConfig(warps=16, ctas_per_sm=4)),
        ("float32", 3, 1000, 1036, CsrVectorConfig()),
        ("float32", 8, 4096, 4096, CsrVectorConfig(warps=16)),
    ],
)
def test_gpu_csr_vector_matches_float64(dtype, m, n, k, config):
    w = _weight(n, k, 0.1, seed=m).astype(dtype)
    x = np.random.default_rng(m).uniform(-1, 1, (m, k)).astype(dtype)
    ref = x.astype(np.float64) @ w.astype(np.float64).T
    got = build_sparse_dense(w, m, "cuda", config)(x)
    assert np.abs(got.astype(np.float64) - ref).max() <= RTOL[dtype] * np.abs(ref).max()


@pytest.mark.gpu
def test_gpu_float16_build_of_a_float32_model_matches_float64():
    mod = _linear_relu_module(4, 1024, "float32")
    executable, _ = build(mod, TARGET, dtype="float16")
    x = np.random.default_rng(5).uniform(-1, 1, (4, 1024)).astype(np.float32)
    vm = relax.VirtualMachine(executable, tvm.cuda())
    got = vm["main"](tvm.runtime.tensor(x, tvm.cuda())).numpy().astype(np.float64)
    executable32, _ = build(mod, TARGET)
    ref = relax.VirtualMachine(executable32, tvm.cuda())["main"](tvm.runtime.tensor(x, tvm.cuda()))
    ref = ref.numpy().astype(np.float64)
    assert np.abs(got - ref).max() <= 2e-2 * np.abs(ref).max()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_gpu_csr_vector_epilogue_matches_numpy(dtype):
    m, n, k = 4, 512, 1024
    w = _weight(n, k, 0.1, seed=7).astype(dtype)
    x = np.random.default_rng(8).uniform(-1, 1, (m, k)).astype(dtype)
    bias = np.random.default_rng(9).uniform(-1, 1, n).astype(dtype)
    epilogue = Epilogue(bias=True, activation=Activation.RELU, out_dtype="float32")
    packed = pack_csr_vector(w, dtype)
    limits_sms = tvm.cuda(0).multi_processor_count
    func = make_csr_vector_kernel(packed.layout, m, CsrVectorConfig(), limits_sms, SHARED, epilogue)
    lib = tvm.compile(tvm.IRModule({"main": func}), target=TARGET)
    dev = tvm.cuda(0)
    y = tvm.runtime.empty((m, n), "float32", dev)
    args = [tvm.runtime.tensor(a, dev) for a in (x, *packed.arrays(), bias)]
    lib["main"](*args, y)
    ref = epilogue.reference(x.astype(np.float64) @ w.astype(np.float64).T, bias, dtype)
    assert np.abs(y.numpy() - ref).max() <= RTOL[dtype] * np.abs(ref).max() + 1e-6
