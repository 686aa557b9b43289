"""Pack a sparse ``W`` into the tensor-core kernel's segmented-pairs layout.

``W`` (``N x K``) is cut into **tiles** of ``R`` rows (``R = 16 * row_frags``) and **chunks** of
:data:`CHUNK` columns; empty chunks are dropped (a 16x16-block weight at 90 % leaves about two
thirds of them empty). Every nonzero becomes one 32-bit **pair word**::

    bits  0..15  the value (IEEE half)
    bits 16..27  position in the chunk: row_in_tile * CHUNK + column_in_chunk  (< 4096)

A chunk's words are cut into **segments** of ``32 * slots`` words (a chunk with more words gets
several segments of the same column: the kernel multiplies each partial tile and the sums add
up); the last segment of a chunk is padded by repeating its last word (the same value stored
twice). Word ``j`` of a segment goes to lane ``j % 32``, register slot ``j // 32``, so every
segment costs every lane exactly ``slots`` shared-memory stores, with no test. A tile's
segments are dealt to the CTA's warps in runs of ``segments_per_warp``; a warp with fewer runs
all-zero segments (value 0 at position 0 of an all-zero tile). Lane ``l``'s words of warp ``w``
of tile ``t`` are ``words[t, w, :, l, :]``, loaded with 16-byte loads.

This is Flash-LLM's "load as sparse, compute as dense" (Xia et al., VLDB'24), with fixed-size
segments instead of its per-tile offsets so that the scatter is unrolled over registers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ....errors import UnsupportedError

logger = logging.getLogger(__name__)

#: Columns of ``W`` per chunk (four 16-wide ``k`` steps of the ``m16n16k16`` mma).
CHUNK = 64
#: Rows of one ``wmma`` fragment.
FRAGMENT = 16
#: Bit offset of a pair word's position field.
POS_SHIFT = 16
#: Words per vector load.
QUAD = 4
LANES = 32
#: Fragments of 16 rows a tile may have.
ROW_FRAGS = (1, 2, 4)
#: Default register budget of a lane for pair words.
MAX_WORDS_PER_LANE = 64
#: Segment size: the fraction of chunks that fit one segment.
SEGMENT_QUANTILE = 0.75


@dataclass(frozen=True)
class TiledLayout:
    """What the kernel bakes in of a packed weight.

    Attributes
    ----------
    shape : tuple of int
        ``(N, K)`` of ``W``.
    row_frags : int
        Fragments of 16 rows per tile (``R = 16 * row_frags`` rows).
    warps : int
        Warps per CTA; each runs ``segments_per_warp`` of its tile's segments.
    segments_per_warp : int
        Segments per warp.
    slots : int
        Words per lane of one segment.
    """

    shape: tuple[int, int]
    row_frags: int
    warps: int
    segments_per_warp: int
    slots: int

    @property
    def rows(self) -> int:
        """Rows per tile (``R``)."""
        return FRAGMENT * self.row_frags

    @property
    def tiles(self) -> int:
        """Tiles along ``N`` (the last one padded)."""
        return -(-self.shape[0] // self.rows)

    @property
    def padded_k(self) -> int:
        """``K`` rounded up to a whole chunk (``X`` is zero-padded to it)."""
        return -(-self.shape[1] // CHUNK) * CHUNK

    @property
    def quads_per_lane(self) -> int:
        """16-byte loads of pair words per lane."""
        return -(-self.segments_per_warp * self.slots // QUAD)


@dataclass(frozen=True)
class TiledWeight:
    """``W`` in the segmented-pairs layout.

    Attributes
    ----------
    layout : TiledLayout
        The geometry.
    words : numpy.ndarray
        ``(tiles, warps, quads_per_lane, 32, 4)`` uint32 pair words.
    cols : numpy.ndarray
        ``(tiles, warps, segments_per_warp)`` int32: the chunk (column // 64) of each of a
        warp's segments; 0 for the all-zero ones.
    """

    layout: TiledLayout
    words: np.ndarray
    cols: np.ndarray

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(words, cols)``, the kernel's weight arguments."""
        return self.words, self.cols


def pack_tiled(
    weight: np.ndarray | sp.sparray,
    row_frags: int,
    warps: int,
    max_words: int = MAX_WORDS_PER_LANE,
) -> TiledWeight:
    """Pack ``weight`` (``N x K``, dense or scipy sparse) into the segmented-pairs layout.

    Parameters
    ----------
    weight : numpy.ndarray or scipy sparse
        ``W``; values are rounded to float16, explicit zeros dropped.
    row_frags : int
        Fragments of 16 rows per tile, one of :data:`ROW_FRAGS`.
    warps : int
        Warps per CTA at least; raised (up to 32) until no lane holds more than ``max_words``
        pair words.
    max_words : int
        Register budget of a lane for pair words.

    Raises
    ------
    UnsupportedError
        If ``row_frags`` is not in :data:`ROW_FRAGS`, ``warps`` is not in 1..32, or ``W`` is
        too dense for ``max_words`` words per lane with 32 warps.
    """
    if row_frags not in ROW_FRAGS:
        raise UnsupportedError(
            f"tensor-core sparse_dense: row_frags must be one of {ROW_FRAGS}, got {row_frags}"
        )
    if not 1 <= warps <= LANES:
        raise UnsupportedError(f"tensor-core sparse_dense: warps must be in 1..32, got {warps}")
    if not sp.issparse(weight):
        weight = np.asarray(weight, dtype=np.float32)  # scipy.sparse holds no float16
    segments = _Segments.of(sp.coo_array(weight), FRAGMENT * row_frags)
    most = int(segments.per_tile.max(initial=1))
    for count in range(warps, LANES + 1):
        spw = -(-most // count)
        if spw * segments.slots <= max_words:
            packed = segments.deal(count, spw)
            logger.debug("packed W for tensor cores: %s", packed.layout)
            return packed
    n, k = segments.shape
    raise UnsupportedError(
        f"tensor-core sparse_dense: W {n}x{k} holds {segments.values.size} nonzeros, more than "
        f"{max_words} pair words per lane of 32 warps per {segments.rows}-row tile; "
        "use the dense kernel"
    )


@dataclass(frozen=True)
class _Segments:
    """The nonzeros of ``W`` sorted by (tile, chunk, position) and cut into segments."""

    shape: tuple[int, int]
    rows: int
    slots: int
    words: np.ndarray  # (nnz,) uint32 pair words, sorted
    values: np.ndarray  # (nnz,) float16, sorted
    seg_tile: np.ndarray  # (segments,) tile of each segment, sorted
    seg_col: np.ndarray  # (segments,) chunk of each segment
    seg_start: np.ndarray  # (segments,) first word
    seg_count: np.ndarray  # (segments,) words

    @classmethod
    def of(cls, coo: sp.coo_array, rows: int) -> _Segments:
        values = coo.data.astype(np.float16)
        keep = values != 0
        r, c, values = coo.row[keep].astype(np.int64), coo.col[keep].astype(np.int64), values[keep]
        k_chunks = -(-coo.shape[1] // CHUNK)
        key = (r // rows) * k_chunks + c // CHUNK
        pos = (r % rows) * CHUNK + c % CHUNK
        order = np.lexsort((pos, key))
        key, pos, values = key[order], pos[order], values[order]
        words = values.view(np.uint16).astype(np.uint32) | (pos.astype(np.uint32) << POS_SHIFT)
        keys, start, count = np.unique(key, return_index=True, return_counts=True)
        slots = (
            max(1, int(np.ceil(np.quantile(count, SEGMENT_QUANTILE) / LANES))) if count.size else 1
        )
        per_chunk = -(-count // (slots * LANES))
        chunk = np.repeat(np.arange(keys.size), per_chunk)
        part = np.arange(chunk.size) - _starts(per_chunk)
        seg_start = start[chunk] + part * slots * LANES
        seg_count = np.minimum(count[chunk] - part * slots * LANES, slots * LANES)
        seg_key = keys[chunk]
        return cls(
            coo.shape, rows, slots, words, values,
            seg_key // k_chunks, seg_key % k_chunks, seg_start, seg_count,
        )  # fmt: skip

    @property
    def tiles(self) -> int:
        return -(-self.shape[0] // self.rows)

    @property
    def per_tile(self) -> np.ndarray:
        """Segments of each tile."""
        return np.bincount(self.seg_tile, minlength=self.tiles)

    def deal(self, warps: int, spw: int) -> TiledWeight:
        """Deal each tile's segments to ``warps`` warps, ``spw`` at most each, and lay out
        their words."""
        tiles, slots = self.tiles, self.slots
        rank = np.arange(self.seg_tile.size) - _starts(self.per_tile)
        seg_warp, seg_local = rank // spw, rank % spw
        # Word j of a segment -> lane j % 32, slot seg_local * slots + j // 32; padding repeats
        # the segment's last word.
        width = slots * LANES
        seg = np.repeat(np.arange(self.seg_tile.size), width)
        j = np.tile(np.arange(width), self.seg_tile.size)
        src = self.seg_start[seg] + np.minimum(j, self.seg_count[seg] - 1)
        quads = -(-spw * slots // QUAD)
        grid = np.zeros((tiles, warps, quads * QUAD, LANES), np.uint32)
        slot = seg_local[seg] * slots + j // LANES
        grid[self.seg_tile[seg], seg_warp[seg], slot, j % LANES] = self.words[src]
        words = grid.reshape(tiles, warps, quads, QUAD, LANES).transpose(0, 1, 2, 4, 3)
        cols = np.zeros((tiles, warps, spw), np.int32)
        cols[self.seg_tile, seg_warp, seg_local] = self.seg_col
        layout = TiledLayout(self.shape, self.rows // FRAGMENT, warps, spw, slots)
        return TiledWeight(layout, np.ascontiguousarray(words), cols)


def _starts(counts: np.ndarray) -> np.ndarray:
    """For groups of ``counts`` consecutive items, each item's group start (``repeat``ed)."""
    return np.repeat(np.cumsum(counts) - counts, counts)


def unpack_tiled(packed: TiledWeight) -> np.ndarray:
    """The dense float16 ``W`` a packed weight holds (the inverse of :func:`pack_tiled`)."""
    lay = packed.layout
    n, k = lay.shape
    out = np.zeros((lay.tiles * lay.rows, lay.padded_k), np.float32)
    # (tiles, warps, slot, lane) words; slot = segment * slots + j // 32.
    words = packed.words.transpose(0, 1, 2, 4, 3).reshape(lay.tiles, lay.warps, -1, LANES)
    for t, w, s in np.ndindex(lay.tiles, lay.warps, lay.segments_per_warp):
        seg = words[t, w, s * lay.slots : (s + 1) * lay.slots].ravel()
        seg = np.unique(seg[seg != 0])  # padding repeats a word; all-zero segments hold 0
        pos = (seg >> POS_SHIFT).astype(np.int64)
        vals = (seg & 0xFFFF).astype(np.uint16).view(np.float16).astype(np.float32)
        out[t * lay.rows + pos // CHUNK, packed.cols[t, w, s] * CHUNK + pos % CHUNK] += vals
    return out[:n, :k].astype(np.float16)
