"""``DispatchKernels``: the one pass that decides which kernel variant runs each layer.

It replaces every target-neutral placeholder (:mod:`tvm_sparse_rnn.ops.placeholders`) of a module
by the kernel variant chosen for the target, from one cost model (:mod:`.cost_model`), the
tuning database (:func:`tvm_sparse_rnn.tuning.lookup.use_tuning_logs`), the shipped configs and
the target's limits (:func:`tvm_sparse_rnn.target.device_limits`):

* a linear placeholder -> the block-sparse kernel or the dense matmul (:mod:`.linear`);
* a recurrent placeholder -> per direction the x86 kernels, the persistent kernel or the
  per-step composition (:mod:`.recurrent`); its projections are linear layers dispatched the
  same way.

Each decision is logged in one line and kept in :attr:`DispatchKernels.decisions`
(:class:`~.decision.KernelDecision`), which ``tvm-sparse-rnn inspect`` and ``compile`` print.
Modelled on TVM's ``relax.backend.DispatchSortScan`` and MLC-LLM's dispatch passes.
"""

from __future__ import annotations

import contextlib
import logging
import os

import numpy as np
import tvm
from tvm import relax
from tvm.target import Target

from ...errors import UnsupportedError
from ...ops.epilogue import IDENTITY, Epilogue
from ...ops.placeholders import LinearCall, RecurrentCall
from ...target import resolve_target
from ...tuning.lookup import use_tuning_logs
from ..mutate import mutate_relax_functions
from .decision import DECISION_HEADER, DispatchOptions, KernelDecision, KernelVariant
from .linear import LinearLowering, emit_sparse_dense, plan_linear
from .recurrent import dispatch_recurrent

logger = logging.getLogger(__name__)


@relax.expr_functor.mutator
class _Dispatcher(relax.PyExprMutator):
    """Replaces placeholders by the chosen kernels, collecting the decisions."""

    def __init__(self, mod: tvm.IRModule, target: Target, options: DispatchOptions) -> None:
        super().__init__(mod)
        self.target = target
        self.options = options
        self.decisions: list[KernelDecision] = []
        self._linears: dict[str, LinearLowering] = {}

    def linear(
        self,
        x: relax.Expr,
        weight: np.ndarray,
        name: str,
        epilogue: Epilogue = IDENTITY,
        bias: np.ndarray | None = None,
    ) -> relax.Expr:
        """Lower ``epilogue(x @ weight.T, bias)``; layers of one name share one decision and
        its constants."""
        lowering = self._linears.get(name)
        if lowering is None:
            call = LinearCall(name, x, weight, epilogue, bias)
            lowering = plan_linear(call, self.target, self.options)
            self._linears[name] = lowering
            self._record(lowering.decision)
        return lowering.emit(self.builder_, x, epilogue, bias)

    def _record(self, decision: KernelDecision) -> None:
        logger.info(
            "dispatch %s -> %s: %s (%s)",
            decision.layer,
            decision.variant.value,
            decision.detail,
            decision.reason,
        )
        self.decisions.append(decision)

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        linear = LinearCall.match(call)
        if linear is not None:
            return self.linear(linear.x, linear.weight, linear.name, linear.epilogue, linear.bias)
        recurrent = RecurrentCall.match(call)
        if recurrent is not None:
            out, decisions = dispatch_recurrent(
                self.builder_, recurrent, self.target, self.options, self.linear
            )
            self.decisions.extend(decisions)
            return out
        return call


@tvm.transform.module_pass(opt_level=0, name="DispatchKernels")
class DispatchKernels:
    """Replace every placeholder by the kernel variant chosen for ``target``.

    Parameters
    ----------
    target : str, dict or Target, optional
        Target the kernels are built for; defaults to ``tvm.target.Target.current()``.
    options : DispatchOptions
        Sparsity threshold, block size choice, cost-rule overrides.
    tuning_logs : path, optional
        Tuning database (a directory, or a root of ``<device>/`` directories as
        ``tvm-sparse-rnn tune`` writes) whose best records the kernels use; shipped configs and
        defaults otherwise. ``None`` keeps the database of an enclosing
        :func:`~tvm_sparse_rnn.tuning.lookup.use_tuning_logs` (or ``$TVM_SPARSE_RNN_TUNING_LOGS``).

    Notes
    -----
    After the pass runs, :attr:`decisions` holds one :class:`KernelDecision` per layer (per
    direction of a recurrent layer), in program order.
    """

    def __init__(
        self,
        target: str | dict | Target | None = None,
        options: DispatchOptions | None = None,
        tuning_logs: str | os.PathLike | None = None,
    ) -> None:
        self.target = target
        self.options = options or DispatchOptions()
        self.tuning_logs = tuning_logs
        self.decisions: list[KernelDecision] = []

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        """Dispatch every placeholder, drop dead code."""
        target = _current_target(self.target)
        logs = contextlib.nullcontext()  # keep an enclosing use_tuning_logs(...) scope
        if self.tuning_logs is not None:
            logs = use_tuning_logs(self.tuning_logs)
        with logs:
            dispatcher = _Dispatcher(mod, target, self.options)
            mod = mutate_relax_functions(dispatcher, mod)
        self.decisions = dispatcher.decisions
        return relax.transform.DeadCodeElimination()(mod)


def _current_target(target: str | dict | Target | None) -> Target:
    if target is not None:
        return resolve_target(target)
    current = Target.current(allow_none=True)
    if current is None:
        raise UnsupportedError(
            "DispatchKernels needs a target: pass target='llvm'|'cuda' or run it inside "
            "`with tvm.target.Target(...)`"
        )
    return resolve_target(current)


__all__ = [
    "DECISION_HEADER",
    "DispatchKernels",
    "DispatchOptions",
    "KernelDecision",
    "KernelVariant",
    "emit_sparse_dense",
]
