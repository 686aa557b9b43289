"""Tuning tasks (design spaces with the real arrays) of this package's schedules."""

from __future__ import annotations

from tvm import tirx
from tvm.target import Target

from ..bsr import BSRWeight
from ..ops.sparse_dense import sparse_dense_prim_func
from ..schedule import sparse_dense_cuda, sparse_dense_x86
from ..target import is_cuda
from .task import STRUCTURE_ATTR, TuneTask


def sparse_dense_task(weight: BSRWeight, m: int | tirx.Var, target: Target) -> TuneTask:
    """The ``sparse_dense`` kernel of ``weight`` for batch ``m`` on ``target``.

    The workload carries ``weight.structure_key()``, so two weights of one shape but different
    sparsity patterns are tuned and looked up separately; the runner measures with the real
    ``data``/``indices``/``indptr``.
    """
    schedule = sparse_dense_cuda if is_cuda(target) else sparse_dense_x86
    n, k = weight.shape
    data, indices, indptr = weight.kernel_arrays()
    func = sparse_dense_prim_func(
        m, n, k, weight.block_size, data.shape[0], weight.dtype, schedule.LANES
    ).with_attr(STRUCTURE_ATTR, weight.structure_key())
    bs_r, bs_c = weight.block_size
    m_desc = m if isinstance(m, int) else "dyn"
    meta = {
        "m": m_desc,
        "n": n,
        "k": k,
        "block_size": [bs_r, bs_c],
        "dtype": weight.dtype,
        "density": round(weight.stored_fraction, 4),
        "structure_key": weight.structure_key(),
    }
    if is_cuda(target):
        config_cls, sched_fn = (
            sparse_dense_cuda.CudaConfig,
            sparse_dense_cuda.schedule_sparse_dense_cuda,
        )
    else:
        config_cls, sched_fn = (
            sparse_dense_x86.X86Config,
            sparse_dense_x86.schedule_sparse_dense_x86,
        )
    return TuneTask(
        name=f"sparse_dense m={m_desc} {n}x{k} bs={bs_r}x{bs_c} {weight.dtype} "
        f"{weight.stored_fraction:.0%} [{weight.structure_key()[:8]}]",
        op="sparse_dense",
        func=func,
        config_cls=config_cls,
        choices=schedule.KNOB_CHOICES,
        schedule=sched_fn,
        fixed_args={1: data, 2: indices, 3: indptr},
        default_config=config_cls(),
        meta=meta,
    )
