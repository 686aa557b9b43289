"""Block-sparse row (BSR) weights: construction, canonical form and validation.

A weight ``W`` of shape ``(N, K)`` (the ``nn.Linear`` layout: ``Y = X @ W.T``) is stored as in
:class:`scipy.sparse.bsr_array`:

* ``data``    ``(nnzb, bs_r, bs_c)`` float32 or float16, the stored blocks;
* ``indices`` ``(nnzb,)`` int32, the block column of each stored block, strictly increasing
  within each block row (canonical order, no duplicates);
* ``indptr``  ``(N // bs_r + 1,)`` int32, block row ``i`` owns blocks ``indptr[i]:indptr[i+1]``.

Validation is as thorough as scipy's ``check_format(full_check=True)`` and every failure raises
:class:`~tvm_sparse_rnn.errors.BSRFormatError` naming the array and the bad value.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .errors import BSRFormatError

logger = logging.getLogger(__name__)

SUPPORTED_DTYPES = ("float32", "float16")
_INT32_MAX = np.iinfo(np.int32).max


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _as_index_array(name: str, arr: object) -> np.ndarray:
    """Return ``arr`` as a 1-D int32 array or raise naming ``name``."""
    a = np.array(arr, copy=True)  # validate a private copy, not the caller's array
    if a.ndim != 1:
        raise BSRFormatError(name, f"expected a 1-D array, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.integer):
        raise BSRFormatError(name, f"expected an integer dtype, got {a.dtype}")
    if a.size and (int(a.max()) > _INT32_MAX or int(a.min()) < np.iinfo(np.int32).min):
        raise BSRFormatError(name, f"values do not fit int32 (max {int(a.max())})")
    return _frozen_copy(a, np.int32)


def _frozen_copy(arr: np.ndarray, dtype: object) -> np.ndarray:
    """A private, C-contiguous, read-only copy of ``arr`` as ``dtype``.

    The copy is always made (even when ``arr`` already has the dtype and layout), so a caller
    editing its own arrays after validation cannot change a validated weight.
    """
    out = np.array(arr, dtype=dtype, order="C", copy=True)
    out.flags.writeable = False
    return out


def _check_real(name: str, dtype: np.dtype) -> None:
    """Raise unless ``dtype`` holds real numbers (bool, integer or float)."""
    if dtype.kind not in "biuf":
        raise BSRFormatError(
            name, f"values must be real numbers (bool, int or float), got dtype {dtype}"
        )


def _check_dtype(dtype: object) -> str:
    name = np.dtype(dtype).name
    if name not in SUPPORTED_DTYPES:
        raise BSRFormatError(
            "data", f"dtype {name} is not supported; use one of {SUPPORTED_DTYPES}"
        )
    return name


def _check_block_size(shape: tuple[int, int], block_size: tuple[int, int]) -> tuple[int, int]:
    if len(block_size) != 2:
        raise BSRFormatError("block_size", f"expected (bs_r, bs_c), got {block_size!r}")
    bs_r, bs_c = (int(b) for b in block_size)
    if bs_r < 1 or bs_c < 1:
        raise BSRFormatError("block_size", f"block sizes must be >= 1, got ({bs_r}, {bs_c})")
    n, k = shape
    if n % bs_r or k % bs_c:
        raise BSRFormatError(
            "block_size",
            f"({bs_r}, {bs_c}) does not divide the weight shape ({n}, {k})",
        )
    return bs_r, bs_c


@dataclass(frozen=True, eq=False)
class BSRWeight:
    """A validated block-sparse weight ``W[N, K]`` in canonical BSR form.

    Parameters
    ----------
    data : numpy.ndarray
        ``(nnzb, bs_r, bs_c)`` float32 or float16 blocks.
    indices : numpy.ndarray
        ``(nnzb,)`` integer block-column indices; stored as int32.
    indptr : numpy.ndarray
        ``(N // bs_r + 1,)`` integer block-row pointers; stored as int32.
    shape : tuple of int
        ``(N, K)``, the dense shape of ``W``.

    Raises
    ------
    BSRFormatError
        If any array is malformed (see the module docstring).

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> w = np.kron(np.eye(4, dtype="float32"), np.ones((2, 2), "float32"))
    >>> bsr = BSRWeight.from_dense(w, block_size=(2, 2))
    >>> bsr.nnzb, bsr.block_size
    (4, (2, 2))
    >>> np.array_equal(bsr.toarray(), sp.bsr_array(w, blocksize=(2, 2)).toarray())
    True
    """

    data: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray
    shape: tuple[int, int]

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.shape)
        if len(shape) != 2 or min(shape) < 1:
            raise BSRFormatError("shape", f"expected a 2-D shape (N, K) >= 1, got {self.shape!r}")
        # Copy first, validate the copy: nothing the caller does afterwards reaches it.
        data = np.array(self.data, copy=True)
        if data.ndim != 3:
            raise BSRFormatError(
                "data", f"expected a 3-D array (nnzb, bs_r, bs_c), got shape {data.shape}"
            )
        dtype = _check_dtype(data.dtype)
        bs_r, bs_c = _check_block_size(shape, data.shape[1:])
        indices = _as_index_array("indices", self.indices)
        indptr = _as_index_array("indptr", self.indptr)
        n_rows, n_cols = shape[0] // bs_r, shape[1] // bs_c
        nnzb = data.shape[0]
        if indptr.shape[0] != n_rows + 1:
            raise BSRFormatError(
                "indptr",
                f"length {indptr.shape[0]} != N // bs_r + 1 = {shape[0]} // {bs_r} + 1 "
                f"= {n_rows + 1}",
            )
        if indptr[0] != 0:
            raise BSRFormatError("indptr", f"indptr[0] must be 0, got {int(indptr[0])}")
        steps = np.diff(indptr)
        if (steps < 0).any():
            i = _first(steps < 0)
            raise BSRFormatError(
                "indptr",
                f"must be non-decreasing; indptr[{i}] = {int(indptr[i])} > "
                f"indptr[{i + 1}] = {int(indptr[i + 1])}",
            )
        if indptr[-1] != nnzb:
            raise BSRFormatError(
                "indptr", f"indptr[-1] = {int(indptr[-1])} != number of blocks in data = {nnzb}"
            )
        if indices.shape[0] != nnzb:
            raise BSRFormatError(
                "indices", f"length {indices.shape[0]} != number of blocks in data = {nnzb}"
            )
        bad = (indices < 0) | (indices >= n_cols)
        if bad.any():
            i = _first(bad)
            raise BSRFormatError(
                "indices",
                f"indices[{i}] = {int(indices[i])} is out of range [0, K // bs_c = {n_cols})",
            )
        if nnzb > 1:
            row_of = np.repeat(np.arange(n_rows), steps)
            same_row = row_of[1:] == row_of[:-1]
            d = np.diff(indices)
            dup = same_row & (d == 0)
            if dup.any():
                i = _first(dup)
                raise BSRFormatError(
                    "indices",
                    f"duplicate block column {int(indices[i])} in block row {int(row_of[i])} "
                    f"(positions {i} and {i + 1})",
                )
            unsorted = same_row & (d < 0)
            if unsorted.any():
                i = _first(unsorted)
                raise BSRFormatError(
                    "indices",
                    f"block row {int(row_of[i])} is not sorted: indices[{i}] = "
                    f"{int(indices[i])} > indices[{i + 1}] = {int(indices[i + 1])}",
                )
        finite = np.isfinite(data.reshape(nnzb, -1)).all(axis=1) if nnzb else np.ones(0, bool)
        if not finite.all():
            i = _first(~finite)
            raise BSRFormatError("data", f"block {i} holds a non-finite value (NaN or Inf)")
        object.__setattr__(self, "shape", shape)
        data = np.ascontiguousarray(data, dtype=dtype)
        data.flags.writeable = False
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "indices", indices)
        object.__setattr__(self, "indptr", indptr)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_dense(
        cls,
        weight: np.ndarray,
        block_size: tuple[int, int] = (1, 1),
        dtype: str | None = None,
    ) -> BSRWeight:
        """Build from a dense ``(N, K)`` array, keeping every block with a nonzero.

        Parameters
        ----------
        weight : numpy.ndarray
            ``(N, K)`` dense weight (any float dtype).
        block_size : tuple of int
            ``(bs_r, bs_c)``; must divide ``(N, K)``.
        dtype : str, optional
            ``"float32"`` or ``"float16"``; defaults to ``weight``'s dtype when supported,
            else float32.
        """
        w = np.asarray(weight)
        if w.ndim != 2:
            raise BSRFormatError("shape", f"expected a 2-D dense weight, got shape {w.shape}")
        _check_real("data", w.dtype)
        if not np.isfinite(w).all():
            r, c = np.argwhere(~np.isfinite(w))[0]
            raise BSRFormatError("data", f"weight[{r}, {c}] = {w[r, c]} is not finite")
        dtype = _check_dtype(dtype or (w.dtype if w.dtype.name in SUPPORTED_DTYPES else "float32"))
        bs_r, bs_c = _check_block_size(w.shape, block_size)
        n, k = w.shape
        blocks = w.reshape(n // bs_r, bs_r, k // bs_c, bs_c).transpose(0, 2, 1, 3)
        keep = np.any(blocks != 0, axis=(2, 3))  # (n_rows, n_cols), row-major = canonical order
        rows, cols = np.nonzero(keep)
        indptr = np.zeros(n // bs_r + 1, np.int64)
        np.cumsum(keep.sum(axis=1), out=indptr[1:])
        return cls(blocks[rows, cols].astype(dtype), cols, indptr, (n, k))

    @classmethod
    def from_scipy(
        cls,
        matrix: sp.sparray | sp.spmatrix,
        block_size: tuple[int, int] | None = None,
        dtype: str | None = None,
    ) -> BSRWeight:
        """Build from any scipy sparse matrix or array.

        BSR inputs keep their block size unless ``block_size`` asks for another; CSR, CSC and
        COO inputs become 1x1 blocks unless ``block_size`` is given. Duplicates are summed and
        indices sorted (canonical order); explicitly stored zero blocks are kept. The input's
        index arrays are checked before any conversion (scipy's own converters do not check
        bounds), and nothing of ``matrix`` is shared with the result.

        Raises
        ------
        BSRFormatError
            If ``matrix`` is not a 2-D scipy sparse matrix of real numbers, its index arrays
            are malformed, or ``block_size`` does not divide its shape.
        """
        if not sp.issparse(matrix):
            raise BSRFormatError("data", f"expected a scipy sparse matrix, got {type(matrix)!r}")
        if len(matrix.shape) != 2:
            raise BSRFormatError("shape", f"expected a 2-D sparse matrix, got shape {matrix.shape}")
        _check_real("data", np.dtype(matrix.dtype))
        m = _checked_scipy(matrix)
        if block_size is None:
            block_size = m.blocksize if m.format == "bsr" else (1, 1)
        _check_block_size(m.shape, block_size)
        if m.format != "bsr" or tuple(m.blocksize) != tuple(block_size):
            m = sp.csr_array(m)
            m.sum_duplicates()
            m = m.tobsr(blocksize=tuple(block_size))
        else:
            m = m.copy()
        m.sum_duplicates()
        m.sort_indices()
        data = np.asarray(m.data)
        dtype = dtype or (data.dtype if data.dtype.name in SUPPORTED_DTYPES else "float32")
        return cls(data.astype(_check_dtype(dtype)), m.indices, m.indptr, m.shape)

    @classmethod
    def from_torch(
        cls,
        tensor: object,
        block_size: tuple[int, int] | None = None,
        dtype: str | None = None,
    ) -> BSRWeight:
        """Build from a 2-D torch tensor: sparse COO, CSR, CSC, BSR, BSC or dense (strided).

        BSR/BSC tensors keep their block size unless ``block_size`` is given; the others become
        1x1 blocks. ``dtype`` defaults to float16 for a float16 tensor, else float32 (bfloat16
        and float64 values are cast to float32).

        Raises
        ------
        BSRFormatError
            If ``tensor`` is not a 2-D torch tensor of real numbers with a layout above, or its
            structure is malformed.
        """
        matrix, natural = _torch_to_scipy(tensor)
        if block_size is None and matrix.format == "bsr":
            block_size = matrix.blocksize
        return cls.from_scipy(matrix, block_size, dtype or natural)

    @classmethod
    def coerce(
        cls,
        weight: object,
        block_size: tuple[int, int] | None = None,
        dtype: str | None = None,
    ) -> BSRWeight:
        """Return ``weight`` as a :class:`BSRWeight`, whatever form of weight it is.

        Parameters
        ----------
        weight : BSRWeight, scipy sparse matrix or array, numpy.ndarray or torch.Tensor
            ``W[N, K]``. scipy inputs may be of any format (bsr, csr, csc, coo, ...); torch
            inputs may be sparse COO/CSR/CSC/BSR/BSC or dense; a dense numpy array keeps every
            block with a nonzero.
        block_size : tuple of int, optional
            ``(bs_r, bs_c)``. ``None`` keeps the input's blocks (BSRWeight, scipy BSR,
            torch BSR/BSC) and uses 1x1 for everything else.
        dtype : str, optional
            ``"float32"`` or ``"float16"``. ``None`` keeps a supported input dtype, else
            float32.

        Returns
        -------
        BSRWeight
            ``weight`` itself when it already is a BSRWeight of the requested block size and
            dtype (it is immutable), else a new weight sharing no memory with ``weight``.

        Raises
        ------
        BSRFormatError
            If ``weight`` is of another type, or malformed (see :class:`BSRWeight`).
        """
        if isinstance(weight, BSRWeight):
            return _rebuild(weight, block_size, dtype)
        if sp.issparse(weight):
            return cls.from_scipy(weight, block_size, dtype)
        if isinstance(weight, np.ndarray):
            return cls.from_dense(weight, block_size or (1, 1), dtype)
        if _is_torch_tensor(weight):
            return cls.from_torch(weight, block_size, dtype)
        raise BSRFormatError(
            "weight",
            f"cannot use a {type(weight).__module__}.{type(weight).__qualname__} as a weight; "
            "expected a BSRWeight, a scipy sparse matrix or array, a numpy.ndarray or a torch "
            "tensor",
        )

    # ------------------------------------------------------------------ views
    @property
    def block_size(self) -> tuple[int, int]:
        """``(bs_r, bs_c)``."""
        return int(self.data.shape[1]), int(self.data.shape[2])

    @property
    def nnzb(self) -> int:
        """Number of stored blocks."""
        return int(self.data.shape[0])

    @property
    def dtype(self) -> str:
        """Value dtype, ``"float32"`` or ``"float16"``."""
        return self.data.dtype.name

    @property
    def stored_fraction(self) -> float:
        """Stored elements over ``N * K`` (the fraction of dense work the kernel does)."""
        return self.data.size / (self.shape[0] * self.shape[1])

    @property
    def density(self) -> float:
        """Nonzero values over ``N * K``."""
        return int(np.count_nonzero(self.data)) / (self.shape[0] * self.shape[1])

    @property
    def fill(self) -> float:
        """Fraction of stored elements that are explicit zeros (0 for an empty weight)."""
        return 1.0 - int(np.count_nonzero(self.data)) / self.data.size if self.data.size else 0.0

    def astype(self, dtype: str) -> BSRWeight:
        """Return the same structure with values cast to ``dtype``."""
        return BSRWeight(
            self.data.astype(_check_dtype(dtype)), self.indices, self.indptr, self.shape
        )

    def kernel_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(data, indices, indptr)`` as kernels take them.

        An all-zero weight (``nnzb == 0``) gets one zero block, because TVM buffers cannot be
        empty; ``indptr`` stays all zeros, so no kernel reads it.
        """
        if self.nnzb:
            return self.data, self.indices, self.indptr
        bs_r, bs_c = self.block_size
        return np.zeros((1, bs_r, bs_c), self.dtype), np.zeros(1, np.int32), self.indptr

    def to_scipy(self) -> sp.bsr_array:
        """Return a :class:`scipy.sparse.bsr_array` sharing no memory with ``self``.

        scipy.sparse has no float16: float16 values come back as float32.
        """
        data = self.data.astype(np.float32) if self.dtype == "float16" else self.data.copy()
        return sp.bsr_array((data, self.indices.copy(), self.indptr.copy()), shape=self.shape)

    def toarray(self) -> np.ndarray:
        """Return the dense ``(N, K)`` weight."""
        return self.to_scipy().toarray()

    def structure_key(self) -> str:
        """A short hash of the sparsity structure (shape, block size, ``indptr``, ``indices``).

        Two weights of the same shape and nnzb but different patterns get different keys, which
        tuning records use to tell them apart.
        """
        h = hashlib.sha1()
        h.update(np.asarray(self.shape + self.block_size, np.int64).tobytes())
        h.update(self.indptr.tobytes())
        h.update(self.indices.tobytes())
        return h.hexdigest()[:16]

    def __repr__(self) -> str:
        return (
            f"BSRWeight(shape={self.shape}, block_size={self.block_size}, nnzb={self.nnzb}, "
            f"dtype={self.dtype}, stored={self.stored_fraction:.1%})"
        )


# ---------------------------------------------------------------------- conversions
def _rebuild(weight: BSRWeight, block_size: tuple[int, int] | None, dtype: str | None) -> BSRWeight:
    """``weight`` with another block size and/or dtype (itself when both already match)."""
    same_blocks = block_size is None or tuple(block_size) == weight.block_size
    if same_blocks and (dtype is None or _check_dtype(dtype) == weight.dtype):
        return weight
    if same_blocks:
        return weight.astype(dtype)
    return BSRWeight.from_scipy(weight.to_scipy(), block_size, dtype or weight.dtype)


def _check_index_range(name: str, index: np.ndarray, bound: int) -> None:
    bad = (index < 0) | (index >= bound)
    if bad.any():
        i = _first(bad)
        raise BSRFormatError(name, f"{name}[{i}] = {int(index[i])} is out of range [0, {bound})")


def _checked_scipy(matrix: sp.sparray | sp.spmatrix) -> sp.sparray | sp.spmatrix:
    """Check ``matrix``'s index arrays so that scipy's converters (which trust them) are safe."""
    fmt = matrix.format
    try:
        if fmt in ("csr", "csc", "bsr"):
            matrix = matrix.copy()  # check_format may recast the index arrays it checks
            matrix.check_format(full_check=True)
        elif fmt == "coo":
            row, col = matrix.coords if hasattr(matrix, "coords") else (matrix.row, matrix.col)
            if len(row) != len(col) or len(row) != len(matrix.data):
                raise BSRFormatError(
                    "indices",
                    f"COO row ({len(row)}), col ({len(col)}) and data ({len(matrix.data)}) "
                    "lengths differ",
                )
            _check_index_range("row", np.asarray(row), matrix.shape[0])
            _check_index_range("col", np.asarray(col), matrix.shape[1])
        else:
            matrix = matrix.tocsr()
    except (ValueError, TypeError, IndexError) as err:
        if isinstance(err, BSRFormatError):
            raise
        raise BSRFormatError("indices", f"scipy {fmt} matrix is malformed: {err}") from err
    return matrix


def _is_torch_tensor(obj: object) -> bool:
    """Whether ``obj`` is a torch tensor (without importing torch when it is not loaded)."""
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def _torch_values(values: object) -> tuple[np.ndarray, str]:
    """Values of a torch tensor as a numpy array scipy accepts, and the natural dtype."""
    import torch

    if values.dtype.is_complex:
        raise BSRFormatError("data", f"values must be real numbers, got torch {values.dtype}")
    natural = "float16" if values.dtype == torch.float16 else "float32"
    if values.dtype in (torch.float16, torch.bfloat16, torch.float64):
        values = values.to(torch.float32)  # scipy has no float16, numpy no bfloat16
    return values.detach().cpu().numpy(), natural


def _torch_to_scipy(tensor: object) -> tuple[sp.sparray, str]:
    """A 2-D torch tensor of any layout as a scipy sparse array, and its natural dtype."""
    import torch

    if tensor.dim() != 2:
        raise BSRFormatError("shape", f"expected a 2-D tensor, got shape {tuple(tensor.shape)}")
    shape = tuple(int(s) for s in tensor.shape)
    layout = tensor.layout
    if layout == torch.strided:
        values, natural = _torch_values(tensor)
        return sp.csr_array(values), natural
    if layout == torch.sparse_coo:
        if tensor.dense_dim():
            raise BSRFormatError("data", "hybrid sparse COO tensors (dense dims) are not supported")
        # Not coalesce(): torch trusts the indices there; scipy sums duplicates after our check.
        idx = tensor._indices().cpu().numpy()
        values, natural = _torch_values(tensor._values())
        return _scipy_or_error(sp.coo_array, (values, (idx[0], idx[1])), shape), natural
    if layout in (torch.sparse_bsr, torch.sparse_bsc):
        values, natural = _torch_values(tensor.values())
        if values.ndim != 3:
            raise BSRFormatError("data", f"expected (nnzb, bs_r, bs_c) blocks, got {values.shape}")
        if layout == torch.sparse_bsr:
            ptr, idx = tensor.crow_indices(), tensor.col_indices()
            arrays = (values, idx.cpu().numpy(), ptr.cpu().numpy())
            return _scipy_or_error(sp.bsr_array, arrays, shape), natural
        ptr, idx = tensor.ccol_indices(), tensor.row_indices()
        arrays = (values.transpose(0, 2, 1), idx.cpu().numpy(), ptr.cpu().numpy())
        return _scipy_or_error(sp.bsr_array, arrays, shape[::-1]).T.tobsr(), natural
    if layout in (torch.sparse_csr, torch.sparse_csc):
        values, natural = _torch_values(tensor.values())
        if values.ndim != 1:
            raise BSRFormatError("data", "hybrid sparse tensors (dense dims) are not supported")
        if layout == torch.sparse_csr:
            arrays = (
                values,
                tensor.col_indices().cpu().numpy(),
                tensor.crow_indices().cpu().numpy(),
            )
            return _scipy_or_error(sp.csr_array, arrays, shape), natural
        arrays = (values, tensor.row_indices().cpu().numpy(), tensor.ccol_indices().cpu().numpy())
        return _scipy_or_error(sp.csc_array, arrays, shape), natural
    raise BSRFormatError("weight", f"torch layout {layout} is not supported")


def _scipy_or_error(kind: type, arrays: tuple, shape: tuple[int, int]) -> sp.sparray:
    try:
        matrix = kind(arrays, shape=shape)
    except (ValueError, TypeError, IndexError) as err:
        raise BSRFormatError("indices", f"torch sparse tensor is malformed: {err}") from err
    return _checked_scipy(matrix)
