"""LIMITS numerics of the sparse persistent kernel against a float64 numpy reference.

The vanilla-RNN acceptance sweep: H in {256, 1152, 1792, 2304} x B in {1, 2, 4, 8, 16} x density
in {1, 10, 30} % x T in {1, 7, 256} x barrier in {grid, flag} x activation in {tanh, relu}; the
gated cells and fp16: {GRU (linear_before_reset 1 and 0), LSTM, tanh RNN} x {fp32, fp16} x a few
(H, B) x barrier, T in {1, 7, 64}, against the ONNX-semantics reference
(:func:`~tvm_sparse_rnn.ops.reference.recurrent_sequence_reference`). fp16 tolerance: 1e-2
absolute and relative against the float64 reference run on the fp16-rounded weights and inputs
(h is stored in fp16 every step, about 5e-4 relative each time). One build serves every T (the
step count is symbolic); kernels go into one build cache shared by the xdist workers.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest
import scipy.sparse as sp

from tvm_sparse_rnn.kernels.cuda.persistent import planner
from tvm_sparse_rnn.kernels.cuda.persistent.packing import pack, unit_major
from tvm_sparse_rnn.ops.cells import CellConfig, PersistentCell
from tvm_sparse_rnn.ops.reference import recurrent_sequence_reference
from tvm_sparse_rnn.target import device_limits
from tvm_sparse_rnn.testing import TOLERANCES, random_recurrent_weights

LIMITS = device_limits("cuda")  # the lent GPU's limits (the H200 tag when no GPU is present)
plan_persistent = functools.partial(planner.plan_persistent, device=LIMITS)

pytestmark = pytest.mark.gpu

HIDDEN = (256, 1152, 1792, 2304)
BATCH = (1, 2, 4, 8, 16)
DENSITY = (0.01, 0.10, 0.30)
STEPS = (1, 7, 256)
BARRIERS = ("grid", "flag")
ACTIVATIONS = ("tanh", "relu")
GATED_CELLS = ("gru", "gru_lbr0", "lstm", "tanh")
DTYPES = ("float32", "float16")
GATED_SHAPES = ((256, 1), (1152, 4), (1024, 16), (1792, 8))
GATED_STEPS = (1, 7, 64)
ONNX_KIND = {"gru": "GRU", "gru_lbr0": "GRU", "lstm": "LSTM", "tanh": "RNN"}
HALF_TOLERANCE = 1e-2


@functools.cache
def recurrent_weight(hidden: int, density: float) -> sp.csr_array:
    """Seeded sparse R with spectral radius about 0.5 (a stable recurrence)."""
    rng = np.random.default_rng(hidden * 1000 + int(density * 100))
    mask = rng.random((hidden, hidden)) < density
    R = rng.standard_normal((hidden, hidden)) * mask * (0.5 / np.sqrt(max(density * hidden, 1.0)))
    return sp.csr_array(R.astype(np.float32))


def reference(R: sp.csr_array, U: np.ndarray, h0: np.ndarray, activation: str) -> np.ndarray:
    """``h_t = f(R h_{t-1} + u_t)`` in float64; U (T, B, H), h0 (B, H) -> (T, B, H)."""
    f = np.tanh if activation == "tanh" else (lambda x: np.maximum(x, 0.0))
    Rd = R.astype(np.float64)
    h = h0.astype(np.float64)
    out = np.empty(U.shape, np.float64)
    for t in range(U.shape[0]):
        h = f((Rd @ h.T).T + U[t])
        out[t] = h
    return out


@pytest.fixture(scope="session")
def build_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One kernel cache for the session, shared by the pytest-xdist workers.

    Kernels are built on first use by the test that needs them (each test has its own kernel),
    so ``-n 14`` spreads the compiling over the workers; a shared pre-build in every worker
    compiled each of the ~290 kernels 14 times and did not finish in 330 s on the 16-core GPU
    machine.
    """
    base = tmp_path_factory.getbasetemp()
    cache = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "sprnn_build"
    cache.mkdir(exist_ok=True)
    return str(cache)


@functools.cache
def _gated(cell: str, dtype: str, hidden: int, batch: int):
    """ONNX weights of one direction at 10 % density and ``R`` packed for the kernel."""
    w = random_recurrent_weights(ONNX_KIND[cell], hidden, 48, density=0.1, seed=hidden + batch)
    if dtype == "float16":  # the reference runs on the weights the kernel sees
        w = {k: v.astype(np.float16).astype(np.float32) for k, v in w.items()}
    gates = PersistentCell(cell).gates
    R = unit_major(w["R"][0], gates)
    plan = plan_persistent(R, batch, dtype, gates=gates, two_phase=PersistentCell(cell).two_phase)
    return w, pack(R, plan, "guided", plan.batch_kernel <= plan.vector_width)


@functools.cache
def _packed(hidden: int, batch: int, density: float):
    R = recurrent_weight(hidden, density)
    plan = plan_persistent(R, batch)
    return plan, pack(R, plan, "guided")


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("barrier", BARRIERS)
@pytest.mark.parametrize("density", DENSITY)
@pytest.mark.parametrize("batch", BATCH)
@pytest.mark.parametrize("hidden", HIDDEN)
def test_persistent_matches_numpy(
    build_cache: str, hidden: int, batch: int, density: float, barrier: str, activation: str
) -> None:
    import tvm

    from tvm_sparse_rnn.runtime.persistent import PersistentRNN, build_kernel

    plan, packed = _packed(hidden, batch, density)
    module = build_kernel(plan, activation, barrier, True, "cuda", build_cache)
    rnn = PersistentRNN(plan, packed, activation, barrier, module, tvm.cuda(0))
    R = recurrent_weight(hidden, density)
    rng = np.random.default_rng(7)
    rtol, atol = TOLERANCES["float32"]
    for steps in STEPS:
        U = rng.standard_normal((steps, batch, hidden)).astype(np.float32)
        h0 = rng.standard_normal((batch, hidden)).astype(np.float32) * 0.5
        got = rnn(U=U, h0=h0)
        np.testing.assert_allclose(got, reference(R, U, h0, activation), rtol=rtol, atol=atol)


def test_input_projection_and_fallback(build_cache: str) -> None:
    """X + W path (one GEMM before the loop) and the per-step fallback give the same numbers."""
    import dataclasses

    from tvm_sparse_rnn.runtime.persistent import build_persistent_rnn

    R = recurrent_weight(1152, 0.10)
    rng = np.random.default_rng(3)
    X = rng.standard_normal((7, 4, 96)).astype(np.float32)
    W = (rng.standard_normal((1152, 96)) * 0.1).astype(np.float32)
    b = rng.standard_normal(1152).astype(np.float32)
    U = (X.astype(np.float64) @ W.T.astype(np.float64) + b).astype(np.float32)
    ref = reference(R, U, np.zeros((4, 1152)), "tanh")
    rnn = build_persistent_rnn(R, 4, "tanh", "flag", cache_dir=build_cache)
    np.testing.assert_allclose(rnn(X=X, W=W, b=b), ref, rtol=1e-4, atol=1e-4)
    plan = dataclasses.replace(rnn.plan, double_buffer=True)
    double = build_persistent_rnn(R, 4, "tanh", "flag", plan=plan, cache_dir=build_cache)
    np.testing.assert_allclose(double(X=X, W=W, b=b), ref, rtol=1e-4, atol=1e-4)
    tiny = dataclasses.replace(LIMITS, num_sms=2)
    fallback = build_persistent_rnn(R, 4, "tanh", "grid", limits=tiny)
    assert fallback.plan.kind == "per_step"
    np.testing.assert_allclose(fallback(U=U), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("barrier", BARRIERS)
@pytest.mark.parametrize(("hidden", "batch"), GATED_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", GATED_CELLS)
def test_gated_cells_and_half_match_reference(
    build_cache: str, cell: str, dtype: str, hidden: int, batch: int, barrier: str
) -> None:
    import tvm

    from tvm_sparse_rnn.runtime.persistent import PersistentRNN, build_kernel

    w, packed = _gated(cell, dtype, hidden, batch)
    plan = packed.plan
    assert plan.kind == "persistent", plan.reason
    module = build_kernel(plan, cell, barrier, packed.vector, "cuda", build_cache)
    rnn = PersistentRNN(plan, packed, cell, barrier, module, tvm.cuda(0))
    for steps in GATED_STEPS:
        _check_against_reference(rnn, cell, w, steps)


#: (cell, dtype, H, B, extra smem slots): plans that keep part of the pairs in shared memory,
#: by capacity (H = 8192 fp16 RNN: the issue's on-chip target; LSTM H = 2304) or forced.
SMEM_CASES = [
    ("tanh", "float16", 8192, 4, 0),
    ("lstm", "float32", 2304, 4, 0),
    ("gru", "float32", 1152, 4, 4),
    ("lstm", "float16", 1024, 16, 2),
    ("gru_lbr0", "float32", 1152, 4, 4),
]


@pytest.mark.parametrize(("cell", "dtype", "hidden", "batch", "extra"), SMEM_CASES)
def test_shared_memory_pairs_match_reference(
    cell: str, dtype: str, hidden: int, batch: int, extra: int
) -> None:
    import dataclasses

    import tvm

    from tvm_sparse_rnn.runtime.persistent import PersistentRNN, build_kernel

    w, packed = _gated(cell, dtype, hidden, batch)
    plan = dataclasses.replace(packed.plan, smem_pairs=packed.plan.smem_pairs + extra)
    assert plan.kind == "persistent" and plan.smem_pairs > 0, plan.describe()
    packed = pack(unit_major(w["R"][0], plan.gates), plan, "guided", packed.vector)
    module = build_kernel(plan, cell, "grid", packed.vector, "cuda")
    rnn = PersistentRNN(plan, packed, cell, "grid", module, tvm.cuda(0))
    _check_against_reference(rnn, cell, w, 7)


#: (cell, dtype, H, B, replicas, barrier): batch slices run at once, each on its own CTAs
#: (B = 64 included), with every barrier; "cluster" needs <= 8 CTAs per slice.
REPLICA_CASES = [
    ("tanh", "float32", 1792, 16, 8, "flag"),
    ("tanh", "float32", 1792, 16, 4, "grid"),
    ("tanh", "float32", 1792, 16, 16, "cluster"),
    ("tanh", "float32", 1792, 64, 8, "flag"),
    ("tanh", "float32", 1792, 64, 16, "cluster"),
    ("gru", "float16", 1024, 16, 4, "flag"),
    ("gru", "float16", 1024, 16, 16, "cluster"),
    ("lstm", "float32", 1024, 6, 2, "grid"),  # 6 samples: the last slice is padded
    ("lstm", "float16", 1024, 64, 16, "cluster"),
    ("gru_lbr0", "float32", 1792, 4, 4, "grid"),
    ("gru_lbr0", "float16", 1024, 16, 8, "cluster"),
    ("gru_lbr0", "float32", 1024, 64, 8, "flag"),  # 8 samples in 2 passes per phase
]


@pytest.mark.parametrize(("cell", "dtype", "hidden", "batch", "replicas", "barrier"), REPLICA_CASES)
def test_replicas_match_reference(
    build_cache: str, cell: str, dtype: str, hidden: int, batch: int, replicas: int, barrier: str
) -> None:
    import tvm

    from tvm_sparse_rnn.runtime.persistent import PersistentRNN, build_kernel

    w, _ = _gated(cell, dtype, hidden, batch)
    R = unit_major(w["R"][0], PersistentCell(cell).gates)
    plans = planner.candidate_plans(
        hidden,
        int(planner.row_lengths(R).max()),
        batch,
        dtype,
        device=LIMITS,
        gates=PersistentCell(cell).gates,
        replicas=replicas,
        two_phase=PersistentCell(cell).two_phase,
    )
    if barrier == "cluster":
        plans = [p for p in plans if p.num_ctas <= planner.PORTABLE_CLUSTER_SIZE]
    plan = plans[0]
    packed = pack(R, plan, "guided", plan.batch_kernel <= plan.vector_width)
    module = build_kernel(plan, cell, barrier, packed.vector, "cuda", build_cache)
    rnn = PersistentRNN(plan, packed, cell, barrier, module, tvm.cuda(0))
    for steps in (1, 64):
        _check_against_reference(rnn, cell, w, steps)


#: (cell, H, B, replicas, vector, fp16_chunk): packed-half FMAs against float32 FMAs on the
#: same plan (B = 64: pairs in shared memory; scalar loads of h; the two-phase GRU).
HALF_ACCUMULATION_CASES = [
    ("tanh", 1792, 4, 2, True, 16),
    ("tanh", 1792, 64, 16, True, 16),
    ("gru", 1792, 4, 2, True, 16),
    ("lstm", 1792, 4, 2, True, 16),
    ("lstm", 1024, 16, 4, False, 6),
    ("gru_lbr0", 1024, 16, 8, True, 8),
]
#: Largest error of the packed-half kernel: this many times the float32-FMA kernel's ...
HALF_ACCUMULATION_ERROR_RATIO = 3.0
#: ... or this absolute error (about two fp16 ulps of h near 1), whichever is larger.
HALF_ACCUMULATION_MIN_ERROR = 2e-3


@pytest.mark.parametrize(
    ("cell", "hidden", "batch", "replicas", "vector", "chunk"), HALF_ACCUMULATION_CASES
)
def test_half_accumulation_matches_reference(
    build_cache: str, cell: str, hidden: int, batch: int, replicas: int, vector: bool, chunk: int
) -> None:
    import dataclasses

    import tvm

    from tvm_sparse_rnn.runtime.persistent import PersistentRNN, build_kernel

    w, _ = _gated(cell, "float16", hidden, batch)
    gates, two_phase = PersistentCell(cell).gates, PersistentCell(cell).two_phase
    R = unit_major(w["R"][0], gates)
    plan = planner.candidate_plans(
        hidden,
        int(planner.row_lengths(R).max()),
        batch,
        "float16",
        device=LIMITS,
        gates=gates,
        replicas=replicas,
        two_phase=two_phase,
    )[0]
    errors = {}
    for fp16_chunk in (0, chunk):
        variant = dataclasses.replace(plan, fp16_chunk=fp16_chunk)
        module = build_kernel(variant, cell, "flag", vector, "cuda", build_cache)
        packed = pack(R, variant, "guided", vector)
        rnn = PersistentRNN(variant, packed, cell, "flag", module, tvm.cuda(0))
        errors[fp16_chunk] = _check_against_reference(rnn, cell, w, 64)
    bound = max(HALF_ACCUMULATION_ERROR_RATIO * errors[0], HALF_ACCUMULATION_MIN_ERROR)
    assert errors[chunk] <= bound, errors


def _check_against_reference(rnn, cell: str, w: dict, steps: int) -> float:
    """``rnn.run`` on random inputs and states vs the float64 ONNX reference; returns the
    largest absolute error of ``h``."""
    from tvm_sparse_rnn.transform.dispatch.recurrent_persistent import split_onnx_bias

    plan = rnn.plan
    G, hidden, batch = plan.gates, plan.hidden, plan.batch
    cfg = CellConfig(ONNX_KIND[cell], hidden, linear_before_reset=cell == "gru")
    bias, rbias = split_onnx_bias(
        PersistentCell(cell), w["B"][0, : G * hidden], w["B"][0, G * hidden :]
    )
    rng = np.random.default_rng(11)
    tol = HALF_TOLERANCE if plan.dtype == "float16" else 1e-4
    X = rng.standard_normal((steps, batch, 48)).astype(np.float32)
    h0 = (rng.standard_normal((batch, hidden)) * 0.5).astype(plan.dtype).astype(np.float32)
    c0 = (rng.standard_normal((batch, hidden)) * 0.5).astype(plan.dtype).astype(np.float32)
    res = rnn.run(h0=h0, c0=c0 if G == 4 else None, X=X, W=w["W"][0], b=bias, rbias=rbias)
    y, _, y_c = recurrent_sequence_reference(
        cfg, X, w["W"], w["R"], w["B"], initial_h=h0[None], initial_c=c0[None]
    )
    np.testing.assert_allclose(res.h.astype(np.float32), y[:, 0], rtol=tol, atol=tol)
    if G == 4:
        np.testing.assert_allclose(res.c.astype(np.float32), y_c[0], rtol=tol, atol=tol)
    return float(np.abs(res.h.astype(np.float64) - y[:, 0]).max())


def test_gated_per_step_fallback() -> None:
    """LSTM and GRU in fp16 on the per-step kernel (weights do not fit a 2-SM device)."""
    import dataclasses

    from tvm_sparse_rnn.runtime.persistent import build_persistent_rnn
    from tvm_sparse_rnn.transform.dispatch.recurrent_persistent import split_onnx_bias

    tiny = dataclasses.replace(LIMITS, num_sms=2)
    rng = np.random.default_rng(5)
    for cell in ("lstm", "gru"):
        w, _ = _gated(cell, "float16", 1152, 4)
        G, H = PersistentCell(cell).gates, 1152
        rnn = build_persistent_rnn(w["R"][0], 4, cell, dtype="float16", limits=tiny)
        assert rnn.plan.kind == "per_step"
        bias, rbias = split_onnx_bias(PersistentCell(cell), w["B"][0, : G * H], w["B"][0, G * H :])
        X = rng.standard_normal((7, 4, 48)).astype(np.float32)
        res = rnn.run(X=X, W=w["W"][0], b=bias, rbias=rbias)
        cfg = CellConfig(ONNX_KIND[cell], H, linear_before_reset=cell == "gru")
        y, _, y_c = recurrent_sequence_reference(cfg, X, w["W"], w["R"], w["B"])
        tol = HALF_TOLERANCE
        np.testing.assert_allclose(res.h.astype(np.float32), y[:, 0], rtol=tol, atol=tol)
        if G == 4:
            np.testing.assert_allclose(res.c.astype(np.float32), y_c[0], rtol=tol, atol=tol)


@pytest.mark.parametrize("cell", ["tanh", "gru", "gru_lbr0", "lstm"])
def test_half_matches_onnxruntime(cell: str) -> None:
    """fp16 kernel vs onnxruntime (fp32, on the fp16-rounded weights and inputs), 1e-2."""
    from tvm_sparse_rnn.runtime.persistent import build_persistent_rnn
    from tvm_sparse_rnn.testing import recurrent_onnxruntime
    from tvm_sparse_rnn.transform.dispatch.recurrent_persistent import split_onnx_bias

    hidden, batch, steps = 1024, 4, 32
    w, _ = _gated(cell, "float16", hidden, batch)
    G = PersistentCell(cell).gates
    rnn = build_persistent_rnn(w["R"][0], batch, cell, dtype="float16")
    assert rnn.plan.kind == "persistent"
    rng = np.random.default_rng(21)
    feeds = {
        "X": rng.standard_normal((steps, batch, 48)).astype(np.float16).astype(np.float32),
        "initial_h": rng.uniform(-0.5, 0.5, (1, batch, hidden))
        .astype(np.float16)
        .astype(np.float32),
    }
    if G == 4:
        feeds["initial_c"] = feeds["initial_h"][:, ::-1].copy()
    attributes = {"linear_before_reset": 1} if cell == "gru" else {}
    y, y_h, *y_c = recurrent_onnxruntime(ONNX_KIND[cell], w, feeds, hidden, attributes=attributes)
    bias, rbias = split_onnx_bias(
        PersistentCell(cell), w["B"][0, : G * hidden], w["B"][0, G * hidden :]
    )
    c0 = feeds["initial_c"][0] if G == 4 else None
    res = rnn.run(X=feeds["X"], W=w["W"][0], b=bias, rbias=rbias, h0=feeds["initial_h"][0], c0=c0)
    tol = HALF_TOLERANCE
    np.testing.assert_allclose(res.h.astype(np.float32), y[:, 0], rtol=tol, atol=tol)
    np.testing.assert_allclose(res.h[-1].astype(np.float32), y_h[0], rtol=tol, atol=tol)
    if G == 4:
        np.testing.assert_allclose(res.c.astype(np.float32), y_c[0][0], rtol=tol, atol=tol)
