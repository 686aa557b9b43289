"""Tuning space of the persistent RNN/GRU/LSTM GPU kernel.

The kernel (:mod:`tvm_sparse_rnn.kernels.cuda.persistent.kernel`) is generated from a geometry
(:class:`~tvm_sparse_rnn.kernels.cuda.persistent.planner.PersistentPlan`) and three code/layout
knobs, so it is tuned through the stub of
:mod:`tvm_sparse_rnn.tuning.generated`. The knobs (:class:`PersistentConfig`, each a sampled
``sample_categorical`` decision):

* ``geometry``: rank among the planner's candidate plans
  (:func:`~tvm_sparse_rnn.kernels.cuda.persistent.planner.best_candidates`: those of the
  replica count the planner picks) for this ``R`` (0 = the lowest modelled cost, what
  ``build_persistent_rnn`` picks), the first :data:`NUM_GEOMETRIES`;
* ``barrier``: index into :data:`BARRIERS` (grid sync, flags, or the cluster barrier, which
  only plans of at most ``PORTABLE_CLUSTER_SIZE`` CTAs per recurrence can use);
* ``vector``: vector (up to LDS.128) loads of ``h`` off/on;
* ``order``: index into :data:`ORDERS`, the nonzero order of the packing (bank-aware or not).

The default config is what ``build_persistent_rnn`` builds without a record: geometry 0, the
barrier and vector loads of
:func:`~tvm_sparse_rnn.kernels.cuda.persistent.planner.default_knobs`, guided order.

**Real weights for every candidate.** The packed arrays (``vals``, ``idx``, ``spairs``) differ
in shape and content per geometry, order and vector layout, while MetaSchedule allocates one
argument list per workload. The stub therefore has one ``(vals, idx, spairs)`` triple per
*slot* (geometry x layout, see :func:`slot_of`; the naive order does not depend on the vector
layout, so each geometry has three slots) followed by the kernel's other parameters, with
``U``/``out`` of :data:`MEASURE_STEPS` steps. The runner receives the real packed ``R`` of
every slot (:class:`PackedSlots`, packed once per tuning run); the generator returns the real
kernel (unchanged body, ``T`` still symbolic) whose parameter list has the chosen slot's triple
in place and unused buffers for the others, so every candidate is measured on the real
packing of the real ``R``. Different patterns (structure key), cells, batches or dtypes give
different workloads.

The knobs pick among whole kernels and map onto no loop transformation of the stub, so the
stub is left unscheduled (its knob annotations tell candidates apart); the space has at most
``NUM_GEOMETRIES * 12`` points, which ``--trials 48`` covers.

:func:`tuned_persistent_config` is what the kernel factory calls: tuned record -> shipped
``schedules/<device>/persistent_rnn.json`` -> default (one log line), and it registers the task
with :func:`~tvm_sparse_rnn.tuning.lookup.collect_tasks`, so ``tvm-sparse-rnn tune MODEL.onnx
--target cuda`` picks up the persistent layers of a model.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from tvm import s_tir, tirx
from tvm.sym.analyzer import Analyzer
from tvm.target import Target

from ..kernels.cuda.persistent import cooperative as cuda_pipeline
from ..kernels.cuda.persistent.kernel import make_persistent_kernel
from ..kernels.cuda.persistent.layout import PairOrder
from ..kernels.cuda.persistent.packing import KERNEL_ARRAYS, pack, stack_directions, unit_major
from ..kernels.cuda.persistent.planner import (
    PORTABLE_CLUSTER_SIZE,
    Barrier,
    PersistentPlan,
    best_candidates,
    default_knobs,
    row_lengths,
)
from ..ops.cells import PersistentCell
from ..target import DeviceLimits, resolve_target
from .generated import PARAMS_ATTR, PIPELINE_ATTR, stub_prim_func
from .lookup import lookup_config
from .task import STRUCTURE_ATTR, TuneTask

logger = logging.getLogger(__name__)

#: Operator family of these tasks (shipped configs: ``schedules/<device>/persistent_rnn.json``).
OP = "persistent_rnn"
#: The generator the builder hook imports.
GENERATOR = f"{__name__}:generate_persistent"
#: The TIR pipeline the generated kernel is built with (cooperative launch).
PIPELINE = f"{__name__}:tir_pipeline"
#: Geometries (best by the planner's cost model first) the ``geometry`` knob chooses among.
NUM_GEOMETRIES = 4
#: Steps of the measured launch (the kernel is generic in ``T``; records apply to any ``T``).
MEASURE_STEPS = 64
#: Step barriers (``barrier`` knob), by index.
BARRIERS = tuple(Barrier)
#: Nonzero orders of the packing (``order`` knob), by index.
ORDERS = tuple(PairOrder)
#: Layouts per geometry: (order, vector); the naive order ignores the vector layout.
_LAYOUTS = ((PairOrder.GUIDED, True), (PairOrder.GUIDED, False), (PairOrder.NAIVE, False))


@dataclass(frozen=True)
class PersistentConfig:
    """Knobs of the persistent kernel (indices, so that they are MetaSchedule decisions).

    Attributes
    ----------
    geometry : int
        Rank of the plan among the candidate plans (0 = best by the planner's cost model).
    barrier : int
        Index into :data:`BARRIERS` (``0`` grid, ``1`` flag).
    vector : int
        ``1``: vector loads of ``h`` (and the packing laid out for them).
    order : int
        Index into :data:`ORDERS` (``0`` guided, ``1`` naive).
    """

    geometry: int = 0
    barrier: int = 0
    vector: int = 1
    order: int = 0

    def resolve(
        self, plans: list[PersistentPlan]
    ) -> tuple[PersistentPlan, Barrier, bool, PairOrder]:
        """``(plan, barrier, vector, order)`` as ``build_persistent_rnn`` takes them.

        Raises
        ------
        ValueError
            If a knob is out of range (e.g. a shipped config ranks more geometries than fit).
        """
        if not 0 <= self.geometry < len(plans):
            raise ValueError(f"geometry {self.geometry}: only {len(plans)} candidate plans")
        if not (0 <= self.barrier < len(BARRIERS) and 0 <= self.order < len(ORDERS)):
            raise ValueError(f"knob out of range: {self}")
        plan = plans[self.geometry]
        if BARRIERS[self.barrier] is Barrier.CLUSTER and plan.num_ctas > PORTABLE_CLUSTER_SIZE:
            raise ValueError(
                f"cluster barrier for geometry {self.geometry}: {plan.num_ctas} CTAs per "
                f"recurrence, at most {PORTABLE_CLUSTER_SIZE} form a cluster"
            )
        return (
            plan,
            BARRIERS[self.barrier],
            bool(self.vector),
            ORDERS[self.order],
        )


def knob_choices(plans: list[PersistentPlan]) -> dict[str, tuple[int, ...]]:
    """Candidate values per knob for the candidate ``plans`` (the cluster barrier only when
    one of them fits a cluster; :meth:`PersistentConfig.resolve` rejects it for the others)."""
    barriers = [
        i
        for i, b in enumerate(BARRIERS)
        if b is not Barrier.CLUSTER or min(p.num_ctas for p in plans) <= PORTABLE_CLUSTER_SIZE
    ]
    return {
        "geometry": tuple(range(len(plans))),
        "barrier": tuple(barriers),
        "vector": (0, 1),
        "order": tuple(range(len(ORDERS))),
    }


def slot_of(geometry: int, vector: bool, order: PairOrder) -> int:
    """Index of the stub's ``(vals, idx, spairs)`` triple holding this packing."""
    layout = (order, vector and order is PairOrder.GUIDED)
    return geometry * len(_LAYOUTS) + _LAYOUTS.index(layout)


def tir_pipeline(_target: Target) -> str:
    """The pipeline of the generated kernel (stub attribute, see ``generated.PIPELINE_ATTR``)."""
    return cuda_pipeline.register()


def _plan_params(plan: PersistentPlan) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(plan).items() if k != "reason"}


@functools.lru_cache(maxsize=64)
def _reference_kernel(plan: PersistentPlan, cell: PersistentCell) -> tirx.PrimFunc:
    """The kernel of ``plan`` with fixed code knobs: its parameters are those of every knob."""
    return make_persistent_kernel(plan, cell, Barrier.GRID, True)


def _packed_shapes(plan: PersistentPlan, cell: PersistentCell) -> list[tuple[list[int], str]]:
    """``(shape, dtype)`` of ``vals``, ``idx``, ``spairs`` in the kernel for ``plan``."""
    params = _reference_kernel(plan, cell).params[:3]
    return [([int(d) for d in p.shape], str(p.dtype)) for p in params]


def generate_persistent(params: dict, knobs: dict) -> tirx.PrimFunc:
    """The generator of the builder hook: the real kernel with the stub's parameter list.

    The chosen slot's ``(vals, idx, spairs)`` are the kernel's own; the other slots become
    unused buffers of the stub's shapes (see the module docstring).

    Raises
    ------
    ValueError
        If a knob is out of range or the kernel's packed shapes differ from the stub's.
    """
    plans = [PersistentPlan(**p) for p in params["plans"]]
    plan, barrier, vector, order = PersistentConfig(**knobs).resolve(plans)
    func = make_persistent_kernel(plan, PersistentCell(params["cell"]), barrier, vector)
    chosen = slot_of(int(knobs["geometry"]), vector, order)
    slots = params["slots"]
    own = [([int(d) for d in p.shape], str(p.dtype)) for p in func.params[:3]]
    if [(list(s), d) for s, d in slots[chosen]] != own:
        raise ValueError(f"kernel packed shapes {own} differ from the stub's {slots[chosen]}")
    args = []
    for s, triple in enumerate(slots):
        if s == chosen:
            args += func.params[:3]
        else:
            args += [
                tirx.decl_buffer(tuple(shape), dtype, f"{name}_{s}")
                for name, (shape, dtype) in zip(KERNEL_ARRAYS, triple, strict=True)
            ]
    return tirx.PrimFunc([*args, *func.params[3:]], func.body, func.ret_type, func.attrs)


def structure_key(R_unit_major: sp.csr_array, dtype: str) -> str:
    """A short hash of ``R``'s sparsity structure (shape, row pointers, columns) and dtype."""
    h = hashlib.sha1()
    h.update(np.asarray(R_unit_major.shape, np.int64).tobytes())
    h.update(np.asarray(R_unit_major.indptr, np.int64).tobytes())
    h.update(np.asarray(R_unit_major.indices, np.int64).tobytes())
    h.update(dtype.encode())
    return h.hexdigest()[:16]


class PackedSlots(Mapping):
    """The runner's real arrays: parameter position -> packed ``R`` of its slot.

    Packing every slot takes a while (the guided order is a Python loop per row), so it
    happens on first access, i.e. only when the task is measured, not when it is looked up.

    Parameters
    ----------
    R_unit_major : scipy.sparse.csr_array
        ``(G*H, H)`` unit-major ``R``
        (:func:`~tvm_sparse_rnn.kernels.cuda.persistent.packing.unit_major`).
    plans : list of PersistentPlan
        The candidate geometries, in slot order.
    """

    def __init__(self, R_unit_major: sp.csr_array, plans: list[PersistentPlan]) -> None:
        self._R, self._plans = R_unit_major, plans

    @functools.cached_property
    def _arrays(self) -> dict[int, np.ndarray]:
        arrays = {}
        for g, plan in enumerate(self._plans):
            for order, vector in _LAYOUTS:
                packed = pack(self._R, plan, order, vector)
                base = len(KERNEL_ARRAYS) * slot_of(g, vector, order)
                for k, array in enumerate(stack_directions([packed] * plan.directions)):
                    arrays[base + k] = array
        return arrays

    def __getitem__(self, position: int) -> np.ndarray:
        return self._arrays[position]

    def __iter__(self) -> Iterator[int]:
        return iter(range(len(self)))

    def __len__(self) -> int:
        return len(KERNEL_ARRAYS) * len(_LAYOUTS) * len(self._plans)


def _signature(
    plans: list[PersistentPlan], cell: PersistentCell, slots: list[list[tuple[list[int], str]]]
) -> tirx.PrimFunc:
    """A body-less PrimFunc with the stub's parameters (what ``stub_prim_func`` copies)."""
    real = _reference_kernel(plans[0], cell)
    params = [
        tirx.decl_buffer(tuple(shape), dtype, f"{name}_{s}")
        for s, triple in enumerate(slots)
        for name, (shape, dtype) in zip(KERNEL_ARRAYS, triple, strict=True)
    ]
    analyzer = Analyzer()
    # U's T and samples (one launch's)
    steps, samples = (d for d in real.params[3].shape if not isinstance(d, tirx.IntImm))
    analyzer.bind(steps, MEASURE_STEPS)
    analyzer.bind(samples, plans[0].launch_batch)
    for p in real.params[3:]:  # U, h0, c0, rbias, out (P * T rows), c_out, status
        shape = tuple(int(analyzer.simplify(d)) for d in p.shape)
        params.append(tirx.decl_buffer(shape, p.dtype, p.name))
    return tirx.PrimFunc(params, tirx.Evaluate(0))


def _schedule_stub(_sch: s_tir.Schedule, _config: PersistentConfig) -> None:
    """The knobs map onto no loop of the stub: it stays as is (see the module docstring)."""


def persistent_tune_task(
    R: object,
    batch: int,
    cell: PersistentCell,
    dtype: str,
    device: DeviceLimits,
    num_geometries: int = NUM_GEOMETRIES,
    directions: int = 1,
) -> TuneTask | None:
    """The persistent kernel of one recurrent weight as a tuning task (real packed ``R``).

    Parameters
    ----------
    R : numpy.ndarray or scipy sparse
        ``(G*H, H)`` recurrent weight of all gates in ONNX (gate-major) order.
    batch : int
        ``B``.
    cell : PersistentCell
        The kernel's cell.
    dtype : str
        ``"float32"`` or ``"float16"``.
    device : DeviceLimits
        The GPU the planner plans for.
    num_geometries : int
        Candidate geometries (the planner's best first).
    directions : int
        Recurrences of ``R``'s shape one launch runs (both directions of a bidirectional
        layer: 2). The task measures the launch with ``R`` packed for every direction: the
        geometry, not the weights, decides its time.

    Returns
    -------
    TuneTask or None
        ``None`` when no persistent geometry fits (the per-step fallback has nothing to tune).
    """
    cell = PersistentCell(cell)
    if num_geometries < 1:
        raise ValueError(f"num_geometries must be >= 1, got {num_geometries}")
    gates = cell.gates
    Ru = unit_major(R, gates)
    lengths = row_lengths(Ru)
    hidden = Ru.shape[1]
    longest = int(lengths.max()) if lengths.size else 0
    plans = best_candidates(
        hidden,
        longest,
        batch,
        dtype,
        device=device,
        gates=gates,
        directions=directions,
        two_phase=cell.two_phase,
    )
    plans = plans[:num_geometries]
    if not plans:
        return None
    barrier, vector = default_knobs(plans[0])
    default = PersistentConfig(
        0, BARRIERS.index(barrier), int(vector), ORDERS.index(PairOrder.GUIDED)
    )
    slots = [_packed_shapes(plan, cell) for plan in plans for _ in _LAYOUTS]
    key = structure_key(Ru, dtype)
    p0 = plans[0]
    axes = [
        ("step", MEASURE_STEPS, "S"),
        ("row", p0.gates * p0.hidden_padded, "S"),
        ("pair", p0.nz_per_row, "R"),
        ("sample", p0.batch_kernel, "S"),
    ]
    stub = stub_prim_func(
        _signature(plans, cell, slots),
        axes,
        GENERATOR,
        {"cell": cell.value, "plans": [_plan_params(p) for p in plans], "slots": slots},
        {STRUCTURE_ATTR: key, PIPELINE_ATTR: PIPELINE},
    )
    density = Ru.nnz / (Ru.shape[0] * Ru.shape[1])
    concurrent = {"directions": directions} if directions > 1 else {}
    if p0.replicas > 1:  # records and shipped configs of one replica never match these plans
        concurrent["replicas"] = p0.replicas
    name = f"{OP} {cell.value} H={hidden} B={batch} {dtype} {density:.0%}"
    shares = f" x{directions}" if directions > 1 else ""
    shares += f" replicas={p0.replicas}" if p0.replicas > 1 else ""
    return TuneTask(
        name=f"{name}{shares} [{key[:8]}]",
        op=OP,
        func=stub,
        config_cls=PersistentConfig,
        choices=knob_choices(plans),
        schedule=_schedule_stub,
        fixed_args=PackedSlots(Ru, plans),
        default_config=default,
        meta={
            "cell": cell.value,
            "hidden": hidden,
            "batch": batch,
            "dtype": dtype,
            "density": round(density, 4),
            "structure_key": key,
            **concurrent,
        },
    )


def tuned_persistent_config(
    R: object,
    batch: int,
    cell: PersistentCell,
    dtype: str,
    target: Target,
    device: DeviceLimits,
    directions: int = 1,
) -> tuple[tuple[PersistentPlan, Barrier, bool, PairOrder], str] | None:
    """``((plan, barrier, vector, order), source)`` to build the kernel of ``R`` with.

    Tuned record -> shipped config -> default (one log line, see
    :mod:`tvm_sparse_rnn.tuning.lookup`); ``source`` says which. The default is geometry 0 of
    the planner with :func:`~tvm_sparse_rnn.kernels.cuda.persistent.planner.default_knobs`.

    Returns
    -------
    tuple or None
        ``None`` when no persistent geometry fits (use the per-step fallback).
    """
    task = persistent_tune_task(R, batch, cell, dtype, device, directions=directions)
    if task is None:
        return None
    plans = task_plans(task)
    config, source = lookup_config(task, resolve_target(target))
    try:
        return config.resolve(plans), source
    except ValueError as e:
        logger.warning("%s: %s; using the default", task.name, e)
        return task.default_config.resolve(plans), "default config"


def task_plans(task: TuneTask) -> list[PersistentPlan]:
    """The candidate geometries of a task of :func:`persistent_tune_task` (``geometry`` order)."""
    return [PersistentPlan(**p) for p in json.loads(str(task.func.attrs[PARAMS_ATTR]))["plans"]]
