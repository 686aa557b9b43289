"""Knob dataclasses <-> MetaSchedule sampled instructions.

Every schedule in this package takes a frozen dataclass of integer knobs (``X86Config``,
``CudaConfig``, ...) with a dict of candidate values per knob. For tuning, :func:`sample_config`
replaces each knob by a ``sample_categorical`` random variable, so the knobs become decisions
in the trace that the search mutates and the cost model learns; :func:`config_from_trace`
reads a tuned trace back into the plain dataclass (for shipped configs and reports).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from tvm import s_tir
from tvm.s_tir.schedule import Trace

C = TypeVar("C")


def _field_names(config_cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(config_cls)]


def sample_config(
    sch: s_tir.Schedule, config_cls: type[C], choices: Mapping[str, Sequence[int]]
) -> C:
    """Return ``config_cls`` whose tunable knobs are ``sample_categorical`` variables.

    Knobs are sampled in dataclass field order (the order :func:`config_from_trace` decodes);
    fields without an entry in ``choices`` keep their default.
    """
    values: dict[str, Any] = {}
    for name in _field_names(config_cls):
        if name in choices:
            cands = [int(c) for c in choices[name]]
            values[name] = sch.sample_categorical(cands, [1.0 / len(cands)] * len(cands))
    return config_cls(**values)


def config_from_trace(trace: Trace, config_cls: type[C], choices: Mapping[str, Sequence[int]]) -> C:
    """Decode the knob values a trace produced by :func:`sample_config` chose."""
    decided = [
        int(inst.attrs[0][int(decision)])
        for inst, decision in ((i, trace.decisions[i]) for i in trace.insts if i in trace.decisions)
        if inst.kind.name == "SampleCategorical"
    ]
    names = [n for n in _field_names(config_cls) if n in choices]
    if len(decided) < len(names):
        raise ValueError(f"trace has {len(decided)} categorical decisions, expected {len(names)}")
    return config_cls(**dict(zip(names, decided[: len(names)], strict=True)))
