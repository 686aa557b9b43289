"""Pack a recurrent weight ``R`` into the persistent kernel's register layout.

Row ``r`` of ``R`` (``G*H x H`` for a cell of ``G`` gates, unit-major: row ``j*G + g`` is gate
``g`` of unit ``j``; dense or scipy sparse) is owned by lane group ``r // RPT`` (CTA
``group // groups_per_cta``); its ``KS`` lanes hold ``NZT = nz_per_row / KS`` pairs each. Every
row is padded to ``nz_per_row`` pairs with ``<c, 0>``, rows ``G*H .. rows_padded-1`` are all
padding. :func:`unit_major` reorders an ONNX (gate-major) ``R``.

Storage (what the kernel loads once into registers), for packed row ``r``, part ``p``, slot ``j``:

* ``vals[r, j * KS + p]`` (the plan's dtype): the value (lane-interleaved, so a warp's loads
  coalesce);
* ``"i32"``: ``idx[r, j * KS + p]`` int32, the column;
* ``"i16x2"`` (16-bit columns, ``H <= 65536``): ``idx[r, m * KS + p]`` int32 holds the columns of
  slots ``2m`` (low 16 bits) and ``2m + 1`` (high 16 bits) of part ``p``;
* fp16 values (persistent plans): ``vals[r, m * KS + p]`` int32 holds the halves of slots ``2m``
  (low) and ``2m + 1`` (high), so two values take one register (ptxas does not pair ``half``
  scalars by itself).

The kernel multiplies the raw column by the shared-memory stride, so the vector load stays
provably aligned (a pre-multiplied offset makes TVM emit a gather instead of LDS.128).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ....ops.cells import unit_major_order
from .layout import PairOrder, SmemAccess, order_row, smem_access
from .planner import PersistentPlan

logger = logging.getLogger(__name__)

#: The packed arrays the kernel takes, in its parameter order (its first three parameters).
KERNEL_ARRAYS = ("vals", "idx", "spairs")


@dataclass(frozen=True)
class PackedWeights:
    """``R`` in the persistent layout.

    Attributes
    ----------
    plan : PersistentPlan
        The geometry it was packed for.
    order : PairOrder
        Guided (bank-aware) or naive.
    vector : bool
        Whether the layout targets vector loads (it decides the bank colors).
    cols : numpy.ndarray
        ``(rows_padded, KS, NZT)`` int32, column of every slot (padding included).
    values : numpy.ndarray
        ``(rows_padded, KS, NZT)`` in the plan's dtype, value of every slot.
    vals : numpy.ndarray
        Register slots (``NZR = NZT - smem_pairs`` per lane and row), kernel storage order:
        ``(rows_padded, NZR * KS)`` in the plan's dtype, or for fp16 persistent plans
        ``(rows_padded, NZR * KS / 2)`` int32 (two halves per word).
    idx : numpy.ndarray
        ``(rows_padded, NZR * KS)`` (``"i32"``) or ``(rows_padded, NZR * KS / 2)``
        (``"i16x2"``) int32, kernel storage order.
    spairs : numpy.ndarray
        ``(num_ctas, words)`` int32, each CTA's shared-memory pairs in its shared layout (word
        ``((rr * smem_pairs + j) * threads + tx) * W + w``, ``W = plan.smem_pair_words``): fp16
        ``half | column << 16``, fp32 ``(value bits, column)``; one zero word per CTA when the
        plan has none.
    """

    plan: PersistentPlan
    order: PairOrder
    vector: bool
    cols: np.ndarray
    values: np.ndarray
    vals: np.ndarray
    idx: np.ndarray
    spairs: np.ndarray

    @property
    def access(self) -> SmemAccess:
        """Shared-memory access pattern the layout was made for."""
        return smem_access(
            self.plan.batch_kernel, self.plan.hidden_padded, self.vector, self.plan.itemsize
        )

    def to_dense(self) -> np.ndarray:
        """Unpack to the dense ``(G*H, H)`` float32 ``R`` (round trip of :func:`pack`)."""
        p = self.plan
        H = p.hidden
        rows = np.broadcast_to(np.arange(p.rows_padded)[:, None, None], self.cols.shape)
        out = np.zeros((p.rows_padded, max(p.hidden_padded, H)), np.float64)
        np.add.at(out, (rows.ravel(), self.cols.ravel()), self.values.astype(np.float64).ravel())
        return out[: p.gates * H, :H].astype(np.float32)


def _to_csr(R: np.ndarray | sp.spmatrix | sp.sparray) -> sp.csr_array:
    csr = sp.csr_array(R) if not sp.issparse(R) else sp.csr_array(R.tocsr())
    csr.sum_duplicates()
    csr.eliminate_zeros()
    csr.sort_indices()
    return csr


def _pair_words(slots: np.ndarray) -> np.ndarray:
    """``(rp, KS, NZT)`` 16-bit slots -> ``(rp, KS, NZT/2)`` int32, slot ``2m`` in the low half."""
    s = slots.astype(np.uint32)
    return (s[:, :, 0::2] | (s[:, :, 1::2] << np.uint32(16))).view(np.int32)


def _interleave(slots: np.ndarray) -> np.ndarray:
    """``(rp, KS, n)`` per-part slots -> ``(rp, n * KS)`` kernel storage (word ``j*KS + p``)."""
    rp, ks, n = slots.shape
    return np.ascontiguousarray(slots.transpose(0, 2, 1).reshape(rp, n * ks))


def _smem_pairs(plan: PersistentPlan, cols: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The shared-memory slots ``(rp, KS, NZS)`` in each CTA's layout (see PackedWeights)."""
    nzs = cols.shape[2]
    if nzs == 0:
        return np.zeros((max(plan.num_ctas, 1), 1), np.int32)
    if plan.dtype == "float16":
        words = values.view(np.uint16).astype(np.uint32) | (cols.astype(np.uint32) << 16)
        words = words.view(np.int32)[..., None]  # (rp, ks, nzs, 1)
    else:
        words = np.stack([values.view(np.int32), cols], axis=-1)  # (rp, ks, nzs, 2)
    ctas, gpc, rpt, ks = plan.num_ctas, plan.groups_per_cta, plan.rows_per_group, plan.lanes_per_row
    w = words.reshape(ctas, gpc, rpt, ks, nzs, -1)  # row = (cta*gpc + g)*rpt + rr
    w = w.transpose(0, 2, 4, 1, 3, 5)  # (cta, rr, j, g, p, word): thread tx = g*ks + p
    return np.ascontiguousarray(w.reshape(ctas, -1))


def unit_major(R: np.ndarray | sp.spmatrix | sp.sparray, gates: int) -> sp.csr_array:
    """ONNX's gate-major ``R`` (``G*H x H``, row ``g*H + j``) as unit-major rows ``j*G + g``."""
    csr = _to_csr(R)
    hidden = csr.shape[1]
    if csr.shape[0] != gates * hidden:
        raise ValueError(f"R has shape {csr.shape}, expected ({gates * hidden}, {hidden})")
    return csr[unit_major_order(gates, hidden)]


def unit_major_rows(a: np.ndarray, gates: int, hidden_padded: int) -> np.ndarray:
    """Gate-major rows of ``a`` (``(G*H, ...)``, row ``g*H + j``: ONNX's ``W``, biases) as the
    kernel's unit-major rows ``j*G + g`` of ``(G*Hk, ...)``, zero rows for the padded units
    ``H <= j < Hk``. ``X @ unit_major_rows(W, G, Hk).T`` is the kernel's ``U``."""
    a = np.asarray(a)
    hidden = a.shape[0] // gates
    if a.shape[0] != gates * hidden or hidden > hidden_padded:
        raise ValueError(f"{a.shape[0]} rows are not {gates} gates of at most {hidden_padded}")
    out = np.zeros((gates * hidden_padded, *a.shape[1:]), a.dtype)
    out[: gates * hidden] = a[unit_major_order(gates, hidden)]
    return out


def lane0_of_row(plan: PersistentPlan, row: int) -> int:
    """Lane (0..31) of part 0 of packed row ``row`` (0 for the per-step fallback)."""
    if plan.kind != "persistent":
        return 0
    group_in_cta = (row // plan.rows_per_group) % plan.groups_per_cta
    return (group_in_cta * plan.lanes_per_row) % 32


def pack(
    R: np.ndarray | sp.spmatrix | sp.sparray,
    plan: PersistentPlan,
    order: PairOrder = PairOrder.GUIDED,
    vector: bool = True,
) -> PackedWeights:
    """Pack ``R`` for ``plan``.

    Parameters
    ----------
    R : numpy.ndarray or scipy sparse
        ``(G*H, H)`` recurrent weight, unit-major (:func:`unit_major`), ``H == plan.hidden``,
        ``G == plan.gates``; converted to the plan's dtype.
    plan : PersistentPlan
        From :func:`~tvm_sparse_rnn.kernels.cuda.persistent.planner.plan_persistent`.
    order : PairOrder
        Guided (bank-aware, default) or naive.
    vector : bool
        Lay out for vector shared loads (must match the kernel's ``vector`` knob).

    Returns
    -------
    PackedWeights
    """
    csr = _to_csr(R)
    order = PairOrder(order)
    H, G = plan.hidden, plan.gates
    if csr.shape != (G * H, H):
        raise ValueError(f"R has shape {csr.shape}, the plan is for ({G * H}, {H})")
    if plan.index_mode == "i16x2" and plan.hidden_padded > 65536:
        raise ValueError(f"16-bit column indices need H <= 65536, got {plan.hidden_padded}")
    ks, nzt, rp = plan.lanes_per_row, plan.pairs_per_lane, plan.rows_padded
    longest = int(np.diff(csr.indptr).max()) if H else 0
    real_rows = G * H
    if longest > plan.nz_per_row:
        raise ValueError(f"R has a row of {longest} nonzeros; the plan has {plan.nz_per_row}")
    access = smem_access(plan.batch_kernel, plan.hidden_padded, vector, plan.itemsize)
    cols = np.zeros((rp, ks, nzt), np.int32)
    svals = np.zeros((rp, ks, nzt), plan.dtype)
    data = csr.data.astype(plan.dtype)
    for r in range(rp):
        lo, hi = (csr.indptr[r], csr.indptr[r + 1]) if r < real_rows else (0, 0)
        rc = csr.indices[lo:hi].astype(np.int64)
        slot = order_row(rc, lane0_of_row(plan, r), ks, nzt, access, order, H)
        real = slot >= 0
        cols[r] = np.where(real, rc[np.where(real, slot, 0)] if rc.size else 0, -1 - slot)
        if rc.size:
            svals[r][real] = data[lo:hi][slot[real]]
    nzr = nzt - plan.smem_pairs
    if plan.dtype == "float16" and plan.kind == "persistent":
        vals = _interleave(_pair_words(svals[:, :, :nzr].view(np.uint16)))
    else:
        vals = _interleave(svals[:, :, :nzr])
    if plan.index_mode == "i32":
        idx = _interleave(cols[:, :, :nzr])
    else:
        idx = _interleave(_pair_words(cols[:, :, :nzr].astype(np.uint32)))
    spairs = _smem_pairs(plan, cols[:, :, nzr:], svals[:, :, nzr:])
    logger.debug("packed R %dx%d (%s) for %s", G * H, H, order, plan.describe())
    return PackedWeights(plan, order, vector, cols, svals, vals, idx, spairs)


def stack_directions(packs: Sequence[PackedWeights]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(vals, idx, spairs)`` of one launch running several recurrences of one plan.

    The kernel of a plan with ``directions > 1`` reads direction ``d``'s rows of ``vals`` and
    ``idx`` at ``d * rows_padded`` and its CTAs' shared pairs at ``d * num_ctas``: the packs are
    concatenated in direction order.

    Raises
    ------
    ValueError
        If the packs are not ``plan.directions`` packings of one plan.
    """
    plan = packs[0].plan
    if len(packs) != plan.directions or any(p.plan != plan for p in packs):
        raise ValueError(f"need {plan.directions} packings of one plan, got {len(packs)}")
    return tuple(np.concatenate([getattr(p, name) for p in packs]) for name in KERNEL_ARRAYS)
