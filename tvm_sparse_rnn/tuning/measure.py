"""Measurement with the real sparsity structure.

MetaSchedule's runner fills every kernel argument with random data by default, which turns BSR
``indices``/``indptr`` (or packed recurrent weights) into out-of-bounds reads. The runner's
``f_alloc_argument`` hook built here passes the real arrays for those parameters and random
data only for activations.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import numpy as np
from tvm.s_tir import meta_schedule as ms

logger = logging.getLogger(__name__)

AllocFn = Callable[..., list]


def _alloc_with_fixed_args(
    fixed: Mapping[int, np.ndarray], seed: int, device, args_info, alloc_repeat: int
) -> list:
    """Runner-side allocator (runs in MetaSchedule's worker process)."""
    import tvm

    rng = np.random.default_rng(seed)
    repeats = []
    for _ in range(alloc_repeat):
        arrays = []
        for i, (_, dtype, shape) in enumerate(args_info):
            if i in fixed:
                arr = fixed[i]
            elif np.issubdtype(np.dtype(dtype), np.floating):
                arr = rng.uniform(-1, 1, shape).astype(dtype)
            else:
                arr = np.zeros(shape, dtype)
            arrays.append(tvm.runtime.tensor(arr, device))
        repeats.append(arrays)
    return repeats


def make_alloc_argument(fixed: Mapping[int, np.ndarray], seed: int = 0) -> AllocFn:
    """Return an ``f_alloc_argument`` that passes ``fixed[i]`` as kernel parameter ``i``.

    Parameters
    ----------
    fixed : mapping of int to numpy.ndarray
        Parameter position -> the real array (BSR data/indices/indptr, packed weights).
    seed : int
        Seed of the random activations.
    """
    fixed = {int(k): np.ascontiguousarray(v) for k, v in fixed.items()}

    def alloc(device, args_info, alloc_repeat):
        return _alloc_with_fixed_args(fixed, seed, device, args_info, alloc_repeat)

    return alloc


def build_kernel(mod, target, _params):
    """Builder-side compile (runs in MetaSchedule's worker process).

    MetaSchedule's default build imports ``tvm.s_tir.tensor_intrin`` in every fresh worker,
    which costs ~20 s per batch on a 2-core machine; our kernels use no tensor intrinsics.
    The scheduled stub of a generated kernel is replaced by the kernel its sampled knobs
    generate (:func:`tvm_sparse_rnn.tuning.generated.realize`), built with the stub's pipeline.
    """
    import tvm

    from .generated import build_pipeline, realize

    return tvm.tirx.build(realize(mod), target=target, pipeline=build_pipeline(mod, target))


def make_builder(timeout_s: float = 120.0) -> ms.builder.LocalBuilder:
    """A :class:`LocalBuilder` using :func:`build_kernel`."""
    return ms.builder.LocalBuilder(f_build=build_kernel, timeout_sec=timeout_s)


def make_runner(
    fixed: Mapping[int, np.ndarray], *, number: int = 10, repeat: int = 5
) -> ms.runner.LocalRunner:
    """A :class:`LocalRunner` measuring with the real arrays in ``fixed``."""
    return ms.runner.LocalRunner(
        f_alloc_argument=make_alloc_argument(fixed),
        evaluator_config=ms.runner.EvaluatorConfig(
            number=number, repeat=repeat, min_repeat_ms=0, enable_cpu_cache_flush=False
        ),
    )
