"""``FoldLayoutChains``: a chain of layout operators that adds up to a reshape becomes one.

After :class:`~tvm_sparse_rnn.transform.FeatureMajorAttention` the attention output reaches the
next CSR kernel as ``permute_dims`` -> ``reshape`` -> ``permute_dims`` -> ... whose composition
keeps every element in place (the heads' ``(H, D, S)`` output is the ``(H * D, S)`` input the
kernel reads). Each ``permute_dims`` of such a chain would still be a copy kernel. This pass
binds every layout call whose chain (:func:`~.layout_chain.trace_chain`) keeps every element
of its root at the same flat position to ``reshape(root)``; the operators in between are left
to dead-code elimination.
"""

from __future__ import annotations

import logging

import tvm
from tvm import relax

from .layout_chain import LAYOUT_OPS, op_name, trace_chain
from .mutate import mutate_relax_functions
from .shapes import tensor_shape

logger = logging.getLogger(__name__)


@relax.expr_functor.mutator
class _ChainFolder(relax.PyExprMutator):
    """Rebinds in-place layout chains to one reshape of their root."""

    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.var2val: dict[relax.Var, relax.Expr] = {}
        self.folded = 0

    def visit_function_(self, func: relax.Function) -> relax.Expr:
        self.var2val = dict(relax.analysis.get_var2val(func))
        return super().visit_function_(func)

    def _folded(self, value: relax.Expr) -> relax.Expr | None:
        """``reshape(root)`` if ``value`` ends a chain of two or more layout operators that
        keeps every element of its root in place, else ``None``."""
        if op_name(value) not in LAYOUT_OPS:
            return None
        chain = trace_chain(value, self.var2val)
        shape = tensor_shape(value)
        if len(chain.ops) < 2 or shape is None or not chain.in_place():
            return None
        return relax.op.reshape(self.visit_expr(chain.root), shape)

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        folded = self._folded(binding.value)
        if folded is None:
            super().visit_var_binding_(binding)
            return
        self.folded += 1
        self.builder_.emit_normalized(
            relax.VarBinding(binding.var, self.builder_.normalize(folded))
        )


@tvm.transform.module_pass(opt_level=0, name="FoldLayoutChains")
def FoldLayoutChains(mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
    """Replace in-place layout chains by one reshape (see the module docstring), then drop
    what no longer has a reader."""
    folder = _ChainFolder(mod)
    mod = mutate_relax_functions(folder, mod)
    if folder.folded:
        logger.info("FoldLayoutChains: %d layout chains folded into reshapes", folder.folded)
        mod = relax.transform.DeadCodeElimination()(mod)
    return mod
