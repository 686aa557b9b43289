"""Capacity planner of the sparse persistent RNN kernel.

Given the recurrent weight ``R`` (``G*H x H`` for a cell of ``G`` gates; only its row lengths
matter), the batch ``B``, the dtype and the GPU's limits, the planner picks the kernel's geometry:

* ``num_ctas`` CTAs (at most one per SM: the kernel is launched cooperatively, so every CTA must
  be resident at once) of ``threads`` threads;
* ``lanes_per_row`` (``KS``) adjacent lanes of one warp share a row; each lane holds
  ``nz_per_row / KS`` of the row's ``<column, value>`` pairs in registers;
* ``rows_per_group`` (``RPT``) consecutive rows per lane group, a multiple of the cell's gates
  ``G`` (1 RNN, 3 GRU, 4 LSTM): rows are packed unit-major (row ``j*G + g`` is gate ``g`` of unit
  ``j``), so every gate of a unit is in one lane group and the cell update needs no exchange;
* the batch is processed in ``num_batch_chunks`` launches of ``batch_kernel`` samples when
  ``h`` (``hidden_padded * batch * itemsize`` bytes) does not fit in shared memory at once.

When the registers cannot hold every pair, the last ``smem_pairs`` slots of each lane's rows move
to **shared memory** (one 32-bit word per pair in fp16: the half value and a 16-bit column; two
words in fp32), read with one extra conflict-free load per pair each step: the weights stay on
chip, at a lower speed for those pairs. When no geometry keeps the weights on chip,
:func:`plan_persistent` returns a plan of kind
``"per_step"`` (one sparse mat-vec launch per timestep, weights read from global memory) whose
``reason`` gives the numbers; ``require_persistent=True`` raises :class:`CapacityError` instead.

Register cost per pair (measured with ``ptxas -v`` for sm_90a, see ``docs/persistent_rnn.md``):
the value (1 register in fp32, half of one in fp16) plus the column (1 register in ``"i32"``,
half of one in ``"i16x2"``), plus about 34 registers of fixed cost per thread and the per-sample
accumulators.
"""

from __future__ import annotations

import enum
import functools
import logging
import math
from dataclasses import dataclass, field, replace

import numpy as np

from ....errors import CapacityError, UnsupportedError
from ....ops.cells import CellType
from ....target import DeviceLimits

logger = logging.getLogger(__name__)

#: Fixed per-thread registers (addresses, loop counters, accumulators are added per sample).
REG_OVERHEAD = 34
#: Extra fixed registers of fp16 kernels (unpacking and converting halves), measured.
REG_OVERHEAD_F16 = 24
#: Warp schedulers per SM: the register file is split between them, and a CTA's warps are
#: spread round-robin, so a CTA of ``w`` warps needs registers for ``ceil(w / 4) * 4`` warps.
SCHEDULERS_PER_SM = 4
#: Headroom kept below ptxas's 255-register limit, since the estimate is not exact.
REG_HEADROOM = 16
#: Largest number of 16-byte chunks of ``h`` one thread copies per step (bit mask of pending
#: chunks in the flag barrier).
MAX_COPY_CHUNKS = 31
SUPPORTED_DTYPES = ("float32", "float16")
#: Gates per hidden unit of the cells the kernel runs.
GATE_COUNTS = tuple(sorted({c.num_gates for c in CellType}))


class Barrier(enum.StrEnum):
    """How the persistent kernel separates timesteps (see :mod:`.kernel`)."""

    GRID = "grid"  # cooperative-groups grid sync
    FLAG = "flag"  # data-embedded sentinel barrier with a bounded spin
    CLUSTER = "cluster"  # thread-block cluster barrier: each recurrence's CTAs are one cluster


#: Largest thread-block cluster every sm_90 GPU launches (the CUDA "portable" size); the cluster
#: barrier needs a recurrence's CTAs to be one cluster.
PORTABLE_CLUSTER_SIZE = 8


#: Pairs per packed-half FMA chunk of float16 plans (:attr:`PersistentPlan.fp16_chunk`).
#: ``bench_rnn_cells.py --fp16-chunks 0 16 --barriers flag --candidates 1`` (H100, H = 1792,
#: 10 %, T = 256; the best of the planner's plans each way): GRU B = 4 0.449 -> 0.383 ms, LSTM
#: B = 4 0.606 -> 0.448, tanh B = 16 0.489 -> 0.436, B = 64 1.186 -> 0.920; max |error| vs
#: float64 unchanged for GRU / LSTM (5.9e-4 / 3.6e-4), 0.7e-3 -> 1.1-1.2e-3 for tanh.
DEFAULT_FP16_CHUNK = 16

#: Largest rows per lane group (unrolled per thread).
MAX_ROWS_PER_GROUP = 8


def itemsize(dtype: str) -> int:
    """Bytes per element of ``dtype`` (``"float32"`` or ``"float16"``)."""
    return 2 if dtype == "float16" else 4


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
        ``H`` rounded up to a multiple of 4 (units of ``h`` in shared memory).
    batch : int
        ``B`` as given.
    batch_kernel : int
        Samples per launch: 1 (fp32 only), 2 or a multiple of 4 (``batch`` is padded up to it).
    num_batch_chunks : int
        Launches needed for the whole batch.
    num_ctas, threads, lanes_per_row, rows_per_group : int
        Grid, CTA size, lanes sharing a row (``KS``), rows per lane group (``RPT``).
    nz_per_row : int
        Pairs per row after padding (multiple of ``KS``, and of ``2 KS`` for 16-bit indices or
        fp16 values, which are packed two per register).
        A row is one gate of one unit.
    index_mode : str
        ``"i32"`` (one int32 column per register) or ``"i16x2"`` (two 16-bit columns).
    dtype : str
        Dtype of the weights and of ``h`` (``"float32"`` or ``"float16"``; accumulation is fp32).
    gates : int
        Rows of ``R`` per hidden unit (``G``): 1 (RNN), 3 (GRU), 4 (LSTM).
    double_buffer : bool
        Two shared buffers of ``h`` (alternating steps), so that a warp may start copying
        ``h_t`` while the others still compute step ``t`` (one CTA barrier per step).
    smem_pairs : int
        Of each lane's ``pairs_per_lane`` slots of a row, how many (the last ones) are kept in
        shared memory instead of registers.
    directions : int
        Independent recurrences of this geometry run by one launch, each on its own
        ``num_ctas`` CTAs (2: both directions of a bidirectional layer at once).
    replicas : int
        Batch slices of ``batch_kernel`` samples each direction runs at once, each on its own
        ``num_ctas`` CTAs holding their own copy of ``R`` in registers: a launch covers
        ``replicas * batch_kernel`` samples, each slice exchanges only its own ``h``, and
        barriers stay within a slice. The grid has ``directions * replicas * num_ctas`` CTAs.
    two_phase : bool
        A step exchanges a state twice (GRU with ``linear_before_reset=0``): ``r * h_{t-1}``
        after the ``z`` and ``r`` gates, then ``h_t`` after the candidate; every thread keeps
        ``z`` and ``h_{t-1}`` of its units between the phases.
    fp16_chunk : int
        float16 only: pairs a lane accumulates with packed half-precision FMAs
        (``fma.rn.f16x2``: two samples per instruction, no conversion of ``h``) before adding
        the partial sums into its float32 accumulators; even, or 0 for float32 FMAs
        throughout (one conversion per sample and pair). The planner's float16 plans take
        :data:`DEFAULT_FP16_CHUNK`.
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
    gates: int = 1
    double_buffer: bool = False
    smem_pairs: int = 0
    directions: int = 1
    replicas: int = 1
    two_phase: bool = False
    fp16_chunk: int = 0
    reason: str = field(default="", compare=False)

    @property
    def phases(self) -> int:
        """State exchanges (and barriers) per step: 2 when :attr:`two_phase`, else 1."""
        return 2 if self.two_phase else 1

    def out_shape(self, steps: object) -> tuple:
        """Shape of the kernel's ``out`` for ``steps`` steps (an int, or the kernel's symbolic
        ``T``): ``(phases * steps, streams * hidden_padded, batch_kernel)``."""
        return (self.phases * steps, self.streams * self.hidden_padded, self.batch_kernel)

    def u_shape(self, steps: object, samples: object = None) -> tuple:
        """Shape of the kernel's ``U`` for ``steps`` steps: ``(steps, samples, directions *
        gates * hidden_padded)``, the input projections of one launch's ``samples`` (default
        :attr:`launch_batch`) as the GEMM ``X W^T`` gives them when ``W``'s rows are unit-major
        (row ``j * gates + g`` of a direction: gate ``g`` of unit ``j``, zero rows for the
        padded units) and the directions' ``W`` stacked."""
        samples = self.launch_batch if samples is None else samples
        return (steps, samples, self.directions * self.gates * self.hidden_padded)

    @property
    def streams(self) -> int:
        """Independent recurrences of one launch (``directions * replicas``)."""
        return self.directions * self.replicas

    @property
    def launch_batch(self) -> int:
        """Samples of one direction per launch (``replicas * batch_kernel``)."""
        return self.replicas * self.batch_kernel

    @property
    def grid_ctas(self) -> int:
        """CTAs of the launch (``streams * num_ctas``)."""
        return self.streams * self.num_ctas

    @property
    def groups_per_cta(self) -> int:
        """Lane groups (rows at a time) per CTA."""
        return self.threads // self.lanes_per_row

    @property
    def units_per_group(self) -> int:
        """Hidden units per lane group (``rows_per_group / gates``)."""
        return self.rows_per_group // self.gates

    @property
    def rows_padded(self) -> int:
        """Rows of the packed weight, ``>= gates * hidden_padded``."""
        if self.kind != "persistent":
            return self.hidden_padded * self.gates
        return self.num_ctas * self.groups_per_cta * self.rows_per_group

    @property
    def pairs_per_lane(self) -> int:
        """``<column, value>`` pairs one lane holds for one row."""
        return self.nz_per_row // self.lanes_per_row

    @property
    def pairs_per_thread(self) -> int:
        """Pairs one thread keeps in registers."""
        return self.rows_per_group * (self.pairs_per_lane - self.smem_pairs)

    @property
    def smem_pair_words(self) -> int:
        """32-bit shared words per shared-memory pair: 1 (fp16) or 2 (fp32)."""
        return 1 if self.dtype == "float16" else 2

    @property
    def weight_smem_bytes(self) -> int:
        """Shared memory of one CTA for its shared-memory pairs."""
        return self.threads * self.rows_per_group * self.smem_pairs * self.smem_pair_words * 4

    @property
    def itemsize(self) -> int:
        """Bytes per element of the weights and of ``h``."""
        return itemsize(self.dtype)

    @property
    def sub_batch(self) -> int:
        """Samples per pass of the kernel over its pairs (a 16-byte chunk at most).

        Larger batches take several passes per step over the register-resident pairs, so the
        accumulators (per row and sample) stay few: ``B = 16`` costs 4 passes, not 4x the
        registers.
        """
        return min(self.batch_kernel, 16 // self.itemsize)

    @property
    def vector_width(self) -> int:
        """Elements per shared-memory load of ``h`` (16 bytes at most: LDS.128)."""
        return self.sub_batch

    @property
    def h_bytes(self) -> int:
        """Bytes of ``h`` for one batch chunk."""
        return self.hidden_padded * self.batch_kernel * self.itemsize

    @property
    def smem_bytes(self) -> int:
        """Shared memory of one CTA: ``h_{t-1}`` (twice if double-buffered) and the smem pairs."""
        return self.h_bytes * (2 if self.double_buffer else 1) + self.weight_smem_bytes

    @property
    def copy_chunks(self) -> int:
        """16-byte chunks of ``h`` each thread copies per step."""
        return math.ceil(self.h_bytes // 16 / self.threads)

    @property
    def regs_estimate(self) -> int:
        """Estimated registers per thread (see the module docstring)."""
        half_accumulators = self.sub_batch // 2 + 1 if self.fp16_chunk else 0
        return half_accumulators + estimate_registers(
            self.pairs_per_thread,
            self.index_mode,
            self.batch_kernel,
            self.rows_per_group,
            self.dtype,
            self.gates,
            self.two_phase,
        )

    def cost(self) -> float:
        """Modelled cycles of one step on one SM (lower is better), to rank geometries.

        The shared-memory pipe of an SM serves both the loads of ``h`` (128 B per cycle) and the
        shuffles of the row reductions (one warp instruction per cycle), so both add up over
        the CTA; the critical thread adds its chain of dependent loads and its copy of ``h``.
        Fitted to H100 measurements (``benchmarks/bench_rnn.py``): it ranks, it does not predict.
        """
        rows_per_cta = self.groups_per_cta * self.rows_per_group
        lds = rows_per_cta * self.nz_per_row * self.batch_kernel * self.itemsize / 128
        lds += rows_per_cta * self.smem_pairs * self.lanes_per_row * self.smem_pair_words / 32
        warps = self.threads // 32
        shuffles = warps * self.rows_per_group * self.batch_kernel * math.log2(self.lanes_per_row)
        chain = self.pairs_per_thread * math.ceil(self.batch_kernel / self.vector_width)
        return lds + shuffles + 2.0 * chain + 4.0 * self.copy_chunks * self.phases

    def describe(self) -> str:
        """One-line summary."""
        if self.kind != "persistent":
            return f"per_step: {self.reason}"
        concurrent = f"{self.directions} directions x " if self.directions > 1 else ""
        if self.replicas > 1:
            concurrent += f"{self.replicas} replicas x "
        return (
            f"{concurrent}{self.num_ctas}x{self.threads} KS={self.lanes_per_row} "
            f"RPT={self.rows_per_group} G={self.gates}{' two-phase' if self.two_phase else ''} "
            f"{self.dtype}{f' f16x2/{self.fp16_chunk}' if self.fp16_chunk else ''} "
            f"NZ={self.nz_per_row} ({self.pairs_per_thread} pairs/thread"
            f"{f' + {self.smem_pairs * self.rows_per_group} in smem' if self.smem_pairs else ''}, "
            f"{self.index_mode}, "
            f"~{self.regs_estimate} regs) "
            f"B={self.batch_kernel}{f'x{self.replicas}' if self.replicas > 1 else ''}"
            f"x{self.num_batch_chunks} "
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
    barrier = "flag" if plan.h_bytes <= FLAG_BARRIER_MAX_H_BYTES else "grid"
    return barrier, plan.batch_kernel <= plan.vector_width


def estimate_registers(
    pairs: int,
    index_mode: str,
    batch: int,
    rows_per_group: int,
    dtype: str = "float32",
    gates: int = 1,
    two_phase: bool = False,
) -> int:
    """Registers per thread for ``pairs`` register-resident pairs.

    Value plus column (see the module docstring), the fixed overhead, an accumulator and a
    prefetched ``u_t`` per row and sample of a pass, for gated cells the gate math of a pass,
    the LSTM cell state per unit and sample (two-phase GRU: ``z`` and ``h_{t-1}`` per unit and
    sample, kept between the phases), and with several passes one more register per
    pair (``ptxas -v``, sm_90a, H = 1792, 10 %: 8 samples in 2 passes at 54 pairs per thread,
    123 registers estimated without it, spilled 180 bytes at its 128-register cap; presumably
    nvcc keeps each pair's ``h`` address across the passes, not verified in the SASS).
    """
    per_pair = (0.5 if dtype == "float16" else 1.0) + (0.5 if index_mode == "i16x2" else 1.0)
    fixed = REG_OVERHEAD + (REG_OVERHEAD_F16 if dtype == "float16" else 0)
    sub = min(batch, 16 // itemsize(dtype))  # samples per pass (PersistentPlan.sub_batch)
    per_pair += 1.0 if batch > sub else 0.0
    units = rows_per_group // gates
    kept = {4: units * batch, 3: 2 * units * batch if two_phase else 0}.get(gates, 0)
    cell = 0 if gates == 1 else 6 * sub + kept
    return math.ceil(per_pair * pairs) + fixed + 2 * sub * rows_per_group + cell


def kernel_batch(batch: int, dtype: str = "float32") -> int:
    """Samples per launch the kernel supports: 1 (fp32), 2 or the next multiple of 4.

    fp16 pads ``B = 1`` to 2, so that a column of ``h`` is at least one 32-bit shared word.
    """
    if batch <= 2:
        return max(batch, 2) if dtype == "float16" else batch
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


def _batch_split(
    hidden_padded: int, batch: int, dtype: str, device: DeviceLimits
) -> tuple[int, int]:
    """Kernel batch and number of launches: the fewest launches whose ``h`` fits in shared
    memory, the batch split evenly among them (``B = 64`` at 56 samples per launch: 2 x 32,
    not 56 + 8 padded to 56)."""
    bk = kernel_batch(batch, dtype)
    sample = hidden_padded * itemsize(dtype)
    fit = device.smem_per_block // sample
    if bk <= fit:
        return bk, 1
    if fit < kernel_batch(1, dtype):
        raise CapacityError(
            f"hidden size {hidden_padded}: one sample of h needs {sample} B of shared "
            f"memory, more than the {device.smem_per_block} B per CTA of {device.name}"
        )
    chunk = min(fit, 2) if fit < 4 else fit // 4 * 4
    chunks = -(-batch // chunk)
    return min(chunk, kernel_batch(-(-batch // chunks), dtype)), chunks


def candidate_plans(
    hidden: int,
    max_row_nnz: int,
    batch: int,
    dtype: str = "float32",
    *,
    device: DeviceLimits,
    double_buffer: bool = False,
    gates: int = 1,
    directions: int = 1,
    replicas: int = 1,
    two_phase: bool = False,
) -> list[PersistentPlan]:
    """Every persistent geometry that fits ``device``, best (lowest :meth:`cost`) first.

    Parameters
    ----------
    hidden : int
        ``H`` (hidden units; ``R`` has ``gates * H`` rows).
    max_row_nnz : int
        Nonzeros of the longest row of ``R``.
    batch : int
        ``B``.
    dtype : str
        ``"float32"`` or ``"float16"``.
    device : DeviceLimits
        The GPU.
    double_buffer : bool
        Double-buffer ``h`` where it fits (off by default: on the H100 it measured 2-13 %
        slower, see ``docs/persistent_rnn.md``).
    gates : int
        Gates per unit: 1 (RNN), 3 (GRU) or 4 (LSTM).
    directions : int
        Recurrences run by one launch (:attr:`PersistentPlan.directions`): each gets at most
        ``device.num_sms // directions`` CTAs.
    replicas : int
        Batch slices per direction run at once (:attr:`PersistentPlan.replicas`), at most
        ``batch``; each gets at most ``device.num_sms // (directions * replicas)`` CTAs.
    two_phase : bool
        Two state exchanges per step (:attr:`PersistentPlan.two_phase`; ``gates`` must be 3).
    """
    if dtype not in SUPPORTED_DTYPES:
        raise UnsupportedError(
            f"dtype {dtype!r}: the persistent kernel supports {SUPPORTED_DTYPES}"
        )
    if gates not in GATE_COUNTS:
        raise ValueError(f"gates must be one of {GATE_COUNTS}, got {gates}")
    if not 1 <= directions <= device.num_sms:
        raise ValueError(f"directions must be in [1, {device.num_sms}], got {directions}")
    if not 1 <= replicas <= batch:
        raise ValueError(f"replicas must be in [1, batch={batch}], got {replicas}")
    if two_phase and gates != 3:
        raise ValueError(f"two_phase is the GRU's (3 gates), got gates={gates}")
    streams = directions * replicas
    hp = _round_up(hidden, 4)
    bk, chunks = _batch_split(hp, -(-batch // replicas), dtype, device)
    h_bytes = hp * bk * itemsize(dtype)
    double = double_buffer and 2 * h_bytes <= device.smem_per_block
    index_modes = ("i32", "i16x2") if hp <= 65536 else ("i32",)
    reg_cap = device.max_regs_per_thread - REG_HEADROOM
    rpts = [gates * u for u in (1, 2, 3, 4, 6, 8) if gates * u <= MAX_ROWS_PER_GROUP]
    out = []
    for ks in (1, 2, 4, 8, 16, 32):
        for threads in range(32, device.max_threads_per_block + 1, 32):
            groups = threads // ks
            footprint = _round_up(threads, 32 * SCHEDULERS_PER_SM)  # threads' register share
            if math.ceil(h_bytes / 16 / threads) > MAX_COPY_CHUNKS:
                continue
            for rpt in rpts:
                ctas = -(-hp // (groups * rpt // gates))
                if ctas * streams > device.num_sms:
                    continue
                for mode in index_modes:
                    paired = mode == "i16x2" or dtype == "float16"  # two slots per register
                    nz = _round_up(max(max_row_nnz, 1), ks * (2 if paired else 1))
                    base = PersistentPlan(
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
                        gates,
                        double,
                        directions=directions,
                        replicas=replicas,
                        two_phase=two_phase,
                        fp16_chunk=DEFAULT_FP16_CHUNK if dtype == "float16" else 0,
                    )
                    plan = _fit_registers(base, footprint, reg_cap, device, paired)
                    if plan is not None:
                        out.append(plan)
    # Among equal costs prefer fewer registers (i32 first: no unpacking), then fewer threads.
    out.sort(key=lambda p: (p.cost(), p.index_mode == "i16x2", p.regs_estimate, p.threads))
    return out


#: Bytes per cycle one SM draws from L2 when every SM copies ``h`` at once (H100 class), for
#: :func:`step_cycles`.
L2_BYTES_PER_CYCLE = 32
#: Slow-down of a kernel that walks its pairs in several passes per step (more samples than one
#: 16-byte load): H100, H = 1792, 10 %, B = 64, flag barrier, T = 256: 8 replicas of 8 samples
#: (2 passes) 7.10 ms, 16 replicas of 4 samples (1 pass) 1.53 ms (``benchmarks/bench_rnn.py
#: --sweep batch`` times the same plans). The 2-pass plan spilled registers (see
#: :func:`estimate_registers`); multi-pass plans without spills are not measured yet.
MULTI_PASS_PENALTY = 4.0


def step_cycles(plan: PersistentPlan) -> float:
    """Modelled cycles of one step of the whole batch: :meth:`PersistentPlan.cost` plus the copy
    of ``h`` through L2, once per launch of the batch, times :data:`MULTI_PASS_PENALTY` for a
    kernel of several passes.

    The copy is what replicas save (each slice copies its own ``h`` only), so this ranks plans
    of different replica counts; within one count the ranking is :meth:`~PersistentPlan.cost`'s.
    """
    copies = plan.h_bytes * plan.phases / L2_BYTES_PER_CYCLE
    cycles = (plan.cost() + copies) * plan.num_batch_chunks
    return cycles * (MULTI_PASS_PENALTY if plan.batch_kernel > plan.sub_batch else 1.0)


#: Smallest batch planned with replicas (smaller batches were not measured with them).
MIN_REPLICATED_BATCH = 4
#: Fewest SMs a replica keeps (a recurrence on fewer has little register file for ``R``).
MIN_REPLICA_SMS = 4


def replica_options(batch: int, directions: int, device: DeviceLimits) -> tuple[int, ...]:
    """Replica counts worth planning: 1, and from :data:`MIN_REPLICATED_BATCH` samples on the
    powers of two up to ``batch`` that leave each recurrence :data:`MIN_REPLICA_SMS` SMs."""
    options = [1]
    if batch < MIN_REPLICATED_BATCH:
        return tuple(options)
    while (
        options[-1] * 2 <= batch
        and directions * options[-1] * 2 * MIN_REPLICA_SMS <= device.num_sms
    ):
        options.append(options[-1] * 2)
    return tuple(options)


def best_candidates(
    hidden: int,
    max_row_nnz: int,
    batch: int,
    dtype: str = "float32",
    *,
    device: DeviceLimits,
    gates: int = 1,
    directions: int = 1,
    replicas: int | None = None,
    two_phase: bool = False,
) -> list[PersistentPlan]:
    """:func:`candidate_plans` for ``replicas``, or when ``None`` for the replica count of
    :func:`replica_options` whose best plan has the fewest :func:`step_cycles` (fewest replicas
    on ties)."""
    plans_for = functools.partial(
        candidate_plans,
        hidden,
        max_row_nnz,
        batch,
        dtype,
        device=device,
        gates=gates,
        directions=directions,
        two_phase=two_phase,
    )
    if replicas is not None:
        return plans_for(replicas=replicas)
    options = [plans_for(replicas=r) for r in replica_options(batch, directions, device)]
    return min((p for p in options if p), key=lambda plans: step_cycles(plans[0]), default=[])


def _fit_registers(
    plan: PersistentPlan, footprint: int, reg_cap: int, device: DeviceLimits, paired: bool
) -> PersistentPlan | None:
    """``plan`` with as many pairs in registers as fit, the rest in shared memory (or None)."""

    def fits(p: PersistentPlan) -> bool:
        regs = p.regs_estimate
        return regs <= reg_cap and footprint * _round_up(regs, 8) <= device.regs_per_sm

    if fits(plan):
        return plan
    fixed_args = (plan.index_mode, plan.batch_kernel)
    cell_args = (plan.dtype, plan.gates, plan.two_phase)
    per_pair = estimate_registers(2, *fixed_args, 1, *cell_args) - estimate_registers(
        0, *fixed_args, 1, *cell_args
    )
    regs = min(reg_cap, device.regs_per_sm // footprint // 8 * 8)
    fixed = estimate_registers(0, *fixed_args, plan.rows_per_group, *cell_args)
    in_regs = int((regs - fixed) * 2 / per_pair) // plan.rows_per_group  # per lane and row
    in_regs -= in_regs % (2 if paired else 1)
    if in_regs < 0:
        return None
    spilled = replace(plan, smem_pairs=plan.pairs_per_lane - in_regs)
    if not fits(spilled) or spilled.smem_bytes > device.smem_per_block:
        return None
    return spilled


def plan_persistent(
    R: np.ndarray | object | None = None,
    batch: int = 1,
    dtype: str = "float32",
    *,
    device: DeviceLimits,
    gates: int = 1,
    hidden: int | None = None,
    max_row_nnz: int | None = None,
    require_persistent: bool = False,
    directions: int = 1,
    replicas: int | None = None,
    two_phase: bool = False,
) -> PersistentPlan:
    """Choose the persistent geometry for ``R`` (or fall back to the per-step kernel).

    Parameters
    ----------
    R : array or scipy sparse, optional
        ``(gates * H, H)`` recurrent weight (all gates); or give ``hidden`` and ``max_row_nnz``.
    batch : int
        ``B >= 1``.
    dtype : str
        ``"float32"`` or ``"float16"``.
    device : DeviceLimits
        The GPU (:func:`tvm_sparse_rnn.target.device_limits` of the target).
    gates : int
        Gates per unit: 1 (RNN), 3 (GRU) or 4 (LSTM).
    hidden, max_row_nnz : int, optional
        Used when ``R`` is not given.
    require_persistent : bool
        Raise :class:`CapacityError` instead of returning a ``per_step`` plan.
    directions : int
        Recurrences of this geometry run by one launch (see :func:`candidate_plans`); the
        ``per_step`` plan runs one.
    replicas : int, optional
        Batch slices run at once (:attr:`PersistentPlan.replicas`); default: chosen by
        :func:`best_candidates`.
    two_phase : bool
        Two state exchanges per step (GRU with ``linear_before_reset=0``).

    Returns
    -------
    PersistentPlan
        ``kind == "persistent"``, or ``"per_step"`` with the capacity numbers in ``reason``.
    """
    if R is not None:
        lengths = row_lengths(R)
        if lengths.size % gates:
            raise ValueError(f"R has {lengths.size} rows, not a multiple of gates={gates}")
        hidden = int(lengths.size) // gates
        max_row_nnz = int(lengths.max()) if lengths.size else 0
    if hidden is None or max_row_nnz is None:
        raise ValueError("give R, or hidden and max_row_nnz")
    if hidden < 1 or batch < 1:
        raise ValueError(f"hidden ({hidden}) and batch ({batch}) must be >= 1")
    cands = best_candidates(
        hidden,
        max_row_nnz,
        batch,
        dtype,
        device=device,
        gates=gates,
        directions=directions,
        replicas=replicas,
        two_phase=two_phase,
    )
    if cands:
        plan = replace(cands[0], reason=f"lowest cost of {len(cands)} fitting geometries")
        logger.info("persistent plan H=%d B=%d: %s", hidden, batch, plan.describe())
        return plan
    hp = _round_up(hidden, 4)
    pairs = gates * hp * _round_up(max(max_row_nnz, 1), 2)
    per_sm = pairs / device.num_sms
    least = (0.5 if dtype == "float16" else 1.0) + 0.5  # registers per pair, 16-bit columns
    reason = (
        f"R ({gates * hidden}x{hidden} {dtype}, longest row {max_row_nnz} nonzeros) needs "
        f"{pairs} register pairs after padding, {per_sm:.0f} per SM on {device.num_sms} SMs; at "
        f">= {least:g} registers per pair plus {REG_OVERHEAD} per thread this exceeds "
        f"{device.regs_per_sm} registers per SM (or {device.max_regs_per_thread} per thread) on "
        f"{device.name}"
    )
    if require_persistent:
        raise CapacityError(reason)
    bk, chunks = _batch_split(hp, batch, dtype, device)
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
        gates,
        two_phase=two_phase,
        reason=reason,
    )


def max_hidden(
    density: float,
    batch: int = 4,
    *,
    device: DeviceLimits,
    dtype: str = "float32",
    gates: int = 1,
) -> int:
    """Largest ``H`` (multiple of 64) whose random ``R`` at ``density`` stays persistent.

    The longest row is estimated as the binomial mean plus four standard deviations.
    """
    lo, hi = 64, 65536
    while hi - lo > 64:
        mid = (lo + hi) // 2 // 64 * 64
        mean = density * mid
        longest = math.ceil(mean + 4.0 * math.sqrt(mean * (1 - density)) + 1)
        if candidate_plans(mid, longest, batch, dtype, device=device, gates=gates):
            lo = mid
        else:
            hi = mid
    return lo
