"""Lowering of a sparse linear layer with a static row count to the x86 CSR kernels.

``Y^T = activation(W X^T + bias)``: every nonzero ``W[n, k]`` times the contiguous row
``X^T[k, :]`` (Elsen et al., "Fast Sparse ConvNets", CVPR 2020; XNNPACK's SpMM). The weight is
packed in one of three ways: rows in groups and columns in blocks where they were pruned
together (one load of ``X^T[k, :]`` for the group, one column index for the block,
:func:`~tvm_sparse_rnn.kernels.x86.recurrent.pack_row_groups`), in K panels for single rows over
wide inputs
(:mod:`~tvm_sparse_rnn.kernels.x86.panel_spmm`), else plain CSR rows
(:func:`~tvm_sparse_rnn.kernels.x86.recurrent.pack_weight`). The model dispatch
(:mod:`.linear`) and the standalone ``sparse_dense`` kernel
(:class:`~tvm_sparse_rnn.runtime.sparse_dense.SparseDenseKernel`) share this plan.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
from tvm import relax, te, tirx
from tvm.target import Target

from ...errors import UnsupportedError
from ...kernels.opaque import opaque_kernel
from ...kernels.x86.csr_tiling import CsrTiling
from ...kernels.x86.injective import InjectiveCPU
from ...kernels.x86.panel_spmm import (
    K_PANEL,
    PanelWeight,
    pack_k_panels,
    panel_spmm_prim_func,
    panel_tile,
    uses_k_panels,
)
from ...kernels.x86.recurrent import (
    PackedWeight,
    pack_row_groups,
    pack_weight,
    padded_columns,
    projection_chains,
    projection_col_block,
    projection_prim_func,
    projection_row_group,
    projection_row_multiple,
    projection_tile,
    row_group_tile,
)
from ...ops.epilogue import Activation
from .cost_model import csr_col_block, csr_row_group
from .projection_x86 import pad_columns

logger = logging.getLogger(__name__)


def panel_tasks(tiles: int, threads: int) -> int:
    """Tasks per column tile of a kernel packing ``X^T`` in panels: 1 (each tile's panel packed
    once) where the ``tiles`` split evenly over the ``threads``, else ``threads``."""
    return 1 if tiles % threads == 0 else threads


@dataclass(frozen=True)
class CsrSpmmConfig:
    """Selects the x86 CSR kernel in
    :func:`~tvm_sparse_rnn.runtime.sparse_dense.build_sparse_dense` (no knobs:
    :meth:`CsrSpmmLinear.plan` derives the packing and the tile from the weight and the rows)."""


@dataclass
class CsrSpmmLinear:
    """One linear layer on the x86 CSR kernel for :attr:`rows` rows of ``X``; :meth:`emit` may
    run for several inputs of the same type, which then share the weight's constants.

    Attributes
    ----------
    packed : PackedWeight or PanelWeight
        The packed weight (row groups or plain rows; K panels).
    rows : int
        Rows ``M`` of ``X`` the kernel takes.
    tile : int
        Columns of ``X^T`` per accumulator tile.
    threads : int
        Threads of TVM's pool the kernel's parallel loop is split over.
    x_panels : bool
        The kernel packs each tile of ``X^T`` into a panel and runs the tiles in the outer loop
        (``panel_tasks`` of :func:`~tvm_sparse_rnn.kernels.x86.recurrent.projection_prim_func`).
    """

    packed: PackedWeight | PanelWeight
    rows: int
    tile: int
    threads: int
    x_panels: bool = False
    _consts: list[relax.Expr] = field(default_factory=list)

    @classmethod
    def plan(cls, weight: np.ndarray, rows: int, tiling: CsrTiling, threads: int) -> CsrSpmmLinear:
        """Pack ``weight`` (``N x K`` float32) for ``rows`` rows of ``X`` with the register
        ``tiling`` of the target's ISA family
        (:func:`~tvm_sparse_rnn.kernels.x86.csr_tiling.csr_tiling`), for a kernel run on
        ``threads`` threads."""
        tile = min(projection_tile(rows), tiling.max_tile)
        group_tile = min(tile, tiling.group_tile or tile)
        group = csr_row_group(weight, projection_row_group(group_tile, tiling.group_floats))
        if group > 1:  # rows pruned together share one load of X^T per column
            own_rule = tiling.group_tile is None  # AVX-512: the projection's rule
            tile = row_group_tile(rows, weight.shape[1], group) if own_rule else group_tile
        if uses_k_panels(rows, group, tiling.panel_tiles):
            tile = panel_tile(rows, tiling.panel_tiles)
            return cls(pack_k_panels(weight, threads), rows, tile, threads)
        most = projection_col_block(group, projection_chains(tile, group), tile)
        col_block = csr_col_block(weight, group, most)
        if group > 1 or col_block > 1:
            packed = pack_row_groups(weight, group, col_block)
        else:
            row_multiple = projection_row_multiple(tile)
            packed = pack_weight(weight, 1, dense=False, row_multiple=row_multiple)
        panels = tiling.x_panels and padded_columns(rows, tile) > tile  # one tile: in place
        return cls(packed, rows, tile, threads, panels)

    @property
    def panels(self) -> bool:
        """Whether the weight is in K panels."""
        return isinstance(self.packed, PanelWeight)

    @property
    def padded_rows(self) -> int:
        """Columns of the kernel's ``X^T``: :attr:`rows` padded to whole tiles."""
        return padded_columns(self.rows, self.tile)

    def detail(self) -> str:
        """The packing, for the dispatch decision."""
        x_layout = ", X^T packed in tile panels" if self.x_panels else ""
        if self.panels:
            tile_major = ", X^T copied tile-major" if self.rows > self.tile else ""
            return f"K panels of {K_PANEL}, {self.tile}-column tiles{tile_major}"
        group, col_block = self.packed.row_group, self.packed.col_block
        packing = f"rows in groups of {group}" if group > 1 else "rows"
        if col_block > 1:
            packing += f", {col_block}-column blocks"
        return f"{packing}, {self.tile}-column tiles{x_layout}"

    def prim_func(self, activation: Activation = Activation.NONE) -> tirx.PrimFunc:
        """The kernel ``main(XT (K, padded_rows), <weight arrays>, b (N,), Y^T (1, N, rows))``
        with ``activation`` applied to the sums."""
        if self.panels:
            return panel_spmm_prim_func(self.packed, self.rows, self.tile, activation)
        return projection_prim_func(
            self.packed,
            1,
            self.rows,
            tile=self.tile,
            activation=activation,
            panel_tasks=panel_tasks(self.padded_rows // self.tile, self.threads)
            if self.x_panels
            else 0,
        )

    def layout_funcs(self, target: Target) -> tuple[tirx.PrimFunc, tirx.PrimFunc]:
        """Scheduled ``(x_to_kernel, kernel_to_y)`` for running :meth:`prim_func` on its own:
        ``X (rows, K) -> X^T (K, padded_rows)`` (zero columns past :attr:`rows`) and
        ``Y^T (1, N, rows) -> Y (rows, N)`` (numpy's transposing copies of a ``64 x 1024`` ``X``
        took ~200 us on the 2-core VM, ten times the kernel TVM builds)."""
        n, k = self.packed.shape
        x = te.placeholder((self.rows, k), "float32", name="X")
        if self.padded_rows == self.rows:
            xt = te.compute((k, self.rows), lambda c, j: x[j, c], name="XT")
        else:
            zero = tirx.const(0.0, "float32")
            last = self.rows - 1
            xt = te.compute(
                (k, self.padded_rows),
                lambda c, j: tirx.if_then_else(j <= last, x[tirx.min(j, last), c], zero),
                name="XT",
            )
        yt = te.placeholder((1, n, self.rows), "float32", name="YT")
        y = te.compute((self.rows, n), lambda i, j: yt[0, j, i], name="Y")
        rule = InjectiveCPU()
        return tuple(
            rule.apply(te.create_prim_func(args), target, False).mod["main"]
            for args in ([x, xt], [yt, y])
        )

    def emit(
        self,
        bb: relax.BlockBuilder,
        x: relax.Expr,
        bias: np.ndarray | None,
        activation: Activation,
    ) -> relax.Expr:
        """Emit ``activation(x @ W.T + bias)`` for ``x`` of rank >= 2 with static leading
        dimensions of :attr:`rows` rows in all.

        Raises
        ------
        UnsupportedError
            If ``x`` does not have :attr:`rows` rows.
        """
        op = relax.op
        n, k = self.packed.shape
        lead = x.ty.shape.values[:-1]
        m = math.prod(int(d) for d in lead)
        if m != self.rows:
            raise UnsupportedError(f"csr_spmm: planned for {self.rows} rows of X, got {m}")
        if not self._consts:
            self._consts.extend(relax.const(a) for a in self.packed.arrays())
        bias = relax.const(bias if bias is not None else np.zeros(n, np.float32))
        xt = bb.emit(pad_columns(op.permute_dims(op.reshape(x, [m, k]), [1, 0]), m, self.tile))
        gv = bb.add_func(opaque_kernel(self.prim_func(activation)), "csr_spmm")
        out = relax.TensorType((1, n, m), "float32")
        yt = bb.emit(relax.call_tir(gv, [xt, *self._consts, bias], out))  # Y^T as (1, N, M)
        y = op.reshape(op.permute_dims(yt, [0, 2, 1]), [m, n])
        return bb.emit(op.reshape(y, [*lead, n]))
