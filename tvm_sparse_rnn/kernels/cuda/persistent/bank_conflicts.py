"""CPU model of the shared-memory bank conflicts of the persistent kernel's loads of ``h``.

Per timestep every warp issues, for each row slot ``rr``, register slot ``j`` and batch chunk,
one load instruction in which lane ``l`` reads the column held in its slot. Shared memory has 32
banks of 4 bytes; a ``w``-word vector load is served in phases of ``32 / w`` lanes, and a phase
takes as many wavefronts as the largest number of *distinct* words any one bank must deliver
(lanes reading the same word are broadcast). ``conflicts = wavefronts - ideal`` (ideal: one
wavefront per phase) counts the extra wavefronts the hardware replays: the quantity ncu reports
as ``l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum`` (up to the copy and reduction
traffic, which this model leaves out).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .layout import SmemAccess
from .packing import PackedWeights


@dataclass(frozen=True)
class ConflictCount:
    """Shared-memory load wavefronts of one timestep over the whole grid.

    Attributes
    ----------
    instructions : int
        Warp-wide load instructions.
    wavefronts : int
        Wavefronts needed.
    ideal : int
        Wavefronts without conflicts.
    """

    instructions: int
    wavefronts: int
    ideal: int

    @property
    def conflicts(self) -> int:
        """Extra (replayed) wavefronts."""
        return self.wavefronts - self.ideal


def warp_columns(packed: PackedWeights) -> np.ndarray:
    """Columns each lane reads, per warp-wide instruction.

    Returns
    -------
    numpy.ndarray
        ``(instructions, 32)`` int64, one row per (warp, row slot, register slot) load.
    """
    p = packed.plan
    ks, rpt, nzt = p.lanes_per_row, p.rows_per_group, p.pairs_per_lane
    # cols[(cta, group, rr), part, j] -> [cta, group, rr, part, j]
    c = packed.cols.reshape(p.num_ctas, p.groups_per_cta, rpt, ks, nzt).astype(np.int64)
    # lanes of a CTA in thread order: thread = group * KS + part
    c = c.transpose(0, 2, 4, 1, 3).reshape(p.num_ctas, rpt, nzt, p.threads)
    warps = p.threads // 32
    c = c.reshape(p.num_ctas, rpt, nzt, warps, 32).transpose(0, 3, 1, 2, 4)
    return c.reshape(-1, 32)


def count_wavefronts(words: np.ndarray, width: int) -> tuple[int, int]:
    """Wavefronts of warp-wide loads.

    Parameters
    ----------
    words : numpy.ndarray
        ``(instructions, 32)`` int64, first word address of each lane's access.
    width : int
        Words per lane (1, 2 or 4); addresses are multiples of ``width``.

    Returns
    -------
    tuple of int
        ``(wavefronts, ideal)``.
    """
    n = words.shape[0]
    lanes = 32 // width
    phases = words.reshape(n * width, lanes)  # phase = `lanes` consecutive lanes
    s = np.sort(phases, axis=1)
    first = np.ones_like(s, dtype=bool)
    first[:, 1:] = s[:, 1:] != s[:, :-1]  # distinct words only (broadcast is free)
    slot = (s // width) % lanes  # a w-word access occupies bank group (addr / w) mod (32 / w)
    key = np.arange(s.shape[0])[:, None] * lanes + slot
    counts = np.bincount(key[first], minlength=s.shape[0] * lanes).reshape(-1, lanes)
    return int(counts.max(axis=1).sum()), int(s.shape[0])


def conflicts_per_step(packed: PackedWeights, access: SmemAccess | None = None) -> ConflictCount:
    """Bank conflicts of one timestep of the persistent kernel for ``packed``.

    Parameters
    ----------
    packed : PackedWeights
        Packed ``R`` (its plan gives the warp mapping).
    access : SmemAccess, optional
        Access pattern to evaluate (default: the one the layout was packed for).
    """
    access = access or packed.access
    cols = warp_columns(packed)
    total_w = total_i = 0
    for chunk in range(access.loads_per_pair):
        w, i = count_wavefronts(cols * access.stride + chunk * access.chunk_stride, access.width)
        total_w += w
        total_i += i
    return ConflictCount(cols.shape[0] * access.loads_per_pair, total_w, total_i)
