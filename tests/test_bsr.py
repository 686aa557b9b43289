"""BSRWeight: validation (each malformed array raises BSRFormatError naming it) and round trips."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from tvm_sparse_rnn.bsr import BSRWeight
from tvm_sparse_rnn.errors import BSRFormatError
from tvm_sparse_rnn.testing import random_bsr

SHAPE = (8, 12)  # 4 x 3 blocks of 2 x 4


def _valid() -> dict:
    """Block rows: [0, 2], [], [1], [0, 1, 2]."""
    return {
        "data": np.arange(6 * 8, dtype="float32").reshape(6, 2, 4) + 1,
        "indices": np.array([0, 2, 1, 0, 1, 2], np.int32),
        "indptr": np.array([0, 2, 2, 3, 6], np.int32),
        "shape": SHAPE,
    }


def _with(**changes) -> dict:
    arrays = _valid()
    arrays.update(changes)
    return arrays


def test_valid_weight_matches_scipy():
    arrays = _valid()
    w = BSRWeight(**arrays)
    ref = sp.bsr_array((arrays["data"], arrays["indices"], arrays["indptr"]), shape=SHAPE)
    ref.check_format(full_check=True)
    np.testing.assert_array_equal(w.toarray(), ref.toarray())
    assert (w.nnzb, w.block_size, w.dtype) == (6, (2, 4), "float32")


BAD = {
    "data ndim": (_with(data=np.ones((6, 8), "float32")), "data", r"3-D array.*\(6, 8\)"),
    "data dtype": (_with(data=np.ones((6, 2, 4), "int32")), "data", "dtype int32"),
    "data count": (
        _with(data=np.ones((5, 2, 4), "float32")),
        "indptr",
        "indptr\\[-1\\] = 6 != .* 5",
    ),
    "block not dividing": (_with(data=np.ones((6, 3, 4), "float32")), "block_size", r"\(3, 4\)"),
    "indptr length": (_with(indptr=np.array([0, 2, 3, 6])), "indptr", "length 4 != .* 5"),
    "indptr[0]": (
        _with(indptr=np.array([1, 2, 2, 3, 6])),
        "indptr",
        "indptr\\[0\\] must be 0, got 1",
    ),
    "indptr decreasing": (
        _with(indptr=np.array([0, 3, 2, 3, 6])),
        "indptr",
        r"non-decreasing; indptr\[1\] = 3 > indptr\[2\] = 2",
    ),
    "indices range": (
        _with(indices=np.array([0, 3, 1, 0, 1, 2])),
        "indices",
        r"indices\[1\] = 3 is out of range \[0, K // bs_c = 3\)",
    ),
    "indices negative": (_with(indices=np.array([0, -1, 1, 0, 1, 2])), "indices", "out of range"),
    "duplicates": (
        _with(indices=np.array([0, 2, 1, 0, 0, 2])),
        "indices",
        "duplicate block column 0 in block row 3",
    ),
    "unsorted": (
        _with(indices=np.array([2, 0, 1, 0, 1, 2])),
        "indices",
        r"block row 0 is not sorted: indices\[0\] = 2 > indices\[1\] = 0",
    ),
    "index dtype": (_with(indices=np.array([0, 2, 1, 0, 1, 2], "float64")), "indices", "integer"),
    "indptr dtype": (_with(indptr=np.array([0, 2, 2, 3, 6], "float32")), "indptr", "integer"),
    "indices length": (_with(indices=np.array([0, 2, 1, 0, 1])), "indices", "length 5"),
    "index overflow": (_with(indices=np.array([0, 2, 1, 0, 1, 2**40])), "indices", "int32"),
    "nan": (
        _with(data=np.where(np.arange(48).reshape(6, 2, 4) == 17, np.nan, 1.0).astype("float32")),
        "data",
        "block 2 holds a non-finite",
    ),
    "inf": (_with(data=np.full((6, 2, 4), np.inf, "float32")), "data", "block 0"),
    "shape": (_with(shape=(8,)), "shape", "2-D shape"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_malformed_raises_naming_the_array(case):
    arrays, array, message = BAD[case]
    with pytest.raises(BSRFormatError, match=message) as info:
        BSRWeight(**arrays)
    assert info.value.array == array
    assert str(info.value).startswith(f"BSR {array}:")


def test_from_dense_errors():
    with pytest.raises(BSRFormatError, match="does not divide") as info:
        BSRWeight.from_dense(np.ones((8, 12)), (3, 4))
    assert info.value.array == "block_size"
    bad = np.ones((4, 4))
    bad[1, 2] = np.inf
    with pytest.raises(BSRFormatError, match=r"weight\[1, 2\] = inf"):
        BSRWeight.from_dense(bad, (2, 2))
    with pytest.raises(BSRFormatError, match="2-D"):
        BSRWeight.from_dense(np.ones(4), (1, 1))
    with pytest.raises(BSRFormatError, match="scipy sparse"):
        BSRWeight.from_scipy(np.ones((4, 4)))


@pytest.mark.parametrize("block", [(1, 1), (2, 4), (4, 1), (8, 12)])
def test_from_dense_round_trip(block):
    rng = np.random.default_rng(0)
    dense = (rng.standard_normal(SHAPE) * (rng.random(SHAPE) < 0.3)).astype("float32")
    w = BSRWeight.from_dense(dense, block)
    np.testing.assert_array_equal(w.toarray(), dense)
    ref = sp.bsr_array(dense, blocksize=block)
    ref.sort_indices()
    assert w.nnzb <= ref.data.shape[0]


@pytest.mark.parametrize(
    "convert",
    [
        lambda d: sp.bsr_matrix(d, blocksize=(2, 4)),
        lambda d: sp.bsr_array(d, blocksize=(2, 4)),
        sp.csr_matrix,
        sp.csr_array,
        sp.coo_matrix,
        sp.coo_array,
    ],
    ids=["bsr_matrix", "bsr_array", "csr_matrix", "csr_array", "coo_matrix", "coo_array"],
)
def test_from_scipy_round_trip(convert):
    rng = np.random.default_rng(1)
    dense = (rng.standard_normal(SHAPE) * (rng.random(SHAPE) < 0.4)).astype("float32")
    matrix = convert(dense)
    w = BSRWeight.from_scipy(matrix)
    expected_block = (2, 4) if matrix.format == "bsr" else (1, 1)
    assert w.block_size == expected_block
    np.testing.assert_array_equal(w.toarray(), dense)
    reblocked = BSRWeight.from_scipy(matrix, block_size=(4, 2))
    assert reblocked.block_size == (4, 2)
    np.testing.assert_array_equal(reblocked.toarray(), dense)


def test_from_scipy_unsorted_duplicates_and_int64_indices():
    # Unsorted CSR with a duplicate entry: canonicalised (summed, sorted).
    csr = sp.csr_array(
        (np.array([1.0, 2.0, 3.0]), np.array([3, 1, 3]), np.array([0, 3, 3])), shape=(2, 4)
    )
    w = BSRWeight.from_scipy(csr)
    np.testing.assert_array_equal(w.indices, [1, 3])
    np.testing.assert_array_equal(w.toarray(), [[0, 2, 0, 4], [0, 0, 0, 0]])
    arrays = _valid()
    w64 = BSRWeight(
        arrays["data"], arrays["indices"].astype(np.int64), arrays["indptr"].astype(np.int64), SHAPE
    )
    assert w64.indices.dtype == np.int32 and w64.indptr.dtype == np.int32
    assert BSRWeight.from_scipy(sp.csr_array(np.eye(4), dtype=np.float64)).dtype == "float32"


def test_all_zero_and_views():
    w = BSRWeight.from_dense(np.zeros((4, 8), "float16"), (2, 2))
    assert w.nnzb == 0 and w.dtype == "float16" and w.fill == 0.0
    np.testing.assert_array_equal(w.indptr, [0, 0, 0])
    np.testing.assert_array_equal(w.toarray(), np.zeros((4, 8)))
    r = random_bsr(64, 64, (4, 4), 0.25, seed=2)
    assert r.stored_fraction == pytest.approx(0.25)
    assert r.astype("float16").dtype == "float16"
    assert r.structure_key() != random_bsr(64, 64, (4, 4), 0.25, seed=3).structure_key()
    assert r.structure_key() == random_bsr(64, 64, (4, 4), 0.25, seed=2).structure_key()
