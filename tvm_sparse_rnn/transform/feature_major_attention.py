"""``FeatureMajorAttention``: attention on the CSR kernels' transposed projections (llvm).

The x86 CSR kernel computes ``Y^T``, so in a pruned transformer the fused QKV projection
produces ``(3 * H * D, S)`` and the output projection wants ``(H * D, S)``. Exported from torch,
the attention in between splits the heads with ``permute_dims`` / ``reshape`` /
``strided_slice`` chains and merges them back the same way: on the 2-core VM five copy kernels
a layer, 197 us (summed) of the BERT-like 4x4 encoder's 3.35 ms
(``python benchmarks/profile_cpu_models.py bert_4x4 --top 30``). This pass matches

    o = matmul(softmax(matmul(q, k), axis=-1), v)

where each of ``q``, ``k``, ``v`` is a layout chain (:mod:`.layout_chain`, scalar factors
included) of a feature-major source -- checked element by element on the chain's index map --
and computes it on the sources themselves (:mod:`~tvm_sparse_rnn.ops.attention`): ``S^T`` by a
dense product reading the key and query rows, a softmax over the keys (axis -2, the column
kernel of :mod:`~tvm_sparse_rnn.kernels.x86.softmax`, which applies the scalar factors of ``q``
and ``k`` after the max), and ``O^T (B, H, Dv, S)``; ``o`` becomes a view of ``O^T``.
:class:`~tvm_sparse_rnn.transform.FoldLayoutChains` then finds the merge chain from ``O^T`` to
the output projection's input to be a reshape.
The products and the softmax are the same operations in another loop order, the scalar factors
applied once to each score instead of to ``q`` and ``k`` (a positive product only).
"""

from __future__ import annotations

import logging
from functools import partial

import numpy as np
import tvm
from tvm import relax

from ..kernels.opaque import opaque_kernel
from ..kernels.x86.row_reduction import ReducedAxis
from ..kernels.x86.softmax import make_softmax
from ..ops.attention import HeadLayout, feature_major_context, feature_major_scores
from .layout_chain import LayoutChain, block_value, op_name, trace_chain
from .mutate import mutate_relax_functions
from .shapes import tensor_shape
from .to_float16 import Precision

logger = logging.getLogger(__name__)


def head_layout(
    chain: LayoutChain, lead: int, seq: int, head_dim: int, features_first: bool
) -> HeadLayout | None:
    """Where ``chain``'s result -- ``lead`` heads of ``(seq, head_dim)`` (or ``(head_dim, seq)``
    if ``features_first``) -- sits in its root viewed as ``(F, B * seq)``, if it is such a view
    (``lead = B * H``, batch outer); else ``None``."""
    index = chain.index_map()
    root_shape = tensor_shape(chain.root)
    if index is None or not root_shape or root_shape[-1] % seq:
        return None
    tokens = root_shape[-1]
    batch = tokens // seq
    if lead % batch:
        return None
    heads = lead // batch
    inner = (head_dim, seq) if features_first else (seq, head_dim)
    if index.size != lead * seq * head_dim:
        return None
    row, col = np.divmod(index.reshape(lead, *inner), tokens)
    leads = np.arange(lead).reshape(-1, 1, 1)
    d = np.arange(head_dim).reshape((1, -1, 1) if features_first else (1, 1, -1))
    t = np.arange(seq).reshape((1, 1, -1) if features_first else (1, -1, 1))
    first = int(row.reshape(-1)[0])
    rows = np.broadcast_to(first + (leads % heads) * head_dim + d, row.shape)
    tokens_at = np.broadcast_to((leads // heads) * seq + t, col.shape)
    if not (np.array_equal(row, rows) and np.array_equal(col, tokens_at)):
        return None
    return HeadLayout(first, batch, heads, seq, head_dim)


@relax.expr_functor.mutator
class _AttentionRewriter(relax.PyExprMutator):
    """Rebinds attention outputs to views of the feature-major context."""

    def __init__(self, mod: tvm.IRModule, lanes: int) -> None:
        super().__init__(mod)
        self.lanes = lanes
        self.var2val: dict[relax.Var, relax.Expr] = {}
        self.rewritten = 0

    def visit_function_(self, func: relax.Function) -> relax.Expr:
        self.var2val = dict(relax.analysis.get_var2val(func))
        return super().visit_function_(func)

    def _value(self, expr: relax.Expr) -> relax.Expr:
        return block_value(expr, self.var2val)

    def _operands(self, value: relax.Expr) -> tuple[relax.Expr, relax.Expr, relax.Expr] | None:
        """``(q, k, v)`` of ``matmul(softmax(matmul(q, k), -1), v)``, else ``None``."""
        if op_name(value) != "relax.matmul":
            return None
        probs, v = value.args
        softmax = self._value(probs)
        if op_name(softmax) != "relax.nn.softmax":
            return None
        rank = len(tensor_shape(softmax) or ())
        if int(softmax.attrs.axis) not in (-1, rank - 1):
            return None
        scores = self._value(softmax.args[0])
        if op_name(scores) != "relax.matmul":
            return None
        q, k = scores.args
        return q, k, v

    def _rewrite(self, value: relax.Expr) -> relax.Expr | None:
        operands = self._operands(value)
        out_shape = tensor_shape(value)
        if operands is None or out_shape is None:
            return None
        if any(str(e.ty.dtype) != Precision.FLOAT32 for e in (*operands, value)):
            return None
        shapes = [tensor_shape(e) for e in operands]
        if any(s is None or len(s) < 3 for s in shapes):
            return None
        (*lead, seq, head_dim), (*k_lead, k_dim, keys), (*v_lead, v_seq, v_dim) = shapes
        if not lead == k_lead == v_lead or (k_dim, keys, v_seq) != (head_dim, seq, seq):
            return None
        if seq % self.lanes:
            return None
        count = int(np.prod(lead))
        q, k, v = (trace_chain(e, self.var2val, with_scales=True) for e in operands)
        layouts = (
            head_layout(q, count, seq, head_dim, features_first=False),
            head_layout(k, count, seq, head_dim, features_first=True),
            head_layout(v, count, seq, v_dim, features_first=False),
        )
        scale = q.scale * k.scale
        if None in layouts or v.scale != 1.0 or not scale > 0:
            return None
        q_at, k_at, v_at = layouts
        if len({(at.batch, at.heads) for at in layouts}) != 1:
            return None
        q_src, k_src, v_src = (self._source(chain) for chain in (q, k, v))
        scores = self.builder_.emit_te(
            partial(feature_major_scores, key=k_at, query=q_at), k_src, q_src,
            primfunc_name_hint="attention_scores",
        )  # fmt: skip
        probs = self._column_softmax(scores, scale)
        context = self.builder_.emit_te(
            partial(feature_major_context, value=v_at), v_src, probs,
            primfunc_name_hint="attention_context",
        )  # fmt: skip
        heads_first = self.builder_.emit(relax.op.permute_dims(context, [0, 1, 3, 2]))
        self.rewritten += 1
        return relax.op.reshape(heads_first, out_shape)

    def _column_softmax(self, scores: relax.Expr, scale: float) -> relax.Expr:
        """``softmax(scale * scores, axis=-2)`` on the column kernel."""
        shape = tensor_shape(scores)
        func = make_softmax(shape, Precision.FLOAT32, self.lanes, ReducedAxis.SECOND_LAST, scale)
        gv = self.builder_.add_func(opaque_kernel(func), "attention_softmax")
        return self.builder_.emit(
            relax.call_tir(gv, [scores], relax.TensorType(shape, Precision.FLOAT32))
        )

    def _source(self, chain: LayoutChain) -> relax.Expr:
        """``chain``'s root as ``(F, tokens)``."""
        shape = tensor_shape(chain.root)
        root = self.visit_expr(chain.root)
        return self.builder_.emit(relax.op.reshape(root, [int(np.prod(shape[:-1])), shape[-1]]))

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        rewritten = self._rewrite(binding.value)
        if rewritten is None:
            super().visit_var_binding_(binding)
            return
        self.builder_.emit_normalized(
            relax.VarBinding(binding.var, self.builder_.normalize(rewritten))
        )


@tvm.transform.module_pass(opt_level=0, name="FeatureMajorAttention")
class FeatureMajorAttention:
    """Compute attention on feature-major projections (see the module docstring).

    Parameters
    ----------
    lanes : int
        Vector lanes of the target (float32): the sequence length must divide by it (the
        softmax over the keys runs as vectors of queries).
    """

    def __init__(self, lanes: int) -> None:
        self.lanes = lanes

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        """The module with every matched attention rewritten, dead bindings dropped."""
        rewriter = _AttentionRewriter(mod, self.lanes)
        mod = mutate_relax_functions(rewriter, mod)
        if rewriter.rewritten:
            logger.info("FeatureMajorAttention: %d attentions rewritten", rewriter.rewritten)
            mod = relax.transform.DeadCodeElimination()(mod)
        return mod
