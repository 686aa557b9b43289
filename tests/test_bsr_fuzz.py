"""Property tests of the BSR entry points (hypothesis).

* random valid BSR structures (shapes, block sizes, densities, empty block rows, both dtypes)
  round-trip through :class:`BSRWeight`, :meth:`BSRWeight.coerce` (scipy and torch forms) and
  match scipy's ``toarray()``;
* :func:`build_sparse_dense` on random valid weights equals a float64 numpy reference (few
  examples: each compiles a kernel, ~1 s);
* random invalid structures (bad ``indptr``, out-of-range, duplicate or unsorted ``indices``,
  wrong lengths, NaN/Inf values, wrong dtypes) raise :class:`BSRFormatError`, never anything
  else.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tvm_sparse_rnn import build_sparse_dense
from tvm_sparse_rnn.bsr import BSRWeight
from tvm_sparse_rnn.errors import BSRFormatError

VALID_EXAMPLES = 200
BUILD_EXAMPLES = 25
INVALID_EXAMPLES = 300

# database=None: no .hypothesis/ folder in the work tree (failures print their example).
_SETTINGS = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow],
    "database": None,
}


@st.composite
def bsr_arrays(
    draw, max_blocks: int = 6, max_block: int = 4, dtypes: tuple[str, ...] = ("float32", "float16")
) -> dict:
    """Valid canonical BSR arrays: ``data``, ``indices``, ``indptr``, ``shape``."""
    bs_r = draw(st.integers(1, max_block))
    bs_c = draw(st.integers(1, max_block))
    rows = draw(st.integers(1, max_blocks))
    cols = draw(st.integers(1, max_blocks))
    density = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    keep = rng.random((rows, cols)) < density
    if draw(st.booleans()):  # force an empty block row
        keep[draw(st.integers(0, rows - 1))] = False
    r, c = np.nonzero(keep)
    dtype = draw(st.sampled_from(dtypes))
    data = rng.uniform(-1, 1, (r.size, bs_r, bs_c)).astype(dtype)
    indptr = np.zeros(rows + 1, np.int64)
    np.cumsum(keep.sum(axis=1), out=indptr[1:])
    index_dtype = draw(st.sampled_from([np.int32, np.int64]))
    return {
        "data": data,
        "indices": c.astype(index_dtype),
        "indptr": indptr.astype(index_dtype),
        "shape": (rows * bs_r, cols * bs_c),
    }


def _scipy_dense(a: dict) -> np.ndarray:
    data = a["data"].astype(np.float64)
    ref = sp.bsr_array((data, a["indices"], a["indptr"]), shape=a["shape"])
    ref.check_format(full_check=True)
    return ref.toarray()


@settings(max_examples=VALID_EXAMPLES, **_SETTINGS)
@given(bsr_arrays())
def test_valid_roundtrip_vs_scipy(a):
    w = BSRWeight(**a)
    expected = _scipy_dense(a)
    np.testing.assert_array_equal(w.toarray().astype(np.float64), expected)
    assert w.dtype == a["data"].dtype.name
    assert w.nnzb == a["data"].shape[0]
    again = BSRWeight.coerce(w.to_scipy(), dtype=w.dtype)
    np.testing.assert_array_equal(again.indices, w.indices)
    np.testing.assert_array_equal(again.indptr, w.indptr)
    np.testing.assert_array_equal(again.data, w.data)
    csr = BSRWeight.coerce(sp.csr_array(expected), block_size=w.block_size, dtype=w.dtype)
    np.testing.assert_array_equal(csr.toarray(), w.toarray())


@settings(max_examples=VALID_EXAMPLES // 2, **_SETTINGS)
@given(bsr_arrays())
@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_valid_roundtrip_torch(a):
    torch = pytest.importorskip("torch")
    w = BSRWeight(**a)
    dense = torch.from_numpy(w.toarray().astype(np.float32))
    for tensor in (dense.to_sparse_coo(), dense.to_sparse_csr(), dense.to_sparse_bsr(w.block_size)):
        got = BSRWeight.coerce(tensor, dtype=w.dtype)
        np.testing.assert_array_equal(got.toarray(), w.toarray())


@settings(max_examples=BUILD_EXAMPLES, **_SETTINGS)
@given(bsr_arrays(max_blocks=4, dtypes=("float32",)), st.integers(1, 5), st.integers(0, 2**32 - 1))
def test_build_sparse_dense_vs_numpy(a, m, seed):
    w = BSRWeight(**a)
    kernel = build_sparse_dense(w, m, target="llvm")
    x = np.random.default_rng(seed).uniform(-1, 1, (m, w.shape[1])).astype("float32")
    expected = x.astype(np.float64) @ _scipy_dense(a).T
    np.testing.assert_allclose(kernel(x), expected, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ invalid structures
def _break_indptr_start(a, draw):
    a["indptr"] = a["indptr"].copy()
    a["indptr"][0] = draw(st.integers(1, 5))


def _break_indptr_order(a, draw):
    assume(len(a["indptr"]) >= 3 and a["indptr"][-1] >= 1)
    p = a["indptr"].copy()
    i = draw(st.integers(1, len(p) - 2))
    p[i] = p[-1] + draw(st.integers(1, 3))  # above the end: decreasing later or wrong last
    a["indptr"] = p


def _break_indptr_last(a, draw):
    a["indptr"] = a["indptr"].copy()
    a["indptr"][-1] += draw(st.sampled_from([-1, 1, 7]))


def _break_indptr_length(a, draw):
    p = a["indptr"]
    a["indptr"] = np.append(p, p[-1]) if draw(st.booleans()) else p[:-1]


def _index_out_of_range(a, draw):
    assume(a["indices"].size)
    n_cols = a["shape"][1] // a["data"].shape[2]
    idx = a["indices"].astype(np.int64)
    i = draw(st.integers(0, idx.size - 1))
    idx[i] = draw(st.sampled_from([-1, n_cols, n_cols + 5, 2**31 + 3]))
    a["indices"] = idx


def _index_duplicate_or_unsorted(a, draw):
    p, idx = a["indptr"], a["indices"].copy()
    rows = [r for r in range(len(p) - 1) if p[r + 1] - p[r] >= 2]
    assume(rows)
    r = draw(st.sampled_from(rows))
    i = int(p[r])
    if draw(st.booleans()):
        idx[i + 1] = idx[i]
    else:
        idx[i], idx[i + 1] = idx[i + 1], idx[i]
    a["indices"] = idx


def _indices_length(a, draw):
    idx = a["indices"]
    a["indices"] = np.append(idx, 0) if draw(st.booleans()) or not idx.size else idx[:-1]


def _data_non_finite(a, draw):
    assume(a["data"].size)
    d = a["data"].copy()
    d.flat[draw(st.integers(0, d.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    a["data"] = d


def _data_dtype(a, draw):
    a["data"] = a["data"].astype(draw(st.sampled_from(["float64", "int32", "bool", "complex64"])))


def _index_dtype(a, draw):
    which = draw(st.sampled_from(["indices", "indptr"]))
    a[which] = a[which].astype(draw(st.sampled_from(["float32", "float64", "bool"])))
    assume(a[which].dtype != bool or a[which].size)


def _wrong_ndim(a, draw):
    which = draw(st.sampled_from(["data", "indices", "indptr"]))
    arr = a[which]
    a[which] = arr.reshape(arr.shape[0], arr[0:1].size) if which == "data" else arr[:, None]


def _wrong_shape(a, draw):
    n, k = a["shape"]
    bs_r, bs_c = a["data"].shape[1:]
    assume(bs_r > 1 or bs_c > 1)
    a["shape"] = (n + 1, k) if bs_r > 1 else (n, k + 1)


MUTATIONS = {
    "indptr[0] != 0": _break_indptr_start,
    "indptr not monotone": _break_indptr_order,
    "indptr[-1] != nnzb": _break_indptr_last,
    "indptr length": _break_indptr_length,
    "indices out of range": _index_out_of_range,
    "indices duplicate/unsorted": _index_duplicate_or_unsorted,
    "indices length": _indices_length,
    "data NaN/Inf": _data_non_finite,
    "data dtype": _data_dtype,
    "index dtype": _index_dtype,
    "array ndim": _wrong_ndim,
    "shape not divisible": _wrong_shape,
}


@settings(max_examples=INVALID_EXAMPLES, **_SETTINGS)
@given(bsr_arrays(), st.sampled_from(sorted(MUTATIONS)), st.data())
def test_invalid_structure_raises_typed_error(a, mutation, data):
    MUTATIONS[mutation](a, data.draw)
    with pytest.raises(BSRFormatError):
        BSRWeight(**a)


@settings(max_examples=INVALID_EXAMPLES // 3, **_SETTINGS)
@given(bsr_arrays(), st.sampled_from(["indices out of range", "indptr not monotone"]), st.data())
def test_invalid_scipy_raises_typed_error(a, mutation, data):
    """A scipy BSR edited into an invalid state after construction: typed error, no crash."""
    m = sp.bsr_array((a["data"].astype(np.float32), a["indices"], a["indptr"]), shape=a["shape"])
    broken = dict(a, indices=m.indices, indptr=m.indptr)
    MUTATIONS[mutation](broken, data.draw)
    assume(broken["indices"].size == m.indices.size and broken["indptr"].size == m.indptr.size)
    m.indices[:] = np.clip(broken["indices"], -(2**31), 2**31 - 1)
    m.indptr[:] = broken["indptr"]
    with pytest.raises(BSRFormatError):
        BSRWeight.coerce(m, block_size=(1, 1) if data.draw(st.booleans()) else None)
