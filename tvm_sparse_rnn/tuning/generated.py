"""Tuning kernels that a factory *generates* from structural knobs (the builder hook).

Some kernels are not a schedule applied to a fixed PrimFunc but the output of a Python factory
whose knobs change the code it emits (the x86 recurrent op: accumulators per row, one
thread-pool launch per step or one for all steps; the persistent GPU kernel: candidate
geometry, barrier kind, vector loads, nonzero order). A plain ``schedule(sch, config)`` cannot
express those, so such a task is tuned through a *stub*:

* **Workload.** :func:`stub_prim_func` builds a PrimFunc with exactly the real kernel's
  parameters (names, shapes, dtypes: the runner allocates arguments, and passes the real sparse
  arrays, from the workload's signature) whose body is a single sblock :data:`STUB_BLOCK` over a
  loop nest describing the kernel's iteration space. It carries three attributes:
  :data:`~tvm_sparse_rnn.tuning.task.STRUCTURE_ATTR` (the sparsity-structure key),
  :data:`GENERATOR_ATTR` (``"package.module:function"``, importable in any process) and
  :data:`PARAMS_ATTR` (a JSON object: everything the generator needs besides the knobs).
  Different patterns, shapes or cell options thus give different workloads.
* **Space.** The task's ``schedule(sch, config)`` mirrors the knobs on the stub with real loop
  transformations whose factors are the sampled knob values (splits, ``parallel``, ``unroll``),
  so candidates differ in the loop features the XGBoost cost model reads, and the sampled
  decisions replay consistently when the evolutionary search mutates them.
  :meth:`TuneTask.space <tvm_sparse_rnn.tuning.task.TuneTask.space>` then stamps every knob's
  sampled value on the stub's outermost loop as the annotation ``sparse_rnn.knob.<name>``.
* **Builder hook.** :func:`realize` (called by :func:`tvm_sparse_rnn.tuning.measure.build_kernel`
  in MetaSchedule's builder worker) reads those annotations and the attributes back, imports
  the generator and calls ``generator(params, knobs)``; the result is the PrimFunc that is
  compiled and measured (with the real arrays, see :mod:`tvm_sparse_rnn.tuning.measure`).
  At compile time :meth:`TuneTask.scheduled <tvm_sparse_rnn.tuning.task.TuneTask.scheduled>`
  calls the same generator with the looked-up config. A stub may name the TIR pipeline to build
  with in :data:`PIPELINE_ATTR` (:func:`build_pipeline`); the stub gets no postprocessors
  (``VerifyGPUCode`` would reject it: it is never compiled), a generated GPU kernel that is
  invalid fails in the builder instead.

Generator contract: ``generator(params: dict, knobs: dict[str, int]) -> tvm.tirx.PrimFunc``, a
module-level function; deterministic; its result has the stub's parameters in the same order;
any knob combination of the task's ``choices`` must give a valid kernel (raise ``ValueError``
otherwise: the candidate is then recorded as a failed build, not a wrong result).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import tvm
from tvm import s_tir, tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T  # noqa: N812 - TVMScript convention

#: Stub attribute naming the generator, ``"package.module:function"``.
GENERATOR_ATTR = "sparse_rnn.generator"
#: Stub attribute holding the generator's JSON parameters.
PARAMS_ATTR = "sparse_rnn.generator_params"
#: Optional stub attribute ``"package.module:function"``: ``function(target)`` returns the TIR
#: pipeline (a registered name or a Pass, as ``tvm.tirx.build`` takes) the generated kernel must
#: be built with (e.g. the cooperative-launch pipeline of the persistent GPU kernel).
PIPELINE_ATTR = "sparse_rnn.tir_pipeline"
#: Prefix of the loop annotations carrying the sampled knob values.
KNOB_ANNOTATION = "sparse_rnn.knob."
#: Name of the stub's only sblock (the space transforms its loops).
STUB_BLOCK = "stub"

Generator = Callable[[dict, dict], tirx.PrimFunc]


def stub_prim_func(
    real: tirx.PrimFunc,
    axes: Sequence[tuple[str, int, str]],
    generator: str,
    params: Mapping[str, Any],
    attrs: Mapping[str, Any] | None = None,
) -> tirx.PrimFunc:
    """The workload PrimFunc of a generated kernel.

    Parameters
    ----------
    real : tirx.PrimFunc
        The kernel with default knobs (only its parameter list is used).
    axes : sequence of (str, int, str)
        The stub's loop nest, outermost first: ``(name, extent, kind)`` with kind ``"S"``
        (spatial) or ``"R"`` (reduction). The block reduces a scratch ``(extents...)`` buffer
        into a ``(spatial extents...)`` one; it is never run.
    generator : str
        ``"package.module:function"`` (see the module docstring for the contract).
    params : mapping
        JSON-serializable arguments of the generator besides the knobs.
    attrs : mapping, optional
        More function attributes (e.g. the structure key).

    Returns
    -------
    tvm.tirx.PrimFunc
        ``main`` with ``real``'s parameters and the attributes above.
    """
    extents = [extent for _, extent, _ in axes]
    kinds = "".join(kind for _, _, kind in axes)
    spatial = [i for i, kind in enumerate(kinds) if kind == "S"]
    fattrs = {
        "tirx.noalias": True,
        GENERATOR_ATTR: generator,
        PARAMS_ATTR: json.dumps(dict(params), sort_keys=True),
        **(attrs or {}),
    }
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("main")
            T.func_attr(fattrs)
            for param in real.params:
                T.arg(param.name, T.buffer(list(param.shape), param.dtype))
            with T.sblock("root"):
                src = T.alloc_buffer(extents, "float32")
                dst = T.alloc_buffer([extents[i] for i in spatial], "float32")
                with T.grid(*extents) as ivs:
                    with T.sblock(STUB_BLOCK):
                        vs = T.axis.remap(kinds, ivs)
                        out = [vs[i] for i in spatial]
                        T.reads(dst[tuple(out)], src[tuple(vs)])
                        T.writes(dst[tuple(out)])
                        with T.init():
                            T.buffer_store(dst, tirx.const(0.0, "float32"), out)
                        T.buffer_store(dst, dst[tuple(out)] + src[tuple(vs)], out)
    return ib.get()


def is_generated(func: tirx.PrimFunc) -> bool:
    """Whether ``func`` is the stub of a generated kernel."""
    return func.attrs is not None and GENERATOR_ATTR in func.attrs


def _import(path: str) -> Callable:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _generator(func: tirx.PrimFunc) -> tuple[Generator, dict]:
    return _import(str(func.attrs[GENERATOR_ATTR])), json.loads(str(func.attrs[PARAMS_ATTR]))


def build_pipeline(mod: tvm.IRModule, target: Any) -> Any:
    """The ``pipeline`` argument of ``tvm.tirx.build`` for a (scheduled) stub module:
    ``"default"`` unless the stub names one in :data:`PIPELINE_ATTR`."""
    stub = mod["main"]
    if stub.attrs is None or PIPELINE_ATTR not in stub.attrs:
        return "default"
    return _import(str(stub.attrs[PIPELINE_ATTR]))(target)


def generate(stub: tirx.PrimFunc, knobs: Mapping[str, int]) -> tirx.PrimFunc:
    """The real kernel of ``stub`` for ``knobs``, as ``main`` (``tirx.is_scheduled``)."""
    fn, params = _generator(stub)
    func = fn(params, {k: int(v) for k, v in knobs.items()})
    return func.with_attr("global_symbol", "main").with_attr("tirx.is_scheduled", True)


def generate_config(stub: tirx.PrimFunc, config: Any) -> tirx.PrimFunc:
    """:func:`generate` with the knobs of a config dataclass."""
    return generate(stub, dataclasses.asdict(config))


def sampled_knobs(func: tirx.PrimFunc) -> dict[str, int]:
    """The ``sparse_rnn.knob.*`` annotations on the loops of a scheduled stub."""
    sch = s_tir.Schedule(tvm.IRModule({"main": func}))
    knobs: dict[str, int] = {}
    for loop in sch.get_loops(sch.get_sblock(STUB_BLOCK)):
        for key, value in sch.get(loop).annotations.items():
            if str(key).startswith(KNOB_ANNOTATION):
                knobs[str(key)[len(KNOB_ANNOTATION) :]] = int(value)
    return knobs


def realize(mod: tvm.IRModule) -> tvm.IRModule:
    """The builder hook: a scheduled stub module -> the generated kernel's module.

    Modules whose ``main`` is not a stub are returned unchanged.
    """
    stub = mod["main"]
    if not is_generated(stub):
        return mod
    return tvm.IRModule({"main": generate(stub, sampled_knobs(stub))})
