"""Pack a recurrent weight ``R`` into the persistent kernel's register layout.

Row ``r`` of ``R`` (``H x H``, dense or scipy sparse) is owned by lane group ``r // RPT`` (CTA
``group // groups_per_cta``); its ``KS`` lanes hold ``NZT = nz_per_row / KS`` pairs each. Every
row is padded to ``nz_per_row`` pairs with ``<c, 0>``, rows ``H .. rows_padded-1`` are all padding.

Storage (what the kernel loads once into registers), for packed row ``r``, part ``p``, slot ``j``:

* ``vals[r, j * KS + p]`` float32: the value (lane-interleaved, so a warp's loads coalesce);
* ``"i32"``: ``idx[r, j * KS + p]`` int32, the column;
* ``"i16x2"`` (16-bit columns, ``H <= 65536``): ``idx[r, m * KS + p]`` int32 holds the columns of
  slots ``2m`` (low 16 bits) and ``2m + 1`` (high 16 bits) of part ``p``.

The kernel multiplies the raw column by the shared-memory stride, so the vector load stays
provably aligned (a pre-multiplied offset makes TVM emit a gather instead of LDS.128).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .layout import SmemAccess, order_row, smem_access
from .planner import PersistentPlan

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackedWeights:
    """``R`` in the persistent layout.

    Attributes
    ----------
    plan : PersistentPlan
        The geometry it was packed for.
    order : str
        ``"naive"`` or ``"guided"``.
    vector : bool
        Whether the layout targets vector loads (it decides the bank colors).
    cols : numpy.ndarray
        ``(rows_padded, KS, NZT)`` int32, column of every slot (padding included).
    vals : numpy.ndarray
        ``(rows_padded, nz_per_row)`` float32, kernel storage order.
    idx : numpy.ndarray
        ``(rows_padded, nz_per_row)`` (``"i32"``) or ``(rows_padded, nz_per_row / 2)``
        (``"i16x2"``) int32, kernel storage order.
    """

    plan: PersistentPlan
    order: str
    vector: bool
    cols: np.ndarray
    vals: np.ndarray
    idx: np.ndarray

    @property
    def access(self) -> SmemAccess:
        """Shared-memory access pattern the layout was made for."""
        return smem_access(self.plan.batch_kernel, self.plan.hidden_padded, self.vector)

    def slot_values(self) -> np.ndarray:
        """``(rows_padded, KS, NZT)`` float32 values per slot (inverse of the interleave)."""
        p = self.plan
        return self.vals.reshape(p.rows_padded, p.pairs_per_lane, p.lanes_per_row).transpose(
            0, 2, 1
        )

    def to_dense(self) -> np.ndarray:
        """Unpack to the dense ``(H, H)`` float32 ``R`` (round trip of :func:`pack`)."""
        p = self.plan
        H = p.hidden
        rows = np.broadcast_to(np.arange(p.rows_padded)[:, None, None], self.cols.shape)
        out = np.zeros((p.rows_padded, max(p.hidden_padded, H)), np.float64)
        np.add.at(out, (rows.ravel(), self.cols.ravel()), self.slot_values().ravel())
        return out[:H, :H].astype(np.float32)


def _to_csr(R: np.ndarray | sp.spmatrix | sp.sparray) -> sp.csr_array:
    csr = sp.csr_array(R) if not sp.issparse(R) else sp.csr_array(R.tocsr())
    csr.sum_duplicates()
    csr.eliminate_zeros()
    csr.sort_indices()
    return csr


def lane0_of_row(plan: PersistentPlan, row: int) -> int:
    """Lane (0..31) of part 0 of packed row ``row`` (0 for the per-step fallback)."""
    if plan.kind != "persistent":
        return 0
    group_in_cta = (row // plan.rows_per_group) % plan.groups_per_cta
    return (group_in_cta * plan.lanes_per_row) % 32


def pack(
    R: np.ndarray | sp.spmatrix | sp.sparray,
    plan: PersistentPlan,
    order: str = "guided",
    vector: bool = True,
) -> PackedWeights:
    """Pack ``R`` for ``plan``.

    Parameters
    ----------
    R : numpy.ndarray or scipy sparse
        ``(H, H)`` recurrent weight, ``H == plan.hidden``; converted to float32.
    plan : PersistentPlan
        From :func:`~tvm_sparse_rnn.rnn.planner.plan_persistent`.
    order : str
        ``"guided"`` (bank-aware, default) or ``"naive"``.
    vector : bool
        Lay out for vector shared loads (must match the kernel's ``vector`` knob).

    Returns
    -------
    PackedWeights
    """
    csr = _to_csr(R)
    H = plan.hidden
    if csr.shape != (H, H):
        raise ValueError(f"R has shape {csr.shape}, the plan is for ({H}, {H})")
    if plan.index_mode == "i16x2" and plan.hidden_padded > 65536:
        raise ValueError(f"16-bit column indices need H <= 65536, got {plan.hidden_padded}")
    ks, nzt, rp = plan.lanes_per_row, plan.pairs_per_lane, plan.rows_padded
    longest = int(np.diff(csr.indptr).max()) if H else 0
    if longest > plan.nz_per_row:
        raise ValueError(f"R has a row of {longest} nonzeros; the plan has {plan.nz_per_row}")
    access = smem_access(plan.batch_kernel, plan.hidden_padded, vector)
    cols = np.zeros((rp, ks, nzt), np.int32)
    svals = np.zeros((rp, ks, nzt), np.float32)
    data = csr.data.astype(np.float32)
    for r in range(rp):
        lo, hi = (csr.indptr[r], csr.indptr[r + 1]) if r < H else (0, 0)
        rc = csr.indices[lo:hi].astype(np.int64)
        slot = order_row(rc, lane0_of_row(plan, r), ks, nzt, access, order, H)
        real = slot >= 0
        cols[r] = np.where(real, rc[np.where(real, slot, 0)] if rc.size else 0, -1 - slot)
        if rc.size:
            svals[r][real] = data[lo:hi][slot[real]]
    vals = np.ascontiguousarray(svals.transpose(0, 2, 1).reshape(rp, nzt * ks))
    if plan.index_mode == "i32":
        idx = np.ascontiguousarray(cols.transpose(0, 2, 1).reshape(rp, nzt * ks))
    else:
        c = cols.astype(np.uint32)
        words = c[:, :, 0::2] | (c[:, :, 1::2] << np.uint32(16))  # (rp, ks, nzt/2)
        idx = np.ascontiguousarray(words.transpose(0, 2, 1).reshape(rp, -1)).view(np.int32)
    logger.debug("packed R %dx%d (%s) for %s", H, H, order, plan.describe())
    return PackedWeights(plan, order, vector, cols, vals, idx)
