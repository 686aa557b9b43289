"""Capacity planner of the sparse persistent RNN kernel.

Given the recurrent weight ``R`` (``H x H``; only its row lengths matter), the batch ``B``, the
dtype and the GPU's limits, the planner picks the kernel's geometry:

* ``num_ctas`` CTAs (at most one per SM: the kernel is launched cooperatively, so every CTA must
  be resident at once) of ``threads`` threads;
* ``lanes_per_row`` (``KS``) adjacent lanes of one warp share a row; each lane holds
  ``nz_per_row / KS`` of the row's ``<column, value>`` pairs in registers;
* ``rows_per_group`` (``RPT``) consecutive rows per lane group;
* the batch is processed in ``num_batch_chunks`` launches of ``batch_kernel`` samples when
  ``h`` (``hidden_padded * batch * 4`` bytes) does not fit in shared memory at once.

When no geometry keeps the weights in registers, :func:`plan_persistent` returns a plan of kind
``"per_step"`` (one sparse mat-vec launch per timestep, weights read from global memory) whose
``reason`` gives the numbers; ``require_persistent=True`` raises :class:`CapacityError` instead.

Register cost per pair (measured with ``ptxas -v`` for sm_90a, see ``docs/persistent_rnn.md``):
two registers (fp32 value + int32 column) or 1.5 (two 16-bit columns per int32 register),
plus about 40 registers of fixed cost per thread.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import CapacityError, UnsupportedError

logger = logging.getLogger(__name__)

#: Fixed per-thread registers (addresses, loop counters, accumulators are added per sample).
REG_OVERHEAD = 40
#: Headroom kept below ptxas's 255-register limit, since the estimate is not exact.
REG_HEADROOM = 16
#: Largest number of 16-byte chunks of ``h`` one thread copies per step (bit mask of pending
#: chunks in the flag barrier).
MAX_COPY_CHUNKS = 31
SUPPORTED_DTYPES = ("float32",)
BARRIERS = ("grid", "flag")


@dataclass(frozen=True)
class DeviceLimits:
    """The GPU limits the planner respects.

    Attributes
    ----------
    name : str
        Device name, for messages.
    num_sms : int
        Streaming multiprocessors; at most one CTA per SM.
    regs_per_sm : int
        32-bit registers per SM.
    max_regs_per_thread : int
        ptxas's per-thread register limit.
    max_threads_per_block : int
        Threads per CTA.
    smem_per_block : int
        Largest shared memory per CTA in bytes (dynamic shared memory opt-in beyond 48 KB).
    """

    name: str = "NVIDIA H100 80GB HBM3"
    num_sms: int = 132
    regs_per_sm: int = 65536
    max_regs_per_thread: int = 255
    max_threads_per_block: int = 1024
    smem_per_block: int = 227 * 1024

    @classmethod
    def from_tvm_device(cls, dev: object) -> DeviceLimits:
        """Limits of a live TVM CUDA device (``tvm.cuda(0)``); registers are taken as sm_90's."""
        return cls(
            name=str(dev.device_name),
            num_sms=int(dev.multi_processor_count),
            max_threads_per_block=int(dev.max_threads_per_block),
            smem_per_block=int(getattr(dev, "max_shared_memory_per_block", 48 * 1024)),
        )


H100 = DeviceLimits()


@dataclass(frozen=True)
class PersistentPlan:
    """Geometry of one persistent-kernel build (or of the per-step fallback).

    Attributes
    ----------
    kind : str
        ``"persistent"`` or ``"per_step"`` (weights do not fit on chip).
    hidden : int
        ``H`` as given.
    hidden_padded : int
        ``H`` rounded up to a multiple of 4 (rows of ``h`` in shared memory).
    batch : int
        ``B`` as given.
    batch_kernel : int
        Samples per launch: 1, 2 or a multiple of 4 (``batch`` is padded up to it).
    num_batch_chunks : int
        Launches needed for the whole batch.
    num_ctas, threads, lanes_per_row, rows_per_group : int
        Grid, CTA size, lanes sharing a row (``KS``), rows per lane group (``RPT``).
    nz_per_row : int
        Pairs per row after padding (multiple of ``KS``, and of ``2 KS`` for 16-bit indices).
    index_mode : str
        ``"i32"`` (one int32 column per register) or ``"i16x2"`` (two 16-bit columns).
    dtype : str
        Value dtype.
    double_buffer : bool
        Two shared buffers of ``h`` (alternating steps), so that a warp may start copying
        ``h_t`` while the others still compute step ``t`` (one CTA barrier per step).
    reason : str
        Why this plan (the capacity numbers for ``per_step``).
    """

    kind: str
    hidden: int
    hidden_padded: int
    batch: int
    batch_kernel: int
    num_batch_chunks: int
    num_ctas: int
    threads: int
    lanes_per_row: int
    rows_per_group: int
    nz_per_row: int
    index_mode: str
    dtype: str = "float32"
    double_buffer: bool = False
    reason: str = field(default="", compare=False)

    @property
    def groups_per_cta(self) -> int:
        """Lane groups (rows at a time) per CTA."""
        return self.threads // self.lanes_per_row

    @property
    def rows_padded(self) -> int:
        """Rows of the packed weight, ``>= hidden_padded``."""
        if self.kind != "persistent":
            return self.hidden_padded
        return self.num_ctas * self.groups_per_cta * self.rows_per_group

    @property
    def pairs_per_lane(self) -> int:
        """``<column, value>`` pairs one lane holds for one row."""
        return self.nz_per_row // self.lanes_per_row

    @property
    def pairs_per_thread(self) -> int:
        """Pairs one thread keeps in registers."""
        return self.rows_per_group * self.pairs_per_lane

    @property
    def vector_width(self) -> int:
        """Floats per shared-memory load of ``h``: 4 (LDS.128), 2 (LDS.64) or 1."""
        return min(self.batch_kernel, 4)

    @property
    def smem_bytes(self) -> int:
        """Shared memory of one CTA: ``h_{t-1}`` for one batch chunk (twice if double-buffered)."""
        return self.hidden_padded * self.batch_kernel * 4 * (2 if self.double_buffer else 1)

    @property
    def copy_chunks(self) -> int:
        """16-byte chunks of ``h`` each thread copies per step."""
        return math.ceil(self.hidden_padded * self.batch_kernel // 4 / self.threads)

    @property
    def regs_estimate(self) -> int:
        """Estimated registers per thread (see the module docstring)."""
        return estimate_registers(
            self.pairs_per_thread, self.index_mode, self.batch_kernel, self.rows_per_group
        )

    def cost(self) -> float:
        """Modelled cycles of one step on one SM (lower is better), to rank geometries.

        The shared-memory pipe of an SM serves both the loads of ``h`` (128 B per cycle) and the
        shuffles of the row reductions (one warp instruction per cycle), so both add up over
        the CTA; the critical thread adds its chain of dependent loads and its copy of ``h``.
        Fitted to H100 measurements (``benchmarks/bench_rnn.py``): it ranks, it does not predict.
        """
        rows_per_cta = self.groups_per_cta * self.rows_per_group
        lds = rows_per_cta * self.nz_per_row * self.batch_kernel / 32
        warps = self.threads // 32
        shuffles = warps * self.rows_per_group * self.batch_kernel * math.log2(self.lanes_per_row)
        chain = self.pairs_per_thread * math.ceil(self.batch_kernel / 4)
        return lds + shuffles + 2.0 * chain + 4.0 * self.copy_chunks

    def describe(self) -> str:
        """One-line summary."""
        if self.kind != "persistent":
            return f"per_step: {self.reason}"
        return (
            f"{self.num_ctas}x{self.threads} KS={self.lanes_per_row} RPT={self.rows_per_group} "
            f"NZ={self.nz_per_row} ({self.pairs_per_thread} pairs/thread, {self.index_mode}, "
            f"~{self.regs_estimate} regs) B={self.batch_kernel}x{self.num_batch_chunks} "
            f"smem={self.smem_bytes} B{' x2' if self.double_buffer else ''}"
        )


#: Largest ``h`` (bytes per CTA) for which the flag barrier beat the grid barrier on the H100:
#: every CTA re-polls all of ``h``, which costs L2 bandwidth when ``h`` is large.
FLAG_BARRIER_MAX_H_BYTES = 28 * 1024


def default_knobs(plan: PersistentPlan) -> tuple[str, bool]:
    """``(barrier, vector)`` that measured fastest on the H100 for ``plan``'s ``h`` size.

    The flag barrier wins for ``h`` up to :data:`FLAG_BARRIER_MAX_H_BYTES` (B = 1, 2 at
    H = 1792: 0.29 vs 0.39 ms), the grid barrier above (H=5760/B=2: 0.85 vs 1.02 ms). Vector
    loads (LDS.128) tie with scalar loads at ``B = 4`` and lost 2.3x at ``B = 8`` (see
    ``docs/persistent_rnn.md``), so they are used for ``B <= 4`` only.
    """
    h_bytes = plan.hidden_padded * plan.batch_kernel * 4
    barrier = "flag" if h_bytes <= FLAG_BARRIER_MAX_H_BYTES else "grid"
    return barrier, plan.batch_kernel <= 4


def estimate_registers(pairs: int, index_mode: str, batch: int, rows_per_group: int) -> int:
    """Registers per thread for ``pairs`` register-resident pairs (fp32 values)."""
    per_pair = 1.5 if index_mode == "i16x2" else 2.0
    return math.ceil(per_pair * pairs) + REG_OVERHEAD + 2 * batch * rows_per_group


def kernel_batch(batch: int) -> int:
    """Samples per launch the kernel supports: 1, 2 or the next multiple of 4."""
    if batch <= 2:
        return batch
    return -(-batch // 4) * 4


def row_lengths(R: np.ndarray | object) -> np.ndarray:
    """Nonzeros per row of a dense array or scipy sparse matrix, as int64 ``(H,)``."""
    if hasattr(R, "getnnz"):
        return np.asarray(R.getnnz(axis=1), np.int64)
    if hasattr(R, "tocsr"):
        return np.diff(R.tocsr().indptr).astype(np.int64)
    return np.count_nonzero(np.asarray(R), axis=1).astype(np.int64)


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def _batch_split(hidden_padded: int, batch: int, device: DeviceLimits) -> tuple[int, int]:
    """Largest kernel batch whose ``h`` fits in shared memory, and the number of launches."""
    bk = kernel_batch(batch)
    fit = device.smem_per_block // (hidden_padded * 4)
    if bk <= fit:
        return bk, 1
    if fit < 1:
        raise CapacityError(
            f"hidden size {hidden_padded}: one sample of h needs {hidden_padded * 4} B of shared "
            f"memory, more than the {device.smem_per_block} B per CTA of {device.name}"
        )
    chunk = min(fit, 2) if fit < 4 else fit // 4 * 4
    return chunk, -(-batch // chunk)


def candidate_plans(
    hidden: int,
    max_row_nnz: int,
    batch: int,
    dtype: str = "float32",
    device: DeviceLimits = H100,
    double_buffer: bool = False,
) -> list[PersistentPlan]:
    """Every persistent geometry that fits ``device``, best (lowest :meth:`cost`) first.

    Parameters
    ----------
    hidden : int
        ``H``.
    max_row_nnz : int
        Nonzeros of the longest row of ``R``.
    batch : int
        ``B``.
    dtype : str
        ``"float32"``.
    device : DeviceLimits
        The GPU.
    double_buffer : bool
        Double-buffer ``h`` where it fits (off by default: on the H100 it measured 2-13 %
        slower, see ``docs/persistent_rnn.md``).
    """
    if dtype not in SUPPORTED_DTYPES:
        raise UnsupportedError(
            f"dtype {dtype!r}: the persistent kernel supports {SUPPORTED_DTYPES}"
        )
    hp = _round_up(hidden, 4)
    bk, chunks = _batch_split(hp, batch, device)
    double = double_buffer and 2 * hp * bk * 4 <= device.smem_per_block
    index_modes = ("i32", "i16x2") if hp <= 65536 else ("i32",)
    reg_cap = device.max_regs_per_thread - REG_HEADROOM
    out = []
    for ks in (1, 2, 4, 8, 16, 32):
        for threads in range(32, device.max_threads_per_block + 1, 32):
            groups = threads // ks
            for rpt in (1, 2, 3, 4, 6, 8):
                ctas = -(-hp // (groups * rpt))
                if ctas > device.num_sms:
                    continue
                if math.ceil(hp * bk // 4 / threads) > MAX_COPY_CHUNKS:
                    continue
                for mode in index_modes:
                    nz = _round_up(max(max_row_nnz, 1), ks * (2 if mode == "i16x2" else 1))
                    regs = estimate_registers(rpt * nz // ks, mode, bk, rpt)
                    if regs > reg_cap or threads * _round_up(regs, 8) > device.regs_per_sm:
                        continue
                    out.append(
                        PersistentPlan(
                            "persistent",
                            hidden,
                            hp,
                            batch,
                            bk,
                            chunks,
                            ctas,
                            threads,
                            ks,
                            rpt,
                            nz,
                            mode,
                            dtype,
                            double,
                        )
                    )
    # Among equal costs prefer fewer registers (i32 first: no unpacking), then fewer threads.
    out.sort(key=lambda p: (p.cost(), p.index_mode == "i16x2", p.regs_estimate, p.threads))
    return out


def plan_persistent(
    R: np.ndarray | object | None = None,
    batch: int = 1,
    dtype: str = "float32",
    device: DeviceLimits = H100,
    *,
    hidden: int | None = None,
    max_row_nnz: int | None = None,
    require_persistent: bool = False,
) -> PersistentPlan:
    """Choose the persistent geometry for ``R`` (or fall back to the per-step kernel).

    Parameters
    ----------
    R : array or scipy sparse, optional
        ``(H, H)`` recurrent weight; or give ``hidden`` and ``max_row_nnz``.
    batch : int
        ``B >= 1``.
    dtype : str
        ``"float32"``.
    device : DeviceLimits
        The GPU (default: the H100).
    hidden, max_row_nnz : int, optional
        Used when ``R`` is not given.
    require_persistent : bool
        Raise :class:`CapacityError` instead of returning a ``per_step`` plan.

    Returns
    -------
    PersistentPlan
        ``kind == "persistent"``, or ``"per_step"`` with the capacity numbers in ``reason``.
    """
    if R is not None:
        lengths = row_lengths(R)
        hidden = int(lengths.size)
        max_row_nnz = int(lengths.max()) if lengths.size else 0
    if hidden is None or max_row_nnz is None:
        raise ValueError("give R, or hidden and max_row_nnz")
    if hidden < 1 or batch < 1:
        raise ValueError(f"hidden ({hidden}) and batch ({batch}) must be >= 1")
    cands = candidate_plans(hidden, max_row_nnz, batch, dtype, device)
    if cands:
        plan = replace(cands[0], reason=f"lowest cost of {len(cands)} fitting geometries")
        logger.info("persistent plan H=%d B=%d: %s", hidden, batch, plan.describe())
        return plan
    hp = _round_up(hidden, 4)
    pairs = hp * _round_up(max(max_row_nnz, 1), 2)
    per_sm = pairs / device.num_sms
    reason = (
        f"R ({hidden}x{hidden}, longest row {max_row_nnz} nonzeros) needs {pairs} register "
        f"pairs after padding, {per_sm:.0f} per SM on {device.num_sms} SMs; at >= 1.5 registers "
        f"per pair plus {REG_OVERHEAD} per thread this exceeds {device.regs_per_sm} registers "
        f"per SM (or {device.max_regs_per_thread} per thread) on {device.name}"
    )
    if require_persistent:
        raise CapacityError(reason)
    bk, chunks = _batch_split(hp, batch, device)
    logger.warning("persistent kernel does not fit, per-step fallback: %s", reason)
    return PersistentPlan(
        "per_step",
        hidden,
        hp,
        batch,
        bk,
        chunks,
        0,
        0,
        1,
        1,
        max(max_row_nnz, 1),
        "i32",
        dtype,
        reason=reason,
    )


def max_hidden(density: float, batch: int = 4, device: DeviceLimits = H100) -> int:
    """Largest ``H`` (multiple of 64) whose random ``R`` at ``density`` stays persistent.

    The longest row is estimated as the binomial mean plus four standard deviations.
    """
    lo, hi = 64, 65536
    while hi - lo > 64:
        mid = (lo + hi) // 2 // 64 * 64
        mean = density * mid
        longest = math.ceil(mean + 4.0 * math.sqrt(mean * (1 - density)) + 1)
        if candidate_plans(mid, longest, batch, "float32", device):
            lo = mid
        else:
            hi = mid
    return lo
