"""CUDA ``sparse_dense``: generated source for sm_90a (no GPU needed) and GPU numerics."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import tvm
from tvm import s_tir, tirx

from tvm_sparse_rnn.kernels.cuda.sparse_dense import (
    KNOB_CHOICES,
    LANES,
    CudaConfig,
    schedule_sparse_dense_cuda,
)
from tvm_sparse_rnn.ops.sparse_dense import sparse_dense_prim_func
from tvm_sparse_rnn.runtime.sparse_dense import build_sparse_dense, sparse_dense_func
from tvm_sparse_rnn.target import resolve_target
from tvm_sparse_rnn.testing import TOLERANCES, random_bsr, reference_sparse_dense

BLOCKS = [(1, 1), (1, 4), (1, 16), (4, 4), (8, 1), (16, 16), (32, 1)]
N, K = 256, 512


def _cuda_source(func: tirx.PrimFunc) -> str:
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    ex = tvm.compile(mod, target=resolve_target("cuda"))
    (cuda,) = [m for m in ex.mod.imports if m.kind == "cuda"]
    return cuda.inspect_source()


def _kernel_body(src: str, name: str = "main_kernel") -> str:
    start = src.index("void __launch_bounds__")
    start = src.index(name, start)
    start = src.index("{", src.index(")", start))
    return src[start:]


@pytest.mark.parametrize("m", [1, 4, 16])
def test_source_small_batch_register_accumulators_and_warp_reduction(m):
    weight = random_bsr(N, K, (1, 16), 0.1)
    src = _cuda_source(sparse_dense_func(weight, m, "cuda"))
    config = CudaConfig()
    threads = config.rows_per_cta * config.threads_x
    assert f"__launch_bounds__({threads})" in src
    body = _kernel_body(src)
    # Per-thread accumulators (m_tile x bs_c) live in a local (register) array, not shared.
    acc = re.search(r"float sparse_dense_partial_local_ptr\[(\d+)\]", body)
    assert acc and int(acc.group(1)) == 16
    assert "__shared__" not in body
    # Rows of W -> (blockIdx.x, threadIdx.y); lanes of a row -> threadIdx.x; shuffle all-reduce.
    assert f"((int)blockIdx.x) * {config.rows_per_cta}) + ((int)threadIdx.y)" in body
    assert body.count("__shfl_down_sync") == 5
    # 16-byte loads of W_data and X.
    assert "*(float4*)(W_data_ptr" in body and "*(float4*)(X_ptr" in body


def test_source_guards_the_store_of_a_partial_m_tile():
    """M = 1 with m_tile = 4: the stores of m = 1..3 must be predicated away (an unguarded store
    from the cross-thread reduction wrote out of bounds on the H100)."""
    weight = random_bsr(N, K, (1, 4), 0.1)
    config = CudaConfig(m_tile=4)
    for m, guard in ((1, "i_1 < 1"), (tirx.Var("m", "int32"), "< m)")):
        body = _kernel_body(_cuda_source(sparse_dense_func(weight, m, "cuda", config)))
        store = body.index("sparse_dense_ptr[")
        condition = body[body.rindex("if (", 0, store) : store]
        assert "((int)threadIdx.x) == 0" in condition and guard in condition


def test_source_float16_accumulates_in_float32():
    weight = random_bsr(N, K, (4, 4), 0.1, dtype="float16")
    body = _kernel_body(_cuda_source(sparse_dense_func(weight, 4, "cuda")))
    assert "float sparse_dense_partial_local_ptr[" in body
    assert "half" in body and "float4" in body


@pytest.mark.parametrize("block", [*BLOCKS, (3, 5), (32, 32)], ids=lambda b: f"{b[0]}x{b[1]}")
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_default_config_builds_for_every_block(block, dtype):
    n, k = (N, K) if block != (3, 5) else (96, 130)
    weight = random_bsr(n, k, block, 0.1, dtype=dtype)
    assert "main_kernel" in _cuda_source(sparse_dense_func(weight, tirx.Var("m", "int32"), "cuda"))


def test_knobs_accept_sampled_variables_and_defaults_are_choices():
    for name, values in KNOB_CHOICES.items():
        assert getattr(CudaConfig(), name) in values
    assert "stage_x" not in KNOB_CHOICES  # a loop-nest change, not a sampled knob
    sch = s_tir.Schedule(sparse_dense_prim_func(4, N, K, (4, 4), 10, lanes=LANES))
    sampled = {
        name: sch.sample_categorical(list(vals), [1 / len(vals)] * len(vals))
        for name, vals in KNOB_CHOICES.items()
    }
    schedule_sparse_dense_cuda(sch, CudaConfig(**sampled))
    assert 'thread="threadIdx.x"' in sch.mod.script()


STAGED = CudaConfig(rows_per_cta=8, threads_x=32, m_tile=4, stage_x=1)


def test_source_stage_x_gathers_from_shared_memory():
    """``stage_x``: the CTA's 4 x 512 tile of ``X`` copied in 16-byte vectors, then a barrier,
    and every gather reads the shared copy."""
    weight = random_bsr(N, K, (1, 1), 0.1, dtype="float16")
    body = _kernel_body(_cuda_source(sparse_dense_func(weight, 4, "cuda", STAGED)))
    assert re.search(r"__shared__ alignas\(\d+\) half X_shared_ptr\[2048\];", body)
    assert "*(uint4*)(X_shared_ptr" in body and "= *(uint4*)(X_ptr" in body
    assert body.index("__syncthreads()") < body.index("W_indices_ptr[")
    assert "X_ptr[" not in body.replace("*(uint4*)(X_ptr", "")


@pytest.mark.parametrize(
    ("m", "k", "why"),
    [(tirx.Var("m", "int32"), K, "symbolic M"), (4, 8192, "tile over 48 KB")],
    ids=["symbolic-m", "too-large"],
)
def test_source_stage_x_reads_through_l1_where_it_cannot_stage(m, k, why):
    weight = random_bsr(N, k, (1, 1), 0.1, dtype="float16")
    body = _kernel_body(_cuda_source(sparse_dense_func(weight, m, "cuda", STAGED)))
    assert "__shared__" not in body, why


def test_source_stage_x_copies_unaligned_rows_by_element():
    """``K = 130`` float16 rows are not 16-byte aligned: the copy is scalar and guarded."""
    weight = random_bsr(96, 130, (3, 5), 0.3, dtype="float16")
    body = _kernel_body(_cuda_source(sparse_dense_func(weight, 3, "cuda", STAGED)))
    assert "X_shared_ptr[" in body and "uint4" not in body
    copy = body[: body.index("__syncthreads()")]
    assert "if (" in copy


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("block", [(1, 1), (4, 4), (1, 16), (3, 5)], ids=lambda b: f"{b[0]}x{b[1]}")
def test_gpu_stage_x_matches_scipy(block, dtype):
    """Staged ``X`` for static M in {1, 3, 4, 16, 64} and m tiles that do not divide them."""
    n, k = (N, K) if block != (3, 5) else (96, 130)
    weight = random_bsr(n, k, block, 0.1, dtype=dtype, seed=5)
    rtol, atol = TOLERANCES[dtype]
    rng = np.random.default_rng(6)
    for m in (1, 3, 4, 16, 64):
        x = rng.uniform(-1, 1, (m, k)).astype(dtype)
        for m_tile in (1, 4):
            config = dataclasses.replace(STAGED, m_tile=m_tile, threads_x=16)
            kernel = build_sparse_dense(weight, m, "cuda", config)
            np.testing.assert_allclose(
                kernel(x), reference_sparse_dense(x, weight), rtol=rtol, atol=atol
            )


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("density", [0.0, 0.01, 0.1, 0.5])
@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: f"{b[0]}x{b[1]}")
def test_gpu_matches_scipy(block, density, dtype):
    """One kernel with a symbolic batch per case, run for M in {1, 3, 16, 64}; NaN-filled
    outputs catch rows that are never written."""
    weight = random_bsr(N, K, block, density, dtype=dtype, seed=11)
    func = sparse_dense_func(weight, tirx.Var("m", "int32"), "cuda")
    ex = tvm.compile(
        tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), resolve_target("cuda")
    )
    dev = tvm.cuda(0)
    w_args = [tvm.runtime.tensor(a, dev) for a in weight.kernel_arrays()]
    rtol, atol = TOLERANCES[dtype]
    rng = np.random.default_rng(4)
    for m in (1, 3, 16, 64):
        x = rng.uniform(-1, 1, (m, K)).astype(dtype)
        out = tvm.runtime.tensor(np.full((m, N), np.nan, dtype), dev)
        ex(tvm.runtime.tensor(x, dev), *w_args, out)
        np.testing.assert_allclose(
            out.numpy(), reference_sparse_dense(x, weight), rtol=rtol, atol=atol
        )


@pytest.mark.gpu
def test_gpu_every_knob_value():
    weight = random_bsr(N, K, (4, 4), 0.2, seed=3)
    x = np.random.default_rng(2).uniform(-1, 1, (5, K)).astype("float32")
    ref = reference_sparse_dense(x, weight)
    for knob, values in KNOB_CHOICES.items():
        for value in values:
            config = dataclasses.replace(CudaConfig(), **{knob: value})
            kernel = build_sparse_dense(weight, 5, "cuda", config)
            np.testing.assert_allclose(kernel(x), ref, rtol=1e-4, atol=1e-4)
