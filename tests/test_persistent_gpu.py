"""H100 numerics of the sparse persistent RNN kernel against a float64 numpy reference.

The acceptance sweep: H in {256, 1152, 1792, 2304} x B in {1, 2, 4, 8, 16} x density in
{1, 10, 30} % x T in {1, 7, 256} x barrier in {grid, flag} x activation in {tanh, relu}. One
build serves every T (the step count is symbolic); all kernels are compiled up front in parallel
processes into a session build cache.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
import scipy.sparse as sp

from tvm_sparse_rnn.rnn.packing import pack
from tvm_sparse_rnn.rnn.planner import plan_persistent
from tvm_sparse_rnn.testing import TOLERANCES

pytestmark = pytest.mark.gpu

HIDDEN = (256, 1152, 1792, 2304)
BATCH = (1, 2, 4, 8, 16)
DENSITY = (0.01, 0.10, 0.30)
STEPS = (1, 7, 256)
BARRIERS = ("grid", "flag")
ACTIVATIONS = ("tanh", "relu")


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
    """Compile every kernel of the sweep in parallel (16 CPU cores on the GPU machine)."""
    from tvm_sparse_rnn.rnn.persistent import prebuild

    cache = tmp_path_factory.mktemp("sprnn_build")
    specs = [
        (plan_persistent(recurrent_weight(h, d), b), act, bar, True)
        for h, b, d, bar, act in itertools.product(HIDDEN, BATCH, DENSITY, BARRIERS, ACTIVATIONS)
    ]
    prebuild(specs, cache)
    return str(cache)


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

    from tvm_sparse_rnn.rnn.persistent import PersistentRNN, build_kernel

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

    from tvm_sparse_rnn.rnn.persistent import build_persistent_rnn
    from tvm_sparse_rnn.rnn.planner import H100

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
    tiny = dataclasses.replace(H100, num_sms=2)
    fallback = build_persistent_rnn(R, 4, "tanh", "grid", device_limits=tiny)
    assert fallback.plan.kind == "per_step"
    np.testing.assert_allclose(fallback(U=U), ref, rtol=1e-4, atol=1e-4)
