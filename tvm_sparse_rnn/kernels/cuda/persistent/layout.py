"""Order of each row's nonzeros in the lanes' register slots: naive and guided (bank-aware).

A row's ``nz_per_row`` slots are ``(part p, slot j)``: lane ``lane0 + p`` of the warp holds the
row's pairs ``j = 0 .. NZT-1``, and the unrolled inner loop makes every lane of the warp issue
its slot-``j`` load of ``h_{t-1}`` from shared memory in the same instruction. Column ``c`` lives
at the shared word address ``c * stride`` (:class:`SmemAccess`), so it falls in bank *color*
``c mod n_colors`` with ``n_colors = 32 / gcd(stride, 32)``.

* **naive**: the row's nonzeros in column order, lane-interleaved (pair ``k`` goes to part
  ``k mod KS``, slot ``k // KS``); padding pairs ``<0, 0>`` at the end.
* **guided** (Zhu et al., "Sparse Persistent RNNs", ICLR 2018, Appendix A, Algorithm 1): slot
  ``(p, j)`` has color ``(j + lane0 + p) mod n_colors``, so at every slot the lanes of one
  shared-memory phase want distinct colors. A nonzero of column ``c`` takes a free slot of color
  ``c mod n_colors``; when that color is full it spills to the next color with room. Padding
  slots point at a column of their own color (value 0), so they never conflict either.
"""

from __future__ import annotations

import enum
import functools
import math
from dataclasses import dataclass

import numpy as np


class PairOrder(enum.StrEnum):
    """Order of a row's ``<column, value>`` pairs over its lanes' slots."""

    GUIDED = "guided"  # bank-aware (see the module docstring)
    NAIVE = "naive"  # column order, lane-interleaved


@dataclass(frozen=True)
class SmemAccess:
    """How the kernel's loads of ``h_{t-1}`` address shared memory.

    Attributes
    ----------
    stride : int
        32-bit words between the loads of columns ``c`` and ``c + 1`` (same batch chunk).
    width : int
        Words per lane and load: 4 (LDS.128), 2 (LDS.64) or 1 (LDS.32).
    loads_per_pair : int
        Load instructions per pair (batch chunks, or samples for scalar loads).
    chunk_stride : int
        Word offset between consecutive loads of the same pair.
    """

    stride: int
    width: int
    loads_per_pair: int
    chunk_stride: int

    @property
    def n_colors(self) -> int:
        """Distinct bank positions of a column's first word."""
        return 32 // math.gcd(self.stride, 32)


def smem_access(
    batch_kernel: int, hidden_padded: int, vector: bool = True, itemsize: int = 4
) -> SmemAccess:
    """The kernel's shared-memory access pattern for ``h``.

    Parameters
    ----------
    batch_kernel : int
        Samples per launch (1 (fp32), 2 or a multiple of 4).
    hidden_padded : int
        Rows of ``h`` (multiple of 4).
    vector : bool
        Vector loads of up to 16 bytes (LDS.128 when a column's samples fill whole 16-byte
        chunks, else one LDS.64/LDS.32 of the column's samples); ``False`` reads the ``B``
        samples with scalar loads from the ``[H, B]`` layout.
    itemsize : int
        Bytes per element of ``h``: 4 (fp32) or 2 (fp16).

    Notes
    -----
    With vector loads and ``B`` a multiple of 16 bytes' elements, ``h`` is stored as
    ``[B / E, H, E]`` (chunk-major, ``E = 16 / itemsize``), so every LDS.128 of a warp has column
    stride 4 words: 8 colors for the 8 lanes of a phase. fp16 scalar loads of two samples of a
    column share a word; they are modelled as loads of that word.
    """
    per_chunk = 16 // itemsize
    column_words = batch_kernel * itemsize // 4
    if not vector:
        return SmemAccess(column_words, 1, batch_kernel, 1 if itemsize == 4 else 0)
    if batch_kernel % per_chunk == 0:
        return SmemAccess(4, 4, batch_kernel // per_chunk, 4 * hidden_padded)
    return SmemAccess(column_words, column_words, 1, 0)


@functools.cache
def _slots_by_color(lane0: int, lanes_per_row: int, pairs_per_lane: int, n_colors: int):
    """Flat slot indices ``p * NZT + j`` of each color, in slot order."""
    p, j = np.meshgrid(np.arange(lanes_per_row), np.arange(pairs_per_lane), indexing="ij")
    color = ((j + lane0 + p) % n_colors).ravel()
    return tuple(np.flatnonzero(color == c) for c in range(n_colors))


def order_row(
    cols: np.ndarray,
    lane0: int,
    lanes_per_row: int,
    pairs_per_lane: int,
    access: SmemAccess,
    order: PairOrder = PairOrder.GUIDED,
    num_columns: int | None = None,
) -> np.ndarray:
    """Place one row's nonzeros in its ``(part, slot)`` grid.

    Parameters
    ----------
    cols : numpy.ndarray
        ``(nnz,)`` int, the row's column indices (any order), ``nnz <= KS * NZT``.
    lane0 : int
        Lane (0..31) of part 0 of this row.
    lanes_per_row, pairs_per_lane : int
        ``KS`` and ``NZT``.
    access : SmemAccess
        Shared-memory access pattern (gives the colors).
    order : PairOrder
        Guided (bank-aware) or naive.
    num_columns : int, optional
        Columns of ``R`` (padding columns stay below it); default: unbounded.

    Returns
    -------
    numpy.ndarray
        ``(KS, NZT)`` int64: index into ``cols`` of the nonzero in each slot, or ``-1 - c`` for
        a padding slot reading column ``c`` (value 0).
    """
    nnz = cols.size
    slots = lanes_per_row * pairs_per_lane
    if nnz > slots:
        raise ValueError(f"row has {nnz} nonzeros but only {slots} slots")
    order = PairOrder(order)
    if order is PairOrder.NAIVE:
        flat = np.full(slots, -1, np.int64)  # padding reads column 0
        k = np.arange(nnz)
        flat[(k % lanes_per_row) * pairs_per_lane + k // lanes_per_row] = k
        return flat.reshape(lanes_per_row, pairs_per_lane)
    nc = access.n_colors
    by_color = _slots_by_color(lane0, lanes_per_row, pairs_per_lane, nc)
    want = [list(np.flatnonzero(cols % nc == c)) for c in range(nc)]
    placed: list[list[int]] = [[] for _ in range(nc)]
    spill: list[int] = []
    # Two passes around the color ring: own color first, overflow to the next color with room.
    for c in list(range(nc)) * 2:
        room = by_color[c].size - len(placed[c])
        take = want[c][:room]
        placed[c].extend(take)
        want[c] = want[c][room:]
        if spill:
            room = by_color[c].size - len(placed[c])
            placed[c].extend(spill[:room])
            spill = spill[room:]
        spill.extend(want[c])
        want[c] = []
    flat = np.empty(slots, np.int64)
    for c in range(nc):
        pad_col = c if num_columns is None or c < num_columns else 0
        s = by_color[c]
        n = len(placed[c])
        flat[s[:n]] = placed[c]
        flat[s[n:]] = -1 - pad_col
    return flat.reshape(lanes_per_row, pairs_per_lane)
