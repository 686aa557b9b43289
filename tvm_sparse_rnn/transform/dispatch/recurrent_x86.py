"""Lower one direction of a recurrent placeholder to the x86 kernels.

Projection ``U = X @ W^T + Wb`` for all steps at once
(:func:`~tvm_sparse_rnn.kernels.x86.recurrent.projection_prim_func`), then one ``call_tir`` of
the recurrent kernel running every step
(:func:`~tvm_sparse_rnn.kernels.x86.recurrent.recurrent_prim_func`); ``W`` and ``R`` packed
sparse or dense as the dispatch decided, the kernel built with the config it resolved.
"""

from __future__ import annotations

import logging

import tvm
from tvm import relax

from ...kernels.opaque import opaque_kernel
from ...kernels.x86.recurrent import (
    PackedWeight,
    RecurrentConfig,
    projection_prim_func,
    recurrent_prim_func,
    step_rows,
    unit_major_order,
)
from ...ops.cells import CellConfig
from .recurrent_common import F32, Direction, const, reverse_sequences

logger = logging.getLogger(__name__)


def emit_x86_direction(
    bb: relax.BlockBuilder,
    cfg: CellConfig,
    x: relax.Expr,
    seq_len: int,
    batch: int,
    dirn: Direction,
    lens: relax.Expr,
    rev_index: relax.Expr | None,
    packed_w: PackedWeight,
    packed_r: PackedWeight,
    config: RecurrentConfig,
) -> list[relax.Expr]:
    """One direction on x86; ``x`` is ``X`` transposed to ``(I, T*N)`` and padded to the
    projection's tiles (:func:`~tvm_sparse_rnn.transform.dispatch.projection_x86.pad_columns`).

    Returns
    -------
    list of relax.Expr
        ``[Y (T, N, H), Y_h (N, H)[, Y_c (N, H)]]``.
    """
    H, G = cfg.hidden_size, cfg.num_gates
    order = unit_major_order(G, H)

    def add(func: tvm.tirx.PrimFunc, name: str) -> relax.GlobalVar:
        return bb.add_func(opaque_kernel(func), name)

    kind = cfg.kind.value.lower()
    # full-length sequences: the kernels reverse time themselves, no flip of U or Y around them
    in_kernel = cfg.is_reverse(dirn.index) and rev_index is None
    gathered = cfg.is_reverse(dirn.index) and not in_kernel
    proj_func = projection_prim_func(packed_w, seq_len, batch, reverse=in_kernel)
    proj = add(proj_func, f"{kind}_projection_x86")
    args = [x, *(const(a) for a in packed_w.arrays()), const(dirn.wb[order], F32)]
    u_type = relax.TensorType((seq_len, step_rows(G * H, seq_len, batch), batch), F32)
    u = bb.emit(relax.call_tir(proj, args, u_type))
    if gathered:
        u = reverse_sequences(bb, u, rev_index, axis=0, batch_axis=2)
    func = recurrent_prim_func(cfg, dirn.index, seq_len, batch, packed_r, config, in_kernel)
    gv = add(func, f"{kind}_recurrent_x86")
    args = [u, *(const(a) for a in packed_r.arrays()), const(dirn.rb[order], F32)]
    if dirn.peep is not None:
        args.append(const(dirn.peep.reshape(3, H), F32))
    args += [dirn.h0] + ([dirn.c0] if dirn.c0 is not None else []) + [lens]
    n_state = 2 if cfg.kind.has_cell_state else 1
    out_ty = [relax.TensorType((seq_len, batch, H), F32)]
    out_ty += [relax.TensorType((batch, H), F32)] * n_state
    res = bb.emit(relax.call_tir(gv, args, out_ty))
    outs = [bb.emit(relax.TupleGetItem(res, k)) for k in range(1 + n_state)]
    if gathered:
        outs[0] = reverse_sequences(bb, outs[0], rev_index, axis=0)
    return outs
