"""dlight's ``Matmul`` rule with its tensor-core path on feature-suffixed archs (``sm_90a``).

dlight tensorizes a float16 matmul (``wmma`` m16n16k16 fragments, 128 x 128 CTA tiles) when
every static extent of ``I``, ``J`` and ``K`` exceeds 64 and the target's arch is at least
``sm_70``; but it parses the arch as ``int(arch[3:])``, so ``check_sm_version("sm_90a") == -1``
and on the ``sm_90a`` targets this package compiles for every dense float16 matmul (layers kept
dense, attention, large-``M`` layers, convolutions) ran on its CUDA-core schedule.
:class:`TensorCoreMatmul` shows the rule the arch without its feature suffix.

Measured on the H100 (float16, CUDA graphs): the DeepSpeech2-like Conv1d 85 -> 58 us per call
at batch 1 (model profile, ``docs/results/README.md``); dense GEMMs barely move (per-layer probe:
``1520 x 3072 x 512`` 106 -> 96 us, ``512 x 4096 x 4096`` 228 -> 222 us) and stay 9-14x behind
cuBLAS.
"""

from __future__ import annotations

import logging
import re

from tvm import s_tir, tirx
from tvm.s_tir import dlight
from tvm.target import Target

logger = logging.getLogger(__name__)


def numeric_arch(target: Target) -> Target:
    """``target`` with its ``arch`` stripped of a feature suffix (``sm_90a`` -> ``sm_90``)."""
    config = dict(target.export())
    config["arch"] = re.sub(r"^(sm_\d+)[a-z]+$", r"\1", str(config.get("arch", "")))
    return Target(config)


def _tensorized(sch: s_tir.Schedule) -> bool:
    return any(inst.kind.name == "Tensorize" for inst in sch.trace.insts)


class TensorCoreMatmul(dlight.gpu.Matmul):
    """dlight's ``Matmul`` rule, judging tensor-core support on :func:`numeric_arch`.

    Only its tensor-core schedules are kept: a matmul the rule does not tensorize (float32,
    an extent <= 64) is left to TVM's own dlight pass, which schedules it for the real target
    exactly as before.
    """

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
        """Schedule ``func`` as dlight's ``Matmul`` would for the numeric arch, if on tensor
        cores (else ``None``)."""
        sch = super().apply(func, numeric_arch(target), tunable)
        return sch if sch is not None and _tensorized(sch) else None
