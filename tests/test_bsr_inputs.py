"""``BSRWeight.coerce``: accepted weight forms, rejected ones, owned read-only arrays."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from tvm_sparse_rnn import build_sparse_dense
from tvm_sparse_rnn.bsr import BSRWeight
from tvm_sparse_rnn.errors import BSRFormatError

SHAPE = (8, 12)


def _dense(dtype: str = "float32") -> np.ndarray:
    rng = np.random.default_rng(0)
    w = rng.standard_normal(SHAPE) * (rng.random(SHAPE) < 0.3)
    w[2:4] = 0  # empty block rows
    return w.astype(dtype)


SCIPY_FORMS = {
    "bsr_array": lambda w: sp.bsr_array(w, blocksize=(2, 3)),
    "bsr_matrix": lambda w: sp.bsr_matrix(w, blocksize=(2, 2)),
    "csr_array": sp.csr_array,
    "csr_matrix": sp.csr_matrix,
    "csc_array": sp.csc_array,
    "csc_matrix": sp.csc_matrix,
    "coo_array": sp.coo_array,
    "coo_matrix": sp.coo_matrix,
    "dok_array": sp.dok_array,
    "lil_matrix": sp.lil_matrix,
}


@pytest.mark.parametrize("form", SCIPY_FORMS)
def test_scipy_forms(form):
    w = _dense()
    matrix = SCIPY_FORMS[form](w)
    got = BSRWeight.coerce(matrix)
    np.testing.assert_array_equal(got.toarray(), w)
    expected_block = matrix.blocksize if matrix.format == "bsr" else (1, 1)
    assert got.block_size == tuple(expected_block)


def test_scipy_bsr_array_block_size_override():
    w = _dense()
    got = BSRWeight.coerce(sp.bsr_array(w, blocksize=(2, 3)), block_size=(4, 4))
    assert got.block_size == (4, 4)
    np.testing.assert_array_equal(got.toarray(), w)


def test_scipy_coo_duplicates_summed_and_unsorted_sorted():
    coo = sp.coo_array(([1.0, 2.0, 3.0], ([0, 0, 1], [3, 3, 0])), shape=(2, 4))
    got = BSRWeight.coerce(coo)
    np.testing.assert_array_equal(got.toarray(), [[0, 0, 0, 3], [3, 0, 0, 0]])
    csr = sp.csr_array(([1.0, 2.0], [3, 1], [0, 2]), shape=(1, 4))  # unsorted row
    np.testing.assert_array_equal(BSRWeight.coerce(csr).indices, [1, 3])


def _csr_index_out_of_range():
    return sp.csr_array(([1.0], [7], [0, 1]), shape=(1, 4))


def _csr_indptr_edited():
    m = sp.csr_array(([1.0, 2.0], [0, 1], [0, 2]), shape=(1, 4))
    m.indptr[1] = 3  # edited after scipy's constructor check
    return m


def _bsr_index_out_of_range():
    return sp.bsr_array((np.ones((1, 2, 2)), [5], [0, 1]), shape=(2, 4))


@pytest.mark.parametrize(
    "make", [_csr_index_out_of_range, _csr_indptr_edited, _bsr_index_out_of_range]
)
def test_malformed_scipy_raises_not_crashes(make):
    with pytest.raises(BSRFormatError, match="malformed"):
        BSRWeight.coerce(make())


def test_malformed_coo_after_construction_raises():
    coo = sp.coo_array(([1.0], ([0], [1])), shape=(2, 4))
    coo.col[0] = 9  # edited after scipy's constructor check
    with pytest.raises(BSRFormatError, match=r"col\[0\] = 9 is out of range \[0, 4\)"):
        BSRWeight.coerce(coo)


def test_dense_numpy_and_dtypes():
    w = _dense("float64")
    got = BSRWeight.coerce(w, block_size=(2, 2))
    assert (got.dtype, got.block_size) == ("float32", (2, 2))
    np.testing.assert_allclose(got.toarray(), w, rtol=1e-6)
    assert BSRWeight.coerce(_dense("float16")).dtype == "float16"
    assert BSRWeight.coerce(w, dtype="float16").dtype == "float16"


def test_bsrweight_passthrough_and_rebuild():
    w = BSRWeight.from_dense(_dense(), (2, 2))
    assert BSRWeight.coerce(w) is w
    assert BSRWeight.coerce(w, block_size=(2, 2), dtype="float32") is w
    half = BSRWeight.coerce(w, dtype="float16")
    assert half.dtype == "float16" and half.block_size == (2, 2)
    other = BSRWeight.coerce(w, block_size=(4, 3))
    assert other.block_size == (4, 3)
    np.testing.assert_array_equal(other.toarray(), w.toarray())


@pytest.mark.parametrize(
    "weight",
    [None, "w.npy", [[1.0, 0.0]], 3.0, {"data": 1}, np.float32(1.0)],
    ids=["None", "str", "list", "float", "dict", "numpy scalar"],
)
def test_other_types_rejected(weight):
    with pytest.raises(BSRFormatError, match=r"cannot use a .* as a weight"):
        BSRWeight.coerce(weight)


@pytest.mark.parametrize(
    ("weight", "match"),
    [
        (np.ones((2, 2), complex), "real numbers"),
        (np.array([["a", "b"]]), "real numbers"),
        (np.ones(4, "float32"), "2-D"),
        (np.ones((2, 2, 2), "float32"), "2-D"),
        (np.array([[np.nan, 1.0]]), "not finite"),
        (sp.csr_array(np.ones((2, 2), complex)), "real numbers"),
        (sp.csr_array(np.array([[np.inf, 1.0]])), "non-finite"),
        (np.ones((3, 4), "float32"), "does not divide"),
    ],
    ids=["complex", "strings", "1-D", "3-D", "NaN", "scipy complex", "scipy Inf", "block size"],
)
def test_bad_values_rejected(weight, match):
    block = (2, 2) if "does not divide" in match else None
    with pytest.raises(BSRFormatError, match=match):
        BSRWeight.coerce(weight, block_size=block)


# ------------------------------------------------------------------ torch
torch = pytest.importorskip("torch")


def _torch_forms() -> dict:
    return {
        "coo": lambda t: t.to_sparse_coo(),
        "coo uncoalesced": lambda t: torch.sparse_coo_tensor(
            torch.tensor([[0, 0, 7], [1, 1, 11]]),
            torch.tensor([1.0, 2.0, 3.0]),
            SHAPE,
            check_invariants=True,
        ),
        "csr": lambda t: t.to_sparse_csr(),
        "csc": lambda t: t.to_sparse_csc(),
        "bsr": lambda t: t.to_sparse_bsr((2, 3)),
        "bsc": lambda t: t.to_sparse_bsc((4, 2)),
        "dense": lambda t: t,
        "requires_grad": lambda t: t.clone().requires_grad_(True),
    }


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("form", list(_torch_forms()))
def test_torch_forms(form):
    t = torch.from_numpy(_dense())
    tensor = _torch_forms()[form](t)
    got = BSRWeight.coerce(tensor)
    expected = tensor.detach().to_dense().numpy() if tensor.layout != torch.strided else _dense()
    np.testing.assert_array_equal(got.toarray(), expected)
    blocks = {"bsr": (2, 3), "bsc": (4, 2)}.get(form, (1, 1))
    assert got.block_size == blocks


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize(
    ("dtype", "expected"),
    [("float16", "float16"), ("bfloat16", "float32"), ("float64", "float32"), ("int64", "float32")],
)
def test_torch_dtypes(dtype, expected):
    t = torch.from_numpy(_dense()).to(getattr(torch, dtype)).to_sparse_csr()
    assert BSRWeight.coerce(t).dtype == expected


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_torch_malformed_rejected():
    bad = torch.sparse_csr_tensor(
        torch.tensor([0, 1, 1]), torch.tensor([9]), torch.tensor([1.0]), (2, 4),
        check_invariants=False,
    )  # fmt: skip
    with pytest.raises(BSRFormatError):
        BSRWeight.coerce(bad)
    bad_coo = torch.sparse_coo_tensor(
        torch.tensor([[0], [9]]), torch.tensor([1.0]), (2, 4), check_invariants=False
    )
    with pytest.raises(BSRFormatError, match="index 9"):
        BSRWeight.coerce(bad_coo)
    with pytest.raises(BSRFormatError, match="2-D"):
        BSRWeight.coerce(torch.ones(2, 2, 2))
    with pytest.raises(BSRFormatError, match="real numbers"):
        BSRWeight.coerce(torch.ones(2, 2, dtype=torch.complex64).to_sparse())


# ------------------------------------------------------------------ ownership
def test_arrays_are_private_read_only_copies():
    data = np.ones((2, 1, 1), "float32")
    indices = np.array([0, 1], np.int32)
    indptr = np.array([0, 1, 2], np.int32)
    w = BSRWeight(data, indices, indptr, (2, 2))
    indices[0] = 99  # the caller edits its arrays after validation
    data[:] = np.nan
    indptr[1] = 7
    np.testing.assert_array_equal(w.toarray(), np.eye(2))
    for arr in (w.data, w.indices, w.indptr):
        assert not arr.flags.writeable
        assert not np.shares_memory(arr, data) and not np.shares_memory(arr, indices)
    with pytest.raises(ValueError, match="read-only"):
        w.indices[0] = 5


def test_scipy_input_not_shared():
    matrix = sp.bsr_array(_dense(), blocksize=(2, 2))
    w = BSRWeight.coerce(matrix)
    matrix.indices[:] = 0
    matrix.data[:] = np.nan
    np.testing.assert_array_equal(w.toarray(), _dense())


def test_read_only_weight_builds_and_runs():
    w = BSRWeight.coerce(sp.bsr_array(_dense(), blocksize=(2, 3)))
    kernel = build_sparse_dense(w, m=2, target="llvm")
    x = np.random.default_rng(1).standard_normal((2, SHAPE[1])).astype("float32")
    np.testing.assert_allclose(kernel(x), x @ _dense().T, rtol=1e-4, atol=1e-4)
