"""Pack an unstructured ``W`` into the CSR-vector kernel's layout: CSR in 16-byte groups.

Row ``n`` of ``W`` (``N x K``) keeps its nonzeros in column order, padded with zeros to a
multiple of ``group`` entries (:func:`group_size`: 8 float16 or 4 float32, one 16-byte load).
Group ``g`` is ``values[g * group : (g + 1) * group]`` and its columns, two 16-bit columns per
``uint32`` word (low half first), ``columns[g * group / 2 : (g + 1) * group / 2]``; a padding
entry repeats the row's last column with value 0. ``indptr[n] .. indptr[n + 1]`` are row ``n``'s
groups. Per nonzero that is 2 + 2 bytes in float16 (CSR with int32 columns: 2 + 4).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ....errors import UnsupportedError

logger = logging.getLogger(__name__)

#: Bytes of one group of values (one vector load).
GROUP_BYTES = 16
#: Largest ``K`` the 16-bit columns address.
MAX_COLUMNS = 1 << 16
#: Dtypes the kernel takes.
DTYPES = ("float16", "float32")


def group_size(dtype: str) -> int:
    """Entries per group of ``dtype`` values: 8 float16, 4 float32."""
    return GROUP_BYTES // np.dtype(dtype).itemsize


@dataclass(frozen=True)
class CsrVectorLayout:
    """What the kernel bakes in of a packed weight.

    Attributes
    ----------
    shape : tuple of int
        ``(N, K)``.
    groups : int
        Stored groups (at least 1: TVM buffers cannot be empty).
    dtype : str
        ``"float16"`` or ``"float32"``.
    """

    shape: tuple[int, int]
    groups: int
    dtype: str

    @property
    def group(self) -> int:
        """Entries per group."""
        return group_size(self.dtype)


@dataclass(frozen=True)
class CsrVectorWeight:
    """A packed weight (see the module docstring).

    Attributes
    ----------
    values : numpy.ndarray
        ``(groups * group,)`` of ``dtype``.
    columns : numpy.ndarray
        ``(groups * group / 2,)`` uint32, two 16-bit columns per word.
    indptr : numpy.ndarray
        ``(N + 1,)`` int32 group offsets of the rows.
    layout : CsrVectorLayout
    nonzeros : int
        Nonzeros of ``W`` (before padding).
    """

    values: np.ndarray
    columns: np.ndarray
    indptr: np.ndarray
    layout: CsrVectorLayout
    nonzeros: int

    def arrays(self) -> list[np.ndarray]:
        """The kernel's weight arguments, in parameter order."""
        return [self.values, self.columns, self.indptr]


def pack_csr_vector(w: np.ndarray | sp.sparray, dtype: str) -> CsrVectorWeight:
    """Pack ``w`` (``N x K``, dense or scipy sparse) for the CSR-vector kernel in ``dtype``.

    Raises
    ------
    UnsupportedError
        If ``dtype`` is not float16 / float32 or ``K`` exceeds :data:`MAX_COLUMNS`.
    """
    if dtype not in DTYPES:
        raise UnsupportedError(f"csr_vector: dtype must be one of {DTYPES}, got {dtype!r}")
    n, k = w.shape
    if k > MAX_COLUMNS:
        raise UnsupportedError(
            f"csr_vector: W has {k} columns; 16-bit columns address at most {MAX_COLUMNS}"
        )
    csr = sp.csr_array(w, dtype=np.float32)
    csr.eliminate_zeros()
    csr.sort_indices()
    group = group_size(dtype)
    counts = np.diff(csr.indptr)
    row_groups = -(-counts // group)
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(row_groups, out=indptr[1:])
    entries = max(int(indptr[-1]), 1) * group
    values = np.zeros(entries, dtype)
    columns = np.zeros(entries, np.uint16)
    rows = np.repeat(np.arange(n), counts)
    slot = indptr[:-1][rows] * group + (np.arange(csr.nnz) - csr.indptr[:-1][rows])
    values[slot] = csr.data.astype(dtype)
    columns[slot] = csr.indices
    # Padding entries (value 0) repeat the last column before them, their row's last: the
    # kernel reads a column of X it reads anyway.
    last_stored = np.zeros(entries, np.int64)
    last_stored[slot] = slot
    columns = columns[np.maximum.accumulate(last_stored)]
    layout = CsrVectorLayout((n, k), entries // group, dtype)
    return CsrVectorWeight(
        values, columns.view(np.uint32), indptr.astype(np.int32), layout, int(csr.nnz)
    )
