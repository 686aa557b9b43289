"""Layer normalization over the last axis for x86: every stage a vector loop, rows in parallel.

dlight's CPU reduction rule keeps the row mean and variance scalar loops (a float sum over the
reduction axis does not vectorize without an ``rfactor``): 768 dependent adds twice per row.
Here (:mod:`~tvm_sparse_rnn.kernels.x86.row_reduction`) each reduction runs as ``lanes``
partial sums (one per vector lane, over the ``C / lanes`` column groups), then folded::

    for r in parallel(rows):
        psum[l] = sum_g x[r, g * lanes + l]                       (vector)
        mean    = sum_l psum[l] / C
        pvar[l] = sum_g (x[r, g * lanes + l] - mean) ** 2         (vector)
        inv     = rsqrt(sum_l pvar[l] / C + eps)
        y[r, c] = (x[r, c] - mean) * inv * gamma[c] + beta[c]     (vector)

Profile with ``python benchmarks/profile_cpu_models.py bert_4x4 --runs 20``.
"""

from __future__ import annotations

import logging
import operator

from tvm import s_tir, te, tirx

from .row_reduction import fold_lanes, lane_partials, schedule_row_stages

logger = logging.getLogger(__name__)


def layer_norm_compute(
    x: te.Tensor, gamma: te.Tensor, beta: te.Tensor, epsilon: float, lanes: int
) -> te.Tensor:
    """``layer_norm(x, gamma, beta)`` over the last axis with lane-wise partial sums; ``C``
    must divide by ``lanes``."""
    c = int(x.shape[-1])

    def row_mean(t: te.Tensor, name: str) -> te.Tensor:
        total = fold_lanes(lane_partials(t, te.sum, f"partial_{name}", lanes), operator.add, name)
        return te.compute(total.shape, lambda *i: total[i] / c, name=f"{name}_mean")

    mean = row_mean(x, "row_sum")
    centered = te.compute(x.shape, lambda *i: x[i] - mean[i[:-1]], name="centered")
    squares = te.compute(x.shape, lambda *i: centered[i] * centered[i], name="squares")
    variance = row_mean(squares, "row_var")
    inverse = te.compute(
        variance.shape, lambda *i: te.rsqrt(variance[i] + epsilon), name="row_inverse"
    )
    return te.compute(
        x.shape,
        lambda *i: centered[i] * inverse[i[:-1]] * gamma[i[-1]] + beta[i[-1]],
        name="layer_norm",
    )


def make_layer_norm(
    shape: tuple[int, ...], dtype: str, epsilon: float, lanes: int
) -> tirx.PrimFunc:
    """The scheduled ``main(x, gamma, beta, y)``: ``y = layer_norm(x, gamma, beta)`` over the
    last axis of a static ``shape`` whose last dimension divides by ``lanes``.

    Parameters
    ----------
    shape : tuple of int
        Static shape of ``x``, rank >= 2; ``gamma`` and ``beta`` are ``(shape[-1],)``.
    dtype : str
        ``"float32"``.
    epsilon : float
        Added to the variance.
    lanes : int
        Vector lanes of the target (:func:`~tvm_sparse_rnn.kernels.x86.vector.vector_lanes`).

    Returns
    -------
    tirx.PrimFunc
        With ``tirx.is_scheduled=True``.
    """
    x = te.placeholder(shape, dtype, "x")
    gamma = te.placeholder(shape[-1:], dtype, "gamma")
    beta = te.placeholder(shape[-1:], dtype, "beta")
    y = layer_norm_compute(x, gamma, beta, epsilon, lanes)
    sch = s_tir.Schedule(te.create_prim_func([x, gamma, beta, y]))
    for name in ("squares", "centered"):
        sch.compute_inline(sch.get_sblock(name))
    variance = ("row_inverse", "row_var_mean", "row_var", "partial_row_var")
    stages = (*variance, "row_sum_mean", "row_sum", "partial_row_sum")  # consumers first
    schedule_row_stages(sch, "layer_norm", stages, lanes, with_partials=shape[-1] > lanes)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)
