"""A single recurrent layer (ONNX ``RNN``/``GRU``/``LSTM`` semantics) as a callable.

:func:`build_recurrent_sequence` builds a Relax module holding one recurrent placeholder
(:class:`~tvm_sparse_rnn.ops.placeholders.RecurrentCall`) and compiles it with the package's
pipeline, so the kernels are exactly those a model with that layer gets on the target.
"""

from __future__ import annotations

import logging

import numpy as np
import tvm
from tvm import relax
from tvm.target import Target

from ..errors import UnsupportedError
from ..ops.cells import CellConfig, RecurrentWeights
from ..ops.placeholders import RecurrentCall
from ..pipeline import build
from ..target import is_cuda, resolve_target
from ..transform.dispatch import DispatchOptions

logger = logging.getLogger(__name__)

_F32 = "float32"
op = relax.op


class RecurrentSequence:
    """A compiled recurrent layer: ``layer(X, sequence_lens=None, initial_h=None, initial_c=None)``.

    Returned by :func:`build_recurrent_sequence`; call it with numpy arrays in the ONNX shapes of
    its layout. Missing optional inputs mean full lengths and zero initial states.

    Attributes
    ----------
    executable : tvm.runtime.Executable
        The compiled Relax module (``main(X, sequence_lens, initial_h[, initial_c])``).
    """

    def __init__(
        self,
        executable: tvm.runtime.Executable,
        cfg: CellConfig,
        x_shape: tuple[int, int, int],
        layout: int,
        device: tvm.runtime.Device,
    ) -> None:
        self.executable = executable
        self.cfg = cfg
        self.x_shape = x_shape
        self.layout = layout
        self.device = device
        self.seq_len, self.batch = (x_shape[0], x_shape[1]) if layout == 0 else x_shape[1::-1]
        d, h = cfg.num_directions, cfg.hidden_size
        self.state_shape = (d, self.batch, h) if layout == 0 else (self.batch, d, h)
        self._vm: relax.VirtualMachine | None = None  # created on first call (needs the device)
        self._defaults: dict[str, tvm.runtime.Tensor] = {}

    def _arg(self, name: str, value: np.ndarray | None) -> tvm.runtime.Tensor:
        """``value`` on the device, or the cached default (full lengths, zero state)."""
        if value is None:
            if name not in self._defaults:
                default = (
                    np.full(self.batch, self.seq_len, np.int32)
                    if name == "sequence_lens"
                    else np.zeros(self.state_shape, _F32)
                )
                self._defaults[name] = tvm.runtime.tensor(default, self.device)
            return self._defaults[name]
        if name == "sequence_lens":
            lens = np.asarray(value).astype(np.int32)
            if lens.shape != (self.batch,) or lens.min() < 1 or lens.max() > self.seq_len:
                raise ValueError(
                    f"sequence_lens must be ({self.batch},) with values in [1, {self.seq_len}], "
                    f"got {lens}"
                )
            return tvm.runtime.tensor(lens, self.device)
        state = np.asarray(value, _F32)
        if state.shape != self.state_shape:
            raise ValueError(f"{name} has shape {state.shape}; expected {self.state_shape}")
        return tvm.runtime.tensor(state, self.device)

    def __call__(
        self,
        X: np.ndarray,
        sequence_lens: np.ndarray | None = None,
        initial_h: np.ndarray | None = None,
        initial_c: np.ndarray | None = None,
    ) -> tuple[np.ndarray, ...]:
        """Run the layer; returns ``(Y, Y_h)`` or ``(Y, Y_h, Y_c)`` as float32 numpy arrays."""
        X = np.asarray(X, _F32)
        if X.shape != self.x_shape:
            raise ValueError(f"X has shape {X.shape}; this layer was built for {self.x_shape}")
        args = [
            tvm.runtime.tensor(X, self.device),
            self._arg("sequence_lens", sequence_lens),
            self._arg("initial_h", initial_h),
        ]
        if self.cfg.kind.has_cell_state:
            args.append(self._arg("initial_c", initial_c))
        if self._vm is None:
            self._vm = relax.VirtualMachine(self.executable, self.device)
        return tuple(o.numpy() for o in self._vm["main"](*args))


def build_recurrent_sequence(
    cfg: CellConfig,
    weights: RecurrentWeights,
    x_shape: tuple[int, int, int],
    layout: int = 0,
    target: Target | str = "llvm",
    options: DispatchOptions | None = None,
) -> RecurrentSequence:
    """Compile one recurrent layer into a callable on numpy arrays.

    Parameters
    ----------
    cfg : CellConfig
    weights : RecurrentWeights
        ``W (D, G*H, I)``, ``R (D, G*H, H)``, optional ``B (D, 2*G*H)``, ``P (D, 3*H)``.
    x_shape : tuple of int
        Static shape of ``X``: ``(T, N, I)`` (layout 0) or ``(N, T, I)`` (layout 1).
    layout : int
        ONNX ``layout``.
    target : Target or str
        ``"llvm"`` or ``"cuda"`` (see :func:`tvm_sparse_rnn.target.resolve_target`).
    options : DispatchOptions, optional
        Sparsity threshold of the dispatch (``R`` sparse at density <= ``1 - threshold``).

    Returns
    -------
    RecurrentSequence
        Runs on ``tvm.cpu()`` or ``tvm.cuda()`` by target; the kernels are those the dispatch
        pass picks for the target (see :mod:`tvm_sparse_rnn.transform.dispatch.recurrent`).
    """
    if layout not in (0, 1):
        raise UnsupportedError(f"layout must be 0 or 1, got {layout}")
    target = resolve_target(target)
    batch = x_shape[1] if layout == 0 else x_shape[0]
    weights.check(cfg, x_shape[2])
    D, H = cfg.num_directions, cfg.hidden_size
    state_shape = (D, batch, H) if layout == 0 else (batch, D, H)
    bb = relax.BlockBuilder()
    params = [
        relax.Var("X", relax.TensorType(x_shape, _F32)),
        relax.Var("sequence_lens", relax.TensorType((batch,), "int32")),
        relax.Var("initial_h", relax.TensorType(state_shape, _F32)),
    ]
    if cfg.kind.has_cell_state:
        params.append(relax.Var("initial_c", relax.TensorType(state_shape, _F32)))
    with bb.function("main", params):
        with bb.dataflow():

            def layout0(expr: relax.Expr) -> relax.Expr:
                return expr if layout == 0 else bb.emit(op.permute_dims(expr, [1, 0, 2]))

            states = {"sequence_lens": params[1], "initial_h": layout0(params[2])}
            if cfg.kind.has_cell_state:
                states["initial_c"] = layout0(params[3])
            call = RecurrentCall("layer", cfg, layout0(params[0]), states, weights)
            out = call.emit(bb)
            fields = [
                bb.emit(relax.TupleGetItem(out, k)) for k in range(len(call.output_types().fields))
            ]
            if layout == 1:
                fields = [bb.emit(op.permute_dims(fields[0], [2, 0, 1, 3]))] + [
                    bb.emit(op.permute_dims(f, [1, 0, 2])) for f in fields[1:]
                ]
            gv = bb.emit_output(relax.Tuple(fields))
        bb.emit_func_output(gv)
    executable, _ = build(bb.get(), target, options)
    device = tvm.cuda() if is_cuda(target) else tvm.cpu()
    return RecurrentSequence(executable, cfg, tuple(x_shape), layout, device)
