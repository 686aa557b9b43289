"""TVMScript CUDA kernels of the sparse persistent RNN ``h_t = f(R h_{t-1} + u_t)``.

After Zhu et al., "Sparse Persistent RNNs: Squeezing Large Recurrent Networks On-Chip"
(ICLR 2018) and Diamos et al., "Persistent RNNs" (ICML 2016). One launch runs all ``T`` steps:

* every lane loads its rows' ``<column, value>`` pairs **once** into thread-local buffers indexed
  only by compile-time constants (every loop over them is ``T.unroll``), so nvcc keeps them in
  registers (check: ``ptxas -v`` reports 0 bytes spill, see ``docs/persistent_rnn.md``);
* per step the CTA copies ``h_{t-1}`` into shared memory with ``cp.async.cg`` (16 B, through L2),
  as ``[B/4, H, 4]`` when ``B % 4 == 0`` so that each pair is one **LDS.128** per 4 samples
  (``float4`` in the CUDA source; the column is multiplied in the kernel so TVM can prove the
  alignment);
* 16-bit columns and fp16 values are unpacked with ``asm volatile`` helpers at every use:
  otherwise nvcc hoists the loop-invariant unpacking out of the time loop and holds two to four
  registers per pair instead of one (and spills);
* fp16 plans with ``fp16_chunk`` multiply a pair with two samples of ``h`` in one
  ``fma.rn.f16x2`` on the 32-bit word of ``h`` as it sits in shared memory, into packed-half
  partial sums added into the fp32 accumulators every ``fp16_chunk`` pairs (no conversion of
  ``h``; see ``docs/persistent_rnn.md`` for the speed and the error);
* ``KS`` lanes share a row and combine their partial sums with a shuffle-xor butterfly; ``u_t``
  (prefetched before the barrier) and the activation are fused into the store of ``h_t``;
* steps are separated by one of

  - ``barrier="grid"``: ``cooperative_groups::this_grid().sync()``;
  - ``barrier="cluster"``: the CTAs of one recurrence are one thread-block cluster (at most
    :data:`~.planner.PORTABLE_CLUSTER_SIZE`), separated by ``barrier.cluster`` (arrive with
    release semantics after storing ``h_t``, wait with acquire semantics before copying it, so
    the prefetch of ``u_t`` overlaps the barrier); alone it measured 0.2 us on the H200
    against the grid sync's 1.0 us (``../shared/docs/h200_cluster_probe.md``), but in this
    kernel it was slower than both other barriers on the H100 (``docs/persistent_rnn.md``), so
    it is never the default; or
  - ``barrier="flag"``: a data-embedded (Lamport-style) barrier: a first small kernel fills
    ``out[0 : T-1]`` with a NaN sentinel, and a CTA copying ``h_{t-1}`` re-fetches only the
    16-byte chunks that still hold the sentinel. The copy *is* the barrier: no arrival counter,
    no fence (each word is written once per launch), and a CTA starts step ``t`` as soon as the
    words it needs have landed. The spin is bounded (:data:`MAX_SPINS`); on time-out the kernel
    sets ``status[0] = 1`` instead of hanging.

The grid and flag kinds are launched cooperatively (``cuda_pipeline``), which guarantees that all
CTAs are co-resident (the launch fails instead of deadlocking when they do not fit); a cluster's
CTAs are co-scheduled by the hardware, and clusters never wait on each other.

A launch may run several independent recurrences (*streams*), each on its own ``num_ctas``
CTAs: both directions of a bidirectional layer, and ``replicas`` slices of the batch per
direction (each with its own copy of ``R`` in registers, read from one packed array), so that
a slice exchanges only its own ``h`` and its barrier spans only its CTAs.

Profile with::

    ncu --metrics l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum,gpu__time_duration.sum \\
        python benchmarks/bench_rnn.py --ncu
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from tvm import tirx
from tvm.script import tirx as T  # noqa: N812

from ....errors import UnsupportedError
from ....ops.cells import PersistentCell
from .planner import PORTABLE_CLUSTER_SIZE, Barrier, PersistentPlan

logger = logging.getLogger(__name__)

#: PrimFunc attribute asking for a cooperative launch (:mod:`.cooperative` reads it).
COOPERATIVE_ATTR = "tvm_sparse_rnn.cooperative_launch"
#: Bit pattern written into not-yet-computed ``h`` words (a negative quiet NaN with a payload
#: that GPU arithmetic never produces; the canonical NaN is 0x7FFFFFFF).
SENTINEL_BITS = int(np.array(0xFFC0BEEF, np.uint32).view(np.int32))
#: Polls of one chunk before the flag barrier gives up (about a second of spinning); the thread
#: then sets ``status`` and stores NaN for the rest of the launch (never a silently wrong h).
MAX_SPINS = 1 << 20
#: Device helper copying 16 bytes of ``h`` into shared memory with ``cp.async.cg``.
COPY_HELPER = "sprnn_cp16"

_HELPERS = {
    COPY_HELPER: """
__forceinline__ __device__ void sprnn_cp16(void* dst, const void* src) {
  unsigned s = (unsigned)__cvta_generic_to_shared(dst);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\\n" :: "r"(s), "l"(src) : "memory");
}
""",
    "sprnn_cp_wait": """
__forceinline__ __device__ void sprnn_cp_wait() {
  asm volatile("cp.async.wait_all;\\n" ::: "memory");
}
""",
    "sprnn_cluster_arrive": """
__forceinline__ __device__ void sprnn_cluster_arrive() {
  asm volatile("barrier.cluster.arrive.release.aligned;\\n" ::: "memory");
}
""",
    "sprnn_cluster_wait": """
__forceinline__ __device__ void sprnn_cluster_wait() {
  asm volatile("barrier.cluster.wait.acquire.aligned;\\n" ::: "memory");
}
""",
    "sprnn_nan": """
__forceinline__ __device__ float sprnn_nan() {
  return __int_as_float(0x7fc00000);
}
""",
    "sprnn_ready16": f"""
__forceinline__ __device__ int sprnn_ready16(const void* p) {{
  const volatile int* q = reinterpret_cast<const volatile int*>(p);
  return (q[0] != {SENTINEL_BITS}) & (q[1] != {SENTINEL_BITS}) & (q[2] != {SENTINEL_BITS})
         & (q[3] != {SENTINEL_BITS});
}}
""",
}


def _unpack_helper(name: str, ctype: str, constraint: str, asm: str) -> str:
    """A device function ``ctype name(int w)`` running ``asm`` (``%0`` result, ``%1`` ``w``).

    ``asm volatile``, so nvcc cannot hoist the unpacking of register-resident pairs out of the
    time loop (see the module docstring).
    """
    return f"""
__forceinline__ __device__ {ctype} {name}(int w) {{
  {ctype} r;
  asm volatile("{asm}" : "={constraint}"(r) : "r"(w));
  return r;
}}
"""


_HALF = "{ .reg .b16 l, h; mov.b32 {l, h}, %1; cvt.f32.f16 %0, "
_HELPERS.update(
    {
        "sprnn_half_lo": _unpack_helper("sprnn_half_lo", "float", "f", _HALF + "l; }"),
        "sprnn_half_hi": _unpack_helper("sprnn_half_hi", "float", "f", _HALF + "h; }"),
        "sprnn_col_lo": _unpack_helper("sprnn_col_lo", "int", "r", "and.b32 %0, %1, 65535;"),
        "sprnn_col_hi": _unpack_helper("sprnn_col_hi", "int", "r", "shr.u32 %0, %1, 16;"),
    }
)


def _hfma2_helper(name: str, half: str) -> str:
    """A device function ``int name(int acc, int w, int h)``: ``acc + w.half * h`` over the two
    fp16 lanes of ``acc`` and ``h`` (``fma.rn.f16x2``), ``w.half`` the ``l`` or ``h`` half of
    the packed weights ``w`` in both lanes (``asm volatile`` like the unpacking helpers)."""
    return f"""
__forceinline__ __device__ int {name}(int acc, int w, int h) {{
  int r;
  asm volatile("{{ .reg .b16 l, h; .reg .b32 v; mov.b32 {{l, h}}, %2; "
               "mov.b32 v, {{{half}, {half}}}; fma.rn.f16x2 %0, v, %3, %1; }}"
               : "=r"(r) : "r"(acc), "r"(w), "r"(h));
  return r;
}}
"""


_HELPERS.update({f"sprnn_hfma2_{h}": _hfma2_helper(f"sprnn_hfma2_{h}", h[0]) for h in ("lo", "hi")})


def _call(name: str, *args: object, ret: str = "void") -> tirx.PrimExpr:
    return T.cuda.func_call(name, *args, source_code=_HELPERS[name], return_type=ret)


def _check(plan: PersistentPlan, cell: PersistentCell, barrier: Barrier | None = None) -> None:
    if cell.gates != plan.gates:
        raise ValueError(f"cell {cell.value!r} has {cell.gates} gates, the plan {plan.gates}")
    if cell.two_phase != plan.two_phase:
        raise ValueError(
            f"cell {cell.value!r} needs a plan with two_phase={cell.two_phase}, got "
            f"{plan.two_phase}"
        )
    if plan.fp16_chunk and (plan.dtype != "float16" or plan.fp16_chunk % 2 or plan.fp16_chunk < 0):
        raise ValueError(
            f"fp16_chunk must be 0 or a positive even number of pairs with dtype float16, got "
            f"{plan.fp16_chunk} with {plan.dtype}"
        )
    if barrier is Barrier.CLUSTER and plan.num_ctas > PORTABLE_CLUSTER_SIZE:
        raise ValueError(
            f"the cluster barrier needs a recurrence's CTAs in one cluster: the plan has "
            f"{plan.num_ctas} CTAs per recurrence, at most {PORTABLE_CLUSTER_SIZE} allowed"
        )


def _converters(dtype: str) -> tuple:
    """``(to_f32, to_dtype)``: casts between the storage dtype and fp32 (no-ops for fp32)."""
    if dtype == "float32":
        return (lambda x: x), (lambda x: x)
    return (lambda x: T.Cast("float32", x)), (lambda x: T.Cast(dtype, x))


def _cell_macro(cell: PersistentCell, batch: int):
    """``cell_update(hv, acc, a0, uu, u0, cst, c0, rb, h_prev, b)``: ``h_t`` of one sample.

    ``acc[a0 + g*batch + b]`` holds ``(R_g h_{t-1})[b]`` and ``uu[u0 + g*batch + b]`` the input
    projection of gate ``g`` (ONNX gate orders: GRU ``z, r, h`` with ``linear_before_reset=1``,
    LSTM ``i, o, f, c``); ``cst[c0 + b]`` is the LSTM cell state (updated in place), ``rb`` the
    GRU's recurrent bias of the ``h`` gate, ``h_prev`` the unit's ``h_{t-1}[b]``. The result goes
    to ``hv[b]`` (float32).
    """
    Bk = batch

    def pre(acc, a0, uu, u0, g, b):
        return acc[a0 + g * Bk + b] + uu[u0 + g * Bk + b]

    @T.macro
    def cell_update(hv, acc, a0, uu, u0, cst, c0, rb, h_prev, b):
        if cell is PersistentCell.TANH:
            hv[b] = T.tanh(pre(acc, a0, uu, u0, 0, b))
        elif cell is PersistentCell.RELU:
            hv[b] = T.max(pre(acc, a0, uu, u0, 0, b), T.float32(0))
        elif cell is PersistentCell.GRU:
            z = T.sigmoid(pre(acc, a0, uu, u0, 0, b))
            r = T.sigmoid(pre(acc, a0, uu, u0, 1, b))
            n = T.tanh(uu[u0 + 2 * Bk + b] + r * (acc[a0 + 2 * Bk + b] + rb))
            hv[b] = (T.float32(1) - z) * n + z * h_prev
        elif cell is PersistentCell.LSTM:  # (the two-phase GRU: _two_phase_macros)
            cst[c0 + b] = T.sigmoid(pre(acc, a0, uu, u0, 2, b)) * cst[c0 + b] + T.sigmoid(
                pre(acc, a0, uu, u0, 0, b)
            ) * T.tanh(pre(acc, a0, uu, u0, 3, b))
            hv[b] = T.sigmoid(pre(acc, a0, uu, u0, 1, b)) * T.tanh(cst[c0 + b])

    return cell_update


def _two_phase_macros(width: int):
    """``(reset_gate, candidate)``: the two halves of a GRU step with ``linear_before_reset=0``.

    ``reset_gate(hv, zs, hps, acc, uu, u0, k0, h_prev, b)`` keeps ``z`` and ``h_{t-1}`` of
    sample ``b`` of the pass in ``zs[k0 + b]``, ``hps[k0 + b]`` and puts ``r * h_{t-1}`` into
    ``hv[b]``; ``candidate(hv, zs, hps, acc, uu, u0, k0, b)`` puts
    ``h_t = (1 - z) * tanh(u_h + R_h (r * h_{t-1})) + z * h_{t-1}`` into ``hv[b]``. ``acc`` and
    ``uu`` are laid out as in :func:`_cell_macro` (``width`` samples per gate); the recurrent
    bias of every gate is folded into ``uu`` (ONNX adds ``Rb_h`` outside the reset gate).
    """

    def pre(acc, uu, u0, g, b):
        return acc[g * width + b] + uu[u0 + g * width + b]

    @T.macro
    def reset_gate(hv, zs, hps, acc, uu, u0, k0, h_prev, b):
        zs[k0 + b] = T.sigmoid(pre(acc, uu, u0, 0, b))
        hps[k0 + b] = h_prev
        hv[b] = T.sigmoid(pre(acc, uu, u0, 1, b)) * h_prev

    @T.macro
    def candidate(hv, zs, hps, acc, uu, u0, k0, b):
        hv[b] = (T.float32(1) - zs[k0 + b]) * T.tanh(pre(acc, uu, u0, 2, b)) + zs[k0 + b] * hps[
            k0 + b
        ]

    return reset_gate, candidate


@dataclass(frozen=True)
class KernelGeometry:
    """Every size the persistent kernel is specialised on, derived from a plan and two knobs.

    A lane group of ``lanes_per_row`` threads owns ``rows_per_group`` consecutive packed rows
    (``units_per_group`` hidden units with all their gates); each lane keeps ``pairs_per_lane``
    slots of every row, ``register_slots`` in registers and ``smem_slots`` in shared memory.
    ``h_{t-1}`` lives in shared memory, ``vector`` loads read ``pass_width`` samples at once, and
    a step runs ``passes`` passes over the pairs (``pass_width`` samples each).
    """

    plan: PersistentPlan
    barrier: Barrier
    vector: bool

    @property
    def index16(self) -> bool:
        """Two 16-bit columns per index register."""
        return self.plan.index_mode == "i16x2"

    @property
    def half(self) -> bool:
        """fp16 values, two per value register."""
        return self.plan.dtype == "float16"

    @property
    def half_accumulate(self) -> bool:
        """Packed fp16 FMAs over chunks of ``plan.fp16_chunk`` pairs (see the plan)."""
        return self.plan.fp16_chunk > 0

    @property
    def word_load_width(self) -> int:
        """32-bit words (two fp16 samples each) per shared load of ``h`` with
        :attr:`half_accumulate`."""
        return max(self.load_width, 2) // 2

    @property
    def word_loads_per_pair(self) -> int:
        """Shared loads per pair and pass with :attr:`half_accumulate`."""
        return self.pass_width // 2 // self.word_load_width

    @property
    def slots_per_iteration(self) -> int:
        """Slots handled per unrolled iteration (2 when two share a register)."""
        return 2 if self.index16 or self.half else 1

    @property
    def smem_slots(self) -> int:
        """Slots per lane and row kept in shared memory (the last ones)."""
        return self.plan.smem_pairs

    @property
    def register_slots(self) -> int:
        """Slots per lane and row kept in registers."""
        return self.plan.pairs_per_lane - self.smem_slots

    @property
    def index_registers(self) -> int:
        """Index registers per lane and row."""
        return self.register_slots // 2 if self.index16 else self.register_slots

    @property
    def value_registers(self) -> int:
        """Value registers per lane and row."""
        return self.register_slots // 2 if self.half else self.register_slots

    @property
    def value_words(self) -> int:
        """Register-slot words of ``vals`` per row (all lanes)."""
        return max(self.value_registers, 1) * self.plan.lanes_per_row

    @property
    def index_words(self) -> int:
        """Register-slot words of ``idx`` per row (all lanes)."""
        return max(self.index_registers, 1) * self.plan.lanes_per_row

    @property
    def smem_pair_words(self) -> int:
        """Shared words of the CTA's shared-memory pairs (at least one: a placeholder)."""
        p = self.plan
        return max(p.rows_per_group * self.smem_slots * p.threads * p.smem_pair_words, 1)

    @property
    def value_dtype(self) -> str:
        """Dtype of a value register (``int32`` holding two halves in fp16)."""
        return "int32" if self.half else self.plan.dtype

    @property
    def chunk_elements(self) -> int:
        """Elements of ``h`` per 16-byte chunk."""
        return 16 // self.plan.itemsize

    @property
    def pass_width(self) -> int:
        """Samples per pass over the pairs (accumulators per row)."""
        return self.plan.sub_batch

    @property
    def passes(self) -> int:
        """Passes over the pairs per step."""
        return self.plan.batch_kernel // self.pass_width

    @property
    def chunked(self) -> bool:
        """``h`` in shared memory as ``[B / chunk, H, chunk]`` (a column is one vector load)."""
        return self.vector and self.plan.batch_kernel % self.chunk_elements == 0

    @property
    def load_width(self) -> int:
        """Elements per shared load of ``h``."""
        return self.pass_width if self.vector else 1

    @property
    def loads_per_pair(self) -> int:
        """Shared loads per pair and pass."""
        return self.pass_width // self.load_width

    @property
    def column_stride(self) -> int:
        """Shared elements per column of ``h``."""
        return self.chunk_elements if self.chunked else self.plan.batch_kernel

    @property
    def pass_stride(self) -> int:
        """Shared elements between passes."""
        return self.chunk_elements * self.plan.hidden_padded if self.chunked else self.pass_width

    @property
    def h_chunks(self) -> int:
        """16-byte chunks of ``h``."""
        return self.plan.hidden_padded * self.plan.batch_kernel // self.chunk_elements

    @property
    def all_threads_copy(self) -> bool:
        """Every thread copies exactly ``plan.copy_chunks`` chunks (no bounds check)."""
        return self.plan.copy_chunks * self.plan.threads == self.h_chunks

    @property
    def h_words(self) -> int:
        """int32 words of one step of ``h``."""
        return self.plan.h_bytes // 4

    @property
    def h_elements(self) -> int:
        """Elements of one buffer of ``h``."""
        return self.plan.hidden_padded * self.plan.batch_kernel

    @property
    def buffers(self) -> int:
        """Shared buffers of ``h`` (2 when double-buffered)."""
        return 2 if self.plan.double_buffer else 1

    @property
    def h_scope(self) -> str:
        """Dynamic shared memory beyond the 48 KB of static shared memory."""
        return "shared.dyn" if self.plan.smem_bytes > 48 * 1024 else "shared"

    @property
    def pair_scope(self) -> str:
        """Scope of the shared-memory pairs (a one-word static placeholder without any)."""
        return self.h_scope if self.smem_slots else "shared"

    @property
    def flag(self) -> bool:
        """The data-embedded flag barrier."""
        return self.barrier is Barrier.FLAG

    @property
    def cluster(self) -> bool:
        """The thread-block cluster barrier (one cluster per recurrence)."""
        return self.barrier is Barrier.CLUSTER


#: Sentinel fill kernel: threads per CTA, and CTAs per persistent CTA (grid-stride loop).
FILL_THREADS, FILL_CTAS_PER_CTA = 256, 4


def make_persistent_kernel(
    plan: PersistentPlan,
    cell: PersistentCell = PersistentCell.TANH,
    barrier: Barrier = Barrier.GRID,
    vector: bool = True,
    reverse: tuple[bool, ...] = (),
) -> tirx.PrimFunc:
    """The persistent kernel ``main(vals, idx, spairs, U, h0, c0, rbias, out, c_out, status)``.

    A pure function of its arguments. It is written as the phases of one timestep, each a
    macro below: ``load_pairs`` (once), then per step ``load_u``, ``exchange_h`` (copy
    ``h_{t-1}`` into shared memory; with the flag barrier this *is* the wait), ``matvec_pass``
    and ``cell_update_store`` per pass, and ``end_phase`` (the barrier). The two-phase GRU
    (``linear_before_reset=0``) splits a step: ``matvec_pass`` of the ``z`` and ``r`` gates and
    ``reset_gate_store`` (``r * h_{t-1}`` to ``out``), ``end_phase``, ``exchange_reset`` (that
    state into the buffer of ``h_{t-1}``), ``matvec_pass`` of the ``h`` gate and
    ``candidate_store``, ``end_phase``: two barriers per step. The PrimFunc carries
    :data:`COOPERATIVE_ATTR` (except with the cluster barrier): :mod:`.cooperative` launches it
    cooperatively.

    Parameters
    ----------
    plan : PersistentPlan
        Geometry (``kind == "persistent"``); ``plan.gates`` must match ``cell``.
    cell : PersistentCell
        Vanilla RNN (tanh/relu), GRU (ONNX ``linear_before_reset=1``; ``GRU_LBR0``:
        ``linear_before_reset=0``, a step of two phases, see below) or LSTM (no peepholes),
        ONNX default activations.
    barrier : Barrier
        Cooperative grid sync, the data-embedded sentinel (flag) barrier, or the thread-block
        cluster barrier (``plan.num_ctas <= PORTABLE_CLUSTER_SIZE``).
    vector : bool
        Vector shared loads of ``h`` (up to 16 bytes: LDS.128); ``False`` gives scalar loads.
    reverse : tuple of bool
        Per direction, whether step ``t`` reads ``U[T - 1 - t]`` (a reverse direction reads the
        forward GEMM's output backwards; ``out`` stays in step order). Empty: all forward.

    Returns
    -------
    tvm.tirx.PrimFunc
        Buffers (``Hk = plan.hidden_padded``, ``Bk = plan.batch_kernel``, ``G = plan.gates``,
        ``RP = rows_padded``, ``DT = plan.dtype``, ``S = plan.streams``: directions, each with
        its ``plan.replicas`` batch slices, stacked along the hidden axis), ``T`` (the number
        of steps) symbolic:

        * ``vals``, ``idx`` (register slots) and ``spairs`` (each CTA's shared-memory slots)
          from :func:`~tvm_sparse_rnn.kernels.cuda.persistent.packing.pack`, one packing per
          direction (:func:`~.packing.stack_directions`), shared by its replicas;
        * ``U``      ``(T, N, D * G * Hk)`` DT (:meth:`~.planner.PersistentPlan.u_shape`; ``N``
          symbolic, the launch's samples: replica ``r`` runs samples ``r * Bk ..``, clamped to
          ``N - 1``), column ``d * G * Hk + j * G + g``: ``W_g x_t + b_g`` of unit ``j`` of
          direction ``d`` (for the GRU ``h`` gate without the recurrent bias), the layout of
          the input GEMM with unit-major rows of ``W``;
        * ``h0``, ``c0`` ``(S * Hk, Bk)`` DT, initial states (``c0`` is read by LSTM only);
        * ``rbias``  ``(D * Hk,)`` float32 per direction, GRU: recurrent bias of the ``h`` gate
          (else unused);
        * ``out``    ``(P * T, S * Hk, Bk)`` DT, ``h_1 .. h_T`` in rows ``P - 1 :: P``, where
          ``P = plan.phases``; for the two-phase GRU rows ``0 :: 2`` hold ``r_t * h_{t-1}``
          (exchanged like ``h``: the candidate's mat-vec needs every unit's reset gate);
        * ``c_out``  ``(S * Hk, Bk)`` DT, LSTM: ``c_T`` (else untouched);
        * ``status`` ``(1,)`` int32, 0 on success, 1 if a flag-barrier wait timed out.
    """
    if plan.kind != "persistent":
        raise ValueError(f"plan kind {plan.kind!r}: use make_step_kernel for the fallback")
    cell, barrier = PersistentCell(cell), Barrier(barrier)
    _check(plan, cell, barrier)
    reverse = tuple(reverse) or (False,) * plan.directions
    if len(reverse) != plan.directions:
        raise ValueError(f"reverse has {len(reverse)} entries for {plan.directions} directions")
    geo = KernelGeometry(plan, barrier, vector)
    hidden, batch, rows, gates = plan.hidden_padded, plan.batch_kernel, plan.rows_padded, plan.gates
    ctas, threads, lanes, rpt = plan.num_ctas, plan.threads, plan.lanes_per_row, plan.rows_per_group
    dirs, streams, grid = plan.directions, plan.streams, plan.grid_ctas
    direction_ctas = plan.replicas * ctas
    groups, units = plan.groups_per_cta, plan.units_per_group
    dtype, f32_name = plan.dtype, "float32"
    width, passes = geo.pass_width, geo.passes
    nvr, nir, per_iter = geo.value_registers, geo.index_registers, geo.slots_per_iteration
    smem_slots, epc, h_size = geo.smem_slots, geo.chunk_elements, geo.h_elements
    fill_ctas, step_words = FILL_CTAS_PER_CTA * grid, streams * geo.h_words
    phases = plan.phases
    chunk, lane_slots = plan.fp16_chunk, plan.pairs_per_lane
    cell_update = _cell_macro(cell, width)
    reset_gate, candidate = _two_phase_macros(width)
    f32, to_dt = _converters(dtype)
    func_attrs = {"tirx.noalias": True} | ({} if geo.cluster else {COOPERATIVE_ATTR: True})

    def dst_elem(e):
        """Shared element of 16-byte chunk ``e`` of ``h`` (flat ``[Hk, Bk]``)."""
        if geo.chunked:
            return ((e % (batch // epc)) * hidden + e // (batch // epc)) * epc
        return e * epc

    def h_elem(t, col, b):
        """Shared element of ``h_{t-1}[col, b]``."""
        return (
            (t % geo.buffers) * h_size
            + (b // width) * geo.pass_stride
            + col * geo.column_stride
            + b % width
        )

    def filled_words(steps):
        """int32 words of ``out[0 : P*T - 1]``: every state but the last waits on its sentinel."""
        return (phases * steps - 1) * step_words

    def weight_cta(bx):
        """CTA of the packing whose pairs CTA ``bx`` holds (replicas share their direction's)."""
        return (bx // direction_ctas) * ctas + bx % ctas

    def row(bx, tx, rr):
        """Packed row ``rr`` of the lane group of thread ``tx`` (rows of all directions)."""
        return (weight_cta(bx) * groups + tx // lanes) * rpt + rr

    def direction_row(bx, tx, rr):
        """``row`` within its direction (unit-major row of ``R``, padding beyond ``G * Hk``)."""
        return ((bx % ctas) * groups + tx // lanes) * rpt + rr

    def unit(bx, tx, ui):
        """Hidden unit ``ui`` of the lane group of thread ``tx``, within its direction."""
        return ((bx % ctas) * groups + tx // lanes) * units + ui

    def state_row(bx, unit_index):
        """Row of ``h0``, ``c0``, ``out`` and ``c_out`` holding ``unit_index`` of the stream of
        CTA ``bx`` (streams are stacked along the hidden axis)."""
        return (bx // ctas) * hidden + unit_index

    def u_step(bx, t, steps):
        """Row of ``U`` that step ``t`` of the direction of CTA ``bx`` reads."""
        backwards = [d for d in range(dirs) if reverse[d]]
        if not backwards:
            return t
        if len(backwards) == dirs:
            return steps - 1 - t
        return T.if_then_else(bx // direction_ctas == backwards[0], steps - 1 - t, t)

    def u_sample(bx, b, samples):
        """Sample of ``U`` of sample ``b`` of the batch slice of CTA ``bx`` (padding samples
        read the last one)."""
        return T.min((bx // ctas) % plan.replicas * batch + b, samples - 1)

    def bias_row(bx, unit_index):
        """Row of ``rbias`` holding ``unit_index`` of the direction of CTA ``bx``."""
        return (bx // direction_ctas) * hidden + unit_index

    def value(wv, rr, m, k):
        """Value of slot ``per_iter*m + k`` of row ``rr`` (float32)."""
        if geo.half:
            return _call("sprnn_half_hi" if k else "sprnn_half_lo", wv[rr * nvr + m], ret=f32_name)
        return wv[rr * nvr + per_iter * m + k]

    def column(wi, rr, m, k):
        """Column of slot ``per_iter*m + k`` of row ``rr``."""
        if not geo.index16:
            return wi[rr * nir + per_iter * m + k]
        return _call("sprnn_col_hi" if k else "sprnn_col_lo", wi[rr * nir + m], ret="int32")

    def hfma2(acc, word, k, h):
        """``acc + w * h`` over two fp16 lanes, ``w`` the half ``k`` of the packed ``word``."""
        return _call("sprnn_hfma2_hi" if k else "sprnn_hfma2_lo", acc, word, h, ret="int32")

    def guard(spins, value):
        """``value``, or NaN once a flag-barrier wait of this thread timed out (``spins[1]``)."""
        if not geo.flag:
            return value
        return T.if_then_else(spins[1] != 0, _call("sprnn_nan", ret=f32_name), value)

    def smem_word(w_sh, rr, j, tx, w):
        """Word ``w`` of shared-memory slot ``j`` of row ``rr`` of thread ``tx``."""
        return w_sh[((rr * smem_slots + j) * threads + tx) * plan.smem_pair_words + w]

    def smem_value(w_sh, rr, j, tx):
        if geo.half:
            return _call("sprnn_half_lo", smem_word(w_sh, rr, j, tx, 0), ret=f32_name)
        return T.reinterpret(f32_name, smem_word(w_sh, rr, j, tx, 0))

    def smem_column(w_sh, rr, j, tx):
        if geo.half:
            return _call("sprnn_col_hi", smem_word(w_sh, rr, j, tx, 0), ret="int32")
        return smem_word(w_sh, rr, j, tx, 1)

    @T.macro
    def fill_sentinel(out, status, steps):
        # Fill out[0 : P*T - 1] with the sentinel: what the flag barrier waits on.
        words = T.decl_buffer((phases * steps * step_words,), "int32", data=out.data)
        for fb in T.thread_binding(fill_ctas, thread="blockIdx.x"):
            for ft in T.thread_binding(FILL_THREADS, thread="threadIdx.x"):
                for it in range(T.ceildiv(filled_words(steps), 4 * FILL_THREADS * fill_ctas)):
                    if ((it * fill_ctas + fb) * FILL_THREADS + ft) * 4 < filled_words(steps):
                        for v in T.vectorized(4):
                            words[((it * fill_ctas + fb) * FILL_THREADS + ft) * 4 + v] = T.int32(
                                SENTINEL_BITS
                            )
                if fb == 0 and ft == 0:
                    status[0] = 0

    @T.macro
    def load_pairs(wv, wi, w_sh, vals, idx, spairs, bx, tx):
        # The lane's register pairs, once; the CTA's shared-memory pairs (ordered by the first
        # barrier).
        for rr in T.unroll(rpt):
            for j in T.unroll(nvr):
                wv[rr * nvr + j] = vals[row(bx, tx, rr), j * lanes + tx % lanes]
            for m in T.unroll(nir):
                wi[rr * nir + m] = idx[row(bx, tx, rr), m * lanes + tx % lanes]
        if smem_slots > 0:
            for i in range(T.ceildiv(geo.smem_pair_words, threads)):
                if i * threads + tx < geo.smem_pair_words:
                    w_sh[i * threads + tx] = spairs[weight_cta(bx), i * threads + tx]

    @T.macro
    def load_cell_state(rbv, cst, rbias, c0, bx, tx):
        for ui in T.unroll(units):
            rbv[ui] = rbias[bias_row(bx, T.min(unit(bx, tx, ui), hidden - 1))]
            for b in T.unroll(batch):
                cst[ui * batch + b] = f32(c0[state_row(bx, T.min(unit(bx, tx, ui), hidden - 1)), b])

    @T.macro
    def load_u(uu, U, t, bx, tx, bc, steps, samples):
        # u_t of this lane's rows for samples bc*width .. bc*width + width - 1
        for rr in T.unroll(rpt):
            for b in T.unroll(width):
                uu[rr * width + b] = f32(
                    U[
                        u_step(bx, t, steps),
                        u_sample(bx, bc * width + b, samples),
                        (bx // direction_ctas) * gates * hidden
                        + T.min(direction_row(bx, tx, rr), gates * hidden - 1),
                    ]
                )

    @T.macro
    def copy_chunk(h_sh, h0, out, t, src, bx, tx, i, first):
        # chunk e = i*threads + tx of h0 (first) or out[src] (flat [Hk, Bk]) -> buffer
        # t % buffers, cp.async.cg
        if first:
            _call(
                COPY_HELPER,
                T.address_of(h_sh[(t % geo.buffers) * h_size + dst_elem(i * threads + tx)]),
                T.address_of(
                    h0[
                        state_row(bx, ((i * threads + tx) * epc) // batch),
                        ((i * threads + tx) * epc) % batch,
                    ]
                ),
            )
        else:
            _call(
                COPY_HELPER,
                T.address_of(h_sh[(t % geo.buffers) * h_size + dst_elem(i * threads + tx)]),
                T.address_of(
                    out[
                        src,
                        state_row(bx, ((i * threads + tx) * epc) // batch),
                        ((i * threads + tx) * epc) % batch,
                    ]
                ),
            )

    @T.macro
    def exchange(h_sh, h0, out, status, pend, spins, t, src, bx, tx):
        # out[src] -> shared memory. The flag barrier re-copies every chunk that still holds
        # the sentinel until all have landed (bounded spin); the cluster barrier waits here
        # for the arrivals of end_phase, the grid barrier already waited, so one copy suffices.
        if geo.flag:
            pend[0] = 0
            for i in T.unroll(plan.copy_chunks):
                if geo.all_threads_copy or i * threads + tx < geo.h_chunks:
                    pend[0] = pend[0] | (1 << i)
            spins[0] = 0
            while pend[0] != 0:
                for i in T.unroll(plan.copy_chunks):
                    if T.bitwise_and(T.shift_right(pend[0], i), 1) == 1:
                        copy_chunk(h_sh, h0, out, t, src, bx, tx, i, False)
                _call("sprnn_cp_wait")
                for i in T.unroll(plan.copy_chunks):
                    if T.bitwise_and(T.shift_right(pend[0], i), 1) == 1:
                        if (
                            _call(
                                "sprnn_ready16",
                                T.address_of(
                                    h_sh[(t % geo.buffers) * h_size + dst_elem(i * threads + tx)]
                                ),
                                ret="int32",
                            )
                            != 0
                        ):
                            pend[0] = T.bitwise_and(pend[0], T.bitwise_not(1 << i))
                spins[0] = spins[0] + 1
                if spins[0] >= MAX_SPINS:
                    status[0] = 1
                    pend[0] = 0
                    spins[1] = 1
        else:
            if geo.cluster:
                _call("sprnn_cluster_wait")
            for i in T.unroll(plan.copy_chunks):
                if geo.all_threads_copy or i * threads + tx < geo.h_chunks:
                    copy_chunk(h_sh, h0, out, t, src, bx, tx, i, False)
            _call("sprnn_cp_wait")

    @T.macro
    def exchange_h(h_sh, h0, out, status, pend, spins, t, bx, tx):
        # h_{t-1} -> shared memory: h0 at step 0, else out[P*t - 1] (waiting for it)
        if t == 0:
            for i in T.unroll(plan.copy_chunks):
                if geo.all_threads_copy or i * threads + tx < geo.h_chunks:
                    copy_chunk(h_sh, h0, out, t, 0, bx, tx, i, True)
            _call("sprnn_cp_wait")
        else:
            exchange(h_sh, h0, out, status, pend, spins, t, phases * t - 1, bx, tx)
        T.cuda.cta_sync()

    @T.macro
    def exchange_reset(h_sh, h0, out, status, pend, spins, t, bx, tx):
        # two-phase GRU: r_t * h_{t-1} (out[2t]) -> the shared buffer of h_{t-1}
        exchange(h_sh, h0, out, status, pend, spins, t, phases * t, bx, tx)
        T.cuda.cta_sync()

    @T.macro
    def pair(acc, a0, hb, h_sh, t, bc, val, col, staged):
        # acc[a0 + b] += val * h_{t-1}[col, b] for the samples of pass bc
        for v in T.unroll(geo.loads_per_pair):
            if staged:
                # One vector load into hb, then scalar fp32 math (fp16: a broadcast of the
                # unpacked weight to 8 float lanes is not valid TVM CUDA code).
                for bi in T.vectorized(geo.load_width):
                    hb[bi] = h_sh[
                        (t % geo.buffers) * h_size
                        + bc * geo.pass_stride
                        + col * geo.column_stride
                        + v * geo.load_width
                        + bi
                    ]
                for bi in T.unroll(geo.load_width):
                    acc[a0 + v * geo.load_width + bi] = acc[
                        a0 + v * geo.load_width + bi
                    ] + val * f32(hb[bi])
            else:
                for bi in T.vectorized(geo.load_width):
                    acc[a0 + v * geo.load_width + bi] = (
                        acc[a0 + v * geo.load_width + bi]
                        + val
                        * (
                            h_sh[
                                (t % geo.buffers) * h_size
                                + bc * geo.pass_stride
                                + col * geo.column_stride
                                + v * geo.load_width
                                + bi
                            ]
                        )
                    )

    @T.macro
    def register_pair(acc, g, hb, h_sh, wv, wi, t, bc, ui, m, k):
        # pair() of register slot per_iter*m + k of gate g's row of unit ui
        pair(
            acc,
            g * width,
            hb,
            h_sh,
            t,
            bc,
            value(wv, ui * gates + g, m, k),
            column(wi, ui * gates + g, m, k),
            geo.half,
        )

    @T.macro
    def pair_f16x2(acch, hw, h_words, t, bc, word, k, col):
        # acch[j] += w * h_{t-1}[col, 2j : 2j + 2] for the samples of pass bc, w the half k of
        # the packed register word: two samples per fma.rn.f16x2, no conversion
        for v in T.unroll(geo.word_loads_per_pair):
            for wj in T.vectorized(geo.word_load_width):
                hw[wj] = h_words[
                    (t % geo.buffers) * (h_size // 2)
                    + bc * (geo.pass_stride // 2)
                    + col * (geo.column_stride // 2)
                    + v * geo.word_load_width
                    + wj
                ]
            for wj in T.unroll(geo.word_load_width):
                acch[v * geo.word_load_width + wj] = hfma2(
                    acch[v * geo.word_load_width + wj], word, k, hw[wj]
                )

    @T.macro
    def register_pair_f16x2(acch, hw, h_words, wv, wi, t, bc, ui, g, m, k):
        # pair_f16x2() of register slot 2*m + k of gate g's row of unit ui
        pair_f16x2(
            acch,
            hw,
            h_words,
            t,
            bc,
            wv[(ui * gates + g) * nvr + m],
            k,
            column(wi, ui * gates + g, m, k),
        )

    @T.macro
    def flush_f16x2(acc, acch, a0):
        # acc[a0 + b] += the fp16 partial sums of acch (sample pairs), which restart at zero
        for j in T.unroll(width // 2):
            acc[a0 + 2 * j] = acc[a0 + 2 * j] + _call("sprnn_half_lo", acch[j], ret=f32_name)
            acc[a0 + 2 * j + 1] = acc[a0 + 2 * j + 1] + _call(
                "sprnn_half_hi", acch[j], ret=f32_name
            )
            acch[j] = T.int32(0)

    @T.macro
    def matvec_f16x2(acc, acch, hw, h_words, wv, wi, w_sh, t, tx, bc, ui, g):
        # acc[g*width + b] += (R_g h)[b] as matvec_pass, in chunks of fp16_chunk packed-half
        # FMAs, each chunk's sums added in fp32
        for j in T.unroll(width // 2):
            acch[j] = T.int32(0)
        for m in T.unroll(geo.register_slots // 2):
            register_pair_f16x2(acch, hw, h_words, wv, wi, t, bc, ui, g, m, 0)
            register_pair_f16x2(acch, hw, h_words, wv, wi, t, bc, ui, g, m, 1)
            if (m + 1) * 2 % chunk == 0:
                if (m + 1) * 2 < lane_slots:
                    flush_f16x2(acc, acch, g * width)
        for j in T.unroll(smem_slots):
            pair_f16x2(
                acch,
                hw,
                h_words,
                t,
                bc,
                smem_word(w_sh, ui * gates + g, j, tx, 0),
                0,
                smem_column(w_sh, ui * gates + g, j, tx),
            )
            if (geo.register_slots + j + 1) % chunk == 0:
                if geo.register_slots + j + 1 < lane_slots:
                    flush_f16x2(acc, acch, g * width)
        flush_f16x2(acc, acch, g * width)

    @T.macro
    def matvec_pass(acc, acch, hb, hw, h_sh, h_words, wv, wi, w_sh, t, tx, bc, ui, g0, ng):
        # acc[g*width + b] = (R_g h)[b] of unit ui for gates g0 .. g0 + ng - 1 (h: the shared
        # buffer of step t), this lane's share of the rows
        for gi in T.unroll(ng):
            for b in T.unroll(width):
                acc[(g0 + gi) * width + b] = T.float32(0)
            if geo.half_accumulate:
                matvec_f16x2(acc, acch, hw, h_words, wv, wi, w_sh, t, tx, bc, ui, g0 + gi)
            else:
                for m in T.unroll(geo.register_slots // per_iter):
                    register_pair(acc, g0 + gi, hb, h_sh, wv, wi, t, bc, ui, m, 0)
                    if per_iter == 2:
                        register_pair(acc, g0 + gi, hb, h_sh, wv, wi, t, bc, ui, m, 1)
                for j in T.unroll(smem_slots):
                    pair(
                        acc,
                        (g0 + gi) * width,
                        hb,
                        h_sh,
                        t,
                        bc,
                        smem_value(w_sh, ui * gates + g0 + gi, j, tx),
                        smem_column(w_sh, ui * gates + g0 + gi, j, tx),
                        True,
                    )
        if lanes > 1:
            for k in T.unroll(ng * width):
                acc[g0 * width + k] = T.cuda.warp_sum(acc[g0 * width + k], lanes)

    @T.macro
    def poison_on_timeout(hv, spins, b):
        # right after computing hv[b] (all of a pass's results live at once spilled at B = 64)
        if geo.flag:
            hv[b] = guard(spins, hv[b])

    @T.macro
    def store_pass(hv, out, row_t, bx, tx, bc, ui):
        # hv (the pass's samples of unit ui) -> out[row_t] in one vector store (the flag
        # barrier checks 32-bit words: two fp16 samples must land together)
        for bi in T.vectorized(width):
            out[row_t, state_row(bx, unit(bx, tx, ui)), bc * width + bi] = to_dt(hv[bi])

    @T.macro
    def cell_update_store(hv, acc, uu, cst, rbv, h_sh, out, spins, t, bx, tx, bc, ui):
        # lane 0 of the group: the cell math of unit ui, then h_t of the pass
        if tx % lanes == 0:
            if unit(bx, tx, ui) < hidden:
                for b in T.unroll(width):
                    cell_update(
                        hv,
                        acc,
                        0,
                        uu,
                        ui * gates * width,
                        cst,
                        ui * batch + bc * width,
                        rbv[ui],
                        f32(h_sh[h_elem(t, unit(bx, tx, ui), bc * width + b)]),
                        b,
                    )
                    poison_on_timeout(hv, spins, b)
                store_pass(hv, out, t, bx, tx, bc, ui)

    @T.macro
    def reset_gate_store(hv, zs, hps, acc, uu, h_sh, out, spins, t, bx, tx, bc, ui):
        # two-phase GRU, lane 0 of the group: z and h_{t-1} of unit ui kept, r * h_{t-1} stored
        if tx % lanes == 0:
            if unit(bx, tx, ui) < hidden:
                for b in T.unroll(width):
                    reset_gate(
                        hv,
                        zs,
                        hps,
                        acc,
                        uu,
                        ui * gates * width,
                        ui * batch + bc * width,
                        f32(h_sh[h_elem(t, unit(bx, tx, ui), bc * width + b)]),
                        b,
                    )
                    poison_on_timeout(hv, spins, b)
                store_pass(hv, out, phases * t, bx, tx, bc, ui)

    @T.macro
    def candidate_store(hv, zs, hps, acc, uu, out, spins, t, bx, tx, bc, ui):
        # two-phase GRU, lane 0 of the group: h_t of unit ui
        if tx % lanes == 0:
            if unit(bx, tx, ui) < hidden:
                for b in T.unroll(width):
                    candidate(hv, zs, hps, acc, uu, ui * gates * width, ui * batch + bc * width, b)
                    poison_on_timeout(hv, spins, b)
                store_pass(hv, out, phases * t + 1, bx, tx, bc, ui)

    @T.macro
    def end_phase(rewrites_buffer):
        # the barrier after storing a state; the flag barrier only syncs the CTA when the next
        # exchange overwrites the shared buffer read now (its copy is the wait)
        if geo.flag:
            if rewrites_buffer:
                T.cuda.cta_sync()
        elif geo.cluster:
            _call("sprnn_cluster_arrive")  # the next exchange waits
        else:
            T.cuda.grid_sync()

    @T.macro
    def store_cell_state(c_out, cst, spins, bx, tx):
        if gates == 4:
            if tx % lanes == 0:
                for ui in T.unroll(units):
                    if unit(bx, tx, ui) < hidden:
                        for b in T.unroll(batch):
                            c_out[state_row(bx, unit(bx, tx, ui)), b] = to_dt(
                                guard(spins, cst[ui * batch + b])
                            )

    @T.macro
    def recurrence(vals, idx, spairs, U, h0, c0, rbias, out, c_out, status, steps, samples, bx, tx):
        # One thread's whole launch: its pairs once, then every step.
        h_sh = T.alloc_buffer((geo.buffers * h_size,), dtype, scope=geo.h_scope)
        w_sh = T.alloc_buffer((geo.smem_pair_words,), "int32", scope=geo.pair_scope)
        wv = T.alloc_buffer((rpt * geo.value_words // lanes,), geo.value_dtype, scope="local")
        wi = T.alloc_buffer((rpt * geo.index_words // lanes,), "int32", scope="local")
        acc = T.alloc_buffer((gates * width,), f32_name, scope="local")
        uu = T.alloc_buffer((rpt * width,), f32_name, scope="local")
        hv = T.alloc_buffer((width,), f32_name, scope="local")
        hb = T.alloc_buffer((geo.load_width,), dtype, scope="local")
        h_words = T.decl_buffer(
            (geo.buffers * h_size * plan.itemsize // 4,), "int32", data=h_sh.data, scope=geo.h_scope
        )
        acch = T.alloc_buffer((max(width // 2, 1),), "int32", scope="local")
        hw = T.alloc_buffer((geo.word_load_width,), "int32", scope="local")
        cst = T.alloc_buffer((units * batch,), f32_name, scope="local")
        zs = T.alloc_buffer((units * batch if plan.two_phase else 1,), f32_name, scope="local")
        hps = T.alloc_buffer((units * batch if plan.two_phase else 1,), f32_name, scope="local")
        rbv = T.alloc_buffer((units,), f32_name, scope="local")
        pend = T.alloc_buffer((1,), "int32", scope="local")
        spins = T.alloc_buffer((2 if geo.flag else 1,), "int32", scope="local")
        if geo.flag:
            spins[1] = 0  # set once a wait times out
        else:
            if bx == 0 and tx == 0:
                status[0] = 0
        load_pairs(wv, wi, w_sh, vals, idx, spairs, bx, tx)
        load_cell_state(rbv, cst, rbias, c0, bx, tx)
        for t in range(steps):
            if passes == 1:  # u_t before waiting for h_{t-1}
                load_u(uu, U, t, bx, tx, 0, steps, samples)
            exchange_h(h_sh, h0, out, status, pend, spins, t, bx, tx)
            if plan.two_phase:
                for bc in T.unroll(passes):
                    if passes > 1:
                        load_u(uu, U, t, bx, tx, bc, steps, samples)
                    for ui in T.unroll(units):
                        matvec_pass(
                            acc, acch, hb, hw, h_sh, h_words, wv, wi, w_sh, t, tx, bc, ui, 0, 2
                        )
                        reset_gate_store(hv, zs, hps, acc, uu, h_sh, out, spins, t, bx, tx, bc, ui)
                end_phase(True)
                exchange_reset(h_sh, h0, out, status, pend, spins, t, bx, tx)
                for bc in T.unroll(passes):
                    if passes > 1:
                        load_u(uu, U, t, bx, tx, bc, steps, samples)
                    for ui in T.unroll(units):
                        matvec_pass(
                            acc, acch, hb, hw, h_sh, h_words, wv, wi, w_sh, t, tx, bc, ui, 2, 1
                        )
                        candidate_store(hv, zs, hps, acc, uu, out, spins, t, bx, tx, bc, ui)
            else:
                for bc in T.unroll(passes):
                    if passes > 1:
                        load_u(uu, U, t, bx, tx, bc, steps, samples)
                    for ui in T.unroll(units):
                        matvec_pass(
                            acc, acch, hb, hw, h_sh, h_words, wv, wi, w_sh, t, tx, bc, ui, 0, gates
                        )
                        cell_update_store(
                            hv, acc, uu, cst, rbv, h_sh, out, spins, t, bx, tx, bc, ui
                        )
            end_phase(geo.buffers == 1)
        if geo.cluster:
            _call("sprnn_cluster_wait")  # the last step's arrivals
        store_cell_state(c_out, cst, spins, bx, tx)

    @T.prim_func
    def main(
        vals: T.Buffer((dirs * rows, geo.value_words), geo.value_dtype),
        idx: T.Buffer((dirs * rows, geo.index_words), "int32"),
        spairs: T.Buffer((dirs * ctas, geo.smem_pair_words), "int32"),
        u_handle: T.handle,
        h0: T.Buffer((streams * hidden, batch), dtype),
        c0: T.Buffer((streams * hidden, batch), dtype),
        rbias: T.Buffer((dirs * hidden,), f32_name),
        out_handle: T.handle,
        c_out: T.Buffer((streams * hidden, batch), dtype),
        status: T.Buffer((1,), "int32"),
    ):
        T.func_attr(func_attrs)
        steps, samples = T.int32(), T.int32()
        U = T.match_buffer(u_handle, plan.u_shape(steps, samples), dtype)
        out = T.match_buffer(out_handle, plan.out_shape(steps), dtype)
        if geo.flag:
            fill_sentinel(out, status, steps)
        for bx in T.thread_binding(grid, thread="blockIdx.x"):
            if geo.cluster:
                for _cx in T.thread_binding(ctas, thread="clusterCtaIdx.x"):
                    for tx in T.thread_binding(threads, thread="threadIdx.x"):
                        recurrence(
                            vals, idx, spairs, U, h0, c0, rbias, out, c_out, status, steps,
                            samples, bx, tx,
                        )  # fmt: skip
            else:
                for tx in T.thread_binding(threads, thread="threadIdx.x"):
                    recurrence(
                        vals, idx, spairs, U, h0, c0, rbias, out, c_out, status, steps, samples,
                        bx, tx,
                    )  # fmt: skip

    return main


def make_step_kernel(
    plan: PersistentPlan, cell: PersistentCell = PersistentCell.TANH
) -> tirx.PrimFunc:
    """Non-persistent fallback: one launch per step, weights read from global memory.

    ``main(vals, idx, spairs, U, h0, c0, rbias, out, c_out, status, t)`` computes step ``t``
    (``h_t`` into ``out[t]``, LSTM ``c_t`` into ``c_out``) from ``h_{t-1}`` (``h0`` at
    ``t = 0``), one thread per unit; the host calls it for ``t = 0 .. T-1``. The buffers are
    those of :func:`make_persistent_kernel` for a ``per_step`` plan (``KS = 1``, 32-bit indices,
    ``RP = G * Hk`` unit-major rows, ``spairs`` unused); ``status`` is set to 0.
    """
    cell = PersistentCell(cell)
    _check(plan, cell)
    if cell.two_phase:
        raise UnsupportedError(
            f"cell {cell.value!r}: the per-step kernel has no two-phase step; R does not fit "
            f"on chip ({plan.reason})"
        )
    Hk, Bk, NZ, G, DT, F32 = (
        plan.hidden_padded,
        plan.batch_kernel,
        plan.nz_per_row,
        plan.gates,
        plan.dtype,
        "float32",
    )
    NTH = 128
    cell_update = _cell_macro(cell, Bk)

    f32, to_dt = _converters(DT)

    def h_prev(h0, out, t, col, b):
        return T.if_then_else(t == 0, f32(h0[col, b]), f32(out[T.max(t - 1, 0), col, b]))

    @T.prim_func
    def main(
        vals: T.Buffer((G * Hk, NZ), DT),
        idx: T.Buffer((G * Hk, NZ), "int32"),
        spairs: T.Buffer((1, 1), "int32"),
        u_handle: T.handle,
        h0: T.Buffer((Hk, Bk), DT),
        c0: T.Buffer((Hk, Bk), DT),
        rbias: T.Buffer((Hk,), F32),
        out_handle: T.handle,
        c_out: T.Buffer((Hk, Bk), DT),
        status: T.Buffer((1,), "int32"),
        t: T.int32,
    ):
        T.func_attr({"tirx.noalias": True})
        steps, samples = T.int32(), T.int32()
        U = T.match_buffer(u_handle, plan.u_shape(steps, samples), DT)
        out = T.match_buffer(out_handle, (steps, Hk, Bk), DT)
        for bx in T.thread_binding(T.ceildiv(Hk, NTH), thread="blockIdx.x"):
            for tx in T.thread_binding(NTH, thread="threadIdx.x"):
                acc = T.alloc_buffer((G * Bk,), F32, scope="local")
                uu = T.alloc_buffer((G * Bk,), F32, scope="local")
                hv = T.alloc_buffer((Bk,), F32, scope="local")
                cst = T.alloc_buffer((Bk,), F32, scope="local")
                if bx == 0 and tx == 0:
                    status[0] = 0
                if bx * NTH + tx < Hk:
                    for g in range(G):
                        for b in range(Bk):
                            acc[g * Bk + b] = T.float32(0)
                            uu[g * Bk + b] = f32(
                                U[t, T.min(b, samples - 1), (bx * NTH + tx) * G + g]
                            )
                        for k in range(NZ):
                            for b in range(Bk):
                                acc[g * Bk + b] = acc[g * Bk + b] + f32(
                                    vals[(bx * NTH + tx) * G + g, k]
                                ) * h_prev(h0, out, t, idx[(bx * NTH + tx) * G + g, k], b)
                    for b in range(Bk):
                        cst[b] = T.if_then_else(
                            t == 0, f32(c0[bx * NTH + tx, b]), f32(c_out[bx * NTH + tx, b])
                        )
                        cell_update(
                            hv,
                            acc,
                            0,
                            uu,
                            0,
                            cst,
                            0,
                            rbias[bx * NTH + tx],
                            h_prev(h0, out, t, bx * NTH + tx, b),
                            b,
                        )
                        out[t, bx * NTH + tx, b] = to_dt(hv[b])
                        if G == 4:
                            c_out[bx * NTH + tx, b] = to_dt(cst[b])

    return main
