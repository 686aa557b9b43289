"""x86 ``sparse_dense``: numerics against scipy, schedule knobs, public entry points."""

from __future__ import annotations

import dataclasses
import itertools
import re

import numpy as np
import pytest
import tvm
from tvm import relax, s_tir, tirx

from tvm_sparse_rnn.errors import UnsupportedError
from tvm_sparse_rnn.kernels.x86.sparse_dense import (
    KNOB_CHOICES,
    LANES,
    X86Config,
    schedule_sparse_dense_x86,
)
from tvm_sparse_rnn.ops.sparse_dense import sparse_dense_prim_func
from tvm_sparse_rnn.runtime.sparse_dense import build_sparse_dense, sparse_dense_func
from tvm_sparse_rnn.target import cpu_isa_family, resolve_target
from tvm_sparse_rnn.testing import TOLERANCES, random_bsr, reference_sparse_dense
from tvm_sparse_rnn.transform.dispatch import emit_sparse_dense

BLOCKS = [(1, 1), (1, 4), (1, 16), (4, 4), (8, 1), (16, 16), (32, 1)]
DENSITIES = [0.0, 0.01, 0.1, 0.5]
BATCHES = [1, 3, 16, 64]
N, K = 64, 128


def _run(ex: tvm.runtime.Executable, x: np.ndarray, weight, n: int) -> np.ndarray:
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(a, dev) for a in (x, *weight.kernel_arrays())]
    out = tvm.runtime.tensor(np.full((x.shape[0], n), np.nan, weight.dtype), dev)
    ex(*args, out)
    return out.numpy()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: f"{b[0]}x{b[1]}")
def test_matches_scipy_for_every_batch(block, density, dtype):
    """One kernel with a symbolic batch, checked for M in {1, 3, 16, 64}; NaN-filled outputs
    catch rows that are never written (empty rows, all-zero weights)."""
    weight = random_bsr(N, K, block, density, dtype=dtype, seed=7)
    func = sparse_dense_func(weight, tirx.Var("m", "int32"), "llvm")
    ex = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), "llvm")
    rtol, atol = TOLERANCES[dtype]
    rng = np.random.default_rng(1)
    for m in BATCHES:
        x = rng.uniform(-1, 1, (m, K)).astype(dtype)
        got = _run(ex, x, weight, N)
        np.testing.assert_allclose(got, reference_sparse_dense(x, weight), rtol=rtol, atol=atol)


@pytest.mark.parametrize("block", [(2, 2), (3, 5), (8, 4), (32, 8), (1, 128)], ids=str)
def test_other_block_sizes(block):
    """Non-square, odd and wide blocks (incl. the replicated-X and split-vector paths)."""
    n, k = 96 if block[0] == 3 else 128, 130 if block[1] == 5 else 256
    weight = random_bsr(n, k, block, 0.3, seed=1)
    x = np.random.default_rng(0).uniform(-1, 1, (5, k)).astype("float32")
    got = build_sparse_dense(weight, 5)(x)
    np.testing.assert_allclose(got, reference_sparse_dense(x, weight), rtol=1e-4, atol=1e-4)


def test_empty_rows_are_zero():
    dense = np.zeros((N, K), "float32")
    dense[5, 7] = 2.0
    dense[40:44, 0:4] = 1.0
    weight = random_bsr(N, K, (4, 4), 0.0)
    weight = type(weight).from_dense(dense, (4, 4))
    kernel = build_sparse_dense(weight, 2)
    x = np.ones((2, K), "float32")
    np.testing.assert_array_equal(kernel(x), x @ dense.T)


@pytest.mark.parametrize("block", [(1, 16), (16, 16), (8, 1)], ids=lambda b: f"{b[0]}x{b[1]}")
def test_accumulators_are_not_allocated_per_row(block):
    """Partial sums and the pairwise-sum stages live in stack arrays (registers), also with a
    dynamic batch and float16: no ``TVMBackendAllocWorkspace`` call per block row."""
    weight = random_bsr(N, K, block, 0.3, dtype="float16", seed=4)
    func = sparse_dense_func(weight, tirx.Var("m", "int32"), "llvm")
    ex = tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), "llvm")
    assert not re.search(r"load ptr, ptr @__TVMBackendAllocWorkspace", ex.mod.inspect_source("ll"))


@pytest.mark.parametrize("block", [(1, 1), (4, 4), (16, 16)], ids=lambda b: f"{b[0]}x{b[1]}")
def test_every_knob_value_is_valid(block):
    """Every candidate of every knob (others at their default) schedules, builds and is exact."""
    weight = random_bsr(N, K, block, 0.2, seed=3)
    x = np.random.default_rng(2).uniform(-1, 1, (5, K)).astype("float32")
    ref = reference_sparse_dense(x, weight)
    for knob, values in KNOB_CHOICES.items():
        for value in values:
            config = dataclasses.replace(X86Config(), **{knob: value})
            np.testing.assert_allclose(
                build_sparse_dense(weight, 5, "llvm", config)(x), ref, rtol=1e-4, atol=1e-4
            )


def test_defaults_are_among_choices_and_knobs_accept_sampled_variables():
    """The tuner replaces each knob by a ``sample_categorical`` variable (issue 6)."""
    for field in dataclasses.fields(X86Config):
        assert getattr(X86Config(), field.name) in KNOB_CHOICES[field.name]
    for block, m in itertools.product([(1, 16), (8, 1)], [1, 7]):
        func = sparse_dense_prim_func(m, N, K, block, 10, lanes=LANES)
        sch = s_tir.Schedule(func)
        sampled = {
            name: sch.sample_categorical(list(vals), [1 / len(vals)] * len(vals))
            for name, vals in KNOB_CHOICES.items()
        }
        schedule_sparse_dense_x86(sch, X86Config(**sampled))
        assert "T.parallel" in sch.mod.script() and "T.vectorized" in sch.mod.script()


def test_relax_dynamic_batch_and_attrs():
    weight = random_bsr(N, K, (4, 4), 0.3, seed=5)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((tirx.Var("batch", "int64"), K), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(emit_sparse_dense(bb, x, weight, "llvm"))
        bb.emit_func_output(out)
    mod = bb.get()
    kernel = mod["sparse_dense_bsr"]
    assert kernel.attrs["tirx.is_scheduled"] and int(kernel.attrs["op_pattern"]) == 8
    assert "global_symbol" not in kernel.attrs
    vm = relax.VirtualMachine(tvm.compile(mod, "llvm"), tvm.cpu())
    for m in (1, 6):
        xv = np.random.default_rng(m).uniform(-1, 1, (m, K)).astype("float32")
        got = vm["main"](tvm.runtime.tensor(xv)).numpy()
        np.testing.assert_allclose(got, reference_sparse_dense(xv, weight), rtol=1e-4, atol=1e-4)


def test_relax_input_errors():
    weight = random_bsr(N, K, (1, 1), 0.1)
    bb = relax.BlockBuilder()
    bad_k = relax.Var("x", relax.TensorType((2, K + 1), "float32"))
    bad_dtype = relax.Var("y", relax.TensorType((2, K), "float16"))
    with bb.function("main", [bad_k, bad_dtype]):
        with pytest.raises(UnsupportedError, match=f"K = {K + 1}.*K = {K}"):
            emit_sparse_dense(bb, bad_k, weight, "llvm")
        with pytest.raises(UnsupportedError, match=r"dtype float16.*float32"):
            emit_sparse_dense(bb, bad_dtype, weight, "llvm")
        bb.emit_func_output(bad_k)


def test_kernel_validates_input_and_times():
    weight = random_bsr(N, K, (1, 4), 0.1)
    kernel = build_sparse_dense(weight, 4)
    with pytest.raises(UnsupportedError, match=r"shape \(4, 128\), got \(3, 128\)"):
        kernel(np.zeros((3, K), "float32"))
    with pytest.raises(UnsupportedError, match="dtype float32, got float64"):
        kernel(np.zeros((4, K)))
    times = kernel.time(np.zeros((4, K), "float32"), number=2, repeat=3)
    assert len(times) == 3 and all(t > 0 for t in times)
    assert kernel.source is None


_PANELS = ", X^T packed in tile panels"


@pytest.mark.parametrize(
    ("block", "m", "packing"),
    [
        ((1, 1), 1, {"avx512": "rows, 1-column tiles", "avx2": "rows, 1-column tiles"}),
        (
            (1, 1),
            37,
            {"avx512": "rows, 64-column tiles", "avx2": "rows, 32-column tiles" + _PANELS},
        ),
        (
            (1, 1),
            128,
            {
                "avx512": "K panels of 128, 128-column tiles",
                "avx2": "K panels of 128, 64-column tiles, X^T copied tile-major",
            },
        ),
        (
            (4, 4),
            32,
            {
                "avx512": "rows in groups of 4, 4-column blocks, 32-column tiles",
                "avx2": "rows in groups of 4, 4-column blocks, 16-column tiles" + _PANELS,
            },
        ),
        (
            (1, 16),
            16,
            {
                "avx512": "rows, 16-column blocks, 16-column tiles",
                "avx2": "rows, 16-column blocks, 16-column tiles",
            },
        ),
    ],
    ids=str,
)
def test_build_sparse_dense_runs_the_csr_kernel_where_the_dispatch_does(block, m, packing):
    """On llvm ``build_sparse_dense`` runs the linear dispatch's CSR kernel (unstructured
    weights, block-pruned ones from 16 rows) with the host ISA family's tiling: ``X @ W.T`` vs
    float64 as a C-contiguous ``(m, N)`` array, twice with different inputs, and timed."""
    from tvm_sparse_rnn.demo import pruned_weight
    from tvm_sparse_rnn.transform.dispatch.linear_csr_x86 import CsrSpmmConfig

    rng = np.random.default_rng(m)
    w = pruned_weight(rng, (256, 256), 0.9, block).astype("float32")
    kernel = build_sparse_dense(w, m)
    assert isinstance(kernel.config, CsrSpmmConfig)
    family = cpu_isa_family(resolve_target("llvm"))
    assert kernel._csr.detail() == packing[family or "avx2"]
    for _ in range(2):
        x = rng.standard_normal((m, 256)).astype("float32")
        y = kernel(x)
        assert y.shape == (m, 256) and y.flags["C_CONTIGUOUS"]
        want = x.astype(np.float64) @ w.T.astype(np.float64)
        np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    assert len(kernel.time(x, number=2, repeat=2)) == 2


def test_build_sparse_dense_keeps_the_block_kernel_for_few_rows_of_blocks():
    """A 4x4-pruned weight at 3 rows stays on the block-sparse kernel."""
    from tvm_sparse_rnn.demo import pruned_weight

    w = pruned_weight(np.random.default_rng(3), (256, 256), 0.9, (4, 4)).astype("float32")
    kernel = build_sparse_dense(w, 3)
    assert isinstance(kernel.config, X86Config)
    x = np.random.default_rng(4).standard_normal((3, 256)).astype("float32")
    np.testing.assert_allclose(kernel(x), x @ w.T, rtol=1e-5, atol=1e-5)
