"""Public entry of the sparse persistent RNN on the GPU.

``h_t = f(R h_{t-1} + u_t)``, ``u_t = W x_t + b``, ``f`` in {tanh, relu}, for ``t = 1 .. T``::

    rnn = build_persistent_rnn(R, batch=4, activation="tanh", barrier="flag")
    hs = rnn(U=U, h0=h0)            # U (T, B, H) float32 -> hs (T, B, H): h_1 .. h_T
    hs = rnn(X=X, W=W, b=b, h0=h0)  # u_t = X[t] @ W.T + b, one GEMM for all t before the loop

The geometry comes from :func:`~tvm_sparse_rnn.rnn.planner.plan_persistent`; when ``R`` does not
fit in registers the same callable runs the per-step fallback (one launch per step). For Relax,
:func:`persistent_prim_func` returns the PrimFunc and the packed constant arrays to pass to
``call_tir``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tvm
from tvm import tirx

from ..errors import SparseRNNError, UnsupportedError
from ..target import is_cuda, resolve_target
from . import cuda_pipeline
from .kernel_cuda import make_persistent_kernel, make_step_kernel
from .packing import PackedWeights, pack
from .planner import H100, DeviceLimits, PersistentPlan, default_knobs, plan_persistent

logger = logging.getLogger(__name__)


def make_prim_func(
    plan: PersistentPlan, activation: str, barrier: str, vector: bool = True
) -> tirx.PrimFunc:
    """The kernel for ``plan``: persistent, or the per-step fallback for ``per_step`` plans."""
    if plan.kind == "persistent":
        return make_persistent_kernel(plan, activation, barrier, vector)
    return make_step_kernel(plan, activation)


def persistent_prim_func(
    R: object,
    batch: int,
    activation: str = "tanh",
    barrier: str = "auto",
    *,
    order: str = "guided",
    vector: bool | None = None,
    plan: PersistentPlan | None = None,
    device: DeviceLimits = H100,
) -> tuple[tirx.PrimFunc, dict[str, np.ndarray], PersistentPlan]:
    """The scheduled PrimFunc and its packed constants, for emission with Relax ``call_tir``.

    Parameters are those of :func:`build_persistent_rnn`.

    Returns
    -------
    tuple
        ``(func, {"vals": ..., "idx": ...}, plan)``; ``func`` takes
        ``(vals, idx, U (T, Hk, Bk), h0 (Hk, Bk), out (T, Hk, Bk), status (1,) int32)`` (the
        per-step fallback adds the step ``t``: call it for every step), with ``Hk`` and ``Bk``
        the plan's padded hidden size and batch; pad ``U``/``h0`` with zeros.
    """
    plan, barrier, packed = _plan_and_pack(R, batch, barrier, order, vector, plan, device)
    func = make_prim_func(plan, activation, barrier, packed.vector)
    return func, {"vals": packed.vals, "idx": packed.idx}, plan


def _plan_and_pack(
    R: object,
    batch: int,
    barrier: str,
    order: str,
    vector: bool | None,
    plan: PersistentPlan | None,
    device: DeviceLimits,
) -> tuple[PersistentPlan, str, PackedWeights]:
    """Plan (unless given), resolve the ``"auto"`` knobs and pack ``R``."""
    plan = plan or plan_persistent(R, batch, device=device)
    auto_barrier, auto_vector = default_knobs(plan)
    barrier = auto_barrier if barrier == "auto" else barrier
    vector = auto_vector if vector is None else vector
    packed = pack(R, plan, order if plan.kind == "persistent" else "naive", vector)
    return plan, barrier, packed


def kernel_key(plan: PersistentPlan, activation: str, barrier: str, vector: bool) -> str:
    """Stable name of a kernel build (the source depends only on these)."""
    text = repr((plan, activation, barrier, vector))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


_MODULES: dict[tuple, tvm.runtime.Module] = {}


def build_kernel(
    plan: PersistentPlan,
    activation: str,
    barrier: str,
    vector: bool = True,
    target: str | tvm.target.Target = "cuda",
    cache_dir: str | os.PathLike | None = None,
) -> tvm.runtime.Module:
    """Build (or load from ``cache_dir``) the runtime module of one kernel; memoized in-process."""
    tgt = resolve_target(target)
    if not is_cuda(tgt):
        raise UnsupportedError(
            f"the persistent RNN kernel needs a cuda target, got {tgt.kind.name}"
        )
    key = (plan, activation, barrier, vector, str(tgt))
    if key in _MODULES:
        return _MODULES[key]
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"sprnn_{kernel_key(plan, activation, barrier, vector)}.so"
        if path.exists():
            _MODULES[key] = tvm.runtime.load_module(str(path))
            return _MODULES[key]
    func = make_prim_func(plan, activation, barrier, vector)
    with tgt:
        mod = tirx.build(
            tvm.IRModule({"main": func}), target=tgt, pipeline=cuda_pipeline.register()
        )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            mod.export_library(str(path))
        except Exception as e:
            logger.warning("build cache disabled, export_library failed: %s", e)
    _MODULES[key] = mod
    return mod


def cuda_source(mod: tvm.runtime.Module) -> str:
    """CUDA source of a module built by :func:`build_kernel`."""
    for m in [mod, *mod.imports]:
        if m.kind == "cuda":
            return m.inspect_source()
        for sub in m.imports:
            if sub.kind == "cuda":
                return sub.inspect_source()
    raise ValueError("module has no CUDA kernel")


def _prebuild_one(args: tuple) -> str:
    plan, activation, barrier, vector, cache_dir = args
    build_kernel(plan, activation, barrier, vector, "cuda", cache_dir)
    return kernel_key(plan, activation, barrier, vector)


def prebuild(
    specs: list[tuple[PersistentPlan, str, str, bool]],
    cache_dir: str | os.PathLike,
    workers: int | None = None,
) -> None:
    """Compile many kernels in parallel processes into ``cache_dir`` (exported libraries).

    Parameters
    ----------
    specs : list of tuple
        ``(plan, activation, barrier, vector)`` per kernel.
    cache_dir : path
        Where the ``.so`` files go; :func:`build_kernel` with the same ``cache_dir`` loads them.
    workers : int, optional
        Processes (default: CPU count).
    """
    import multiprocessing as mp

    todo = list(dict.fromkeys((*s, str(cache_dir)) for s in specs))
    with mp.get_context("spawn").Pool(workers or os.cpu_count()) as pool:
        for key in pool.imap_unordered(_prebuild_one, todo):
            logger.debug("prebuilt %s", key)


@dataclass
class PersistentRNN:
    """A built persistent RNN for one ``R``; call it with numpy arrays.

    Attributes
    ----------
    plan : PersistentPlan
    packed : PackedWeights
    activation, barrier : str
    module : tvm.runtime.Module
        The compiled kernel (``"main"``).
    device : tvm.runtime.Device
    """

    plan: PersistentPlan
    packed: PackedWeights
    activation: str
    barrier: str
    module: tvm.runtime.Module
    device: tvm.runtime.Device

    def __post_init__(self) -> None:
        self._vals = tvm.runtime.tensor(self.packed.vals, self.device)
        self._idx = tvm.runtime.tensor(self.packed.idx, self.device)
        self._status = tvm.runtime.tensor(np.zeros(1, np.int32), self.device)

    def kernel_args(self, U: tvm.runtime.Tensor, h0: tvm.runtime.Tensor, out: tvm.runtime.Tensor):
        """Arguments of ``module["main"]`` for device tensors in the kernel layout."""
        return (self._vals, self._idx, U, h0, out, self._status)

    def run_chunk(self, U: np.ndarray, h0: np.ndarray) -> np.ndarray:
        """One launch on kernel-layout arrays ``U (T, Hk, Bk)``, ``h0 (Hk, Bk)`` -> ``out``."""
        steps = U.shape[0]
        u = tvm.runtime.tensor(np.ascontiguousarray(U, np.float32), self.device)
        h = tvm.runtime.tensor(np.ascontiguousarray(h0, np.float32), self.device)
        out = tvm.runtime.tensor(np.zeros(U.shape, np.float32), self.device)
        args = self.kernel_args(u, h, out)
        if self.plan.kind == "persistent":
            self.module["main"](*args)
        else:
            for t in range(steps):
                self.module["main"](*args, t)
        if int(self._status.numpy()[0]) != 0:
            raise SparseRNNError(
                "persistent RNN: a flag-barrier wait timed out (CTAs not co-resident?)"
            )
        return out.numpy()

    def __call__(
        self,
        U: np.ndarray | None = None,
        h0: np.ndarray | None = None,
        *,
        X: np.ndarray | None = None,
        W: np.ndarray | None = None,
        b: np.ndarray | None = None,
    ) -> np.ndarray:
        """Run the recurrence.

        Parameters
        ----------
        U : numpy.ndarray, optional
            ``(T, B, H)`` float32 input projections ``u_t``.
        h0 : numpy.ndarray, optional
            ``(B, H)`` initial state (zeros by default).
        X, W, b : numpy.ndarray, optional
            ``X (T, B, I)``, ``W (H, I)``, ``b (H,)``: ``u_t = X[t] @ W.T + b`` as one GEMM over
            all ``T * B`` rows before the loop (instead of ``U``).

        Returns
        -------
        numpy.ndarray
            ``(T, B, H)`` float32: ``h_1 .. h_T``.
        """
        p = self.plan
        if U is None:
            if X is None or W is None:
                raise ValueError("give U, or X and W")
            steps, batch = X.shape[:2]
            U = X.reshape(steps * batch, -1).astype(np.float64) @ np.asarray(W, np.float64).T
            if b is not None:
                U = U + np.asarray(b, np.float64)
            U = U.reshape(steps, batch, -1)
        U = np.asarray(U, np.float32)
        if U.ndim != 3 or U.shape[1:] != (p.batch, p.hidden):
            raise ValueError(f"U must be (T, {p.batch}, {p.hidden}), got {U.shape}")
        h0 = np.zeros((p.batch, p.hidden), np.float32) if h0 is None else np.asarray(h0)
        if h0.shape != (p.batch, p.hidden):
            raise ValueError(f"h0 must be ({p.batch}, {p.hidden}), got {h0.shape}")
        steps = U.shape[0]
        out = np.empty((steps, p.batch, p.hidden), np.float32)
        bk = p.batch_kernel
        for c in range(p.num_batch_chunks):
            lo, hi = c * bk, min(p.batch, (c + 1) * bk)
            uk = np.zeros((steps, p.hidden_padded, bk), np.float32)
            uk[:, : p.hidden, : hi - lo] = U[:, lo:hi].transpose(0, 2, 1)
            hk = np.zeros((p.hidden_padded, bk), np.float32)
            hk[: p.hidden, : hi - lo] = h0[lo:hi].T
            res = self.run_chunk(uk, hk)
            out[:, lo:hi] = res[:, : p.hidden, : hi - lo].transpose(0, 2, 1)
        return out


def build_persistent_rnn(
    R: object,
    batch: int,
    activation: str = "tanh",
    barrier: str = "auto",
    *,
    order: str = "guided",
    vector: bool | None = None,
    plan: PersistentPlan | None = None,
    target: str | tvm.target.Target = "cuda",
    device_limits: DeviceLimits = H100,
    cache_dir: str | os.PathLike | None = None,
) -> PersistentRNN:
    """Plan, pack, build and load the persistent RNN for ``R`` on the GPU.

    Parameters
    ----------
    R : numpy.ndarray or scipy sparse
        ``(H, H)`` recurrent weight.
    batch : int
        ``B``.
    activation : str
        ``"tanh"`` or ``"relu"``.
    barrier : str
        ``"flag"`` (data-embedded), ``"grid"`` (cooperative grid sync) or ``"auto"`` (the one
        that measured faster for this size, :func:`~tvm_sparse_rnn.rnn.planner.default_knobs`).
    order : str
        ``"guided"`` (bank-aware, default) or ``"naive"`` nonzero order.
    vector : bool, optional
        Vector (LDS.128) loads of ``h``; default: for ``B <= 4`` only.
    plan : PersistentPlan, optional
        Geometry (default: :func:`plan_persistent`).
    target : str or Target
        A cuda target (default: the H100, sm_90a).
    device_limits : DeviceLimits
        Used by the planner.
    cache_dir : path, optional
        Build cache (see :func:`prebuild`).
    """
    plan, barrier, packed = _plan_and_pack(R, batch, barrier, order, vector, plan, device_limits)
    module = build_kernel(plan, activation, barrier, packed.vector, target, cache_dir)
    return PersistentRNN(plan, packed, activation, barrier, module, tvm.cuda(0))
