"""The ``sparse_dense`` kernel factory: compute variant + the target's schedule, from a config.

:func:`sparse_dense_func` is pure: the weight's layout (shape, block size, stored blocks, dtype),
the batch, the target kind and a resolved config in, a scheduled PrimFunc out. Which config
(tuned record, shipped config or default) is decided by the dispatch pass
(:mod:`tvm_sparse_rnn.transform.dispatch`) or the host-side wrapper
(:mod:`tvm_sparse_rnn.runtime.sparse_dense`), never here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tvm import s_tir, tirx
from tvm.target import Target

from ..bsr import BSRWeight
from ..errors import UnsupportedError
from ..ops.epilogue import IDENTITY, Epilogue
from ..ops.sparse_dense import sparse_dense_prim_func
from ..target import is_cuda
from .cuda import sparse_dense as cuda_schedule
from .opaque import opaque_kernel
from .space import KnobSpace
from .x86 import sparse_dense as x86_schedule

logger = logging.getLogger(__name__)

#: Largest element count of ``X`` or ``Y`` (the kernels index with int32).
INDEX_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class SparseDenseLayout:
    """What a ``sparse_dense`` kernel bakes in of its weight (not the values).

    Attributes
    ----------
    shape : tuple of int
        ``(N, K)``.
    block_size : tuple of int
        ``(bs_r, bs_c)``.
    nnzb : int
        Stored blocks of the kernel arrays (at least 1, see :meth:`BSRWeight.kernel_arrays`).
    dtype : str
        ``"float32"`` or ``"float16"``.
    """

    shape: tuple[int, int]
    block_size: tuple[int, int]
    nnzb: int
    dtype: str

    @classmethod
    def of(cls, weight: BSRWeight) -> SparseDenseLayout:
        """The layout of ``weight``'s kernel arrays."""
        return cls(
            weight.shape, weight.block_size, weight.kernel_arrays()[0].shape[0], weight.dtype
        )


def space(target: Target) -> KnobSpace:
    """The knob space (config class, choices, schedule) of ``target``'s schedule."""
    if is_cuda(target):
        return cuda_schedule.SPACE
    return x86_schedule.SPACE


def unscheduled_func(
    layout: SparseDenseLayout, m: int | tirx.Var, target: Target, epilogue: Epilogue = IDENTITY
) -> tirx.PrimFunc:
    """The unscheduled PrimFunc the schedule of ``target`` expects (compute variant included),
    with ``epilogue`` applied to its sums.

    Raises
    ------
    UnsupportedError
        If ``m < 1``, or ``X`` or ``Y`` has more than :data:`INDEX_LIMIT` elements.
    """
    if isinstance(m, int) and m < 1:
        raise UnsupportedError(f"sparse_dense: batch m must be >= 1, got {m}")
    n, k = layout.shape
    if isinstance(m, int) and max(m * n, m * k) > INDEX_LIMIT:
        raise UnsupportedError(
            f"sparse_dense: X ({m}, {k}) and Y ({m}, {n}) must have at most {INDEX_LIMIT} "
            "elements (int32 indexing); split the batch"
        )
    if is_cuda(target):
        lanes, replicate = cuda_schedule.LANES, False
    else:
        lanes, replicate = x86_schedule.LANES, x86_schedule.replicate_x(*layout.block_size)
    return sparse_dense_prim_func(
        m, n, k, layout.block_size, layout.nnzb, layout.dtype, lanes, replicate, epilogue
    )


def schedule_func(func: tirx.PrimFunc, target: Target, config: object) -> tirx.PrimFunc:
    """``func`` (from :func:`unscheduled_func`) scheduled for ``target`` with ``config``."""
    sch = s_tir.Schedule(func)
    space(target).schedule(sch, config)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def sparse_dense_func(
    layout: SparseDenseLayout,
    m: int | tirx.Var,
    target: Target,
    config: object,
    epilogue: Epilogue = IDENTITY,
) -> tirx.PrimFunc:
    """The scheduled PrimFunc ``main(X[m, K], W_data, W_indices, W_indptr[, bias[N]], Y[m, N])``.

    Parameters
    ----------
    layout : SparseDenseLayout
        The weight's kernel layout.
    m : int or tirx.Var
        Rows of ``X``; a ``tirx.Var`` gives a kernel for any batch.
    target : Target
        A resolved target (:func:`tvm_sparse_rnn.target.resolve_target`).
    config : X86Config or CudaConfig
        Schedule knobs of the target's schedule (the epilogue does not change them).
    epilogue : Epilogue
        Bias, activation and output dtype applied in the kernel's store.

    Returns
    -------
    tirx.PrimFunc
        With attributes ``tirx.is_scheduled=True`` and ``op_pattern=8`` (opaque) and without
        ``global_symbol`` (the caller names it).
    """
    func = schedule_func(unscheduled_func(layout, m, target, epilogue), target, config)
    return opaque_kernel(func)
