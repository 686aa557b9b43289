"""CPU tests of the persistent RNN CUDA kernels: they build for sm_90a and have the right code."""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import scipy.sparse as sp

from tvm_sparse_rnn.errors import UnsupportedError
from tvm_sparse_rnn.kernels.cuda.persistent import planner
from tvm_sparse_rnn.kernels.cuda.persistent.kernel import (
    SENTINEL_BITS,
    make_persistent_kernel,
    make_step_kernel,
)
from tvm_sparse_rnn.kernels.cuda.persistent.packing import pack, unit_major
from tvm_sparse_rnn.ops.cells import PersistentCell
from tvm_sparse_rnn.runtime.persistent import build_kernel, build_persistent_rnn, cuda_source
from tvm_sparse_rnn.target import device_limits

LIMITS = device_limits("cuda")  # the lent GPU's limits (the H200 tag when no GPU is present)
plan_persistent = functools.partial(planner.plan_persistent, device=LIMITS, replicas=1)
candidate_plans = functools.partial(planner.candidate_plans, device=LIMITS)

CUDA = {"kind": "cuda", "arch": "sm_90a"}


def plan_for(hidden: int, batch: int, density: float):
    rng = np.random.default_rng(0)
    longest = int(rng.binomial(hidden, density, size=hidden).max())
    return plan_persistent(hidden=hidden, max_row_nnz=longest, batch=batch)


@pytest.mark.parametrize(
    ("batch", "barrier"), [(4, "grid"), (8, "flag"), (16, "grid"), (2, "flag")]
)
def test_source_has_registers_vector_loads_and_barrier(batch: int, barrier: str) -> None:
    plan = plan_for(1152, batch, 0.10)
    src = cuda_source(build_kernel(plan, "tanh", barrier, True, CUDA))
    # Weights in fully unrolled thread-local arrays: every access has a constant index.
    nv = plan.pairs_per_thread
    assert re.search(rf"float wv_ptr\[{nv}\];", src)
    assert f"wv_ptr[{nv - 1}]" in src and not re.search(r"wv_ptr\[[a-z_(]", src)
    assert not re.search(r"wi_ptr\[[a-z_(]", src)
    if batch % 4 == 0:  # LDS.128: one float4 per 4 samples, column scaled in the kernel
        assert re.search(
            r"\*\(float4\*\)\(h_sh_ptr \+ \(+(\(t & 1\) \* \d+\) \+ \(?)?wi_ptr\[", src
        )
        assert "make_float4(h_sh" not in src  # no gather
    else:
        assert re.search(
            r"\*\(float2\*\)\(h_sh_ptr \+ \(+(\(t & 1\) \* \d+\) \+ \(?)?wi_ptr\[", src
        )
    assert "cp.async.cg.shared.global" in src and "cp.async.wait_all" in src
    if barrier == "grid":
        assert "cg::this_grid().sync()" in src
    else:
        assert "this_grid" not in src and "sprnn_ready16" in src and str(SENTINEL_BITS) in src
        assert "while (1)" in src and "1048576 <= spins_ptr[0]" in src  # bounded spin
    assert "tvm_builtin_cuda_warp_reduce_sum" in src and "tanhf" in src


def test_relu_fallback_and_prim_func() -> None:
    plan = plan_for(256, 1, 0.3)
    src = cuda_source(build_kernel(plan, "relu", "flag", True, CUDA))
    assert "max(" in src and "tanhf" not in src
    R = sp.random(300, 300, density=0.05, random_state=0, format="csr", dtype=np.float32)
    p = plan_persistent(R, 3)
    func = make_persistent_kernel(p, "tanh", "grid")
    packed = pack(R, p)
    assert p.batch_kernel == 4 and p.hidden_padded == 300
    assert packed.vals.shape == (p.rows_padded, p.nz_per_row)
    assert [str(v.name) for v in func.params] == [
        *("vals", "idx", "spairs", "U", "h0", "c0", "rbias", "out", "c_out", "status"),
    ]
    with pytest.raises(ValueError, match="spin"):
        make_persistent_kernel(p, "tanh", "spin")
    with pytest.raises(ValueError, match="sigmoid"):
        make_persistent_kernel(p, "sigmoid", "grid")
    with pytest.raises(ValueError, match="gates"):
        make_persistent_kernel(p, "lstm", "grid")  # a 1-gate plan


def test_two_direction_kernel_stacks_its_buffers_and_builds() -> None:
    """A plan of 2 directions: twice the grid, buffers stacked per direction, sm_90a source;
    the one-direction runtime refuses it with a clear error."""
    R = sp.random(3 * 256, 256, density=0.1, random_state=1, format="csr", dtype=np.float32)
    two = plan_persistent(unit_major(R, 3), 4, gates=3, directions=2)
    func = make_persistent_kernel(two, "gru", "flag")
    shapes = {str(p.name): [str(d) for d in p.shape] for p in func.params}
    hk, bk = two.hidden_padded, two.batch_kernel
    assert shapes["vals"][0] == str(2 * two.rows_padded)
    assert shapes["spairs"][0] == str(two.grid_ctas) and two.grid_ctas <= LIMITS.num_sms
    assert shapes["h0"] == shapes["c_out"] == [str(2 * hk), str(bk)]
    assert shapes["U"][2:] == [str(2 * 3 * hk)] and shapes["rbias"] == [str(2 * hk)]
    src = cuda_source(build_kernel(two, "gru", "flag", True, CUDA))
    assert "sprnn_ready16(" in src
    with pytest.raises(ValueError, match="2 directions per launch"):
        build_persistent_rnn(R, 4, "gru", plan=two, target="cuda")


def test_replicas_share_their_direction_weights_and_stack_their_states() -> None:
    """2 directions x 4 replicas: weights packed per direction, states and U per stream."""
    R = sp.random(3 * 256, 256, density=0.1, random_state=1, format="csr", dtype=np.float32)
    plan = plan_persistent(unit_major(R, 3), 16, gates=3, directions=2, replicas=4)
    func = make_persistent_kernel(plan, "gru", "flag")
    shapes = {str(p.name): [str(d) for d in p.shape] for p in func.params}
    hk, bk, streams = plan.hidden_padded, plan.batch_kernel, plan.streams
    assert streams == 8 and plan.grid_ctas == 8 * plan.num_ctas <= LIMITS.num_sms
    assert plan.launch_batch * plan.num_batch_chunks >= 16 and plan.launch_batch == 4 * bk
    assert shapes["vals"][0] == str(2 * plan.rows_padded)
    assert shapes["spairs"][0] == str(2 * plan.num_ctas)
    assert shapes["h0"] == shapes["c_out"] == [str(streams * hk), str(bk)]
    # U is the input GEMM's output: samples x both directions' unit-major rows, shared by the
    # replicas (replica r reads samples r * bk ..)
    assert shapes["U"][2:] == [str(2 * 3 * hk)] and shapes["rbias"] == [str(2 * hk)]
    assert "sprnn_ready16(" in cuda_source(build_kernel(plan, "gru", "flag", True, CUDA))


def test_reverse_direction_reads_u_backwards() -> None:
    """``reverse=(False, True)``: CTAs of the second direction read ``U`` at ``T - 1 - t``,
    the first at ``t``; an all-forward kernel indexes ``U`` by ``t`` alone."""
    R = sp.random(3 * 256, 256, density=0.1, random_state=1, format="csr", dtype=np.float32)
    two = plan_persistent(unit_major(R, 3), 4, gates=3, directions=2)

    def u_reads(reverse: tuple[bool, ...]) -> str:
        script = make_persistent_kernel(two, "gru", "flag", reverse=reverse).script()
        return " ".join(re.findall(r"U\[[^\n]*", script))

    both = u_reads((False, True))
    assert "steps - 1 - t" in both and f"bx // {two.num_ctas} == 1" in both
    assert "steps - 1 - t" not in u_reads(())
    assert "if_then_else" not in u_reads((True, True)) and "steps - 1 - t" in u_reads((True, True))
    with pytest.raises(ValueError, match="reverse has 1 entries for 2 directions"):
        make_persistent_kernel(two, "gru", "flag", reverse=(True,))


class _ScriptOps:
    """``T.min`` and ``T.if_then_else`` of TVMScript on Python ints."""

    min = staticmethod(min)

    @staticmethod
    def if_then_else(cond: bool, then: int, other: int) -> int:
        return then if cond else other


def _u_index(func, **values: int) -> tuple[int, ...]:
    """The kernel's ``U[...]`` read evaluated at ``values`` of its variables (``bx``, ``tx``,
    ``rr``, ``b``, ``t``, ``steps``, ``samples``): the kernel's own TVMScript index expressions,
    whose ``//``, ``%``, ``T.min`` and ``T.if_then_else`` on non-negative ints are Python's."""
    (read,) = set(re.findall(r"\bU\[(.*)\]", func.script()))
    return eval(f"({read},)", {"T": _ScriptOps}, values)


def test_u_read_is_the_runtime_layout_of_each_stream() -> None:
    """Every thread's ``u_t`` reads, evaluated from the kernel, pick the runtime's ``U`` (the
    input GEMM's layout, :meth:`PersistentPlan.u_shape`) at its unit, gate, sample and step:
    2 directions (the second reversed) x 2 replicas of a GRU, 3 real samples of 4."""
    R = sp.random(3 * 64, 64, density=0.2, random_state=2, format="csr", dtype=np.float32)
    plan = planner.plan_persistent(
        unit_major(R, 3), 8, gates=3, directions=2, replicas=2, device=LIMITS
    )
    func = make_persistent_kernel(plan, "gru", "flag", reverse=(False, True))
    steps, samples, hk, G = 5, 3, plan.hidden_padded, plan.gates
    u = np.arange(np.prod(plan.u_shape(steps, samples))).reshape(plan.u_shape(steps, samples))
    direction_ctas = plan.replicas * plan.num_ctas
    for bx in range(plan.grid_ctas):
        d, r = bx // direction_ctas, bx // plan.num_ctas % plan.replicas
        for tx in range(0, plan.threads, plan.lanes_per_row):
            group = bx % plan.num_ctas * plan.groups_per_cta + tx // plan.lanes_per_row
            for rr in range(plan.rows_per_group):
                row = group * plan.rows_per_group + rr  # unit-major: unit row // G, gate row % G
                for b in range(plan.batch_kernel):
                    got = _u_index(
                        func, bx=bx, tx=tx, rr=rr, b=b, t=1, steps=steps, samples=samples
                    )
                    step = steps - 2 if d else 1
                    sample = min(r * plan.batch_kernel + b, samples - 1)
                    column = d * G * hk + min(row, G * hk - 1)
                    assert u[got] == u[step, sample, column]


def _cluster_plan(batch: int = 16):
    plans = candidate_plans(1792, 215, batch, replicas=16)
    return next(p for p in plans if p.num_ctas <= planner.PORTABLE_CLUSTER_SIZE)


def test_cluster_barrier_source_and_launch(tmp_path) -> None:
    """One cluster per recurrence: release/acquire cluster barrier, cluster launch, no
    cooperative launch, and every arrive matched by a wait."""
    plan = _cluster_plan()
    mod = build_kernel(plan, "tanh", "cluster", True, CUDA)
    src = cuda_source(mod)
    assert "barrier.cluster.arrive.release.aligned" in src
    assert "barrier.cluster.wait.acquire.aligned" in src
    assert "this_grid" not in src and "sprnn_ready16" not in src
    # the wait before copying h_{t-1} and one after the last step; one arrive per step
    assert src.count("sprnn_cluster_wait();") == 2 and src.count("sprnn_cluster_arrive();") == 1
    path = tmp_path / "k.so"
    mod.export_library(str(path))
    data = path.read_bytes()
    assert b"clusterCtaIdx.x" in data and b"tirx.use_cooperative_launch" not in data


def test_cluster_barrier_rejects_recurrences_larger_than_a_cluster() -> None:
    plan = plan_for(1792, 4, 0.10)
    assert plan.num_ctas > planner.PORTABLE_CLUSTER_SIZE
    with pytest.raises(ValueError, match=r"\d+ CTAs per recurrence, at most 8"):
        make_persistent_kernel(plan, "tanh", "cluster")


@pytest.mark.parametrize(("cell", "dtype"), [("gru", "float32"), ("lstm", "float16")])
def test_gated_and_half_sources(cell: str, dtype: str) -> None:
    """Gate rows of a unit share a lane group; fp16 values are two per register."""
    gates = {"gru": 3, "lstm": 4}[cell]
    R = sp.random(gates * 512, 512, density=0.1, random_state=1, format="csr", dtype=np.float32)
    plan = plan_persistent(unit_major(R, gates), 4, dtype, gates=gates)
    vals = pack(unit_major(R, gates), plan).vals
    assert plan.gates == gates and plan.rows_per_group % gates == 0
    assert plan.rows_padded >= gates * plan.hidden_padded
    src = cuda_source(build_kernel(plan, cell, "grid", True, CUDA))
    assert "expf" in src and "tanhf" in src  # sigmoid and tanh of the gates
    if cell == "lstm":
        assert "c_out_ptr[" in src and "cst_ptr[" in src  # c_t stays in registers
    if dtype == "float16":
        assert vals.dtype == np.int32
        assert vals.shape == (plan.rows_padded, plan.nz_per_row // 2)
        assert re.search(rf"int wv_ptr\[{plan.pairs_per_thread // 2}\];", src)
        assert "sprnn_half_lo" in src and "sprnn_half_hi" in src
        assert "half h_sh_ptr" in src or "half* h_sh" in src


@pytest.mark.parametrize(
    ("barrier", "batch", "dtype"), [("flag", 4, "float32"), ("grid", 16, "float16")]
)
def test_two_phase_gru_exchanges_reset_state_then_h(barrier: str, batch: int, dtype: str) -> None:
    """GRU with linear_before_reset=0: per step r * h_{t-1} goes to out[2t] and is exchanged
    (a second wait / grid sync), then h_t to out[2t + 1]; z and h_{t-1} stay in registers."""
    R = sp.random(3 * 512, 512, density=0.1, random_state=2, format="csr", dtype=np.float32)
    plan = plan_persistent(unit_major(R, 3), batch, dtype, gates=3, two_phase=True, replicas=None)
    assert plan.two_phase and plan.phases == 2 and " two-phase " in plan.describe()
    func = make_persistent_kernel(plan, "gru_lbr0", barrier)
    out = next(p for p in func.params if p.name == "out")
    assert str(out.shape[0]) == "2 * steps"
    src = cuda_source(build_kernel(plan, "gru_lbr0", barrier, True, CUDA))
    body = src.split("main_kernel_1(")[-1]  # the definition
    step = body.split("for (int t = 0;")[1]
    if barrier == "flag":
        assert step.count("sprnn_ready16(") == 2  # the wait for h_{t-1} and for r * h_{t-1}
    else:
        assert step.count("tvm_builtin_cuda_grid_sync()") == 2
    assert re.search(r"float zs_ptr\[\d+\];", body) and re.search(r"float hps_ptr\[\d+\];", body)
    assert "rbias" not in step  # Rb_h is folded into U
    rows = plan.streams * plan.hidden_padded * plan.batch_kernel
    assert f"(t * {2 * rows})" in step  # out[2t] (r * h) and out[2t + 1] (h_t)
    stores = [line for line in step.splitlines() if re.search(r"out_ptr[^=]* = ", line)]
    assert len(stores) == 2 and f"+ {rows})" in stores[1].split(" = ")[0]


def test_two_phase_gru_needs_a_two_phase_plan_and_the_persistent_kernel() -> None:
    R = sp.random(3 * 256, 256, density=0.1, random_state=2, format="csr", dtype=np.float32)
    one = plan_persistent(unit_major(R, 3), 4, gates=3)
    with pytest.raises(ValueError, match="two_phase=True"):
        make_persistent_kernel(one, "gru_lbr0")
    two = plan_persistent(unit_major(R, 3), 4, gates=3, two_phase=True)
    with pytest.raises(ValueError, match="two_phase=False"):
        make_persistent_kernel(two, "gru")
    with pytest.raises(ValueError, match="two_phase is the GRU's"):
        plan_persistent(hidden=256, max_row_nnz=20, batch=4, gates=4, two_phase=True)
    tiny = dataclasses.replace(LIMITS, num_sms=1)
    fallback = planner.plan_persistent(
        hidden=4096, max_row_nnz=900, batch=4, device=tiny, gates=3, two_phase=True
    )
    assert fallback.kind == "per_step"
    with pytest.raises(UnsupportedError, match="no two-phase step"):
        make_step_kernel(fallback, "gru_lbr0")


def test_cooperative_launch_tag(tmp_path) -> None:
    plan = plan_for(1792, 8, 0.10)  # 57 KB of h: dynamic shared memory
    mod = build_kernel(plan, "tanh", "flag", True, CUDA)
    src = cuda_source(mod)
    assert "extern __shared__" in src
    path = tmp_path / "k.so"
    mod.export_library(str(path))
    data = path.read_bytes()
    assert b"tirx.use_cooperative_launch" in data and b"tirx.use_dyn_shared_memory" in data


NVCC = shutil.which("nvcc")


@pytest.mark.skipif(NVCC is None, reason="needs nvcc")
@pytest.mark.parametrize(
    ("hidden", "batch", "density", "cell", "dtype", "replicas", "fp16_chunk"),
    [
        (1792, 4, 0.10, "tanh", "float32", 1, 0),
        (5760, 2, 0.10, "tanh", "float32", 1, 0),
        (1792, 4, 0.10, "lstm", "float32", 1, 0),
        (1792, 16, 0.10, "gru", "float32", 1, 0),
        (2304, 4, 0.10, "gru", "float16", 1, 0),
        (6144, 4, 0.10, "tanh", "float16", 1, 0),
        (1792, 8, 0.10, "lstm", "float16", 1, 0),  # LDS.128 of 8 halves
        (8192, 4, 0.10, "tanh", "float16", 1, 0),  # part of the pairs in shared memory
        (2304, 4, 0.10, "lstm", "float32", 1, 0),  # idem
        (1792, 16, 0.10, "tanh", "float32", 8, 0),  # the planner's pick at B = 16
        (1792, 64, 0.10, "tanh", "float32", 8, 0),  # 8 samples in 2 passes: h addresses kept
        (1792, 4, 0.10, "gru_lbr0", "float32", 4, 0),  # z and h_{t-1} kept between the phases
        (1024, 16, 0.10, "gru_lbr0", "float16", 8, 0),
        (1792, 64, 0.10, "tanh", "float16", 16, 16),  # packed-half FMAs, pairs in smem
        (1792, 4, 0.10, "gru", "float16", 2, 16),
        (1792, 4, 0.10, "lstm", "float16", 2, 8),
    ],
)
def test_no_register_spills(
    tmp_path,
    hidden: int,
    batch: int,
    density: float,
    cell: str,
    dtype: str,
    replicas: int,
    fp16_chunk: int,
) -> None:
    """ptxas -v for sm_90a: the register-resident weights do not spill."""
    gates = PersistentCell(cell).gates
    rng = np.random.default_rng(0)
    longest = int(rng.binomial(hidden, density, size=gates * hidden).max())
    plan = plan_persistent(
        hidden=hidden,
        max_row_nnz=longest,
        batch=batch,
        dtype=dtype,
        gates=gates,
        replicas=replicas,
        two_phase=PersistentCell(cell).two_phase,
    )
    assert plan.kind == "persistent"
    plan = dataclasses.replace(plan, fp16_chunk=fp16_chunk)
    cu = tmp_path / "k.cu"
    cu.write_text(cuda_source(build_kernel(plan, cell, "flag", True, CUDA)))
    env = {**os.environ, "CUDA_PATH": os.environ.get("CUDA_PATH", "/usr/local/cuda-13.0")}
    res = subprocess.run(
        [
            NVCC,
            "-cubin",
            "-arch=sm_90a",
            "-O3",
            "--use_fast_math",
            "-Xptxas",
            "-v",
            "-o",
            str(tmp_path / "k.cubin"),
            str(cu),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    # main_kernel_1's own lines (ptxas may report the sentinel fill kernel after it)
    info = res.stderr.split("Function properties for main_kernel_1")[1].split("Compiling")[0]
    assert "0 bytes spill stores, 0 bytes spill loads" in info
    regs = int(re.search(r"Used (\d+) registers", info).group(1))
    warps = -(-plan.threads // 32)
    assert regs <= 255 and regs * -(-warps // 4) * 4 * 32 <= 65536  # 4 schedulers' shares


@pytest.mark.parametrize(
    ("cell", "batch", "replicas", "vector", "chunk"),
    [("gru", 4, 2, True, 16), ("tanh", 64, 16, True, 8), ("lstm", 16, 4, False, 6)],
)
def test_half_accumulation_source(
    cell: str, batch: int, replicas: int, vector: bool, chunk: int
) -> None:
    """fp16_chunk: one fma.rn.f16x2 per pair and sample pair, h read as 32-bit words, and the
    fp16 partial sums added into the float32 accumulators every ``chunk`` pairs."""
    gates = PersistentCell(cell).gates
    rng = np.random.default_rng(0)
    longest = int(rng.binomial(1792, 0.1, size=gates * 1792).max())
    plan = dataclasses.replace(
        plan_persistent(
            hidden=1792,
            max_row_nnz=longest,
            batch=batch,
            dtype="float16",
            gates=gates,
            replicas=replicas,
        ),
        fp16_chunk=chunk,
    )
    src = cuda_source(build_kernel(plan, cell, "flag", vector, CUDA))
    body = src.split("for (int t = 0;")[1]  # the time loop of the persistent kernel
    width = plan.sub_batch
    passes = plan.batch_kernel // width
    hfma = passes * plan.rows_per_group * plan.pairs_per_lane * width // 2
    assert body.count("sprnn_hfma2_lo(") + body.count("sprnn_hfma2_hi(") == hfma
    assert "fma.rn.f16x2" in src
    assert re.search(r"\(\(int\*\)(h_sh_ptr|buf_dyn_shmem_ptr)\)", body)  # 32-bit words
    flushes = passes * plan.rows_per_group * -(-plan.pairs_per_lane // chunk) * width // 2
    assert body.count("sprnn_half_lo(acch_ptr[") == flushes
    assert not re.search(r"wv_ptr\[[a-z_(]", body)  # register-resident weights
    # shared-memory pairs: the weight word read from shared memory straight into the FMA
    in_smem = re.findall(r"sprnn_hfma2_lo\(acch_ptr\[\d+\], \(\(int\*\)\w+_ptr\)\[", body)
    assert len(in_smem) == passes * plan.rows_per_group * plan.smem_pairs * width // 2


@pytest.mark.parametrize(("dtype", "chunk"), [("float32", 16), ("float16", 7), ("float16", -2)])
def test_half_accumulation_needs_float16_and_an_even_chunk(dtype: str, chunk: int) -> None:
    plan = dataclasses.replace(plan_for(1024, 4, 0.1), dtype=dtype, fp16_chunk=chunk)
    with pytest.raises(ValueError, match=rf"fp16_chunk must be .* got {chunk} with {dtype}"):
        make_persistent_kernel(plan, "tanh", "flag")


def test_most_copy_chunks_builds() -> None:
    """The flag barrier's pending-chunk bit mask holds the planner's largest per-thread copy."""
    from tvm_sparse_rnn.kernels.cuda.persistent.planner import MAX_COPY_CHUNKS

    plan = max(candidate_plans(5760, 300, 4), key=lambda p: p.copy_chunks)
    assert 28 <= plan.copy_chunks <= MAX_COPY_CHUNKS
    src = cuda_source(build_kernel(plan, "tanh", "flag", True, CUDA))
    assert f"(~{1 << (plan.copy_chunks - 1)})" in src


@pytest.mark.parametrize("vector", [True, False])
def test_half_h_is_stored_in_whole_words(vector: bool) -> None:
    """The flag barrier tests 32-bit words of h: fp16 samples must not be stored one by one."""
    plan = plan_persistent(hidden=1024, max_row_nnz=110, batch=16, dtype="float16")
    src = cuda_source(build_kernel(plan, "tanh", "flag", vector, CUDA))
    assert not re.search(r"[^_]out_ptr\[[^]]*\] = \(\(half\)", src)  # no 2-byte store of h
    assert re.search(r"\*\(uint4\*\)\(out_ptr \+", src)  # 8 halves per store


def test_prebuild_takes_cell_and_barrier_values_as_strings(tmp_path):
    """The GPU tests and ``bench_rnn.py`` pass ``("tanh", "flag")``: ``prebuild`` compiles them
    (for sm_90a, no GPU) into the cache ``build_kernel`` loads from, one file per kernel."""
    from tvm_sparse_rnn.kernels.cuda.persistent.planner import Barrier
    from tvm_sparse_rnn.ops.cells import PersistentCell
    from tvm_sparse_rnn.runtime.persistent import kernel_key, prebuild

    R = sp.random(128, 128, density=0.1, format="csr", random_state=1, dtype=np.float32)
    plan = planner.plan_persistent(R.toarray(), 2, device=LIMITS)
    key = kernel_key(plan, "tanh", "flag", True)
    assert key == kernel_key(plan, PersistentCell.TANH, Barrier.FLAG, True)
    prebuild([(plan, "tanh", "flag", True), (plan, PersistentCell.TANH, "flag", True)], tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [f"sprnn_{key}.so"]
    kernel = build_kernel(plan, "tanh", "flag", True, "cuda")  # loading the .so needs a GPU
    assert "grid_sync" not in cuda_source(kernel)
