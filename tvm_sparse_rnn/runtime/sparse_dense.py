"""Public entry points of the block-sparse ``sparse_dense`` operator ``Y = X @ W.T``.

* :func:`sparse_dense_func`: the scheduled PrimFunc for a weight, a batch size and a target;
* :func:`emit_sparse_dense`: emit it into a Relax program (``call_tir`` with the BSR arrays as
  constants);
* :func:`build_sparse_dense`: compile it into a callable :class:`SparseDenseKernel` (no Relax).

Examples
--------
>>> import numpy as np
>>> from tvm_sparse_rnn.testing import random_bsr
>>> w = random_bsr(64, 32, (4, 4), density=0.25)
>>> kernel = build_sparse_dense(w, m=3, target="llvm")
>>> x = np.ones((3, 32), "float32")
>>> np.allclose(kernel(x), x @ w.toarray().T, atol=1e-4)
True
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import tvm
from tvm import relax, tirx
from tvm.target import Target

from ..bsr import BSRWeight
from ..errors import UnsupportedError
from ..ops.sparse_dense import sparse_dense_prim_func
from ..kernels.cuda import sparse_dense as sparse_dense_cuda
from ..kernels.x86 import sparse_dense as sparse_dense_x86
from ..target import is_cuda, resolve_target
from ..tuning.lookup import resolve_config
from ..tuning.task import STRUCTURE_ATTR, TuneTask

logger = logging.getLogger(__name__)

#: PrimFunc attribute ``op_pattern`` value kOpaque: keeps Relax's FuseOps away from the kernel.
OP_PATTERN_OPAQUE = 8


def default_config(target: Target) -> Any:
    """The schedule's hand-picked knobs for ``target`` (a resolved target).

    Returns
    -------
    CudaConfig or X86Config
    """
    return sparse_dense_cuda.CudaConfig() if is_cuda(target) else sparse_dense_x86.X86Config()


def tune_task(weight: BSRWeight, m: int | tirx.Var, target: str | dict | Target) -> TuneTask:
    """The kernel of ``weight`` for batch ``m`` on ``target`` as a MetaSchedule tuning task.

    Its workload carries ``weight.structure_key()``, so two weights of one shape but different
    sparsity patterns are tuned and looked up separately; it is measured with the real
    ``data``/``indices``/``indptr``.
    """
    target = resolve_target(target)
    schedule = sparse_dense_cuda if is_cuda(target) else sparse_dense_x86
    config_cls = sparse_dense_cuda.CudaConfig if is_cuda(target) else sparse_dense_x86.X86Config
    schedule_fn = (
        sparse_dense_cuda.schedule_sparse_dense_cuda
        if is_cuda(target)
        else sparse_dense_x86.schedule_sparse_dense_x86
    )
    n, k = weight.shape
    bs_r, bs_c = weight.block_size
    data, indices, indptr = weight.kernel_arrays()
    key = weight.structure_key()
    m_desc = m if isinstance(m, int) else "dyn"
    return TuneTask(
        name=f"sparse_dense m={m_desc} {n}x{k} bs={bs_r}x{bs_c} {weight.dtype} "
        f"{weight.stored_fraction:.0%} [{key[:8]}]",
        op="sparse_dense",
        func=unscheduled_func(weight, m, target).with_attr(STRUCTURE_ATTR, key),
        config_cls=config_cls,
        choices=schedule.KNOB_CHOICES,
        schedule=schedule_fn,
        fixed_args={1: data, 2: indices, 3: indptr},
        default_config=default_config(target),
        meta={
            "m": m_desc,
            "n": n,
            "k": k,
            "block_size": [bs_r, bs_c],
            "dtype": weight.dtype,
            "density": round(weight.stored_fraction, 4),
            "structure_key": key,
        },
    )


def unscheduled_func(
    weight: BSRWeight, m: int | tirx.Var, target: str | dict | Target
) -> tirx.PrimFunc:
    """The unscheduled PrimFunc the schedule of ``target`` expects (compute variant included).

    Parameters
    ----------
    weight : BSRWeight
        ``W[N, K]``; an all-zero weight gets one zero block (:meth:`BSRWeight.kernel_arrays`).
    m : int or tirx.Var
        Rows of ``X``.
    target : str, dict or Target
        ``"llvm"``, ``"cuda"`` or a TVM target.
    """
    target = resolve_target(target)
    if isinstance(m, int) and m < 1:
        raise UnsupportedError(f"sparse_dense: batch m must be >= 1, got {m}")
    n, k = weight.shape
    nnzb = weight.kernel_arrays()[0].shape[0]
    if is_cuda(target):
        lanes, replicate = sparse_dense_cuda.LANES, False
    else:
        lanes, replicate = sparse_dense_x86.LANES, sparse_dense_x86.replicate_x(*weight.block_size)
    return sparse_dense_prim_func(m, n, k, weight.block_size, nnzb, weight.dtype, lanes, replicate)


def sparse_dense_func(
    weight: BSRWeight,
    m: int | tirx.Var,
    target: str | dict | Target,
    config: Any = None,
) -> tirx.PrimFunc:
    """The scheduled PrimFunc ``main(X[m, K], W_data, W_indices, W_indptr, Y[m, N])``.

    Parameters
    ----------
    weight : BSRWeight
        The weight ``W[N, K]``; only its shape, block size, stored-block count and dtype enter
        the kernel (the arrays are arguments).
    m : int or tirx.Var
        Rows of ``X``; a ``tirx.Var`` gives a kernel for any batch.
    target : str, dict or Target
        ``"llvm"``, ``"cuda"`` or a TVM target.
    config : X86Config or CudaConfig, optional
        Schedule knobs; ``None`` uses :func:`resolve_config`.

    Returns
    -------
    tirx.PrimFunc
        With attributes ``tirx.is_scheduled=True`` and ``op_pattern=8`` (opaque) and without
        ``global_symbol`` (the caller names it).
    """
    target = resolve_target(target)
    task = tune_task(weight, m, target)
    config = config or resolve_config(task, target)
    logger.debug("sparse_dense %s m=%s: %s", weight, m, config)
    return (
        task.scheduled(config)
        .with_attr("op_pattern", OP_PATTERN_OPAQUE)
        .without_attr("global_symbol")
    )


def emit_sparse_dense(
    bb: relax.BlockBuilder,
    x: relax.Expr,
    weight: BSRWeight,
    target: str | dict | Target,
    config: Any = None,
) -> relax.Expr:
    """Emit ``x @ W.T`` as a ``call_tir`` of the scheduled kernel.

    Parameters
    ----------
    bb : relax.BlockBuilder
        Builder inside a dataflow block or function.
    x : relax.Expr
        ``[M, K]`` tensor (``M`` static or symbolic) of ``weight.dtype``.
    weight : BSRWeight
        ``W[N, K]``; its arrays become Relax constants.
    target : str, dict or Target
        Target the kernel is scheduled for.
    config : X86Config or CudaConfig, optional
        Schedule knobs; ``None`` uses :func:`resolve_config`.

    Returns
    -------
    relax.Expr
        The emitted ``[M, N]`` result, in ``x``'s dtype.

    Raises
    ------
    UnsupportedError
        If ``x`` is not 2-D, its last dimension is not ``K`` or its dtype is not the weight's.
    """
    ty = x.ty
    n, k = weight.shape
    if not isinstance(ty, relax.TensorType) or ty.ndim != 2 or ty.shape is None:
        raise UnsupportedError(f"sparse_dense: input x must be a 2-D tensor [M, {k}], got {ty}")
    m, x_k = ty.shape.values
    if not isinstance(x_k, tirx.IntImm) or int(x_k) != k:
        got = int(x_k) if isinstance(x_k, tirx.IntImm) else x_k
        raise UnsupportedError(f"sparse_dense: input x has K = {got}, the weight expects K = {k}")
    if ty.dtype != weight.dtype:
        raise UnsupportedError(
            f"sparse_dense: input x has dtype {ty.dtype}, the weight has dtype {weight.dtype}"
        )
    m_arg: int | tirx.Var = int(m) if isinstance(m, tirx.IntImm) else tirx.Var("m", "int64")
    func = sparse_dense_func(weight, m_arg, target, config)
    gv = bb.add_func(func, "sparse_dense_bsr")
    data, indices, indptr = weight.kernel_arrays()
    args = [x, relax.const(data), relax.const(indices), relax.const(indptr)]
    return bb.emit(relax.call_tir(gv, args, relax.TensorType((m, n), weight.dtype)))


class SparseDenseKernel:
    """A compiled ``sparse_dense`` for one weight and batch size; the weight lives on the device.

    Create it with :func:`build_sparse_dense`.

    Attributes
    ----------
    weight : BSRWeight
        The weight.
    m : int
        Rows of ``X`` the kernel takes.
    target : Target
        Target it was built for.
    config : object
        Schedule knobs it was built with.
    """

    def __init__(self, weight: BSRWeight, m: int, target: Target, config: Any) -> None:
        self.weight = weight
        self.m = m
        self.target = target
        self.config = config
        func = sparse_dense_func(weight, m, target, config).with_attr("global_symbol", "main")
        self.executable = tvm.compile(tvm.IRModule({"main": func}), target=target)
        self.device = tvm.cuda(0) if is_cuda(target) else tvm.cpu(0)
        self._weight_args = [tvm.runtime.tensor(a, self.device) for a in weight.kernel_arrays()]
        self._out = tvm.runtime.tensor(np.zeros((m, weight.shape[0]), weight.dtype), self.device)

    @property
    def source(self) -> str | None:
        """The generated CUDA C++ (``None`` for LLVM targets)."""
        for mod in self.executable.mod.imports:
            if mod.kind == "cuda":
                return mod.inspect_source()
        return None

    def _check(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        expected = (self.m, self.weight.shape[1])
        if x.shape != expected:
            raise UnsupportedError(
                f"sparse_dense: input x must have shape {expected}, got {x.shape}"
            )
        if x.dtype.name != self.weight.dtype:
            raise UnsupportedError(
                f"sparse_dense: input x must have dtype {self.weight.dtype}, got {x.dtype.name}"
            )
        return np.ascontiguousarray(x)

    def device_args(self, x: np.ndarray) -> list:
        """``[X, W_data, W_indices, W_indptr, Y]`` on the device, for ``self.executable``
        (``x`` is validated and uploaded; the weight and ``Y`` are the kernel's own)."""
        x_dev = tvm.runtime.tensor(self._check(x), self.device)
        return [x_dev, *self._weight_args, self._out]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Return ``x @ W.T``.

        Parameters
        ----------
        x : numpy.ndarray
            ``(m, K)`` of the weight's dtype.

        Returns
        -------
        numpy.ndarray
            ``(m, N)`` of the weight's dtype.
        """
        self.executable(*self.device_args(x))
        return self._out.numpy()

    def time(self, x: np.ndarray, number: int = 100, repeat: int = 5) -> list[float]:
        """Seconds per call, one mean over ``number`` calls per repeat (``time_evaluator``)."""
        timer = self.executable.mod.time_evaluator(
            "main", self.device, number=number, repeat=repeat
        )
        return list(timer(*self.device_args(x)).results)


def build_sparse_dense(
    weight: BSRWeight, m: int, target: str | dict | Target = "llvm", config: Any = None
) -> SparseDenseKernel:
    """Compile ``sparse_dense`` for ``weight`` and batch ``m``.

    Parameters
    ----------
    weight : BSRWeight
        ``W[N, K]``, uploaded once.
    m : int
        Rows of ``X``.
    target : str, dict or Target
        ``"llvm"`` (this CPU), ``"cuda"`` (H100) or a TVM target.
    config : X86Config or CudaConfig, optional
        Schedule knobs; ``None`` uses :func:`resolve_config`.

    Returns
    -------
    SparseDenseKernel
    """
    return SparseDenseKernel(weight, int(m), resolve_target(target), config)
