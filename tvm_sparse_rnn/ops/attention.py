"""TE computes of scaled dot-product attention on feature-major projections.

On llvm the CSR kernels compute ``Y^T``: a fused QKV projection leaves its output as
``(3 * H * D, B * S)``, row ``h * D + d`` of a part holding feature ``d`` of head ``h`` for every
token. Both products of the attention read these rows directly, and the probabilities stay
transposed in between (:class:`~tvm_sparse_rnn.transform.FeatureMajorAttention`)::

    S^T[l, j, i] = sum_d K[k0 + h*D + d, b*S + j] * Q[q0 + h*D + d, b*S + i]
    P^T          = softmax(scale * S^T, axis=-2)                 (over the keys j)
    O^T[b, h, d, i] = sum_j V[v0 + h*Dv + d, b*S + j] * P^T[l, j, i]

with ``l = b * H + h``. ``O^T`` viewed as ``(H * Dv, B * S)`` is, for ``B = 1``, the
feature-major input of the output projection. In both products the operand read along the
output's last axis (``Q``, ``P^T``) is contiguous there, the other one is a scalar per
multiply-add: the layout of the register-blocked dense schedule
(:mod:`~tvm_sparse_rnn.kernels.x86.dense`), whose reduction block name they carry.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm import te, tirx

#: Name of the reduction block (the dense schedule rule's).
MATMUL_BLOCK = "matmul"


@dataclass(frozen=True)
class HeadLayout:
    """Where the heads of one operand sit in its feature-major source.

    Attributes
    ----------
    first_row : int
        Row of the source holding feature 0 of head 0.
    batch, heads, seq, head_dim : int
        ``B``, ``H``, ``S``, ``D``: head ``h``'s feature ``d`` of token ``i`` of sequence ``b``
        is ``source[first_row + h * head_dim + d, b * seq + i]``.
    """

    first_row: int
    batch: int
    heads: int
    seq: int
    head_dim: int

    def element(
        self, source: te.Tensor, head: tirx.PrimExpr, d: tirx.PrimExpr, t: tirx.PrimExpr
    ) -> tirx.PrimExpr:
        """``source``'s element of head ``head % heads`` of sequence ``head // heads`` (the
        ``B * H`` heads counted batch-outer), feature ``d``, token ``t``."""
        h, b = head % self.heads, head // self.heads
        return source[self.first_row + h * self.head_dim + d, b * self.seq + t]


def feature_major_scores(
    keys: te.Tensor, queries: te.Tensor, key: HeadLayout, query: HeadLayout
) -> te.Tensor:
    """``S^T (B * H, S, S)``: the dot products of each key ``j`` (rows) with each query ``i``
    (columns), float32, unscaled (the softmax scales them).

    Parameters
    ----------
    keys, queries : te.Tensor
        Feature-major sources ``(F, B * S)`` (may be the same tensor).
    key, query : HeadLayout
        Where the heads sit in them (the same ``B``, ``H``, ``S``, ``D``).
    """
    lead, seq = key.batch * key.heads, key.seq
    d = te.reduce_axis((0, key.head_dim), "d")
    return te.compute(
        (lead, seq, seq),
        lambda head, j, i: te.sum(
            key.element(keys, head, d, j) * query.element(queries, head, d, i), axis=d
        ),
        name=MATMUL_BLOCK,
    )


def feature_major_context(values: te.Tensor, probs: te.Tensor, value: HeadLayout) -> te.Tensor:
    """``O^T (B, H, Dv, S)``: the probability-weighted sum of the values, float32.

    Parameters
    ----------
    values : te.Tensor
        Feature-major source ``(F, B * S)``.
    probs : te.Tensor
        ``P^T (B * H, S, S)``, keys along axis 1.
    value : HeadLayout
        Where the value heads sit in ``values``.
    """
    j = te.reduce_axis((0, value.seq), "j")
    return te.compute(
        (value.batch, value.heads, value.head_dim, value.seq),
        lambda b, h, d, i: te.sum(
            value.element(values, b * value.heads + h, d, j) * probs[b * value.heads + h, j, i],
            axis=j,
        ),
        name=MATMUL_BLOCK,
    )
