"""Register tiling of the x86 CSR kernels per ISA family.

The CSR kernels (:func:`~tvm_sparse_rnn.kernels.x86.recurrent.projection_prim_func`,
:func:`~tvm_sparse_rnn.kernels.x86.panel_spmm.panel_spmm_prim_func`) keep a row's (or a row
group's) accumulator tile of ``X^T`` columns in vector registers. AVX-512 has 32 registers of 16
floats, AVX2 16 of 8: a tile that fits the one spills on the other. Each family's tiling was
measured on a 2-core AMD EPYC VM of that family (``time_evaluator`` probes over BERT's layer
shapes, ``M`` = 16-128, session 21 on Zen 4 / AVX-512, session 22 on Zen 3 / AVX2):

* AVX-512: 64- or 128-column tiles, 32 for row groups of ``K <= 2048``, up to 256
  accumulator floats a row group (16 registers); ``X^T`` row-major.
* AVX2: 32-column tiles, 16 for row groups, up to 64 accumulator floats a row group (8
  registers), 64 columns in the K-panel kernel; the CSR kernel runs the column tiles in the
  outer loop and packs each tile of ``X^T`` into a contiguous panel first (``panel_tasks`` of
  :func:`~tvm_sparse_rnn.kernels.x86.recurrent.projection_prim_func`). Read in place, a 16-float
  tile of a row-major ``X^T`` of 128 columns is one 64-byte line every 512 bytes, and the reads
  fall on an eighth of L2's sets: 4x4 blocks in row groups of 4 at ``M`` = 128 (BERT's ``2304 x
  768`` / ``768 x 3072`` / ``3072 x 768``) ran at 80 / 49 / 91 GFLOPS in place, 114 / 88 / 105
  from panels laid out outside the kernel (same run), the spilling AVX-512 tiling 56 / 44 / 56;
  packed by the kernel 132-147 / 89-112 / 92-96 against 68-108 / 60-63 / 73 in place (another
  probe, two rounds).

The packing keeps the kernel's operands as they are (``X^T`` row-major), so that layers feeding
each other in the feature-major layout still do with no copy in between. The AVX-512 tiling
reads ``X^T`` in place: the panels were not measured there.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm.target import Target

from ...target import cpu_isa_family


@dataclass(frozen=True)
class CsrTiling:
    """Register tiling of the x86 CSR kernels.

    Attributes
    ----------
    max_tile : int
        Widest accumulator tile (floats) of rows packed one by one.
    group_tile : int or None
        Tile of rows packed in groups; ``None``: the AVX-512 rule
        (:func:`~tvm_sparse_rnn.kernels.x86.recurrent.row_group_tile`).
    group_floats : int
        Most accumulator floats of a row group (``row_group x tile``).
    panel_tiles : tuple of int
        Tiles of the K-panel kernel, preferred first (the first dividing ``M`` is used).
    x_panels : bool
        The CSR kernel packs tiles of ``X^T`` into panels, the tiles in the outer loop.
    """

    max_tile: int
    group_tile: int | None
    group_floats: int
    panel_tiles: tuple[int, ...]
    x_panels: bool


#: Tiling per :func:`~tvm_sparse_rnn.target.cpu_isa_family` (measured: see the module).
CSR_TILINGS = {
    "avx512": CsrTiling(128, None, 256, (128, 64), False),
    "avx2": CsrTiling(32, 16, 64, (64,), True),
}
#: Family whose tiling serves CPUs of no known family (the narrower register file).
FALLBACK_FAMILY = "avx2"


def csr_tiling(target: Target) -> CsrTiling:
    """The :class:`CsrTiling` of ``target``'s ISA family (AVX2's for CPUs of none)."""
    return CSR_TILINGS[cpu_isa_family(target) or FALLBACK_FAMILY]
