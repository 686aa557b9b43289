"""x86 (llvm) CSR kernel of unstructured sparse linear layers over wide inputs, in K panels.

``Y^T = W X^T + b`` like the linear layers' CSR kernel
(:func:`~tvm_sparse_rnn.kernels.x86.recurrent.projection_prim_func`: every nonzero ``W[n, k]``
times the contiguous row ``X^T[k, :]``; Elsen et al., "Fast Sparse ConvNets", CVPR 2020), with
``W`` cut into panels of :data:`K_PANEL` columns. An unstructured weight shares no load of
``X^T`` between rows, so with ``K x tile`` floats of ``X^T`` (192-768 KB for BERT's layers at a
tile of 64 columns) every nonzero streams its ``tile`` floats from L2. Panel by panel, the
panel's slice of ``X^T`` (``K_PANEL x tile`` floats, 32 KB) stays in L1 while all rows of a
block accumulate their nonzeros of the panel into their ``Y^T`` tiles (kept in L2 between
panels); column offsets within a panel fit one byte, so a nonzero is 5 bytes.

Measured on the 2-core AMD EPYC VM (an ad-hoc ``time_evaluator`` script, 90 % unstructured,
``M`` = 128 at a tile of 64, interleaved, GFLOPS): ``3072 x 768`` 107 -> 130, ``768 x 3072`` 80-96
-> 116-130, ``4096 x 4096`` 77 -> 120; ``M`` = 64: 118 -> 142 and 92 -> 137; ``M`` = 16 (tile 16)
loses (91 -> 71: ``X^T`` is small, and a row's accumulator is one vector), hence
:func:`uses_k_panels`. Panels of 64 or 256 columns measured slower than 128. A tile of 128
columns reads ``W`` once per call instead of twice at ``M`` = 128 and gives every nonzero 8
independent FMAs (4 at 64, one FMA latency apart): with 8 weights called in turn (a model's
weights come from L3 or DRAM; an ad-hoc script, session 20) ``768 x 3072`` 110 -> 122 GFLOPS,
``3072 x 768`` 93 -> 108, ``2304 x 768`` 106 -> 118.

On the Zen 3 VM (AVX2, 64-column tiles; one thread, best of 15 ``time_evaluator`` runs, three
rounds; git-ignored ``.old/s23/sort_probe.py``), ``M`` = 128, BERT's ``2304 x 768`` / ``768 x
768`` / ``3072 x 768`` / ``768 x 3072``: 42-43 / 44-46 / 42 / 41 GFLOPS as above; each block's
rows run by their count in the panel (:class:`PanelWeight`) 46-49 / 49-50 / 48-49 / 48; and
``X^T`` copied tile-major too 54-55 / 50-53 / 54-55 / 51-52. At ``M`` = 64 (one tile: the
kernel reads it in place, the probe copied it) 49-51 / 58-59 / 50 / 47-48 -> 56-57 / 55-56 /
56-57 / 51-53. Panels of 64 columns (copied tile-major) 41-49, of 32 37-39, of 192 50-54, of
256 50-53 (one run 37).

Profile with ``python benchmarks/bench_cpu_kernels.py`` (its ``ours-model`` column of the
unstructured rows, ``M`` >= 64) or ``python benchmarks/profile_cpu_models.py bert_unstructured``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T  # noqa: N812 - TVMScript convention

from ...ops.epilogue import Activation
from .recurrent import stack_buffer

logger = logging.getLogger(__name__)

#: Columns of ``W`` per panel: the panel's ``X^T`` slice (``K_PANEL x tile`` floats) fits L1 and
#: a column offset within it fits a uint8.
K_PANEL = 128
#: Accumulator tiles (columns of ``X^T``) of the panel kernel on AVX-512, the first dividing
#: ``M`` is used (:class:`~tvm_sparse_rnn.kernels.x86.csr_tiling.CsrTiling` has each family's).
PANEL_TILES = (128, 64)
#: Most rows per parallel task: their ``Y^T`` tiles stay in L2 across the panels.
ROW_BLOCK = 256
_F32 = "float32"


@dataclass(frozen=True)
class PanelWeight:
    """An ``(N, K)`` weight as CSR per panel of :data:`K_PANEL` columns, for row blocks.

    The rows are split into blocks (:func:`row_blocks`: the kernel's parallel tasks), and within
    each block and panel they run in order of their nonzero count in that panel, so that rows
    of equal counts follow each other and the nonzero loop's exit branch is predicted (random
    counts mispredicted it at about every row of every panel).

    Attributes
    ----------
    values : numpy.ndarray
        ``(nnz,)`` float32, panel by panel, rows in :attr:`order` within a panel.
    offsets : numpy.ndarray
        ``(nnz,)`` uint8: the column of each value minus its panel's first column.
    indptr : numpy.ndarray
        ``(P, N + 1)`` int32: the nonzeros of panel ``p`` of the row at position ``i`` of the
        panel's order are ``values[indptr[p, i]:indptr[p, i + 1]]``.
    order : numpy.ndarray
        ``(P, N)`` int32: the row at each position, a permutation of each block's rows.
    shape : tuple of int
        ``(N, K)``.
    blocks : int
        Row blocks (parallel tasks).
    block_rows : int
        Rows a block (the last one may have fewer).
    """

    values: np.ndarray
    offsets: np.ndarray
    indptr: np.ndarray
    order: np.ndarray
    shape: tuple[int, int]
    blocks: int
    block_rows: int

    @property
    def panels(self) -> int:
        """``P``: panels of :data:`K_PANEL` columns (the last one may be narrower)."""
        return int(self.indptr.shape[0])

    @property
    def entries(self) -> int:
        """Length of :attr:`values` (at least 1: TVM buffers can't be empty)."""
        return int(self.values.size)

    def arrays(self) -> list[np.ndarray]:
        """The kernel's weight arguments, in parameter order."""
        return [self.values, self.offsets, self.indptr, self.order]


def pack_k_panels(w: np.ndarray | sp.sparray, threads: int) -> PanelWeight:
    """Pack an ``(N, K)`` linear weight for :func:`panel_spmm_prim_func` run on ``threads``
    threads (explicit zeros dropped)."""
    csr = sp.csr_array(w, dtype=np.float32)
    csr.eliminate_zeros()
    csr.sort_indices()
    n, k = csr.shape
    blocks, block_rows = row_blocks(n, threads)
    panels = -(-k // K_PANEL)
    panel_of = csr.indices // K_PANEL
    rows = np.repeat(np.arange(n), np.diff(csr.indptr))
    counts = np.zeros((panels, n), np.int64)
    np.add.at(counts, (panel_of, rows), 1)
    # within each block and panel: rows by count (stable: ties in row order)
    block_of = np.arange(n) // block_rows
    order = np.stack([np.lexsort((counts[p], block_of)) for p in range(panels)])
    position = np.empty_like(order)
    np.put_along_axis(position, order, np.arange(n)[None, :], axis=1)
    ordered_counts = np.take_along_axis(counts, order, axis=1)
    indptr = np.zeros((panels, n + 1), np.int64)
    np.cumsum(ordered_counts, axis=1, out=indptr[:, 1:])
    indptr += np.concatenate([[0], np.cumsum(counts.sum(axis=1))[:-1]])[:, None]
    # panel, then the row's position in the panel's order, then column
    entry_order = np.lexsort((csr.indices, position[panel_of, rows], panel_of))
    values = np.zeros(max(csr.nnz, 1), np.float32)
    offsets = np.zeros(values.size, np.uint8)
    values[: csr.nnz] = csr.data[entry_order]
    offsets[: csr.nnz] = (csr.indices[entry_order] % K_PANEL).astype(np.uint8)
    return PanelWeight(
        values,
        offsets,
        indptr.astype(np.int32),
        order.astype(np.int32),
        (n, k),
        blocks,
        block_rows,
    )


def panel_tile(m: int, tiles: tuple[int, ...] = PANEL_TILES) -> int | None:
    """The accumulator tile of the panel kernel over ``m`` columns of ``X^T``: the first of
    ``tiles`` that divides ``m`` (the kernel accumulates into ``Y^T`` in place, so no padded
    columns), ``None`` if none does."""
    return next((tile for tile in tiles if m % tile == 0), None)


def uses_k_panels(m: int, row_group: int, tiles: tuple[int, ...] = PANEL_TILES) -> bool:
    """Whether an x86 CSR layer over ``m`` columns of ``X^T`` runs in K panels: unstructured
    (``row_group == 1``: no shared ``X^T`` loads between rows) and ``m`` a multiple of one of
    ``tiles`` (:func:`panel_tile`)."""
    return row_group == 1 and panel_tile(m, tiles) is not None


def row_blocks(rows: int, threads: int) -> tuple[int, int]:
    """``(blocks, rows per block)``: at most :data:`ROW_BLOCK` rows a block and a multiple of
    ``threads`` blocks, so that TVM's static split of the parallel loop gives every thread the
    same rows (BERT's 768-row layers in 3 blocks of 256 kept one of 2 cores idle a third of
    the time)."""
    blocks = threads * -(-rows // (threads * ROW_BLOCK))
    return blocks, -(-rows // blocks)


def panel_spmm_prim_func(
    packed: PanelWeight,
    m: int,
    tile: int,
    activation: Activation = Activation.NONE,
) -> tirx.PrimFunc:
    """``Y^T[0, n, :] = activation(W[n, :] @ X^T + b[n])`` over the K panels of ``packed``.

    Over more than one column tile, ``X^T`` is first copied tile by tile into a
    ``(m / tile, K, tile)`` scratch buffer, so that a panel's slice of a tile is contiguous (32
    KB at a tile of 64): read in place, the slice of a 64-column tile of BERT's 128-column
    ``X^T`` is 256 bytes every 512 and falls on half of L1's sets.

    Parameters
    ----------
    packed : PanelWeight
        ``W`` (:func:`pack_k_panels`); its shapes and row blocks are baked in.
    m : int
        Columns of ``X^T`` (rows of ``X``), a multiple of ``tile``.
    tile : int
        Accumulator columns per row (vector registers).
    activation : Activation
        Applied to the sums in the last panel's store.

    Returns
    -------
    tvm.tirx.PrimFunc
        ``main(XT (K, m), W_values, W_offsets, W_indptr, W_order, b (N,), Y (1, N, m))``, the
        parameters of the CSR kernel's for one step with the row order added.

    Raises
    ------
    ValueError
        If ``m`` is not a multiple of ``tile``.
    """
    n, k = packed.shape
    if m % tile:
        raise ValueError(f"panel kernel: m = {m} columns must be a multiple of the tile {tile}")
    panels, tiles = packed.panels, m // tile
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("panel_spmm_x86")
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            XT = T.arg("XT", T.buffer((k, m), _F32))
            vals = T.arg("W_values", T.buffer((packed.entries,), _F32))
            offs = T.arg("W_offsets", T.buffer((packed.entries,), "uint8"))
            ptr = T.arg("W_indptr", T.buffer((panels, n + 1), "int32"))
            order = T.arg("W_order", T.buffer((panels, n), "int32"))
            bias = T.arg("Wb", T.buffer((n,), _F32))
            Y = T.arg("U", T.buffer((1, n, m), _F32))
            x_at = _tile_major(XT, tile) if tiles > 1 else (lambda c, mo, mi: XT[c, mi])
            with T.parallel(0, packed.blocks) as block:
                with T.serial(0, tiles) as mo, T.serial(0, panels) as p:
                    first = block * packed.block_rows
                    rows = tirx.max(tirx.min(packed.block_rows, n - first), 0)
                    with T.serial(0, rows) as rr:
                        at = first + rr
                        r = order[p, at]
                        acc = stack_buffer((tile,))
                        with T.vectorized(0, tile) as mi:
                            start = tirx.if_then_else(p == 0, bias[r], Y[0, r, mo * tile + mi])
                            T.buffer_store(acc, start, [mi])
                        with T.serial(ptr[p, at], ptr[p, at + 1]) as e:
                            col = p * K_PANEL + tirx.Cast("int32", offs[e])
                            with T.vectorized(0, tile) as mi:
                                T.buffer_store(acc, acc[mi] + vals[e] * x_at(col, mo, mi), [mi])
                        if activation is Activation.NONE:
                            _store(Y, acc, r, mo * tile, tile, Activation.NONE)
                        else:
                            with T.If(p == panels - 1):
                                with T.Then():
                                    _store(Y, acc, r, mo * tile, tile, activation)
                                with T.Else():
                                    _store(Y, acc, r, mo * tile, tile, Activation.NONE)
    return ib.get()


def _tile_major(xt: tirx.Buffer, tile: int) -> Callable:
    """Copy ``X^T (K, m)`` into a ``(m / tile, K, tile)`` scratch buffer (parallel over ``K``);
    returns ``x_at(col, mo, mi)`` reading it."""
    k, m = (int(d) for d in xt.shape)
    packed = T.alloc_buffer((m // tile, k, tile), _F32, scope="global")
    with T.parallel(0, k) as c, T.serial(0, m // tile) as mo:
        with T.vectorized(0, tile) as mi:
            T.buffer_store(packed, xt[c, mo * tile + mi], [mo, c, mi])
    return lambda c, mo, mi: packed[mo, c, mi]


def _store(
    y: tirx.Buffer,
    acc: tirx.Buffer,
    row: tirx.PrimExpr,
    first: tirx.PrimExpr,
    tile: int,
    activation: Activation,
) -> None:
    """``Y[0, row, first:first + tile] = activation(acc)``, one vector."""
    with T.vectorized(0, tile) as mi:
        T.buffer_store(y, activation.apply(acc[mi]), [0, row, first + mi])
