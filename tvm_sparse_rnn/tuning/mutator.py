"""A MetaSchedule mutator for categorical knobs.

MetaSchedule's built-in mutators only change tile sizes, unroll steps, parallel extents, thread
bindings and compute locations. Our schedules expose their knobs (vector width, rows per thread,
barrier kind, ...) as ``sample_categorical`` instructions, so the evolutionary search needs a
mutator that re-draws any one of those decisions.
"""

from __future__ import annotations

import random

from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.mutator import PyMutator
from tvm.s_tir.schedule import Trace


@derived_object
class MutateCategorical(PyMutator):
    """Re-draw one ``SampleCategorical`` decision of a trace uniformly among the others."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self._rng = random.Random(seed)

    def _initialize_with_tune_context(self, context) -> None:
        pass

    def apply(self, trace: Trace, _rand_state: int) -> Trace | None:
        knobs = [
            (inst, int(decision))
            for inst, decision in trace.decisions.items()
            if inst.kind.name == "SampleCategorical" and len(inst.attrs[0]) > 1
        ]
        if not knobs:
            return None
        inst, old = self._rng.choice(knobs)
        new = self._rng.choice([i for i in range(len(inst.attrs[0])) if i != old])
        return trace.with_decision(inst, new, remove_postproc=True)

    def clone(self) -> MutateCategorical:
        return MutateCategorical(self._rng.randrange(1 << 30))
