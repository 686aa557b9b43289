"""Helpers shared by tests and benchmarks: seeded random sparse weights and references."""

from __future__ import annotations

import numpy as np

from .bsr import BSRWeight

#: (rtol, atol) per dtype for comparing against a float64 reference.
TOLERANCES = {"float32": (1e-4, 1e-4), "float16": (1e-2, 1e-2)}


def random_bsr(
    n: int,
    k: int,
    block_size: tuple[int, int],
    density: float,
    dtype: str = "float32",
    seed: int = 0,
) -> BSRWeight:
    """A seeded random block-sparse ``(n, k)`` weight.

    Parameters
    ----------
    n, k : int
        Dense shape.
    block_size : tuple of int
        ``(bs_r, bs_c)``; must divide ``(n, k)``.
    density : float
        Fraction of blocks kept, in ``[0, 1]``; blocks are drawn without replacement.
    dtype : str
        Value dtype.
    seed : int
        Seed of :func:`numpy.random.default_rng`.
    """
    bs_r, bs_c = block_size
    rng = np.random.default_rng(seed)
    rows, cols = n // bs_r, k // bs_c
    total = rows * cols
    keep = np.zeros(total, bool)
    keep[rng.choice(total, size=int(round(density * total)), replace=False)] = True
    keep = keep.reshape(rows, cols)
    r, c = np.nonzero(keep)
    data = rng.uniform(-1, 1, size=(r.size, bs_r, bs_c)).astype(dtype)
    indptr = np.zeros(rows + 1, np.int64)
    np.cumsum(keep.sum(axis=1), out=indptr[1:])
    return BSRWeight(data, c, indptr, (n, k))


def reference_sparse_dense(x: np.ndarray, weight: BSRWeight) -> np.ndarray:
    """``x @ W.T`` in float64 through scipy, as ``(M, N)`` float64."""
    return np.asarray(weight.to_scipy().astype(np.float64) @ x.astype(np.float64).T).T
