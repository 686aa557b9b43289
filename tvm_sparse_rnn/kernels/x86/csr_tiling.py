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
  registers), 64 columns in the K-panel kernel; ``X^T`` in panels of one tile
  (:func:`~tvm_sparse_rnn.kernels.x86.recurrent.x_operand_shape`) with the tiles in the outer
  loop. With a row-major ``X^T`` of 128 columns a tile of 16 read 64 bytes of every 512-byte row,
  each from another line and page: 4x4 blocks in row groups of 4 at ``M`` = 128 ran at 49-91
  GFLOPS, 88-114 from panels (same run); the spilling AVX-512 tiling 44-56.

The AVX-512 tiling keeps its row-major ``X^T``: the panel layout was not measured there.
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
        ``X^T`` in panels of one tile, tiles in the outer loop.
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
