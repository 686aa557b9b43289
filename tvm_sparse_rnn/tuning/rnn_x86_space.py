"""Tuning space of the x86 recurrent kernel (:mod:`tvm_sparse_rnn.kernels.x86.recurrent`).

The kernel is generated from :class:`~tvm_sparse_rnn.kernels.x86.recurrent.RecurrentConfig` (knobs
``accumulators``, ``threads``, ``steps_per_launch``), so it is tuned through the stub of
:mod:`tvm_sparse_rnn.tuning.generated`: the stub's loop nest ``(step, unit, entry, lane)``
is the kernel's iteration space (``entry`` = packed entries of ``R`` per unit), and
:func:`schedule_stub` applies to it the loop structure the knobs give the real kernel: the steps
split into launches of ``steps_per_launch`` steps, the units split over ``threads`` parallel
tasks placed outside the steps of a launch (each task keeps its units), the entries split by
``accumulators`` (unrolled) and the batch lanes vectorized. The builder hook regenerates the real
kernel with :func:`generate_recurrent` and measures it with the real packed ``R``
(values, indices, row pointers) and full sequence lengths.

:func:`recurrent_config` is what the dispatch pass calls:
tuned record -> shipped ``schedules/<device>/rnn_x86.json`` -> default (one log line), and it
registers the task with :func:`~tvm_sparse_rnn.tuning.lookup.collect_tasks`, so
``tvm-sparse-rnn tune MODEL.onnx`` picks up the RNN/GRU/LSTM layers of a model.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import numpy as np
from tvm import s_tir, tirx

from ..cpu_threads import pool_threads
from ..kernels.x86.recurrent import (
    PackedLayout,
    PackedWeight,
    RecurrentConfig,
    default_recurrent_config,
    recurrent_knob_choices,
    recurrent_prim_func,
)
from ..ops.cells import CellConfig
from ..target import host_target
from .generated import STUB_BLOCK, stub_prim_func
from .lookup import lookup_config
from .task import STRUCTURE_ATTR, TuneTask

logger = logging.getLogger(__name__)

#: Operator family of these tasks (shipped configs: ``schedules/<device>/rnn_x86.json``).
OP = "rnn_x86"
#: The generator the builder hook imports.
GENERATOR = f"{__name__}:generate_recurrent"


def _cell_params(cfg: CellConfig) -> dict[str, Any]:
    return {
        "kind": cfg.kind,
        "hidden_size": cfg.hidden_size,
        "direction": cfg.direction,
        "activations": None if cfg.activations is None else list(cfg.activations),
        "clip": cfg.clip,
        "linear_before_reset": cfg.linear_before_reset,
        "peepholes": cfg.peepholes,
    }


def _params(
    cfg: CellConfig, direction: int, seq_len: int, batch: int, layout: PackedLayout
) -> dict[str, Any]:
    return {
        "cell": _cell_params(cfg),
        "direction": direction,
        "seq_len": seq_len,
        "batch": batch,
        "layout": {
            "shape": list(layout.shape),
            "num_gates": layout.num_gates,
            "padded_cols": layout.padded_cols,
            "row_multiple": layout.row_multiple,
            "entries": layout.entries,
            "index_dtype": layout.index_dtype,
        },
    }


def generate_recurrent(params: dict, knobs: dict) -> tirx.PrimFunc:
    """The generator of the builder hook: ``recurrent_prim_func`` from JSON params + knobs."""
    cell = dict(params["cell"])
    if cell["activations"] is not None:
        cell["activations"] = tuple(cell["activations"])
    lay = dict(params["layout"])
    layout = PackedLayout(**{**lay, "shape": tuple(lay["shape"])})
    return recurrent_prim_func(
        CellConfig(**cell),
        params["direction"],
        params["seq_len"],
        params["batch"],
        layout,
        RecurrentConfig(**knobs),
    )


def structure_key(packed: PackedWeight) -> str:
    """A short hash of ``R``'s packed sparsity structure (shape, row pointers, column indices);
    dense packings hash their shape only."""
    h = hashlib.sha1()
    h.update(np.asarray([*packed.shape, packed.entries], np.int64).tobytes())
    if not packed.dense:
        h.update(packed.indptr.tobytes())
        h.update(packed.indices.tobytes())
    return h.hexdigest()[:16]


def schedule_stub(sch: s_tir.Schedule, config: RecurrentConfig) -> None:
    """Give the stub the loop structure ``config`` gives the real kernel (knobs may be
    MetaSchedule random variables: they are used only as split factors)."""
    block = sch.get_sblock(STUB_BLOCK)
    step, unit, entry, lane = sch.get_loops(block)
    launch, step_in = sch.split(step, [None, config.steps_per_launch])
    task, unit_in = sch.split(unit, [config.threads, None])
    unit_in, unit_of_block = sch.split(unit_in, [None, config.unit_block])
    entry_out, entry_in = sch.split(entry, [None, config.accumulators])
    sch.reorder(launch, task, step_in, unit_in, unit_of_block, entry_out, entry_in, lane)
    sch.parallel(task)
    sch.unroll(entry_in)
    sch.vectorize(lane)


def recurrent_tune_task(
    cfg: CellConfig, direction: int, seq_len: int, batch: int, packed: PackedWeight
) -> TuneTask:
    """The recurrent kernel of one direction as a tuning task (real packed ``R`` attached).

    Parameters
    ----------
    cfg, direction, seq_len, batch
        As for :func:`~tvm_sparse_rnn.kernels.x86.recurrent.recurrent_prim_func`.
    packed : PackedWeight
        ``R`` of that direction, packed with ``row_multiple=UNROLL``.
    """
    layout = packed.layout
    cores = pool_threads()
    default = default_recurrent_config(layout, seq_len, batch, cores)
    real = recurrent_prim_func(cfg, direction, seq_len, batch, layout, default)
    key = structure_key(packed)
    H = cfg.hidden_size
    axes = [
        ("step", seq_len, "S"),
        ("unit", H, "S"),
        ("entry", max(layout.entries // H, 1), "R"),
        ("lane", batch, "S"),
    ]
    stub = stub_prim_func(
        real,
        axes,
        GENERATOR,
        _params(cfg, direction, seq_len, batch, layout),
        {STRUCTURE_ATTR: key},
    )
    arrays = dict(zip(("R_values", "R_indices", "R_indptr"), packed.arrays(), strict=False))
    arrays["L"] = np.full(batch, seq_len, np.int32)
    fixed = {i: arrays[p.name] for i, p in enumerate(real.params) if p.name in arrays}
    density = packed.nonzeros / (packed.shape[0] * packed.shape[1])
    kind = "dense" if packed.dense else f"{density:.0%}"
    return TuneTask(
        name=f"{OP} {cfg.kind} H={H} T={seq_len} N={batch} d{direction} {kind} [{key[:8]}]",
        op=OP,
        func=stub,
        config_cls=RecurrentConfig,
        choices=recurrent_knob_choices(seq_len, H, batch, cores),
        schedule=schedule_stub,
        fixed_args=fixed,
        default_config=default,
        meta={
            "kind": cfg.kind,
            "hidden": H,
            "seq_len": seq_len,
            "batch": batch,
            "dense": packed.dense,
            "threads": cores,
            "density": round(density, 4),
            "structure_key": key,
        },
    )


def recurrent_config(
    cfg: CellConfig,
    direction: int,
    seq_len: int,
    batch: int,
    packed: PackedWeight,
) -> tuple[RecurrentConfig, str]:
    """``(config, source)`` to build this kernel with: tuned record, else shipped config, else
    default; a looked-up config invalid on this machine (more threads than it has) falls back
    to the default."""
    task = recurrent_tune_task(cfg, direction, seq_len, batch, packed)
    config, source = lookup_config(task, host_target())
    if any(getattr(config, k) not in v for k, v in task.choices.items()):
        logger.warning("%s: %s is not valid on this machine; using the default", task.name, config)
        return task.default_config, "default config"
    return config, source
