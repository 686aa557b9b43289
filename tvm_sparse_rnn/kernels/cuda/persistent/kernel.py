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
* ``KS`` lanes share a row and combine their partial sums with a shuffle-xor butterfly; ``u_t``
  (prefetched before the barrier) and the activation are fused into the store of ``h_t``;
* steps are separated by either

  - ``barrier="grid"``: ``cooperative_groups::this_grid().sync()``, or
  - ``barrier="flag"``: a data-embedded (Lamport-style) barrier: a first small kernel fills
    ``out[0 : T-1]`` with a NaN sentinel, and a CTA copying ``h_{t-1}`` re-fetches only the
    16-byte chunks that still hold the sentinel. The copy *is* the barrier: no arrival counter,
    no fence (each word is written once per launch), and a CTA starts step ``t`` as soon as the
    words it needs have landed. The spin is bounded (:data:`MAX_SPINS`); on time-out the kernel
    sets ``status[0] = 1`` instead of hanging.

Both kinds are launched cooperatively (``cuda_pipeline``), which guarantees that all CTAs are
co-resident (the launch fails instead of deadlocking when they do not fit).

Profile with::

    ncu --metrics l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum,gpu__time_duration.sum \\
        python benchmarks/bench_rnn.py --ncu
"""

from __future__ import annotations

import logging

import numpy as np
from tvm import tirx
from tvm.script import tirx as T  # noqa: N812

from .planner import CELL_GATES, PersistentPlan

logger = logging.getLogger(__name__)

CELLS = tuple(CELL_GATES)
BARRIERS = ("grid", "flag")
#: Bit pattern written into not-yet-computed ``h`` words (a negative quiet NaN with a payload
#: that GPU arithmetic never produces; the canonical NaN is 0x7FFFFFFF).
SENTINEL_BITS = int(np.array(0xFFC0BEEF, np.uint32).view(np.int32))
#: Polls of one chunk before the flag barrier gives up (about a second of spinning).
MAX_SPINS = 1 << 20
#: Name of the shared buffer of ``h``; ``cuda_pipeline`` marks kernels that copy into it.
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


def _call(name: str, *args: object, ret: str = "void") -> tirx.PrimExpr:
    return T.cuda.func_call(name, *args, source_code=_HELPERS[name], return_type=ret)


def _check(plan: PersistentPlan, cell: str) -> None:
    if cell not in CELLS:
        raise ValueError(f"cell must be one of {CELLS}, got {cell!r}")
    if CELL_GATES[cell] != plan.gates:
        raise ValueError(f"cell {cell!r} has {CELL_GATES[cell]} gates, the plan {plan.gates}")


def _converters(dtype: str) -> tuple:
    """``(to_f32, to_dtype)``: casts between the storage dtype and fp32 (no-ops for fp32)."""
    if dtype == "float32":
        return (lambda x: x), (lambda x: x)
    return (lambda x: T.Cast("float32", x)), (lambda x: T.Cast(dtype, x))


def _cell_macro(cell: str, batch: int):
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
        if cell == "tanh":
            hv[b] = T.tanh(pre(acc, a0, uu, u0, 0, b))
        elif cell == "relu":
            hv[b] = T.max(pre(acc, a0, uu, u0, 0, b), T.float32(0))
        elif cell == "gru":
            z = T.sigmoid(pre(acc, a0, uu, u0, 0, b))
            r = T.sigmoid(pre(acc, a0, uu, u0, 1, b))
            n = T.tanh(uu[u0 + 2 * Bk + b] + r * (acc[a0 + 2 * Bk + b] + rb))
            hv[b] = (T.float32(1) - z) * n + z * h_prev
        else:
            cst[c0 + b] = T.sigmoid(pre(acc, a0, uu, u0, 2, b)) * cst[c0 + b] + T.sigmoid(
                pre(acc, a0, uu, u0, 0, b)
            ) * T.tanh(pre(acc, a0, uu, u0, 3, b))
            hv[b] = T.sigmoid(pre(acc, a0, uu, u0, 1, b)) * T.tanh(cst[c0 + b])

    return cell_update


def make_persistent_kernel(
    plan: PersistentPlan,
    cell: str = "tanh",
    barrier: str = "grid",
    vector: bool = True,
) -> tirx.PrimFunc:
    """The persistent kernel ``main(vals, idx, spairs, U, h0, c0, rbias, out, c_out, status)``.

    Parameters
    ----------
    plan : PersistentPlan
        Geometry (``kind == "persistent"``); ``plan.gates`` must match ``cell``.
    cell : str
        ``"tanh"``, ``"relu"`` (vanilla RNN), ``"gru"`` (ONNX ``linear_before_reset=1``) or
        ``"lstm"`` (no peepholes), with ONNX's default activations.
    barrier : str
        ``"grid"`` (cooperative grid sync) or ``"flag"`` (data-embedded sentinel barrier).
    vector : bool
        Vector shared loads of ``h`` (up to 16 bytes: LDS.128); ``False`` gives scalar loads.

    Returns
    -------
    tvm.tirx.PrimFunc
        Buffers (``Hk = plan.hidden_padded``, ``Bk = plan.batch_kernel``, ``G = plan.gates``,
        ``RP = rows_padded``, ``DT = plan.dtype``), ``T`` (the number of steps) symbolic:

        * ``vals``, ``idx`` (register slots) and ``spairs`` (each CTA's shared-memory slots)
          from :func:`~tvm_sparse_rnn.rnn.packing.pack`;
        * ``U``      ``(T, G * Hk, Bk)`` DT, row ``j*G + g``: ``W_g x_t + b_g`` of unit ``j``
          (for the GRU ``h`` gate without the recurrent bias);
        * ``h0``, ``c0`` ``(Hk, Bk)`` DT, initial states (``c0`` is read by LSTM only);
        * ``rbias``  ``(Hk,)`` float32, GRU: recurrent bias of the ``h`` gate (else unused);
        * ``out``    ``(T, Hk, Bk)`` DT, ``h_1 .. h_T``;
        * ``c_out``  ``(Hk, Bk)`` DT, LSTM: ``c_T`` (else untouched);
        * ``status`` ``(1,)`` int32, 0 on success, 1 if a flag-barrier wait timed out.
    """
    if plan.kind != "persistent":
        raise ValueError(f"plan kind {plan.kind!r}: use make_step_kernel for the fallback")
    _check(plan, cell)
    if barrier not in BARRIERS:
        raise ValueError(f"barrier must be one of {BARRIERS}, got {barrier!r}")
    Hk, Bk, RP, NZ = plan.hidden_padded, plan.batch_kernel, plan.rows_padded, plan.nz_per_row
    NCTA, NT, KS, RPT = plan.num_ctas, plan.threads, plan.lanes_per_row, plan.rows_per_group
    GPC, NZT, G, UPG = plan.groups_per_cta, plan.pairs_per_lane, plan.gates, plan.units_per_group
    DT, F32 = plan.dtype, "float32"
    I16 = plan.index_mode == "i16x2"
    H16 = DT == "float16"  # values packed two per int32 register
    PK = 2 if I16 or H16 else 1  # slots handled per unrolled iteration
    NZS = plan.smem_pairs  # slots per lane and row in shared memory (the last ones)
    NZR = NZT - NZS  # slots per lane and row in registers
    NIW = NZR // 2 if I16 else NZR  # index registers per lane and row
    NVW = NZR // 2 if H16 else NZR  # value registers per lane and row
    VALW, IDXW = max(NVW, 1) * KS, max(NIW, 1) * KS  # register-slot words per row
    SPW = plan.smem_pair_words
    SPWORDS = max(RPT * NZS * NT * SPW, 1)  # shared pair words per CTA
    WDT = "int32" if H16 else DT
    EPC = 16 // plan.itemsize  # elements per 16-byte chunk
    BW = plan.sub_batch  # samples per pass over the pairs (accumulators per row)
    NBC = Bk // BW  # passes per step
    CHUNKED = vector and Bk % EPC == 0
    VW = BW if vector else 1  # elements per shared load
    NVS = BW // VW  # loads per pair and pass
    SC = EPC if CHUNKED else Bk  # shared elements per column
    SBC = EPC * Hk if CHUNKED else BW  # shared elements between passes
    NCH = Hk * Bk // EPC  # 16-byte chunks of h
    NCOPY = plan.copy_chunks
    ALL_VALID = NCOPY * NT == NCH
    FLAG = barrier == "flag"
    FILL_T, FILL_B = 256, 4 * NCTA  # fill kernel: grid-stride over out[0 : T-1] (int32 words)
    HW = plan.h_bytes // 4  # int32 words of one step of h
    SMEM = Hk * Bk
    NBUF = 2 if plan.double_buffer else 1
    SCOPE = "shared.dyn" if plan.smem_bytes > 48 * 1024 else "shared"
    W_SCOPE = SCOPE if NZS else "shared"  # a one-word placeholder otherwise
    cell_update = _cell_macro(cell, BW)

    f32, to_dt = _converters(DT)

    def dst_elem(e):
        """Shared element of 16-byte chunk ``e`` of ``h`` (flat ``[Hk, Bk]``)."""
        if CHUNKED:
            return ((e % (Bk // EPC)) * Hk + e // (Bk // EPC)) * EPC
        return e * EPC

    def h_elem(t, col, b):
        """Shared element of ``h_{t-1}[col, b]``."""
        return (t % NBUF) * SMEM + (b // BW) * SBC + col * SC + b % BW

    def row(bx, tx, rr):
        """Packed row ``rr`` of the lane group of thread ``tx``."""
        return (bx * GPC + tx // KS) * RPT + rr

    def unit(bx, tx, ui):
        """Hidden unit ``ui`` of the lane group of thread ``tx``."""
        return (bx * GPC + tx // KS) * UPG + ui

    @T.macro
    def load_u(uu, U, t, bx, tx, bc):
        # u_t of this lane's rows for samples bc*BW .. bc*BW + BW - 1
        for rr in T.unroll(RPT):
            for b in T.unroll(BW):
                uu[rr * BW + b] = f32(U[t, T.min(row(bx, tx, rr), G * Hk - 1), bc * BW + b])

    @T.macro
    def copy_chunk(h_sh, h0, out, t, tx, i, first):
        # chunk e = i*NT + tx of h_{t-1} (flat [Hk, Bk]) -> buffer t % NBUF, with cp.async.cg
        if first:
            _call(
                COPY_HELPER,
                T.address_of(h_sh[(t % NBUF) * SMEM + dst_elem(i * NT + tx)]),
                T.address_of(h0[((i * NT + tx) * EPC) // Bk, ((i * NT + tx) * EPC) % Bk]),
            )
        else:
            _call(
                COPY_HELPER,
                T.address_of(h_sh[(t % NBUF) * SMEM + dst_elem(i * NT + tx)]),
                T.address_of(out[t - 1, ((i * NT + tx) * EPC) // Bk, ((i * NT + tx) * EPC) % Bk]),
            )

    def value(wv, rr, m, k):
        """Value of slot ``PK*m + k`` of row ``rr`` (float32)."""
        if H16:
            return _call("sprnn_half_hi" if k else "sprnn_half_lo", wv[rr * NVW + m], ret=F32)
        return wv[rr * NVW + PK * m + k]

    def column(wi, rr, m, k):
        """Column of slot ``PK*m + k`` of row ``rr``."""
        if not I16:
            return wi[rr * NIW + PK * m + k]
        return _call("sprnn_col_hi" if k else "sprnn_col_lo", wi[rr * NIW + m], ret="int32")

    @T.macro
    def pair(acc, a0, hb, h_sh, t, bc, val, col, staged):
        # acc[a0 + b] += val * h_{t-1}[col, b] for the samples of pass bc
        for v in T.unroll(NVS):
            if staged:
                # One vector load of VW elements into hb, then scalar fp32 math (fp16: a
                # broadcast of the unpacked weight to 8 float lanes is not valid TVM CUDA code).
                for bi in T.vectorized(VW):
                    hb[bi] = h_sh[(t % NBUF) * SMEM + bc * SBC + col * SC + v * VW + bi]
                for bi in T.unroll(VW):
                    acc[a0 + v * VW + bi] = acc[a0 + v * VW + bi] + val * f32(hb[bi])
            else:
                for bi in T.vectorized(VW):
                    acc[a0 + v * VW + bi] = (
                        acc[a0 + v * VW + bi]
                        + val * (h_sh[(t % NBUF) * SMEM + bc * SBC + col * SC + v * VW + bi])
                    )

    def smem_word(w_sh, rr, j, tx, w):
        """Word ``w`` of shared-memory slot ``j`` of row ``rr`` of thread ``tx``."""
        return w_sh[((rr * NZS + j) * NT + tx) * SPW + w]

    def smem_value(w_sh, rr, j, tx):
        if H16:
            return _call("sprnn_half_lo", smem_word(w_sh, rr, j, tx, 0), ret=F32)
        return T.reinterpret(F32, smem_word(w_sh, rr, j, tx, 0))

    def smem_column(w_sh, rr, j, tx):
        if H16:
            return _call("sprnn_col_hi", smem_word(w_sh, rr, j, tx, 0), ret="int32")
        return smem_word(w_sh, rr, j, tx, 1)

    @T.prim_func
    def main(
        vals: T.Buffer((RP, VALW), WDT),
        idx: T.Buffer((RP, IDXW), "int32"),
        spairs: T.Buffer((NCTA, SPWORDS), "int32"),
        u_handle: T.handle,
        h0: T.Buffer((Hk, Bk), DT),
        c0: T.Buffer((Hk, Bk), DT),
        rbias: T.Buffer((Hk,), F32),
        out_handle: T.handle,
        c_out: T.Buffer((Hk, Bk), DT),
        status: T.Buffer((1,), "int32"),
    ):
        T.func_attr({"tirx.noalias": True})
        steps = T.int32()
        U = T.match_buffer(u_handle, (steps, G * Hk, Bk), DT)
        out = T.match_buffer(out_handle, (steps, Hk, Bk), DT)
        if FLAG:
            # Fill out[0:T-1] with the sentinel: what the flag barrier waits on.
            words = T.decl_buffer((steps * HW,), "int32", data=out.data)
            for fb in T.thread_binding(FILL_B, thread="blockIdx.x"):
                for ft in T.thread_binding(FILL_T, thread="threadIdx.x"):
                    for it in range(T.ceildiv((steps - 1) * HW, 4 * FILL_T * FILL_B)):
                        if ((it * FILL_B + fb) * FILL_T + ft) * 4 < (steps - 1) * HW:
                            for v in T.vectorized(4):
                                words[((it * FILL_B + fb) * FILL_T + ft) * 4 + v] = T.int32(
                                    SENTINEL_BITS
                                )
                    if fb == 0 and ft == 0:
                        status[0] = 0
        for bx in T.thread_binding(NCTA, thread="blockIdx.x"):
            for tx in T.thread_binding(NT, thread="threadIdx.x"):
                h_sh = T.alloc_buffer((NBUF * SMEM,), DT, scope=SCOPE)
                w_sh = T.alloc_buffer((SPWORDS,), "int32", scope=W_SCOPE)
                wv = T.alloc_buffer((RPT * VALW // KS,), WDT, scope="local")
                wi = T.alloc_buffer((RPT * IDXW // KS,), "int32", scope="local")
                acc = T.alloc_buffer((G * BW,), F32, scope="local")
                uu = T.alloc_buffer((RPT * BW,), F32, scope="local")
                hv = T.alloc_buffer((BW,), F32, scope="local")
                hb = T.alloc_buffer((VW,), DT, scope="local")
                cst = T.alloc_buffer((UPG * Bk,), F32, scope="local")
                rbv = T.alloc_buffer((UPG,), F32, scope="local")
                pend = T.alloc_buffer((1,), "int32", scope="local")
                spins = T.alloc_buffer((1,), "int32", scope="local")
                if not FLAG:
                    if bx == 0 and tx == 0:
                        status[0] = 0
                # Weights -> registers, once; per-unit state of the cell.
                for rr in T.unroll(RPT):
                    for j in T.unroll(NVW):
                        wv[rr * NVW + j] = vals[row(bx, tx, rr), j * KS + tx % KS]
                    for m in T.unroll(NIW):
                        wi[rr * NIW + m] = idx[row(bx, tx, rr), m * KS + tx % KS]
                if NZS > 0:  # the CTA's shared-memory pairs, once (ordered by the first barrier)
                    for i in range(T.ceildiv(SPWORDS, NT)):
                        if i * NT + tx < SPWORDS:
                            w_sh[i * NT + tx] = spairs[bx, i * NT + tx]
                for ui in T.unroll(UPG):
                    rbv[ui] = rbias[T.min((bx * GPC + tx // KS) * UPG + ui, Hk - 1)]
                    for b in T.unroll(Bk):
                        cst[ui * Bk + b] = f32(
                            c0[T.min((bx * GPC + tx // KS) * UPG + ui, Hk - 1), b]
                        )
                for t in range(steps):
                    if NBC == 1:  # u_t before waiting for h_{t-1}
                        load_u(uu, U, t, bx, tx, 0)
                    if t == 0:
                        for i in T.unroll(NCOPY):
                            if ALL_VALID or i * NT + tx < NCH:
                                copy_chunk(h_sh, h0, out, t, tx, i, True)
                        _call("sprnn_cp_wait")
                    elif FLAG:
                        pend[0] = 0
                        for i in T.unroll(NCOPY):
                            if ALL_VALID or i * NT + tx < NCH:
                                pend[0] = pend[0] | (1 << i)
                        spins[0] = 0
                        while pend[0] != 0:
                            for i in T.unroll(NCOPY):
                                if T.bitwise_and(T.shift_right(pend[0], i), 1) == 1:
                                    copy_chunk(h_sh, h0, out, t, tx, i, False)
                            _call("sprnn_cp_wait")
                            for i in T.unroll(NCOPY):
                                if T.bitwise_and(T.shift_right(pend[0], i), 1) == 1:
                                    if (
                                        _call(
                                            "sprnn_ready16",
                                            T.address_of(
                                                h_sh[(t % NBUF) * SMEM + dst_elem(i * NT + tx)]
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
                    else:
                        for i in T.unroll(NCOPY):
                            if ALL_VALID or i * NT + tx < NCH:
                                copy_chunk(h_sh, h0, out, t, tx, i, False)
                        _call("sprnn_cp_wait")
                    T.cuda.cta_sync()
                    for bc in T.unroll(NBC):
                        if NBC > 1:
                            load_u(uu, U, t, bx, tx, bc)
                        for ui in T.unroll(UPG):
                            for g in T.unroll(G):
                                for b in T.unroll(BW):
                                    acc[g * BW + b] = T.float32(0)
                                for m in T.unroll(NZR // PK):
                                    pair(
                                        acc,
                                        g * BW,
                                        hb,
                                        h_sh,
                                        t,
                                        bc,
                                        value(wv, ui * G + g, m, 0),
                                        column(wi, ui * G + g, m, 0),
                                        H16,
                                    )
                                    if PK == 2:
                                        pair(
                                            acc,
                                            g * BW,
                                            hb,
                                            h_sh,
                                            t,
                                            bc,
                                            value(wv, ui * G + g, m, 1),
                                            column(wi, ui * G + g, m, 1),
                                            H16,
                                        )
                                for j in T.unroll(NZS):
                                    pair(
                                        acc,
                                        g * BW,
                                        hb,
                                        h_sh,
                                        t,
                                        bc,
                                        smem_value(w_sh, ui * G + g, j, tx),
                                        smem_column(w_sh, ui * G + g, j, tx),
                                        True,
                                    )
                            if KS > 1:
                                for k in T.unroll(G * BW):
                                    acc[k] = T.cuda.warp_sum(acc[k], KS)
                            if tx % KS == 0:
                                if unit(bx, tx, ui) < Hk:
                                    for b in T.unroll(BW):
                                        cell_update(
                                            hv,
                                            acc,
                                            0,
                                            uu,
                                            ui * G * BW,
                                            cst,
                                            ui * Bk + bc * BW,
                                            rbv[ui],
                                            f32(h_sh[h_elem(t, unit(bx, tx, ui), bc * BW + b)]),
                                            b,
                                        )
                                    # one vector store per pass, whatever the load width: the
                                    # flag barrier checks 32-bit words, so two fp16 samples of
                                    # a word must land together
                                    for bi in T.vectorized(BW):
                                        out[t, unit(bx, tx, ui), bc * BW + bi] = to_dt(hv[bi])
                    if FLAG:
                        if NBUF == 1:  # the next copy overwrites the buffer read now
                            T.cuda.cta_sync()
                    else:
                        T.cuda.grid_sync()
                if G == 4:
                    if tx % KS == 0:
                        for ui in T.unroll(UPG):
                            if unit(bx, tx, ui) < Hk:
                                for b in T.unroll(Bk):
                                    c_out[unit(bx, tx, ui), b] = to_dt(cst[ui * Bk + b])

    return main


def make_step_kernel(plan: PersistentPlan, cell: str = "tanh") -> tirx.PrimFunc:
    """Non-persistent fallback: one launch per step, weights read from global memory.

    ``main(vals, idx, spairs, U, h0, c0, rbias, out, c_out, status, t)`` computes step ``t``
    (``h_t`` into ``out[t]``, LSTM ``c_t`` into ``c_out``) from ``h_{t-1}`` (``h0`` at
    ``t = 0``), one thread per unit; the host calls it for ``t = 0 .. T-1``. The buffers are
    those of :func:`make_persistent_kernel` for a ``per_step`` plan (``KS = 1``, 32-bit indices,
    ``RP = G * Hk`` unit-major rows, ``spairs`` unused); ``status`` is set to 0.
    """
    _check(plan, cell)
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
        steps = T.int32()
        U = T.match_buffer(u_handle, (steps, G * Hk, Bk), DT)
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
                            uu[g * Bk + b] = f32(U[t, (bx * NTH + tx) * G + g, b])
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
