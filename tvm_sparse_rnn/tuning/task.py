"""A tunable kernel: its unscheduled PrimFunc, its knob space and its real arguments."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tvm
from tvm import s_tir, tirx
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from .generated import KNOB_ANNOTATION, STUB_BLOCK, generate_config, is_generated
from .knobs import config_from_trace, sample_config
from .mutator import MutateCategorical

#: PrimFunc attribute holding the sparsity-structure hash. MetaSchedule matches workloads by
#: structural equality *including attributes*, so two patterns of one shape get two workloads.
STRUCTURE_ATTR = "sparse_rnn.structure_key"

ScheduleFunc = Callable[[s_tir.Schedule, Any], None]


@dataclass(frozen=True, eq=False)
class TuneTask:
    """One kernel to tune.

    Parameters
    ----------
    name : str
        Human-readable task name (shapes, block size, dtype, structure key).
    op : str
        Operator family (``"sparse_dense"``, ``"rnn_x86"``, ...), used to find shipped configs.
    func : tirx.PrimFunc
        The unscheduled kernel, carrying :data:`STRUCTURE_ATTR`; for a kernel generated from
        its knobs, the stub of :func:`~tvm_sparse_rnn.tuning.generated.stub_prim_func`.
    config_cls : type
        Frozen dataclass of integer knobs.
    choices : mapping of str to sequence of int
        Candidate values per tunable knob.
    schedule : callable
        ``schedule(sch, config)``; knob values may be ints or MetaSchedule random variables.
        For a generated kernel it transforms the stub's loops to mirror the knobs (see
        :mod:`tvm_sparse_rnn.tuning.generated`).
    fixed_args : mapping of int to numpy.ndarray
        Kernel parameters that must be the real arrays (sparsity structure) when measured.
    default_config : object
        The hand-picked config (the fallback, always measured first).
    meta : dict
        Shape description written into shipped configs (``m``, ``n``, ``k``, ...).
    """

    name: str
    op: str
    func: tirx.PrimFunc
    config_cls: type
    choices: Mapping[str, Sequence[int]]
    schedule: ScheduleFunc
    fixed_args: Mapping[int, np.ndarray]
    default_config: Any
    meta: dict = field(default_factory=dict)

    @property
    def mod(self) -> tvm.IRModule:
        """The task's workload module (``main`` = :attr:`func`)."""
        return tvm.IRModule({"main": self.func})

    def space(self, target: Target) -> ms.space_generator.ScheduleFn:
        """The MetaSchedule design space: the schedule with every knob sampled."""
        verify = target.kind.name == "cuda" and not is_generated(self.func)  # stubs never build
        postprocs = [ms.postproc.VerifyGPUCode()] if verify else []
        return ms.space_generator.ScheduleFn(
            self._sample,
            sch_rules=[],
            postprocs=postprocs,
            mutator_probs={MutateCategorical(): 1.0},
        )

    def _sample(self, sch: s_tir.Schedule) -> None:
        """The space function: sample every knob, schedule with the samples."""
        config = sample_config(sch, self.config_cls, self.choices)
        self.schedule(sch, config)
        if is_generated(self.func):  # the builder hook regenerates the kernel from these
            outer = sch.get_loops(sch.get_sblock(STUB_BLOCK))[0]
            for name in self.choices:
                sch.annotate(outer, KNOB_ANNOTATION + name, getattr(config, name))

    def default_trace(self) -> s_tir.Trace:
        """A trace of the design space whose decisions pick :attr:`default_config`."""
        sch = s_tir.Schedule(self.mod)
        self._sample(sch)
        trace = sch.trace
        names = [f.name for f in dataclasses.fields(self.config_cls) if f.name in self.choices]
        insts = [i for i in trace.insts if i.kind.name == "SampleCategorical"]
        for inst, name in zip(insts, names, strict=True):
            cands = [int(c) for c in inst.attrs[0]]
            value = getattr(self.default_config, name)
            if value not in cands:
                raise ValueError(f"default {name}={value} is not among its choices {cands}")
            trace = trace.with_decision(inst, cands.index(value), True)
        return trace

    def decode(self, trace: s_tir.Trace) -> Any:
        """The knob config a tuned trace chose."""
        return config_from_trace(trace, self.config_cls, self.choices)

    def scheduled(self, config: Any) -> tirx.PrimFunc:
        """:attr:`func` scheduled with ``config`` (or the kernel generated from it) and stamped
        ``tirx.is_scheduled``."""
        if is_generated(self.func):
            return generate_config(self.func, config)
        sch = s_tir.Schedule(self.mod)
        self.schedule(sch, config)
        return sch.mod["main"].with_attr("tirx.is_scheduled", True)
