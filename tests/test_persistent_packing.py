"""CPU tests of the persistent RNN's packing, guided layout, bank-conflict model and planner."""

from __future__ import annotations

import dataclasses
import functools
from collections import Counter

import numpy as np
import pytest
import scipy.sparse as sp

from tvm_sparse_rnn.errors import CapacityError, UnsupportedError
from tvm_sparse_rnn.kernels.cuda.persistent import planner
from tvm_sparse_rnn.kernels.cuda.persistent.bank_conflicts import (
    conflicts_per_step,
    count_wavefronts,
)
from tvm_sparse_rnn.kernels.cuda.persistent.layout import smem_access
from tvm_sparse_rnn.kernels.cuda.persistent.packing import (
    pack,
    stack_directions,
    unit_major,
    unit_major_rows,
)
from tvm_sparse_rnn.kernels.cuda.persistent.planner import candidate_plans
from tvm_sparse_rnn.target import device_limits

LIMITS = device_limits("cuda")  # the lent GPU's limits (the H200 tag when no GPU is present)
plan_persistent = functools.partial(planner.plan_persistent, device=LIMITS, replicas=1)
max_hidden = functools.partial(planner.max_hidden, device=LIMITS)


def random_r(hidden: int, density: float, seed: int = 0) -> sp.csr_array:
    rng = np.random.default_rng(seed)
    mask = rng.random((hidden, hidden)) < density
    return sp.csr_array((rng.standard_normal((hidden, hidden)) * mask).astype(np.float32))


@pytest.mark.parametrize(
    ("hidden", "batch", "density"),
    [(256, 1, 0.3), (1152, 8, 0.23), (1792, 4, 0.1), (1790, 3, 0.05), (640, 2, 0.01)],
)
@pytest.mark.parametrize("order", ["naive", "guided"])
def test_pack_round_trip(hidden: int, batch: int, density: float, order: str) -> None:
    R = random_r(hidden, density)
    plan = plan_persistent(R, batch)
    packed = pack(R, plan, order)
    np.testing.assert_array_equal(packed.to_dense(), R.toarray())
    # Same row multiset of (column, value) pairs, padding only adds zero values.
    for r in (0, hidden // 2, hidden - 1):
        lo, hi = R.indptr[r], R.indptr[r + 1]
        want = Counter(zip(R.indices[lo:hi].tolist(), R.data[lo:hi].tolist(), strict=True))
        vals = packed.values[r].ravel()
        cols = packed.cols[r].ravel()
        got = Counter((int(c), float(v)) for c, v in zip(cols, vals, strict=True) if v != 0)
        assert got == want
    assert packed.vals.shape == (plan.rows_padded, plan.nz_per_row)
    assert np.all(packed.cols < plan.hidden_padded)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_register_and_shared_slots_decode(dtype: str) -> None:
    """Kernel storage (register words and each CTA's shared-memory words) holds every slot."""
    R = random_r(512, 0.1, seed=4)
    plan = plan_persistent(R, 4, dtype)
    nz = -(-plan.nz_per_row // (2 * plan.lanes_per_row)) * 2 * plan.lanes_per_row
    plan = dataclasses.replace(plan, smem_pairs=2, index_mode="i16x2", nz_per_row=nz)
    packed = pack(R, plan)
    rp, ks, nzt, nzs = plan.rows_padded, plan.lanes_per_row, plan.pairs_per_lane, 2
    nzr = nzt - nzs
    idx = packed.idx.view(np.uint32).reshape(rp, nzr // 2, ks)
    cols = np.stack([idx & 0xFFFF, idx >> 16], axis=2).reshape(rp, nzr, ks).transpose(0, 2, 1)
    np.testing.assert_array_equal(cols, packed.cols[:, :, :nzr])
    if dtype == "float16":
        words = packed.vals.view(np.uint32).reshape(rp, nzr // 2, ks)
        halves = np.stack([words & 0xFFFF, words >> 16], axis=2).astype(np.uint16)
        vals = halves.view(np.float16).reshape(rp, nzr, ks).transpose(0, 2, 1)
    else:
        vals = packed.vals.reshape(rp, nzr, ks).transpose(0, 2, 1)
    np.testing.assert_array_equal(vals, packed.values[:, :, :nzr])
    # shared words of CTA c, thread tx = g*KS + p, row rr, slot j
    w = plan.smem_pair_words
    sp_words = packed.spairs.reshape(plan.num_ctas, plan.rows_per_group, nzs, plan.threads, w).view(
        np.uint32
    )
    for row in (0, 37, rp - 1):
        cta, rest = divmod(row, plan.groups_per_cta * plan.rows_per_group)
        g, rr = divmod(rest, plan.rows_per_group)
        for p in range(ks):
            for j in range(nzs):
                word = sp_words[cta, rr, j, g * ks + p]
                if dtype == "float16":
                    col = word[0] >> 16
                    val = np.uint16(word[0] & 0xFFFF).view(np.float16)
                else:
                    col, val = word[1], word[0].view(np.float32)
                assert col == packed.cols[row, p, nzr + j]
                assert val == packed.values[row, p, nzr + j]
    np.testing.assert_array_equal(packed.to_dense(), R.toarray().astype(dtype).astype(np.float32))


def test_sixteen_bit_indices_unpack() -> None:
    R = random_r(1792, 0.1, seed=1)
    plan = dataclasses.replace(plan_persistent(R, 4), index_mode="i16x2")
    packed = pack(R, plan)
    assert packed.idx.shape == (plan.rows_padded, plan.nz_per_row // 2)
    words = packed.idx.view(np.uint32).reshape(plan.rows_padded, -1, plan.lanes_per_row)
    lo, hi = words & 0xFFFF, words >> 16
    cols = packed.cols.transpose(0, 2, 1)  # (row, slot, part)
    np.testing.assert_array_equal(lo, cols[:, 0::2])
    np.testing.assert_array_equal(hi, cols[:, 1::2])
    np.testing.assert_array_equal(packed.to_dense(), R.toarray())


@pytest.mark.parametrize(("batch", "cut"), [(2, 0.5), (4, 0.5), (8, 0.5), (16, 0.5), (1, 0.25)])
def test_guided_cuts_bank_conflicts(batch: int, cut: float) -> None:
    """Guided removes >= 50 % of the conflicts of the vector loads (B = 1: 32 colors for 14
    slots per lane overflow often, the greedy spill then removes only ~40 %)."""
    R = random_r(1792, 0.10, seed=2)
    plan = plan_persistent(R, batch)
    naive = conflicts_per_step(pack(R, plan, "naive"))
    guided = conflicts_per_step(pack(R, plan, "guided"))
    assert naive.ideal == guided.ideal and naive.instructions == guided.instructions
    assert guided.conflicts <= (1 - cut) * naive.conflicts, (naive, guided)


def test_conflict_model_numbers() -> None:
    # 32 lanes reading 32 consecutive words: one wavefront; all lanes in bank 0: 32.
    assert count_wavefronts(np.arange(32)[None], 1) == (1, 1)
    assert count_wavefronts((np.arange(32) * 32)[None], 1) == (32, 1)
    assert count_wavefronts(np.zeros((1, 32), np.int64), 1) == (1, 1)  # broadcast
    # LDS.128: 4 phases of 8 lanes; columns 0..7 per phase are conflict free, all equal columns
    # too (broadcast), columns 8 apart collide 8-way in every phase.
    assert count_wavefronts((np.arange(32) % 8 * 4)[None], 4) == (4, 4)
    assert count_wavefronts((np.arange(32) * 32)[None], 4) == (32, 4)
    # Naive order at B=4 (LDS.128), H=1792, 10 %: guided removes >= 90 % of the conflicts.
    R = random_r(1792, 0.10, seed=3)
    plan = plan_persistent(R, 4)
    naive = conflicts_per_step(pack(R, plan, "naive"))
    guided = conflicts_per_step(pack(R, plan, "guided"))
    assert guided.conflicts < 0.1 * naive.conflicts
    scalar = conflicts_per_step(pack(R, plan, "naive"), smem_access(4, plan.hidden_padded, False))
    assert scalar.ideal == 4 * naive.ideal // 4 * 1 and scalar.conflicts > naive.conflicts


BENCH_SIZES = (
    [(1792, b, 0.10) for b in (1, 2, 4, 8, 16)]
    + [(1792, 4, d) for d in (0.01, 0.3)]
    + [(2304, 4, d) for d in (0.01, 0.3)]
    + [
        (5760, 2, 0.10),
        (2304, 4, 0.25),
        (3456, 4, 0.11),
        (4608, 4, 0.0625),
        (5760, 4, 0.04),
        (1152, 8, 0.23),
    ]
)


@pytest.mark.parametrize(("hidden", "batch", "density"), BENCH_SIZES)
def test_planner_benchmark_sizes(hidden: int, batch: int, density: float) -> None:
    rng = np.random.default_rng(hidden)
    longest = int(rng.binomial(hidden, density, size=hidden).max())
    plan = plan_persistent(hidden=hidden, max_row_nnz=longest, batch=batch, require_persistent=True)
    assert plan.kind == "persistent"
    assert plan.num_ctas <= LIMITS.num_sms and plan.threads <= 1024 and plan.threads % 32 == 0
    assert plan.rows_padded >= hidden and plan.nz_per_row >= longest
    assert plan.regs_estimate <= LIMITS.max_regs_per_thread
    assert plan.threads * plan.regs_estimate <= LIMITS.regs_per_sm
    assert plan.smem_bytes <= LIMITS.smem_per_block and plan.num_batch_chunks == 1
    if hidden == 5760 and density == 0.10:
        assert plan.index_mode == "i16x2"  # 32-bit indices cannot hold it in registers


def test_planner_fallback_and_chunks() -> None:
    with pytest.raises(CapacityError, match=r"8192x8192.*registers per SM"):
        plan_persistent(hidden=8192, max_row_nnz=900, batch=4, require_persistent=True)
    fallback = plan_persistent(hidden=8192, max_row_nnz=900, batch=4)
    assert fallback.kind == "per_step" and "8192" in fallback.reason
    chunked = plan_persistent(hidden=4096, max_row_nnz=40, batch=16)
    assert chunked.batch_kernel * chunked.num_batch_chunks >= 16 and chunked.num_batch_chunks == 2
    assert chunked.smem_bytes <= LIMITS.smem_per_block
    with pytest.raises(UnsupportedError, match="bfloat16"):
        plan_persistent(hidden=256, max_row_nnz=10, batch=1, dtype="bfloat16")
    half = plan_persistent(hidden=256, max_row_nnz=10, batch=1, dtype="float16")
    assert half.batch_kernel == 2 and half.smem_bytes == 256 * 2 * 2  # a column is one word
    assert half.nz_per_row % (2 * half.lanes_per_row) == 0  # two halves per register
    assert plan_persistent(hidden=255, max_row_nnz=3, batch=3).batch_kernel == 4
    wide = plan_persistent(hidden=16384, max_row_nnz=150, batch=4)  # 3 samples of h fit
    assert (wide.batch_kernel, wide.num_batch_chunks) == (2, 2)
    assert 5760 <= max_hidden(0.10, batch=2) < 8192


def test_batch_chunks_split_the_batch_evenly() -> None:
    """56 samples of H = 1024 fit in shared memory: B = 64 runs as 2 x 32, not 56 + 8 padded."""
    plan = plan_persistent(hidden=1024, max_row_nnz=120, batch=64, gates=3)
    assert (plan.batch_kernel, plan.num_batch_chunks) == (32, 2)
    odd = plan_persistent(hidden=1024, max_row_nnz=120, batch=57, gates=3)
    assert (odd.batch_kernel, odd.num_batch_chunks) == (32, 2)


@pytest.mark.parametrize(
    ("hidden", "batch", "dtype"), [(1024, 1, "float16"), (1024, 16, "float32")]
)
def test_two_directions_share_the_sms(hidden: int, batch: int, dtype: str) -> None:
    one = candidate_plans(hidden, 120, batch, dtype, device=LIMITS, gates=3)
    two = candidate_plans(hidden, 120, batch, dtype, device=LIMITS, gates=3, directions=2)
    assert two and all(p.directions == 2 and p.grid_ctas <= LIMITS.num_sms for p in two)
    assert max(p.num_ctas for p in one) > LIMITS.num_sms // 2  # the single launch uses more
    assert two[0].describe().startswith("2 directions x ")
    with pytest.raises(ValueError, match="directions"):
        candidate_plans(hidden, 120, batch, dtype, device=LIMITS, gates=3, directions=0)


def test_stacked_directions_are_direction_major() -> None:
    rng = np.random.default_rng(0)
    rs = [unit_major(rng.random((3 * 64, 64)) * (rng.random((3 * 64, 64)) < 0.2), 3) for _ in "fb"]
    longest = max(int(np.diff(r.indptr).max()) for r in rs)
    plan = plan_persistent(hidden=64, max_row_nnz=longest, batch=2, gates=3, directions=2)
    packs = [pack(r, plan) for r in rs]
    vals, idx, spairs = stack_directions(packs)
    assert vals.shape[0] == 2 * plan.rows_padded and spairs.shape[0] == plan.grid_ctas
    np.testing.assert_array_equal(idx[plan.rows_padded :], packs[1].idx)
    with pytest.raises(ValueError, match="2 packings"):
        stack_directions(packs[:1])


def test_unit_major_rows_reorder_gates_and_pad_units() -> None:
    """ONNX's gate-major ``W`` rows ``g*H + j`` -> the kernel's ``j*G + g``, padded units zero:
    ``X @ W'^T`` is then the kernel's ``U`` (the same permutation as :func:`unit_major`)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3 * 5, 5))
    got = unit_major_rows(w, 3, 8)
    assert got.shape == (24, 5)
    np.testing.assert_array_equal(got[:15], unit_major(w, 3).toarray())
    assert not got[15:].any()
    np.testing.assert_array_equal(unit_major_rows(np.arange(6), 3, 2), [0, 2, 4, 1, 3, 5])
    with pytest.raises(ValueError, match="3 gates of at most 4"):
        unit_major_rows(w, 3, 4)


def test_default_knobs_follow_h100_measurements() -> None:
    from tvm_sparse_rnn.kernels.cuda.persistent.planner import default_knobs

    def plan(hidden: int, batch: int, longest: int):
        return plan_persistent(hidden=hidden, max_row_nnz=longest, batch=batch)

    assert default_knobs(plan(1792, 1, 230)) == ("flag", True)  # 7 KB of h: flag won
    assert default_knobs(plan(1792, 4, 230)) == ("flag", True)  # 28 KB: tie
    assert default_knobs(plan(1152, 8, 320)) == ("grid", False)  # scalar loads won at B = 8
    assert default_knobs(plan(5760, 2, 660)) == ("grid", True)
