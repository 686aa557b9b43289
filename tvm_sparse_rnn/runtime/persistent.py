"""Public entry of the sparse persistent RNN, GRU and LSTM on the GPU.

Cells (ONNX semantics and gate orders, default activations): ``"tanh"`` / ``"relu"``
(``h_t = f(R h_{t-1} + u_t)``), ``"gru"`` (``linear_before_reset=1``, gates ``z, r, h``) and
``"lstm"`` (gates ``i, o, f, c``, no peepholes), with ``u_t = W x_t + b`` for all gates::

    rnn = build_persistent_rnn(R, batch=4, cell="lstm")   # R (4H, H), ONNX gate-major rows
    hs = rnn(U=U, h0=h0, c0=c0)     # U (T, B, 4H) -> hs (T, B, H): h_1 .. h_T
    res = rnn.run(X=X, W=W, b=b)    # u_t = X[t] @ W.T + b for all t before the loop; res.c = c_T

fp16 (``dtype="float16"``) keeps weights and ``h`` in half precision and accumulates in fp32.

The geometry comes from :func:`~tvm_sparse_rnn.kernels.cuda.persistent.planner.plan_persistent`
(or the tuning lookup); when ``R`` does not fit in registers the same callable runs the per-step
fallback (one launch per step). Inside a Relax model the dispatch pass emits the kernel
(:mod:`tvm_sparse_rnn.transform.dispatch.recurrent_persistent`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tvm
from tvm import tirx
from tvm.target import Target

from ..errors import SparseRNNError, UnsupportedError
from ..kernels.cuda.persistent import cooperative
from ..kernels.cuda.persistent.kernel import make_persistent_kernel, make_step_kernel
from ..kernels.cuda.persistent.layout import PairOrder
from ..kernels.cuda.persistent.packing import PackedWeights, pack, unit_major, unit_major_rows
from ..kernels.cuda.persistent.planner import (
    Barrier,
    PersistentPlan,
    default_knobs,
    plan_persistent,
)
from ..ops.cells import PersistentCell
from ..target import DeviceLimits, device_limits, is_cuda, resolve_target
from ..tuning.persistent_space import tuned_persistent_config

logger = logging.getLogger(__name__)


def make_prim_func(
    plan: PersistentPlan, cell: PersistentCell, barrier: Barrier, vector: bool = True
) -> tirx.PrimFunc:
    """The kernel for ``plan``: persistent, or the per-step fallback for ``per_step`` plans."""
    if plan.kind == "persistent":
        return make_persistent_kernel(plan, cell, barrier, vector)
    return make_step_kernel(plan, cell)


def _plan_and_pack(
    R: object,
    batch: int,
    cell: PersistentCell,
    dtype: str,
    barrier: Barrier | None,
    order: PairOrder | None,
    vector: bool | None,
    plan: PersistentPlan | None,
    device: DeviceLimits,
    target: Target,
) -> tuple[PersistentPlan, Barrier, PackedWeights]:
    """Plan, resolve the automatic knobs and pack ``R`` (ONNX gate-major).

    When every knob is automatic (``None``) they come from the tuning lookup (tuned record ->
    shipped config -> default, one log line:
    :func:`~tvm_sparse_rnn.tuning.persistent_space.tuned_persistent_config`); otherwise the
    given knobs are kept and the missing ones take the defaults.
    """
    if plan is None and barrier is None and vector is None and order is None:
        tuned = tuned_persistent_config(R, batch, cell, dtype, target, device)
        if tuned is not None:
            plan, barrier, vector, order = tuned[0]
    R = unit_major(R, cell.gates)
    plan = plan or plan_persistent(
        R, batch, dtype, device=device, gates=cell.gates, two_phase=cell.two_phase
    )
    if plan.directions != 1:
        raise ValueError(
            f"plan runs {plan.directions} directions per launch; PersistentRNN runs one "
            "(bidirectional layers run both at once through the ONNX / Relax path)"
        )
    auto_barrier, auto_vector = default_knobs(plan)
    barrier = auto_barrier if barrier is None else Barrier(barrier)
    vector = auto_vector if vector is None else vector
    order = PairOrder(order or PairOrder.GUIDED) if plan.kind == "persistent" else PairOrder.NAIVE
    return plan, barrier, pack(R, plan, order, vector)


def kernel_key(
    plan: PersistentPlan,
    cell: PersistentCell | str,
    barrier: Barrier | str,
    vector: bool,
    target: str | tvm.target.Target = "cuda",
) -> str:
    """Stable name of a kernel build (the binary depends only on these)."""
    text = repr(
        (
            plan,
            PersistentCell(cell).value,
            Barrier(barrier).value,
            vector,
            str(resolve_target(target)),
        )
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


_MODULES: dict[tuple, tvm.runtime.Module] = {}


def build_kernel(
    plan: PersistentPlan,
    cell: PersistentCell | str,
    barrier: Barrier | str,
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
    cell, barrier = PersistentCell(cell), Barrier(barrier)
    key = (plan, cell, barrier, vector, str(tgt))
    if key in _MODULES:
        return _MODULES[key]
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"sprnn_{kernel_key(plan, cell, barrier, vector, tgt)}.so"
        if path.exists():
            _MODULES[key] = tvm.runtime.load_module(str(path))
            return _MODULES[key]
    func = make_prim_func(plan, cell, barrier, vector)
    with tgt:
        mod = tirx.build(tvm.IRModule({"main": func}), target=tgt, pipeline=cooperative.register())
    if path is not None:
        _export_atomically(mod, path)
    _MODULES[key] = mod
    return mod


def _export_atomically(mod: tvm.runtime.Module, path: Path) -> None:
    """Write ``mod`` to ``path`` through a private temporary name, so that processes sharing a
    cache (pytest-xdist workers, :func:`prebuild`) never load a half-written library."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.so")
    try:
        mod.export_library(str(tmp))
        os.replace(tmp, path)
    except Exception as e:
        logger.warning("build cache disabled, export_library failed: %s", e)
        tmp.unlink(missing_ok=True)


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
    plan, cell, barrier, vector, cache_dir = args
    build_kernel(plan, cell, barrier, vector, "cuda", cache_dir)
    return kernel_key(plan, cell, barrier, vector)


def prebuild(
    specs: list[tuple[PersistentPlan, PersistentCell | str, Barrier | str, bool]],
    cache_dir: str | os.PathLike,
    workers: int | None = None,
) -> None:
    """Compile many kernels in parallel processes into ``cache_dir`` (exported libraries).

    Parameters
    ----------
    specs : list of tuple
        ``(plan, cell, barrier, vector)`` per kernel.
    cache_dir : path
        Where the ``.so`` files go; :func:`build_kernel` with the same ``cache_dir`` loads them.
    workers : int, optional
        Processes (default: the CPU count, at most one per kernel).
    """
    import multiprocessing as mp

    todo = list(
        dict.fromkeys(
            (plan, PersistentCell(cell), Barrier(barrier), vector, str(cache_dir))
            for plan, cell, barrier, vector in specs
        )
    )
    workers = workers or min(os.cpu_count() or 1, len(todo))
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(workers) as pool:
        for done, key in enumerate(pool.imap_unordered(_prebuild_one, todo), 1):
            logger.debug(
                "prebuilt %s (%d/%d, %.1f s)", key, done, len(todo), time.perf_counter() - t0
            )
    logger.info(
        "prebuilt %d kernels with %d processes in %.1f s",
        len(todo),
        workers,
        time.perf_counter() - t0,
    )


@dataclass(frozen=True)
class PersistentResult:
    """Outputs of :meth:`PersistentRNN.run`.

    Attributes
    ----------
    h : numpy.ndarray
        ``(T, B, H)``: ``h_1 .. h_T``.
    c : numpy.ndarray or None
        ``(B, H)``: the LSTM's ``c_T`` (``None`` for the other cells).
    """

    h: np.ndarray
    c: np.ndarray | None


@dataclass
class PersistentRNN:
    """A built persistent RNN/GRU/LSTM for one ``R``; call it with numpy arrays.

    Attributes
    ----------
    plan : PersistentPlan
    packed : PackedWeights
    cell : PersistentCell
        (a value such as ``"tanh"`` is accepted)
    barrier : Barrier
        (a value such as ``"flag"`` is accepted)
    module : tvm.runtime.Module
        The compiled kernel (``"main"``).
    device : tvm.runtime.Device
    """

    plan: PersistentPlan
    packed: PackedWeights
    cell: PersistentCell
    barrier: Barrier
    module: tvm.runtime.Module
    device: tvm.runtime.Device

    def __post_init__(self) -> None:
        self.cell, self.barrier = PersistentCell(self.cell), Barrier(self.barrier)
        p = self.plan
        self._vals = tvm.runtime.tensor(self.packed.vals, self.device)
        self._idx = tvm.runtime.tensor(self.packed.idx, self.device)
        self._spairs = tvm.runtime.tensor(self.packed.spairs, self.device)
        self._status = tvm.runtime.tensor(np.zeros(1, np.int32), self.device)
        self._c_out = tvm.runtime.tensor(
            np.zeros((p.streams * p.hidden_padded, p.batch_kernel), p.dtype), self.device
        )

    def kernel_args(
        self,
        U: tvm.runtime.Tensor,
        h0: tvm.runtime.Tensor,
        out: tvm.runtime.Tensor,
        c0: tvm.runtime.Tensor | None = None,
        rbias: tvm.runtime.Tensor | None = None,
    ) -> tuple:
        """Arguments of ``module["main"]`` for device tensors in the kernel layout.

        ``c0 (Hk, Bk)`` and ``rbias (Hk,)`` default to zeros.
        """
        if rbias is None:
            rbias = tvm.runtime.tensor(np.zeros(self.plan.hidden_padded, np.float32), self.device)
        if c0 is None:
            c0 = tvm.runtime.tensor(np.zeros(h0.shape, self.plan.dtype), self.device)
        return (
            *(self._vals, self._idx, self._spairs, U, h0, c0, rbias, out),
            *(self._c_out, self._status),
        )

    def run_chunk(
        self, U: np.ndarray, h0: np.ndarray, c0: np.ndarray, rbias: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """One launch on kernel-layout arrays -> ``(out (T, S*Hk, Bk), c_out (S*Hk, Bk))``.

        ``U (T, N, G*Hk)`` (:meth:`~tvm_sparse_rnn.kernels.cuda.persistent.planner.
        PersistentPlan.u_shape`: the launch's samples, unit-major columns), ``h0``, ``c0``
        ``(S*Hk, Bk)``, ``rbias (Hk,)``; ``S = plan.replicas`` batch slices stacked along the
        rows.
        """
        p = self.plan
        steps = U.shape[0]
        dev = self.device
        u = tvm.runtime.tensor(np.ascontiguousarray(U, p.dtype), dev)
        h = tvm.runtime.tensor(np.ascontiguousarray(h0, p.dtype), dev)
        c = tvm.runtime.tensor(np.ascontiguousarray(c0, p.dtype), dev)
        rb = tvm.runtime.tensor(np.ascontiguousarray(rbias, np.float32), dev)
        out = tvm.runtime.tensor(np.zeros(p.out_shape(steps), p.dtype), dev)
        args = self.kernel_args(u, h, out, c, rb)
        if p.kind == "persistent":
            self.module["main"](*args)
        else:
            for t in range(steps):
                self.module["main"](*args, t)
        if int(self._status.numpy()[0]) != 0:
            raise SparseRNNError(
                "persistent RNN: a flag-barrier wait timed out (CTAs not co-resident?)"
            )
        return out.numpy()[p.phases - 1 :: p.phases], self._c_out.numpy()

    def run(
        self,
        U: np.ndarray | None = None,
        h0: np.ndarray | None = None,
        c0: np.ndarray | None = None,
        *,
        X: np.ndarray | None = None,
        W: np.ndarray | None = None,
        b: np.ndarray | None = None,
        rbias: np.ndarray | None = None,
    ) -> PersistentResult:
        """Run the recurrence.

        Parameters
        ----------
        U : numpy.ndarray, optional
            ``(T, B, G*H)`` input projections ``u_t`` of all gates (ONNX gate-major columns).
        h0, c0 : numpy.ndarray, optional
            ``(B, H)`` initial states (zeros by default; ``c0`` for LSTM only).
        X, W, b : numpy.ndarray, optional
            ``X (T, B, I)``, ``W (G*H, I)``, ``b (G*H,)``: ``u_t = X[t] @ W.T + b`` as one GEMM
            over all ``T * B`` rows before the loop (instead of ``U``). For ONNX weights ``b``
            is ``Wb + Rb``, except ``Wb`` alone for the ``h`` gate of the ``"gru"`` cell.
        rbias : numpy.ndarray, optional
            ``(H,)``, ``"gru"`` cell (``linear_before_reset=1``): the ``h`` gate's recurrent
            bias ``Rb_h`` (zeros by default). ``"gru_lbr0"`` adds ``Rb_h`` outside the reset
            gate: it belongs in ``b``.

        Returns
        -------
        PersistentResult
        """
        p = self.plan
        G, H = p.gates, p.hidden
        if U is None:
            if X is None or W is None:
                raise ValueError("give U, or X and W")
            steps, batch = X.shape[:2]
            U = X.reshape(steps * batch, -1).astype(np.float64) @ np.asarray(W, np.float64).T
            if b is not None:
                U = U + np.asarray(b, np.float64)
            U = U.reshape(steps, batch, -1)
        U = np.asarray(U)
        if U.ndim != 3 or U.shape[1:] != (p.batch, G * H):
            raise ValueError(f"U must be (T, {p.batch}, {G * H}), got {U.shape}")
        states = {}
        for name, value in (("h0", h0), ("c0", c0)):
            states[name] = np.zeros((p.batch, H)) if value is None else np.asarray(value)
            if states[name].shape != (p.batch, H):
                raise ValueError(f"{name} must be ({p.batch}, {H}), got {states[name].shape}")
        if c0 is not None and G != 4:
            raise ValueError(f"c0 is an LSTM state; this is a {self.cell!r} cell")
        rb = np.zeros(p.hidden_padded, np.float32)
        if rbias is not None and self.cell is not PersistentCell.GRU and np.any(rbias):
            raise ValueError(
                f"rbias is the 'gru' cell's (linear_before_reset=1); the {self.cell.value!r} "
                "cell takes every recurrent bias in b"
            )
        if rbias is not None:
            if np.shape(rbias) != (H,):
                raise ValueError(f"rbias must be ({H},), got {np.shape(rbias)}")
            rb[:H] = rbias
        steps, bk, hp = U.shape[0], p.batch_kernel, p.hidden_padded
        reps, lb = p.replicas, p.launch_batch
        padded = lb * p.num_batch_chunks
        # (T, B, G*H) gate-major -> (T, B_pad, Hk*G) unit-major, zero padded
        Uk = np.zeros((steps, padded, hp * G), p.dtype)
        Uk[:, : p.batch] = unit_major_rows(U.transpose(2, 0, 1), G, hp).transpose(1, 2, 0)
        for name, value in states.items():
            states[name] = np.zeros((padded, hp), p.dtype)
            states[name][: p.batch, :H] = value
        out = np.empty((steps, padded, hp), p.dtype)
        c_last = np.empty((padded, hp), p.dtype)
        for ch in range(p.num_batch_chunks):
            launch = slice(ch * lb, (ch + 1) * lb)
            # the states of the launch's samples as replicas x Bk, stacked along the rows
            kern = {
                name: value[launch].reshape(reps, bk, hp).transpose(0, 2, 1).reshape(-1, bk)
                for name, value in states.items()
            }
            uk = Uk[:, launch].reshape(p.u_shape(steps))
            res, c_res = self.run_chunk(uk, kern["h0"], kern["c0"], rb)
            out[:, launch] = (
                res.reshape(steps, reps, hp, bk).transpose(0, 1, 3, 2).reshape(steps, lb, hp)
            )
            c_last[launch] = c_res.reshape(reps, hp, bk).transpose(0, 2, 1).reshape(lb, hp)
        c = c_last[: p.batch, :H] if G == 4 else None
        return PersistentResult(out[:, : p.batch, :H], c)

    def __call__(self, *args: object, **kwargs: object) -> np.ndarray:
        """:meth:`run`'s ``h`` (``(T, B, H)``)."""
        return self.run(*args, **kwargs).h


def build_persistent_rnn(
    R: object,
    batch: int,
    cell: PersistentCell | str = PersistentCell.TANH,
    barrier: Barrier | str = "auto",
    *,
    dtype: str = "float32",
    order: PairOrder | str | None = None,
    vector: bool | None = None,
    plan: PersistentPlan | None = None,
    target: str | Target = "cuda",
    limits: DeviceLimits | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> PersistentRNN:
    """Plan, pack, build and load the persistent RNN for ``R`` on the GPU.

    Parameters
    ----------
    R : numpy.ndarray or scipy sparse
        ``(G*H, H)`` recurrent weight of all gates in ONNX order (``G = 1`` RNN, 3 GRU, 4
        LSTM; gate ``g`` of unit ``j`` is row ``g*H + j``).
    batch : int
        ``B``.
    cell : PersistentCell or str
        ``"tanh"``, ``"relu"`` (vanilla RNN), ``"gru"`` (``linear_before_reset=1``),
        ``"gru_lbr0"`` (``linear_before_reset=0``) or ``"lstm"``.
    barrier : Barrier or str
        ``"flag"`` (data-embedded), ``"grid"`` (cooperative grid sync) or ``"auto"`` (the one
        that measured faster for this size: the tuning lookup, else
        :func:`~tvm_sparse_rnn.kernels.cuda.persistent.planner.default_knobs`).
    dtype : str
        ``"float32"`` or ``"float16"`` (weights, inputs, states; fp32 accumulation).
    order : PairOrder or str, optional
        ``"guided"`` (bank-aware, default) or ``"naive"`` nonzero order.
    vector : bool, optional
        Vector (up to LDS.128) loads of ``h``; default: when one load covers a column.
    plan : PersistentPlan, optional
        Geometry (default: :func:`plan_persistent`). When ``plan``, ``barrier``, ``order`` and
        ``vector`` are all left automatic, a tuned record (``tvm-sparse-rnn tune --op
        persistent``) or a shipped config for this ``R`` decides them.
    target : str or Target
        A cuda target (default ``"cuda"``: this machine's GPU, else the H200).
    limits : DeviceLimits, optional
        The GPU's limits the planner respects (default: :func:`device_limits` of ``target``).
    cache_dir : path, optional
        Build cache (see :func:`prebuild`).
    """
    target = resolve_target(target)
    cell = PersistentCell(cell)
    barrier = None if barrier == "auto" else Barrier(barrier)
    order = None if order is None else PairOrder(order)
    plan, barrier, packed = _plan_and_pack(
        R, batch, cell, dtype, barrier, order, vector, plan, limits or device_limits(target), target
    )
    module = build_kernel(plan, cell, barrier, packed.vector, target, cache_dir)
    return PersistentRNN(plan, packed, cell, barrier, module, tvm.cuda(0))
