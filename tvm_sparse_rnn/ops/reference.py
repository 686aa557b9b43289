"""Numpy reference of the recurrent sequence op (ONNX ``RNN``/``GRU``/``LSTM``), float64.

Inputs and outputs use the ONNX operator's shapes and names; everything is accumulated in
float64, so the reference is the yardstick for the float32 kernels and for onnxruntime.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from scipy.special import expit

from .cells import CellConfig, gru_gates, gru_output, lstm_cell, rnn_cell

logger = logging.getLogger(__name__)


class NumpyOps:
    """:class:`~tvm_sparse_rnn.ops.cells.CellOps` on numpy arrays."""

    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a + b

    def mul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a * b

    def one_minus(self, a: np.ndarray) -> np.ndarray:
        return 1.0 - a

    def activation(self, name: str, a: np.ndarray) -> np.ndarray:
        if name == "Sigmoid":
            return expit(a)
        if name == "Tanh":
            return np.tanh(a)
        return np.maximum(a, 0.0)  # Relu (CellConfig admits nothing else)

    def clip(self, a: np.ndarray, bound: float) -> np.ndarray:
        return np.clip(a, -bound, bound)


def _f64(a: Any | None) -> np.ndarray | None:
    return None if a is None else np.asarray(a, dtype=np.float64)


def recurrent_sequence_reference(
    cfg: CellConfig,
    X: np.ndarray,
    W: np.ndarray,
    R: np.ndarray,
    B: np.ndarray | None = None,
    sequence_lens: np.ndarray | None = None,
    initial_h: np.ndarray | None = None,
    initial_c: np.ndarray | None = None,
    P: np.ndarray | None = None,
    layout: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Run an ONNX recurrent layer in float64.

    Parameters
    ----------
    cfg : CellConfig
        Cell type, hidden size ``H``, direction, activations, clip, GRU/LSTM options.
    X : numpy.ndarray
        ``(T, N, I)`` (layout 0) or ``(N, T, I)`` (layout 1); ``N`` is the batch.
    W : numpy.ndarray
        ``(D, G*H, I)`` input weights, ONNX gate order.
    R : numpy.ndarray
        ``(D, G*H, H)`` recurrent weights (dense; pruned entries are zeros).
    B : numpy.ndarray, optional
        ``(D, 2*G*H)`` biases ``[Wb, Rb]``; zeros when absent.
    sequence_lens : numpy.ndarray, optional
        ``(N,)`` integer lengths in ``[0, T]``; outputs past a sequence's length are zero and
        ``Y_h``/``Y_c`` hold the state of its last valid step. The reverse direction of a
        sequence starts at its own last valid step.
    initial_h, initial_c : numpy.ndarray, optional
        ``(D, N, H)`` (layout 0) or ``(N, D, H)`` (layout 1); zeros when absent.
    P : numpy.ndarray, optional
        ``(D, 3*H)`` LSTM peepholes ``[P_i, P_o, P_f]``.
    layout : int
        ONNX ``layout`` attribute, 0 or 1.

    Returns
    -------
    Y : numpy.ndarray
        ``(T, D, N, H)`` (layout 0) or ``(N, T, D, H)`` (layout 1), float64.
    Y_h : numpy.ndarray
        ``(D, N, H)`` (layout 0) or ``(N, D, H)`` (layout 1), float64.
    Y_c : numpy.ndarray or None
        Like ``Y_h`` for LSTM, ``None`` otherwise.
    """
    X, W, R, B, P = (_f64(a) for a in (X, W, R, B, P))
    h0, c0 = _f64(initial_h), _f64(initial_c)
    if layout == 1:
        X = X.transpose(1, 0, 2)
        h0 = None if h0 is None else h0.transpose(1, 0, 2)
        c0 = None if c0 is None else c0.transpose(1, 0, 2)
    T, N, _ = X.shape
    H, G, D = cfg.hidden_size, cfg.num_gates, cfg.num_directions
    lens = np.full(N, T, np.int64) if sequence_lens is None else np.asarray(sequence_lens, np.int64)
    ops = NumpyOps()
    Y = np.zeros((T, D, N, H))
    Y_h = np.zeros((D, N, H))
    Y_c = np.zeros((D, N, H))
    batch = np.arange(N)
    for d in range(D):
        wb = np.zeros(G * H) if B is None else B[d, : G * H]
        rb = np.zeros(G * H) if B is None else B[d, G * H :]
        h = np.zeros((N, H)) if h0 is None else h0[d].copy()
        c = np.zeros((N, H)) if c0 is None else c0[d].copy()
        peep = None if P is None else np.split(P[d], 3)
        w_g, r_g = np.split(W[d], G), np.split(R[d], G)
        wb_g, rb_g = np.split(wb, G), np.split(rb, G)
        for s in range(T):
            active = s < lens
            t_of = np.where(active, lens - 1 - s, 0) if cfg.is_reverse(d) else np.full(N, s)
            x_t = X[t_of, batch]  # (N, I): each sequence's own time index
            xs = [x_t @ w_g[k].T + wb_g[k] for k in range(G)]
            rs = [h @ r_g[k].T + rb_g[k] for k in range(G)]
            if cfg.kind == "RNN":
                h_new = rnn_cell(ops, cfg, d, xs, rs)
            elif cfg.kind == "GRU":
                z, reset = gru_gates(ops, cfg, d, xs, rs)
                r_h = rs[2] if cfg.linear_before_reset else (reset * h) @ r_g[2].T + rb_g[2]
                h_new = gru_output(ops, cfg, d, z, reset, xs[2], r_h, h)
            else:
                h_new, c_new = lstm_cell(ops, cfg, d, xs, rs, c, peep)
                c = np.where(active[:, None], c_new, c)
            h = np.where(active[:, None], h_new, h)
            Y[t_of[active], d, batch[active]] = h_new[active]
        Y_h[d], Y_c[d] = h, c
    if layout == 1:
        Y, Y_h, Y_c = Y.transpose(2, 0, 1, 3), Y_h.transpose(1, 0, 2), Y_c.transpose(1, 0, 2)
    return Y, Y_h, (Y_c if cfg.kind.has_cell_state else None)
