"""Lowering of a float16 linear layer to the tensor-core sparse kernel (CUDA).

``x`` (any leading dimensions, ``M`` rows in all) is flattened to ``[M, K]``, zero-padded to
``[M_padded, K_padded]`` (whole ``m_tile`` row tiles, whole 64-column chunks) where needed, run
through :func:`~tvm_sparse_rnn.kernels.cuda.tensor_core.kernel.make_tensor_core_kernel` with
the packed weight as Relax constants, and the padding rows are sliced off.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
from tvm import relax
from tvm.target import Target

from ...kernels.cuda.tensor_core.kernel import (
    TensorCoreConfig,
    make_tensor_core_kernel,
    padded_rows,
)
from ...kernels.cuda.tensor_core.packing import TiledWeight, pack_tiled
from ...kernels.opaque import opaque_kernel
from ...target import shared_memory_per_block

logger = logging.getLogger(__name__)


@dataclass
class TensorCoreLinear:
    """One linear layer on the tensor-core kernel; :meth:`emit` may run for several inputs
    of the same type, which then share the weight's constants.

    Attributes
    ----------
    tiled : TiledWeight
        The packed weight.
    config : TensorCoreConfig
        The kernel's knobs (``warps`` as packed).
    target : Target
        The resolved cuda target.
    """

    tiled: TiledWeight
    config: TensorCoreConfig
    target: Target
    _consts: list[relax.Expr] = field(default_factory=list)

    @classmethod
    def plan(cls, weight: np.ndarray, config: TensorCoreConfig, target: Target) -> TensorCoreLinear:
        """Pack ``weight`` (``N x K``) for ``config``."""
        tiled = pack_tiled(weight, config.row_frags, config.warps)
        return cls(tiled, config, target)

    def detail(self) -> str:
        """The packing, for the dispatch decision."""
        lay = self.tiled.layout
        return (
            f"tensor cores: {lay.rows}-row tiles, {lay.warps} warps x {lay.segments_per_warp} "
            f"segments of {lay.slots * 32} pairs, m_tile {self.config.m_tile}"
        )

    def emit(self, bb: relax.BlockBuilder, x: relax.Expr) -> relax.Expr:
        """Emit ``x @ W.T`` for ``x`` of rank >= 2 with static leading dimensions."""
        op = relax.op
        lay = self.tiled.layout
        n, k = lay.shape
        lead = x.ty.shape.values[:-1]
        m = math.prod(int(d) for d in lead)
        mp, kp = padded_rows(m, self.config.m_tile), lay.padded_k
        x2d = op.reshape(x, [m, k])
        if (mp, kp) != (m, k):
            x2d = op.nn.pad(x2d, [0, mp - m, 0, kp - k])
        if not self._consts:
            self._consts.extend(relax.const(a) for a in self.tiled.arrays())
        limit = shared_memory_per_block(self.target)
        func = make_tensor_core_kernel(lay, mp, self.config.m_tile, limit)
        func = opaque_kernel(func)
        gv = bb.add_func(func, "sparse_dense_tensor_core")
        out = relax.TensorType((mp, n), "float16")
        y = bb.emit(relax.call_tir(gv, [bb.emit(x2d), *self._consts], out))
        if mp != m:
            y = op.strided_slice(y, axes=[0], begin=[0], end=[m])
        return bb.emit(op.reshape(y, [*lead, n]))
