"""Lower one direction of a recurrent placeholder to a per-step composition of Relax ops.

The CUDA path for every layer the persistent kernel does not implement (``clip``,
``sequence_lens``, GRU ``linear_before_reset=0``, LSTM peepholes, other activations, weights that
do not fit on chip): the cell math of :mod:`tvm_sparse_rnn.ops.cells` on Relax expressions,
unrolled over the static ``T`` steps, scheduled by the default GPU pipeline (dlight).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from tvm import relax

from ...ops.cells import CellConfig, gru_gates, gru_output, lstm_cell, rnn_cell
from .recurrent_common import F32, Direction, const, op, reverse_sequences, static_shape

logger = logging.getLogger(__name__)

#: ``linear(x, weight (N, K), name) -> x @ weight.T``: the dispatch of one linear layer.
Linear = Callable[[relax.Expr, np.ndarray, str], relax.Expr]


class RelaxOps:
    """:class:`~tvm_sparse_rnn.ops.cells.CellOps` on Relax expressions (float32 tensors)."""

    def add(self, a: relax.Expr, b: relax.Expr) -> relax.Expr:
        return op.add(a, b)

    def mul(self, a: relax.Expr, b: relax.Expr) -> relax.Expr:
        return op.multiply(a, b)

    def one_minus(self, a: relax.Expr) -> relax.Expr:
        return op.subtract(relax.const(1.0, F32), a)

    def activation(self, name: str, a: relax.Expr) -> relax.Expr:
        if name == "Sigmoid":
            return op.sigmoid(a)
        if name == "Tanh":
            return op.tanh(a)
        return op.nn.relu(a)

    def clip(self, a: relax.Expr, bound: float) -> relax.Expr:
        return op.clip(a, -bound, bound)


def emit_steps_direction(
    bb: relax.BlockBuilder,
    cfg: CellConfig,
    x: relax.Expr,
    dirn: Direction,
    lens: relax.Expr | None,
    rev_index: relax.Expr | None,
    linear: Linear,
    name: str,
) -> list[relax.Expr]:
    """One direction as a static per-step composition of Relax ops (the CUDA path).

    ``x`` is ``X`` as ``(T, N, I)``; ``lens`` is ``None`` when every sequence is full. The input
    projection and the recurrent mat-vecs are linear layers with constant weights, lowered by
    ``linear`` (the dispatch of linear placeholders: sparse where it pays), named after the
    layer ``name``. Returns
    ``[Y (T, N, H), Y_h (N, H), [Y_c]]``. Steps past a sequence's length keep the state and
    write zeros, through float 0/1 masks (``m * new + (1 - m) * old`` is exact for m in {0, 1});
    boolean ``where`` would be vectorized into invalid CUDA by the default GPU schedules.
    """
    seq_len, batch, input_size = static_shape(x, "X")
    H, G = cfg.hidden_size, cfg.num_gates
    d = dirn.index
    u = linear(bb.emit(op.reshape(x, [seq_len * batch, input_size])), dirn.w, f"{name}.W")
    u = bb.emit(op.reshape(op.add(u, const(dirn.wb, F32)), [seq_len, batch, G * H]))
    if cfg.is_reverse(d):
        u = reverse_sequences(bb, u, rev_index, axis=0)
    ops = RelaxOps()
    r_g = [np.ascontiguousarray(dirn.r[g * H : (g + 1) * H]) for g in range(G)]
    rb_g = [const(dirn.rb[g * H : (g + 1) * H], F32) for g in range(G)]
    p_g = None if dirn.peep is None else [const(p, F32) for p in np.split(dirn.peep, 3)]
    lens_col = None if lens is None else op.expand_dims(lens, [1])
    one = relax.const(1.0, F32)

    def keep(mask: relax.Expr | None, new: relax.Expr, old: relax.Expr | None) -> relax.Expr:
        if mask is None:
            return new
        kept = op.multiply(mask, new)
        return kept if old is None else op.add(kept, op.multiply(op.subtract(one, mask), old))

    h, c = dirn.h0, dirn.c0
    ys = []
    for s in range(seq_len):
        x_t = bb.emit(op.squeeze(op.strided_slice(u, axes=[0], begin=[s], end=[s + 1]), [0]))
        xs = [
            bb.emit(op.strided_slice(x_t, axes=[1], begin=[g * H], end=[(g + 1) * H]))
            for g in range(G)
        ]
        active = (  # (N, 1) float 0/1
            None
            if lens_col is None
            else bb.emit(op.astype(op.less(relax.const(s, "int32"), lens_col), F32))
        )

        def rec(g: int, vec: relax.Expr) -> relax.Expr:
            return op.add(linear(bb.emit(vec), r_g[g], f"{name}.R{g}"), rb_g[g])

        if cfg.kind == "RNN":
            h_new = rnn_cell(ops, cfg, d, xs, [rec(0, h)])
        elif cfg.kind == "GRU":
            z, reset = (bb.emit(e) for e in gru_gates(ops, cfg, d, xs, [rec(0, h), rec(1, h)]))
            r_h = rec(2, h) if cfg.linear_before_reset else rec(2, op.multiply(reset, h))
            h_new = gru_output(ops, cfg, d, z, reset, xs[2], r_h, h)
        else:
            h_new, c_new = lstm_cell(ops, cfg, d, xs, [rec(g, h) for g in range(4)], c, p_g)
            c = bb.emit(keep(active, bb.emit(c_new), c))
        h_new = bb.emit(h_new)
        ys.append(op.expand_dims(keep(active, h_new, None), [0]))
        h = bb.emit(keep(active, h_new, h))
    y = bb.emit(op.concat(ys, axis=0))
    if cfg.is_reverse(d):
        y = reverse_sequences(bb, y, rev_index, axis=0)
    return [y, h] + ([c] if c is not None else [])
