"""``sparse_dense`` as a MetaSchedule task, and the config lookup the dispatch pass applies.

The space is the one the target's schedule declares beside itself
(:func:`tvm_sparse_rnn.kernels.sparse_dense.space`); the workload carries the weight's
sparsity-structure key, so two weights of one shape but different patterns are tuned and looked
up separately, and it is measured with the real ``data``/``indices``/``indptr``.
"""

from __future__ import annotations

import logging

from tvm import tirx
from tvm.target import Target

from ..bsr import BSRWeight
from ..kernels.sparse_dense import SparseDenseLayout, space, unscheduled_func
from .lookup import resolve_config
from .task import STRUCTURE_ATTR, TuneTask

logger = logging.getLogger(__name__)


def sparse_dense_tune_task(weight: BSRWeight, m: int | tirx.Var, target: Target) -> TuneTask:
    """The kernel of ``weight`` for batch ``m`` on ``target`` (a resolved target) as a task."""
    knobs = space(target)
    n, k = weight.shape
    bs_r, bs_c = weight.block_size
    data, indices, indptr = weight.kernel_arrays()
    key = weight.structure_key()
    m_desc = m if isinstance(m, int) else "dyn"
    func = unscheduled_func(SparseDenseLayout.of(weight), m, target)
    return TuneTask(
        name=f"sparse_dense m={m_desc} {n}x{k} bs={bs_r}x{bs_c} {weight.dtype} "
        f"{weight.stored_fraction:.0%} [{key[:8]}]",
        op=knobs.op,
        func=func.with_attr(STRUCTURE_ATTR, key),
        config_cls=knobs.config_cls,
        choices=knobs.choices,
        schedule=knobs.schedule,
        fixed_args={1: data, 2: indices, 3: indptr},
        default_config=knobs.config_cls(),
        meta={
            "m": m_desc,
            "n": n,
            "k": k,
            "block_size": [bs_r, bs_c],
            "dtype": weight.dtype,
            "density": round(weight.stored_fraction, 4),
            "structure_key": key,
        },
    )


def sparse_dense_config(weight: BSRWeight, m: int | tirx.Var, target: Target) -> object:
    """The config to build this kernel with: tuned record, else shipped config, else default."""
    return resolve_config(sparse_dense_tune_task(weight, m, target), target)
