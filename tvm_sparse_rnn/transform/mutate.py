"""Apply a Relax expression mutator to every Relax function of a module."""

from __future__ import annotations

import tvm
from tvm import relax


def mutate_relax_functions(mutator: relax.PyExprMutator, mod: tvm.IRModule) -> tvm.IRModule:
    """Visit every Relax function of ``mod`` with ``mutator``; return the rewritten module.

    Parameters
    ----------
    mutator : relax.PyExprMutator
        A mutator constructed on ``mod`` (its block builder starts from that module).
    mod : tvm.IRModule
        The module to rewrite; TIR functions are kept as they are.

    Returns
    -------
    tvm.IRModule
        The module of the mutator's block builder, with every Relax function rewritten.
    """
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gv, mutator.visit_expr(func))
    return mutator.builder_.finalize()
