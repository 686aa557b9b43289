"""Tensor-core ``sparse_dense`` for float16: ``Y = X W^T`` with ``W`` loaded sparse, multiplied
dense (Flash-LLM, Xia et al., VLDB'24, "load as sparse, compute as dense").

The kernel computes ``Y^T = W X^T`` tile by tile, ``W`` as the ``wmma`` A operand (16 rows of
``N`` per fragment) and ``X^T`` as B (16 rows of ``M`` per fragment), float32 accumulation::

    blockIdx.x  : a tile of R = 16 * row_frags rows of W (and columns of Y)
    blockIdx.y  : m_tile rows of X (and of Y)
    threadIdx.y : warp w, running segments_per_warp of the tile's segments
    threadIdx.x : lane
      regs <- the warp's pair words (quads_per_lane 16-byte loads per lane, all issued at once)
      B(0) <- X[m, col_0 * 64 ...] (col-major wmma loads from global memory / L2)
      for each of the warp's segments c (chunk col_c), unrolled:
        B(c + 1) <- X[m, col_{c+1} * 64 ...]        (double-buffered fragments)
        zero the warp's R x 64 half tile in shared memory (row stride 72);  __syncwarp
        store the segment's `slots` words per lane into it;  __syncwarp (+ __syncthreads)
        for 4 k steps: A <- tile (row-major), acc += A B(c)
      __syncthreads; acc -> shared (float32, over the tiles); sum over the warps -> Y (float16)

Splitting a tile's segments over the CTA's warps (a split-K inside the CTA) gives the skinny
problem enough warps, and every warp loads its whole share of ``W`` before the first multiply.
The packing is :mod:`~tvm_sparse_rnn.kernels.cuda.tensor_core.packing`. ``X`` must be
``(M_padded, K_padded)``: rows a multiple of ``m_tile``, columns of 64 (the caller zero-pads);
rows of ``Y`` beyond ``N`` are not stored. TVM's ThreadSync pass cannot see that the warps'
tiles are disjoint and adds a ``__syncthreads`` per segment, so the warps run in step.

Profile with ``ncu --set full python benchmarks/bench_sparse_dense.py --device gpu --quick``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tvm import tirx
from tvm.script import tirx as T  # noqa: N812

from ....errors import UnsupportedError
from .packing import CHUNK, FRAGMENT, LANES, POS_SHIFT, QUAD, ROW_FRAGS, TiledLayout

logger = logging.getLogger(__name__)

DTYPE = "float16"
ACC = "float32"
#: Halves per 16-byte access (zeroing a chunk tile, staging X).
VECTOR_HALVES = 8
#: Row stride (halves) of a chunk tile in shared memory: 64 + 8 keeps the eight 16-byte rows an
#: ``ldmatrix`` phase reads in distinct banks.
ROW_STRIDE = CHUNK + 8
#: ``m16n16k16`` k steps per chunk.
K_STEPS = CHUNK // FRAGMENT


@dataclass(frozen=True)
class TensorCoreConfig:
    """Knobs of the tensor-core kernel.

    Attributes
    ----------
    row_frags : int
        Fragments of 16 rows of ``W`` per CTA tile (1, 2 or 4): each B fragment is used that
        many times.
    warps : int
        Warps per CTA (the split of a tile's chunks); the packing may raise it.
    m_tile : int
        Rows of ``X`` per CTA (16, 32 or 64): ``m_tile / 16`` accumulator fragments per A.
    """

    row_frags: int = 1
    warps: int = 8
    m_tile: int = 16


#: Candidate values per knob.
KNOB_CHOICES: dict[str, tuple[int, ...]] = {
    "row_frags": ROW_FRAGS,
    "warps": (4, 8, 16),
    "m_tile": (16, 32, 64),
}


def default_config(m: int) -> TensorCoreConfig:
    """The shipped config for ``m`` rows of ``X``: 16-row tiles of ``W``, 8 warps, ``m_tile``
    16 below 64 rows, else 64. In a sweep over :data:`KNOB_CHOICES` at N = K = 4096, 90 %,
    float16, on the H100 (session 18; us, unstructured / 16x16 blocks): ``M = 16`` 11.6 / 8.8
    (fastest 11.2 / 8.4); ``M = 64`` 33.3 / 24.0 (``m_tile`` 16 before: 38.3 / 28.2; fastest,
    4 warps: 27.9 / 19.2); ``M = 128`` 58.4 / 43.6 (fastest 58.4 / 35.9, 4 warps). cuBLAS took
    8.7-10.0 us for all of them: no knob value makes this kernel competitive from ``M = 64``
    (each CTA re-reads its ``X`` tile for every 16 rows of ``W``)."""
    return TensorCoreConfig(m_tile=16 if m < 64 else 64)


def padded_rows(m: int, m_tile: int) -> int:
    """Rows of ``X`` the kernel reads: ``m`` rounded up to ``m_tile``."""
    return -(-m // m_tile) * m_tile


def shared_bytes(rows: int, warps: int, m_tile: int) -> int:
    """Shared memory of a CTA: each warp's ``W`` and ``X`` chunk tiles (half), reused for the
    warps' partial sums (float) once every warp is done (TVM merges the allocations)."""
    return warps * max((rows + m_tile) * ROW_STRIDE * 2, rows * m_tile * 4)


def make_tensor_core_kernel(
    layout: TiledLayout, m_padded: int, m_tile: int, shared_limit: int
) -> tirx.PrimFunc:
    """The kernel ``main(X[m_padded, K_padded], words, cols, Y[m_padded, N])`` for a packed
    weight of ``layout``.

    Parameters
    ----------
    layout : TiledLayout
        The packed weight's geometry (:func:`~.packing.pack_tiled`).
    m_padded : int
        Rows of ``X`` and ``Y``, a multiple of ``m_tile``.
    m_tile : int
        16, 32 or 64.
    shared_limit : int
        Shared memory a CTA may use (bytes), from :func:`tvm_sparse_rnn.target.device_limits`.

    Raises
    ------
    UnsupportedError
        If ``m_tile`` is not 16, 32 or 64 or does not divide ``m_padded``, or the CTA needs
        more than ``shared_limit`` bytes of shared memory.
    """
    if m_tile not in KNOB_CHOICES["m_tile"] or m_padded % m_tile or m_padded < 1:
        raise UnsupportedError(
            f"tensor-core sparse_dense: m_tile must be 16, 32 or 64 and divide the padded batch "
            f"{m_padded}, got {m_tile}"
        )
    smem = shared_bytes(layout.rows, layout.warps, m_tile)
    if smem > shared_limit:
        raise UnsupportedError(
            f"tensor-core sparse_dense: {layout.warps} warps x {layout.rows} rows x m_tile "
            f"{m_tile} need {smem} bytes of shared memory, more than the device's {shared_limit}"
        )
    n, _ = layout.shape
    kp = layout.padded_k
    rows, warps, spw, slots = layout.rows, layout.warps, layout.segments_per_warp, layout.slots
    q = layout.quads_per_lane
    af, bf = layout.row_frags, m_tile // FRAGMENT
    tile_halves = rows * ROW_STRIDE
    x_halves = m_tile * ROW_STRIDE
    x_rounds = m_tile * CHUNK // (VECTOR_HALVES * LANES)
    out_per_cta = rows * m_tile
    out_rounds = -(-out_per_cta // (warps * LANES))
    row_vectors = CHUNK // VECTOR_HALVES

    @T.macro
    def scatter_segment(ws, regs, w, lane, c):
        for z in T.unroll(rows * row_vectors // LANES):
            vec = z * LANES + lane
            for v in T.vectorized(VECTOR_HALVES):
                ws[
                    w * tile_halves + (vec // row_vectors) * ROW_STRIDE
                    + (vec % row_vectors) * VECTOR_HALVES + v
                ] = T.float16(0)  # fmt: skip
        T.cuda.warp_sync()
        for s in T.unroll(slots):
            word = regs[c * slots + s]
            pos = T.Cast("int32", T.shift_right(word, T.uint32(POS_SHIFT)))
            bits = T.Cast("uint16", word & T.uint32(0xFFFF))
            ws[w * tile_halves + (pos // CHUNK) * ROW_STRIDE + pos % CHUNK] = T.reinterpret(
                DTYPE, bits
            )
        T.cuda.warp_sync()

    @T.macro
    def load_x(xr, x, colr, bm, lane, c):
        for i in T.unroll(x_rounds):
            vec = i * LANES + lane
            for v in T.vectorized(VECTOR_HALVES):
                xr[i * VECTOR_HALVES + v] = x[
                    bm * m_tile + vec // row_vectors,
                    colr[c] * CHUNK + (vec % row_vectors) * VECTOR_HALVES + v,
                ]

    @T.macro
    def store_x(xs, xr, w, lane):
        for i in T.unroll(x_rounds):
            vec = i * LANES + lane
            for v in T.vectorized(VECTOR_HALVES):
                xs[
                    w * x_halves + (vec // row_vectors) * ROW_STRIDE
                    + (vec % row_vectors) * VECTOR_HALVES + v
                ] = xr[i * VECTOR_HALVES + v]  # fmt: skip

    @T.macro
    def multiply_segment(ws, xs, a_frag, b_frag, c_frag, w):
        for ks in T.unroll(K_STEPS):
            for i in T.unroll(af):
                T.tvm_load_matrix_sync(
                    a_frag.data, 16, 16, 16, i,
                    ws.access_ptr(
                        "r", offset=w * tile_halves + i * FRAGMENT * ROW_STRIDE + ks * 16
                    ),
                    ROW_STRIDE, "row_major",
                )  # fmt: skip
            for j in T.unroll(bf):
                T.tvm_load_matrix_sync(
                    b_frag.data, 16, 16, 16, j,
                    xs.access_ptr("r", offset=w * x_halves + j * FRAGMENT * ROW_STRIDE + ks * 16),
                    ROW_STRIDE, "col_major",
                )  # fmt: skip
            for i in T.unroll(af):
                for j in T.unroll(bf):
                    T.tvm_mma_sync(
                        c_frag.data, i * bf + j, a_frag.data, i, b_frag.data, j,
                        c_frag.data, i * bf + j,
                    )  # fmt: skip

    @T.macro
    def reduce_store(red, y, w, lane, bn, bm):
        for e in T.unroll(out_rounds):
            idx = (e * warps + w) * LANES + lane
            if idx < out_per_cta:
                r = idx % rows
                mm = idx // rows
                total = T.alloc_buffer((1,), ACC, scope="local")
                total[0] = T.float32(0)
                for ww in T.unroll(warps):
                    total[0] = total[0] + red[(ww * rows + r) * m_tile + mm]
                if bn * rows + r < n:
                    y[bm * m_tile + mm, bn * rows + r] = T.Cast(DTYPE, total[0])

    @T.prim_func
    def main(
        x: T.Buffer((m_padded, kp), DTYPE),
        words: T.Buffer((layout.tiles, warps, q, LANES, QUAD), "uint32"),
        cols: T.Buffer((layout.tiles, warps, spw), "int32"),
        y: T.Buffer((m_padded, n), DTYPE),
    ):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        for bm in T.thread_binding(m_padded // m_tile, thread="blockIdx.y"):
            for bn in T.thread_binding(layout.tiles, thread="blockIdx.x"):
                for w in T.thread_binding(warps, thread="threadIdx.y"):
                    for lane in T.thread_binding(LANES, thread="threadIdx.x"):
                        ws = T.alloc_buffer((warps * tile_halves,), DTYPE, scope="shared.dyn")
                        xs = T.alloc_buffer((warps * x_halves,), DTYPE, scope="shared.dyn")
                        red = T.alloc_buffer((warps * out_per_cta,), ACC, scope="shared.dyn")
                        regs = T.alloc_buffer((q * QUAD,), "uint32", scope="local")
                        colr = T.alloc_buffer((spw,), "int32", scope="local")
                        a_frag = T.alloc_buffer((af * 16, 16), DTYPE, scope="wmma.matrix_a")
                        xr = T.alloc_buffer((x_rounds * VECTOR_HALVES,), DTYPE, scope="local")
                        b_frag = T.alloc_buffer((16, bf * 16), DTYPE, scope="wmma.matrix_b")
                        c_frag = T.alloc_buffer((af * 16, bf * 16), ACC, scope="wmma.accumulator")
                        for j in T.unroll(q):
                            for v in T.vectorized(QUAD):
                                regs[j * QUAD + v] = words[bn, w, j, lane, v]
                        for c in T.unroll(spw):
                            colr[c] = cols[bn, w, c]
                        for f in T.unroll(af * bf):
                            T.tvm_fill_fragment(c_frag.data, 16, 16, 16, f, T.float32(0))
                        load_x(xr, x, colr, bm, lane, 0)
                        for c in T.unroll(spw):
                            store_x(xs, xr, w, lane)
                            if c + 1 < spw:
                                load_x(xr, x, colr, bm, lane, c + 1)
                            scatter_segment(ws, regs, w, lane, c)
                            multiply_segment(ws, xs, a_frag, b_frag, c_frag, w)
                        # `red` may reuse the chunk tiles' shared memory: every warp done first.
                        T.tvm_storage_sync("shared")
                        for i in T.unroll(af):
                            for j in T.unroll(bf):
                                T.tvm_store_matrix_sync(
                                    c_frag.data, 16, 16, 16, i * bf + j,
                                    T.address_of(red[(w * rows + i * 16) * m_tile + j * 16]),
                                    m_tile, "row_major",
                                )  # fmt: skip
                        T.tvm_storage_sync("shared")
                        reduce_store(red, y, w, lane, bn, bm)

    return main
