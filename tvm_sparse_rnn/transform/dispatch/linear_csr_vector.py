"""Lowering of an unstructured linear layer with a few rows to the CSR-vector kernel (CUDA).

``x`` (any static leading dimensions, ``M <= 16`` rows in all) is flattened to ``[M, K]`` and
run through :func:`~tvm_sparse_rnn.kernels.cuda.csr_vector.kernel.make_csr_vector_kernel` with
the packed weight as Relax constants; the kernel applies the layer's epilogue in its store. A
``[M, K]`` float16 ``x`` that is a cast of a float32 tensor (a model input under
``--dtype float16``) is read as float32 by the kernel, which casts while staging it, and the
cast kernel goes away where nothing else reads it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax
from tvm.target import Target

from ...errors import UnsupportedError
from ...kernels.cuda.csr_vector.kernel import (
    CsrVectorConfig,
    check_supported,
    make_csr_vector_kernel,
)
from ...kernels.cuda.csr_vector.packing import CsrVectorWeight, pack_csr_vector
from ...kernels.opaque import opaque_kernel
from ...ops.epilogue import Epilogue
from ...target import device_limits, shared_memory_per_block

logger = logging.getLogger(__name__)


@dataclass
class CsrVectorLinear:
    """One linear layer on the CSR-vector kernel; :meth:`emit` may run for several inputs of
    the same type, which then share the weight's constants.

    Attributes
    ----------
    packed : CsrVectorWeight
        The packed weight.
    rows : int
        Rows of ``X`` the kernel takes.
    config : CsrVectorConfig
        The kernel's knobs.
    num_sms : int or None
        The target's SM count (``None``: a target of unknown model).
    shared_limit : int
        The target's shared memory per CTA.
    """

    packed: CsrVectorWeight
    rows: int
    config: CsrVectorConfig
    num_sms: int | None
    shared_limit: int
    _consts: list[relax.Expr] = field(default_factory=list)

    @classmethod
    def plan(cls, weight: np.ndarray, rows: int, dtype: str, target: Target) -> CsrVectorLinear:
        """Pack ``weight`` (``N x K``) in ``dtype`` for ``rows`` rows of ``X`` on ``target``.

        Raises
        ------
        UnsupportedError
            If the kernel does not take the layer (see
            :func:`~tvm_sparse_rnn.kernels.cuda.csr_vector.kernel.check_supported`).
        """
        shared_limit = shared_memory_per_block(target)
        check_supported(weight.shape[1], dtype, rows, shared_limit)
        packed = pack_csr_vector(weight, dtype)
        try:
            num_sms = device_limits(target).num_sms
        except UnsupportedError:  # no model and no live device: a CTA per `warps` rows
            num_sms = None
        return cls(packed, rows, CsrVectorConfig(), num_sms, shared_limit)

    def detail(self) -> str:
        """The packing, for the dispatch decision."""
        lay = self.packed.layout
        return f"CSR in {lay.group}-entry groups (16-bit columns), X in shared memory"

    def emit(
        self,
        bb: relax.BlockBuilder,
        x: relax.Expr,
        epilogue: Epilogue,
        bias: np.ndarray | None,
    ) -> relax.Expr:
        """Emit ``epilogue(x @ W.T, bias)`` for ``x`` of rank >= 2 with static leading
        dimensions of :attr:`rows` rows in all."""
        op = relax.op
        n, k = self.packed.layout.shape
        lead = x.ty.shape.values[:-1]
        m = math.prod(int(d) for d in lead)
        if m != self.rows:
            raise UnsupportedError(f"csr_vector: planned for {self.rows} rows of X, got {m}")
        if not self._consts:
            self._consts.extend(relax.const(a) for a in self.packed.arrays())
        flat = len(lead) == 1  # already [M, K]: no reshape (a copy kernel after legalization)
        x2d = _cast_source(bb, x) if flat else bb.emit(op.reshape(x, [m, k]))
        func = make_csr_vector_kernel(
            self.packed.layout,
            m,
            self.config,
            self.num_sms,
            self.shared_limit,
            epilogue,
            str(x2d.ty.dtype),
        )
        gv = bb.add_func(opaque_kernel(func), "sparse_dense_csr_vector")
        dtype = self.packed.layout.dtype
        args = [x2d, *self._consts]
        if epilogue.bias:
            args.append(relax.const(np.asarray(bias, dtype)))
        out = relax.TensorType((m, n), epilogue.output_dtype(dtype))
        y = bb.emit(relax.call_tir(gv, args, out))
        return y if flat else bb.emit(op.reshape(y, [*lead, n]))


def _cast_source(bb: relax.BlockBuilder, x: relax.Expr) -> relax.Expr:
    """The float32 tensor ``x`` is cast from (``x = astype(source, float16)`` bound in the
    current function), else ``x``."""
    if not isinstance(x, relax.Var) or str(x.ty.dtype) != "float16":
        return x
    value = bb.lookup_binding(x)
    if not isinstance(value, relax.Call) or not value.op.same_as(_ASTYPE):
        return x
    source = value.args[0]
    return source if str(source.ty.dtype) == "float32" else x


_ASTYPE = tvm.ir.Op.get("relax.astype")
