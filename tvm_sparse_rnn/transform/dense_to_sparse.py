"""``DenseToSparse``: rewrite pruned dense layers with constant weights into ``sparse_dense``.

The pass works on any Relax module whose dense layers have their weights bound as constants:
modules from :func:`tvm_sparse_rnn.frontend.from_onnx`, from ``tvm.relax.frontend.onnx.from_onnx``
(default ``keep_params_in_input=False``), or built by hand. It first runs
``relax.transform.FoldConstant`` so that weights computed from constants (a pruned model often
carries ``weight * mask``, or ``permute_dims(weight)``) become plain constants, then matches

* ``R.matmul(x, C)`` with ``C`` a 2-D constant ``(K, N)``: ONNX ``MatMul`` with an initializer and
  ``Gemm(transB=0)``;
* ``R.matmul(x, R.permute_dims(C))`` with ``C`` ``(N, K)``: ``Gemm(transB=1)``, ``nn.Linear``
  and ``relax.op.linear`` (only seen when constants are not folded first).

``x`` may be any expression of rank >= 2 (``Gemm``'s ``transA`` and ``alpha`` act on ``x`` and its
``bias``/``beta`` on a separate ``R.add``, both left in place); leading dimensions are flattened
to ``[M, K]`` around the sparse kernel and restored after it. Each matched layer is judged by
:func:`tvm_sparse_rnn.transform.block_size.plan_layer` (per-layer block size, cost rule) and
rewritten with :func:`tvm_sparse_rnn.sparse_dense.emit_sparse_dense` when sparse wins.

Examples
--------
>>> mod = tvm.relax.frontend.onnx.from_onnx(onnx_model)            # doctest: +SKIP
>>> with tvm.target.Target("llvm"):                                 # doctest: +SKIP
...     mod = DenseToSparse(sparsity_threshold=0.8)(mod)
>>> ex = tvm.compile(mod, target="llvm")                            # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.ir import Op
from tvm.target import Target

from ..bsr import SUPPORTED_DTYPES, BSRWeight
from ..errors import UnsupportedError
from ..runtime.sparse_dense import emit_sparse_dense
from ..target import resolve_target
from .dispatch.cost_model import DEFAULT_CANDIDATES, CostParams, LayerPlan, plan_layer

logger = logging.getLogger(__name__)

_MATMUL = Op.get("relax.matmul")
_PERMUTE_DIMS = Op.get("relax.permute_dims")


@dataclass(frozen=True)
class DenseLayer:
    """A matched dense layer and the decision taken for it.

    Attributes
    ----------
    index : int
        Position among the matched layers, in program order.
    function : str
        Name of the Relax function holding the layer.
    input_shape : tuple
        Shape of ``x`` (entries may be symbolic ``PrimExpr``).
    plan : LayerPlan
        Sparsity, chosen block size, fill, and sparse-or-dense (see :mod:`.block_size`).
    """

    index: int
    function: str
    input_shape: tuple
    plan: LayerPlan


def _constant_value(expr: relax.Expr) -> np.ndarray | None:
    if isinstance(expr, tvm.ir.expr.Constant):
        return expr.value.numpy()
    return None


@relax.expr_functor.mutator
class _DenseToSparseMutator(relax.PyExprMutator):
    """Matches constant-weight ``R.matmul`` calls; rewrites them when ``rewrite`` is set."""

    def __init__(
        self, mod: tvm.IRModule, options: DenseToSparse, target: Target, rewrite: bool
    ) -> None:
        super().__init__(mod)
        self.mod = mod
        self.options = options
        self.target = target
        self.rewrite = rewrite
        self.function = ""
        self.layers: list[DenseLayer] = []

    def _bound(self, expr: relax.Expr) -> relax.Expr:
        """See through a dataflow variable to the expression bound to it."""
        bound = self.lookup_binding(expr) if isinstance(expr, relax.Var) else None
        return bound if bound is not None else expr

    def _weight_nk(self, expr: relax.Expr) -> np.ndarray | None:
        """The ``(N, K)`` weight behind ``expr``, or ``None`` if it is not a 2-D constant."""
        expr = self._bound(expr)
        value = _constant_value(expr)
        if value is not None:
            return value.T if value.ndim == 2 else None
        if isinstance(expr, relax.Call) and expr.op == _PERMUTE_DIMS:
            axes = expr.attrs.axes
            value = _constant_value(self._bound(expr.args[0]))
            if value is not None and value.ndim == 2 and (axes is None or list(axes) == [1, 0]):
                return value
        return None

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = self.visit_expr_post_order(call)
        if call.op != _MATMUL or len(call.args) != 2:
            return call
        x, w = call.args
        weight = self._weight_nk(w)
        x_ty = x.ty
        dtype = str(x_ty.dtype) if isinstance(x_ty, relax.TensorType) else ""
        if (
            weight is None
            or not isinstance(x_ty, relax.TensorType)
            or not isinstance(x_ty.shape, relax.ShapeExpr)
            or x_ty.ndim < 2
            or dtype not in SUPPORTED_DTYPES
            or str(call.ty.dtype) != dtype
            or weight.dtype.name != dtype
        ):
            return call
        lead = x_ty.shape.values[:-1]
        static = all(isinstance(d, tvm.tirx.IntImm) for d in lead)
        plan = plan_layer(
            weight,
            self.target.kind.name,
            self.options.sparsity_threshold,
            self.options.block_size,
            self.options.candidates,
            self.options.params,
            rows=math.prod(int(d) for d in lead) if static else None,
        )
        layer = DenseLayer(len(self.layers), self.function, tuple(x_ty.shape.values), plan)
        self.layers.append(layer)
        stats = plan.choice
        logger.info(
            "dense layer %d %s W%s: sparsity %.1f%%, block %s, fill %.1f%% -> %s (%s)",
            layer.index,
            self.function,
            plan.shape,
            100 * plan.sparsity,
            "x".join(map(str, stats.block_size)) if stats else "-",
            100 * stats.fill if stats else 0.0,
            "sparse" if plan.sparse else "dense",
            plan.reason,
        )
        if not (self.rewrite and plan.sparse):
            return call
        bsr = BSRWeight.from_dense(weight, stats.block_size, dtype=dtype)
        x2d = x if x_ty.ndim == 2 else self.builder_.emit(relax.op.reshape(x, [-1, plan.shape[1]]))
        y = emit_sparse_dense(self.builder_, x2d, bsr, self.target, self.options.config)
        return y if x_ty.ndim == 2 else relax.op.reshape(y, call.ty.shape)

    def run(self) -> tvm.IRModule:
        """Visit every Relax function of the module; return the (possibly rewritten) module."""
        for gv, func in self.mod.functions_items():
            if isinstance(func, relax.Function):
                self.function = gv.name_hint
                self.builder_.update_func(gv, self.visit_expr(func))
        return self.builder_.finalize()


def _current_target(target: str | dict | Target | None) -> Target:
    if target is not None:
        return resolve_target(target)
    current = Target.current(allow_none=True)
    if current is None:
        raise UnsupportedError(
            "DenseToSparse needs a target: pass target='llvm'|'cuda' or run it inside "
            "`with tvm.target.Target(...)`"
        )
    return resolve_target(current)


@tvm.transform.module_pass(opt_level=0, name="DenseToSparse")
class DenseToSparse:
    """Rewrite constant-weight dense layers into block-sparse ``sparse_dense`` where it pays.

    Parameters
    ----------
    target : str, dict or Target, optional
        Target the kernels are scheduled for; defaults to ``tvm.target.Target.current()``.
    sparsity_threshold : float
        Minimum element-wise zero fraction of a weight, in ``[0, 1]``.
    block_size : "auto" or tuple of int
        ``"auto"`` picks a block size per layer from ``candidates`` by the cost rule; a fixed
        ``(bs_r, bs_c)`` is applied to every layer it divides.
    candidates : tuple of (int, int)
        Block sizes tried by ``"auto"``.
    params : CostParams, optional
        Overrides the target's cost-rule constants
        (:data:`tvm_sparse_rnn.transform.block_size.COST_PARAMS`).
    config : object, optional
        Schedule configuration forwarded to :func:`~tvm_sparse_rnn.sparse_dense.emit_sparse_dense`.
    fold_constants : bool
        Run ``relax.transform.FoldConstant`` first (folds ``weight * mask``, ``permute_dims``).

    Notes
    -----
    After the pass runs, ``layers`` holds one :class:`DenseLayer` per matched layer.
    """

    def __init__(
        self,
        target: str | dict | Target | None = None,
        sparsity_threshold: float = 0.5,
        block_size: str | tuple[int, int] = "auto",
        candidates: tuple[tuple[int, int], ...] = DEFAULT_CANDIDATES,
        params: CostParams | None = None,
        config: object = None,
        fold_constants: bool = True,
    ) -> None:
        self.target = target
        self.sparsity_threshold = sparsity_threshold
        self.block_size = block_size
        self.candidates = candidates
        self.params = params
        self.config = config
        self.fold_constants = fold_constants
        self.layers: list[DenseLayer] = []

    def transform_module(self, mod: tvm.IRModule, ctx: tvm.transform.PassContext) -> tvm.IRModule:
        """Fold constants, match dense layers, rewrite the sparse ones, drop dead code."""
        mutator = self._mutator(mod, rewrite=True)
        mod = mutator.run()
        self.layers = mutator.layers
        n_sparse = sum(layer.plan.sparse for layer in self.layers)
        logger.info("DenseToSparse: %d of %d dense layers made sparse", n_sparse, len(self.layers))
        return relax.transform.DeadCodeElimination()(mod)

    def analyze(self, mod: tvm.IRModule) -> list[DenseLayer]:
        """Return the per-layer decisions the pass would take on ``mod``, without rewriting."""
        mutator = self._mutator(mod, rewrite=False)
        mutator.run()
        return mutator.layers

    def _mutator(self, mod: tvm.IRModule, rewrite: bool) -> _DenseToSparseMutator:
        if self.fold_constants:
            mod = relax.transform.FoldConstant()(mod)
        return _DenseToSparseMutator(mod, self, _current_target(self.target), rewrite)
