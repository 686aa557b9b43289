"""Host-side entry points of the block-sparse ``sparse_dense`` operator ``Y = X @ W.T``.

* :func:`sparse_dense_func`: the scheduled PrimFunc for a weight, a batch size and a target,
  with the config of the tuning lookup unless one is given;
* :func:`build_sparse_dense`: compile it into a callable :class:`SparseDenseKernel` (no Relax)
  running the kernel the linear dispatch would pick: on CUDA float16 from 16 rows on the
  tensor-core kernel (:mod:`tvm_sparse_rnn.kernels.cuda.tensor_core`), an unstructured weight
  with few rows the CSR-vector kernel (:mod:`tvm_sparse_rnn.kernels.cuda.csr_vector`); on x86
  float32 where the cost rule sends the layer there (unstructured weights; block-pruned ones
  from 16 rows) the CSR kernel over ``X^T``
  (:mod:`tvm_sparse_rnn.transform.dispatch.linear_csr_x86`: ``X`` is transposed on the way in,
  ``Y^T`` on the way out); else the block-sparse one.

Inside a Relax program use :func:`tvm_sparse_rnn.transform.dispatch.emit_sparse_dense`.

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
from tvm import tirx
from tvm.target import Target

from ..bsr import BSRWeight
from ..cpu_threads import pool_threads
from ..errors import UnsupportedError
from ..kernels.cuda.csr_vector.kernel import (
    CsrVectorConfig,
    check_supported,
    make_csr_vector_kernel,
)
from ..kernels.cuda.csr_vector.packing import pack_csr_vector
from ..kernels.cuda.tensor_core.kernel import (
    TensorCoreConfig,
    default_config,
    make_tensor_core_kernel,
    padded_rows,
)
from ..kernels.cuda.tensor_core.packing import pack_tiled
from ..kernels.sparse_dense import SparseDenseLayout
from ..kernels.sparse_dense import sparse_dense_func as _scheduled
from ..kernels.x86.csr_tiling import csr_tiling
from ..target import device_limits, is_cuda, resolve_target, shared_memory_per_block
from ..transform.dispatch.cost_model import (
    cost_params,
    plan_layer,
    uses_csr_vector,
    uses_tensor_cores,
)
from ..transform.dispatch.linear_csr_x86 import CsrSpmmConfig, CsrSpmmLinear
from ..tuning.sparse_dense_space import sparse_dense_config
from .host_copy import copy_into, to_numpy

logger = logging.getLogger(__name__)


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
        Schedule knobs; ``None``: tuned record, else shipped config, else default.

    Returns
    -------
    tirx.PrimFunc
        With attributes ``tirx.is_scheduled=True`` and ``op_pattern=8`` (opaque) and without
        ``global_symbol`` (the caller names it).
    """
    target = resolve_target(target)
    weight = BSRWeight.coerce(weight)
    config = config or sparse_dense_config(weight, m, target)
    logger.debug("sparse_dense %s m=%s: %s", weight, m, config)
    return _scheduled(SparseDenseLayout.of(weight), m, target, config)


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
        n, k = weight.shape
        self._csr: CsrSpmmLinear | None = None
        if isinstance(config, TensorCoreConfig):
            packed = pack_tiled(weight.toarray(), config.row_frags, config.warps)
            self._padded = (padded_rows(m, config.m_tile), packed.layout.padded_k)
            limit = shared_memory_per_block(target)
            func = make_tensor_core_kernel(packed.layout, self._padded[0], config.m_tile, limit)
            arrays = packed.arrays()
        elif isinstance(config, CsrVectorConfig):
            packed = pack_csr_vector(weight.to_scipy(), weight.dtype)
            self._padded = (m, k)
            limits = device_limits(target)
            func = make_csr_vector_kernel(
                packed.layout, m, config, limits.num_sms, limits.smem_per_block
            )
            arrays = packed.arrays()
        elif isinstance(config, CsrSpmmConfig):
            self._csr = CsrSpmmLinear.plan(weight.toarray(), m, csr_tiling(target), pool_threads())
            self._padded = (m, k)
            func = self._csr.prim_func()
            arrays = [*self._csr.packed.arrays(), np.zeros(n, weight.dtype)]  # with a zero bias
        else:
            self._padded = (m, k)
            func = sparse_dense_func(weight, m, target, config)
            arrays = weight.kernel_arrays()
        funcs = {"main": func}
        if self._csr is not None:  # the CSR kernel reads X^T (whole tiles) and writes Y^T
            funcs["x_layout"], funcs["y_layout"] = self._csr.layout_funcs(target)
        funcs = {name: f.with_attr("global_symbol", name) for name, f in funcs.items()}
        self.executable = tvm.compile(tvm.IRModule(funcs), target=target)
        self.device = tvm.cuda(0) if is_cuda(target) else tvm.cpu(0)
        self._weight_args = [tvm.runtime.tensor(a, self.device) for a in arrays]
        self._x = tvm.runtime.empty(self._padded, weight.dtype, self.device)
        if self._csr is None:
            self._kernel_x = self._x
            out_shape = (self._padded[0], n)
        else:
            self._x_layout = self.executable["x_layout"]
            self._y_layout = self.executable["y_layout"]
            xt_shape = (k, self._csr.padded_rows)
            self._kernel_x = tvm.runtime.empty(xt_shape, weight.dtype, self.device)
            self._y = tvm.runtime.empty((m, n), weight.dtype, self.device)
            out_shape = (1, n, m)
        self._out = tvm.runtime.tensor(np.zeros(out_shape, weight.dtype), self.device)

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
        if x.shape != self._padded:  # the tensor-core kernel's whole tiles
            x = np.pad(x, [(0, p - s) for p, s in zip(self._padded, x.shape, strict=True)])
        return np.ascontiguousarray(x)

    def device_args(self, x: np.ndarray) -> list:
        """``[X, <weight arrays>, Y]`` on the device, for ``self.executable`` (``x`` is
        validated, zero-padded to the kernel's tiles and copied into the kernel's ``X``; the
        weight and ``Y`` are the kernel's own)."""
        copy_into(self._x, self._check(x))
        if self._csr is not None:
            self._x_layout(self._x, self._kernel_x)
        return [self._kernel_x, *self._weight_args, self._out]

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
        if self._csr is None:
            return to_numpy(self._out)[: self.m]
        self._y_layout(self._out, self._y)
        return to_numpy(self._y)

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
    weight : BSRWeight, scipy sparse, torch sparse tensor or numpy.ndarray
        ``W[N, K]`` (converted by :meth:`BSRWeight.coerce`), uploaded once.
    m : int
        Rows of ``X``.
    target : str, dict or Target
        ``"llvm"`` (this CPU), ``"cuda"`` (this machine's GPU, else the H200) or a TVM target.
    config : X86Config, CudaConfig, TensorCoreConfig, CsrVectorConfig or CsrSpmmConfig, optional
        Knobs (the config's class picks the kernel); ``None``: the kernel the linear dispatch
        picks (:func:`dispatched_config`).

    Returns
    -------
    SparseDenseKernel
    """
    target = resolve_target(target)
    weight = BSRWeight.coerce(weight)
    config = config or dispatched_config(weight, int(m), target)
    return SparseDenseKernel(weight, int(m), target, config)


def dispatched_config(weight: BSRWeight, m: int, target: Target) -> Any:
    """The config of the kernel the linear dispatch runs for ``weight`` and ``m`` rows on
    ``target``: the tensor-core kernel's default where the cost rule sends the layer to tensor
    cores (float16, CUDA, ``m >= 16``), the x86 CSR kernel where it sends a float32 layer there
    (:attr:`~tvm_sparse_rnn.transform.dispatch.cost_model.LayerPlan.csr`), the CSR-vector
    kernel's on CUDA where :func:`~tvm_sparse_rnn.transform.dispatch.cost_model.uses_csr_vector`
    sends the layer and the kernel takes it, else the block-sparse kernel's tuned record,
    shipped config or default."""
    if uses_tensor_cores(cost_params(target.kind.name), m, weight.dtype):
        return default_config(m)
    if not is_cuda(target) and weight.dtype == "float32":
        plan = plan_layer(weight.toarray(), target.kind.name, rows=m)
        if plan.csr:
            return CsrSpmmConfig()
    if is_cuda(target) and uses_csr_vector(weight.block_size, m, weight.dtype):
        try:
            check_supported(weight.shape[1], weight.dtype, m, shared_memory_per_block(target))
        except UnsupportedError as err:
            logger.debug("sparse_dense m=%d: no CSR-vector kernel (%s)", m, err)
        else:
            return CsrVectorConfig()
    return sparse_dense_config(weight, m, target)
