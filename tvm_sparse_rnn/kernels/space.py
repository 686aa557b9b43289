"""The knob space of a kernel variant, declared beside its factory.

Every kernel variant describes its tunable knobs here as plain data: the frozen config
dataclass, the candidate values of each knob and the function that applies a config (a
schedule on a fixed PrimFunc, or, for kernels generated from structural knobs, the mirror of the
knobs on a stub's loops). :mod:`tvm_sparse_rnn.tuning` turns a space and a workload into a
MetaSchedule task; the dispatch pass looks the best config up through it. Kernel modules never
import :mod:`tvm_sparse_rnn.tuning`: this module is the contract between the two.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tvm import s_tir

#: ``schedule(sch, config)``: knob values may be ints or MetaSchedule random variables.
ScheduleFunc = Callable[[s_tir.Schedule, Any], None]


@dataclass(frozen=True)
class KnobSpace:
    """The knobs of one kernel variant.

    Attributes
    ----------
    op : str
        Operator family, the name of its shipped-config file (``schedules/<device>/<op>.json``).
    config_cls : type
        Frozen dataclass of integer knobs; its defaults are the hand-picked config.
    choices : mapping of str to sequence of int
        Candidate values per tunable knob.
    schedule : callable
        Applies a config to the variant's PrimFunc (or stub).
    """

    op: str
    config_cls: type
    choices: Mapping[str, Sequence[int]]
    schedule: ScheduleFunc
