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

from .planner import PersistentPlan

logger = logging.getLogger(__name__)

ACTIVATIONS = ("tanh", "relu")
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
__forceinline__ __device__ void sprnn_cp16(float* dst, float* src) {
  unsigned s = (unsigned)__cvta_generic_to_shared(dst);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\\n" :: "r"(s), "l"(src) : "memory");
}
""",
    "sprnn_cp_wait": """
__forceinline__ __device__ void sprnn_cp_wait() {
  asm volatile("cp.async.wait_all;\\n" ::: "memory");
}
""",
    "sprnn_sentinel": f"""
__forceinline__ __device__ float sprnn_sentinel() {{
  return __int_as_float({SENTINEL_BITS});
}}
""",
    "sprnn_ready16": f"""
__forceinline__ __device__ int sprnn_ready16(float* p) {{
  const volatile int* q = reinterpret_cast<const volatile int*>(p);
  return (q[0] != {SENTINEL_BITS}) & (q[1] != {SENTINEL_BITS}) & (q[2] != {SENTINEL_BITS})
         & (q[3] != {SENTINEL_BITS});
}}
""",
}


def _call(name: str, *args: object, ret: str = "void") -> tirx.PrimExpr:
    return T.cuda.func_call(name, *args, source_code=_HELPERS[name], return_type=ret)


def make_persistent_kernel(
    plan: PersistentPlan,
    activation: str = "tanh",
    barrier: str = "grid",
    vector: bool = True,
) -> tirx.PrimFunc:
    """The persistent RNN PrimFunc ``main(vals, idx, U, h0, out, status)``.

    Parameters
    ----------
    plan : PersistentPlan
        Geometry (``kind == "persistent"``).
    activation : str
        ``"tanh"`` or ``"relu"``.
    barrier : str
        ``"grid"`` (cooperative grid sync) or ``"flag"`` (data-embedded sentinel barrier).
    vector : bool
        Vector shared loads of ``h`` (LDS.128 / LDS.64); ``False`` gives the naive scalar loads.

    Returns
    -------
    tvm.tirx.PrimFunc
        Buffers (``Hk = plan.hidden_padded``, ``Bk = plan.batch_kernel``, ``RP = rows_padded``):

        * ``vals``   ``(RP, NZ)`` float32 and ``idx`` ``(RP, NZ or NZ/2)`` int32 from
          :func:`~tvm_sparse_rnn.rnn.packing.pack`;
        ``T`` (the number of steps) is symbolic: one build serves every sequence length.

        * ``U``      ``(T, Hk, Bk)`` float32, ``u_t = W x_t + b``;
        * ``h0``     ``(Hk, Bk)`` float32;
        * ``out``    ``(T, Hk, Bk)`` float32, ``h_1 .. h_T``;
        * ``status`` ``(1,)`` int32, 0 on success, 1 if a flag-barrier wait timed out.
    """
    if plan.kind != "persistent":
        raise ValueError(f"plan kind {plan.kind!r}: use make_step_kernel for the fallback")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if barrier not in BARRIERS:
        raise ValueError(f"barrier must be one of {BARRIERS}, got {barrier!r}")
    Hk, Bk, RP, NZ = plan.hidden_padded, plan.batch_kernel, plan.rows_padded, plan.nz_per_row
    NCTA, NT, KS, RPT = plan.num_ctas, plan.threads, plan.lanes_per_row, plan.rows_per_group
    GPC, NZT = plan.groups_per_cta, plan.pairs_per_lane
    I16 = plan.index_mode == "i16x2"
    NIW = NZT // 2 if I16 else NZT  # index registers per lane and row
    IDXW = NZ // 2 if I16 else NZ
    CHUNKED = vector and Bk % 4 == 0
    VW = 4 if CHUNKED else (Bk if vector else 1)  # floats per shared load
    NV = Bk // VW  # loads per pair
    SC = 4 if CHUNKED else Bk  # shared words per column
    SV = 4 * Hk if CHUNKED else VW  # shared words per load chunk
    NCH = Hk * Bk // 4  # 16-byte chunks of h
    NCOPY = plan.copy_chunks
    ALL_VALID = NCOPY * NT == NCH
    FLAG = barrier == "flag"
    FILL_T, FILL_B = 256, 4 * NCTA  # fill kernel: grid-stride over out[0 : T-1]
    RELU = activation == "relu"
    SMEM = Hk * Bk
    NBUF = 2 if plan.double_buffer else 1
    SCOPE = "shared.dyn" if NBUF * SMEM * 4 > 48 * 1024 else "shared"

    def dst_word(e):
        """Shared word of 16-byte chunk ``e`` of ``h`` (flat ``[Hk, Bk]``)."""
        if CHUNKED:
            return ((e % (Bk // 4)) * Hk + e // (Bk // 4)) * 4
        return e * 4

    @T.macro
    def copy_chunk(h_sh, h0, out, t, tx, i, first):
        # buffer t % NBUF of h_sh receives h_{t-1}
        # chunk e = i*NT + tx of h_{t-1} (flat [Hk, Bk]) -> shared memory with cp.async.cg
        if first:
            _call(
                COPY_HELPER,
                T.address_of(h_sh[(t % NBUF) * SMEM + dst_word(i * NT + tx)]),
                T.address_of(h0[((i * NT + tx) * 4) // Bk, ((i * NT + tx) * 4) % Bk]),
            )
        else:
            _call(
                COPY_HELPER,
                T.address_of(h_sh[(t % NBUF) * SMEM + dst_word(i * NT + tx)]),
                T.address_of(out[t - 1, ((i * NT + tx) * 4) // Bk, ((i * NT + tx) * 4) % Bk]),
            )

    @T.macro
    def pair(acc, wv, h_sh, t, rr, slot, col):
        for v in T.unroll(NV):
            for bi in T.vectorized(VW):
                acc[v * VW + bi] = (
                    acc[v * VW + bi]
                    + wv[rr * NZT + slot] * h_sh[(t % NBUF) * SMEM + col * SC + v * SV + bi]
                )

    @T.prim_func
    def main(
        vals: T.Buffer((RP, NZ), "float32"),
        idx: T.Buffer((RP, IDXW), "int32"),
        u_handle: T.handle,
        h0: T.Buffer((Hk, Bk), "float32"),
        out_handle: T.handle,
        status: T.Buffer((1,), "int32"),
    ):
        T.func_attr({"tirx.noalias": True})
        steps = T.int32()
        U = T.match_buffer(u_handle, (steps, Hk, Bk), "float32")
        out = T.match_buffer(out_handle, (steps, Hk, Bk), "float32")
        if FLAG:
            # Fill out[0:T-1] with the sentinel: what the flag barrier waits on.
            out_flat = T.decl_buffer((steps * Hk * Bk,), "float32", data=out.data)
            for fb in T.thread_binding(FILL_B, thread="blockIdx.x"):
                for ft in T.thread_binding(FILL_T, thread="threadIdx.x"):
                    for it in range(T.ceildiv((steps - 1) * Hk * Bk, 4 * FILL_T * FILL_B)):
                        if ((it * FILL_B + fb) * FILL_T + ft) * 4 < (steps - 1) * Hk * Bk:
                            for v in T.vectorized(4):
                                out_flat[((it * FILL_B + fb) * FILL_T + ft) * 4 + v] = _call(
                                    "sprnn_sentinel", ret="float32"
                                )
                    if fb == 0 and ft == 0:
                        status[0] = 0
        for bx in T.thread_binding(NCTA, thread="blockIdx.x"):
            for tx in T.thread_binding(NT, thread="threadIdx.x"):
                h_sh = T.alloc_buffer((NBUF * SMEM,), "float32", scope=SCOPE)
                wv = T.alloc_buffer((RPT * NZT,), "float32", scope="local")
                wi = T.alloc_buffer((RPT * NIW,), "int32", scope="local")
                acc = T.alloc_buffer((Bk,), "float32", scope="local")
                uu = T.alloc_buffer((RPT * Bk,), "float32", scope="local")
                pend = T.alloc_buffer((1,), "int32", scope="local")
                spins = T.alloc_buffer((1,), "int32", scope="local")
                if not FLAG:
                    if bx == 0 and tx == 0:
                        status[0] = 0
                # Weights -> registers, once.
                for rr in T.unroll(RPT):
                    for j in T.unroll(NZT):
                        wv[rr * NZT + j] = vals[(bx * GPC + tx // KS) * RPT + rr, j * KS + tx % KS]
                    for m in T.unroll(NIW):
                        wi[rr * NIW + m] = idx[(bx * GPC + tx // KS) * RPT + rr, m * KS + tx % KS]
                for t in range(steps):
                    # u_t for this lane's rows, before waiting for h_{t-1}.
                    for rr in T.unroll(RPT):
                        for b in T.unroll(Bk):
                            uu[rr * Bk + b] = U[
                                t, T.min((bx * GPC + tx // KS) * RPT + rr, Hk - 1), b
                            ]
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
                                                h_sh[(t % NBUF) * SMEM + dst_word(i * NT + tx)]
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
                    for rr in T.unroll(RPT):
                        for b in T.unroll(Bk):
                            acc[b] = T.float32(0)
                        if I16:
                            for m in T.unroll(NIW):
                                pair(
                                    acc,
                                    wv,
                                    h_sh,
                                    t,
                                    rr,
                                    2 * m,
                                    T.bitwise_and(wi[rr * NIW + m], 65535),
                                )
                                pair(
                                    acc,
                                    wv,
                                    h_sh,
                                    t,
                                    rr,
                                    2 * m + 1,
                                    T.Cast(
                                        "int32",
                                        T.shift_right(
                                            T.Cast("uint32", wi[rr * NIW + m]), T.uint32(16)
                                        ),
                                    ),
                                )
                        else:
                            for j in T.unroll(NZT):
                                pair(acc, wv, h_sh, t, rr, j, wi[rr * NIW + j])
                        if KS > 1:
                            for b in T.unroll(Bk):
                                acc[b] = T.cuda.warp_sum(acc[b], KS)
                        if tx % KS == 0:
                            if (bx * GPC + tx // KS) * RPT + rr < Hk:
                                for v in T.unroll(NV):
                                    for bi in T.vectorized(VW):
                                        if RELU:
                                            out[
                                                t, (bx * GPC + tx // KS) * RPT + rr, v * VW + bi
                                            ] = T.max(
                                                acc[v * VW + bi] + uu[rr * Bk + v * VW + bi],
                                                T.float32(0),
                                            )
                                        else:
                                            out[
                                                t, (bx * GPC + tx // KS) * RPT + rr, v * VW + bi
                                            ] = T.tanh(acc[v * VW + bi] + uu[rr * Bk + v * VW + bi])
                    if FLAG:
                        if NBUF == 1:  # the next copy overwrites the buffer read now
                            T.cuda.cta_sync()
                    else:
                        T.cuda.grid_sync()

    return main


def make_step_kernel(plan: PersistentPlan, activation: str = "tanh") -> tirx.PrimFunc:
    """Non-persistent fallback: one launch per step, weights read from global memory.

    ``main(vals, idx, U, h0, out, status, t)`` computes ``out[t] = f(R h_{t-1} + U[t])`` with
    ``h_{-1} = h0``, one thread per row; the host calls it for ``t = 0 .. T-1``. The buffers are
    those of :func:`make_persistent_kernel` for a ``per_step`` plan (``KS = RPT = 1``, 32-bit
    indices); ``status`` is set to 0.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    Hk, Bk, NZ = plan.hidden_padded, plan.batch_kernel, plan.nz_per_row
    NTH = 128
    RELU = activation == "relu"

    @T.prim_func
    def main(
        vals: T.Buffer((Hk, NZ), "float32"),
        idx: T.Buffer((Hk, NZ), "int32"),
        u_handle: T.handle,
        h0: T.Buffer((Hk, Bk), "float32"),
        out_handle: T.handle,
        status: T.Buffer((1,), "int32"),
        t: T.int32,
    ):
        T.func_attr({"tirx.noalias": True})
        steps = T.int32()
        U = T.match_buffer(u_handle, (steps, Hk, Bk), "float32")
        out = T.match_buffer(out_handle, (steps, Hk, Bk), "float32")
        for bx in T.thread_binding(T.ceildiv(Hk, NTH), thread="blockIdx.x"):
            for tx in T.thread_binding(NTH, thread="threadIdx.x"):
                acc = T.alloc_buffer((Bk,), "float32", scope="local")
                if bx == 0 and tx == 0:
                    status[0] = 0
                if bx * NTH + tx < Hk:
                    for b in range(Bk):
                        acc[b] = U[t, bx * NTH + tx, b]
                    for k in range(NZ):
                        for b in range(Bk):
                            acc[b] = acc[b] + vals[bx * NTH + tx, k] * T.if_then_else(
                                t == 0,
                                h0[idx[bx * NTH + tx, k], b],
                                out[T.max(t - 1, 0), idx[bx * NTH + tx, k], b],
                            )
                    for b in range(Bk):
                        if RELU:
                            out[t, bx * NTH + tx, b] = T.max(acc[b], T.float32(0))
                        else:
                            out[t, bx * NTH + tx, b] = T.tanh(acc[b])

    return main
