"""TE compute of a GEMM split along ``K``: the partial products of each slice, in float32.

``P[s, i, j] = sum_k X[i, s, k] * W[s, k, j]`` with ``X (M, S, K / S)`` (the input viewed with
its ``K`` columns in ``S`` slices: a reshape, no copy) and ``W (S, K / S, N)``; then
``Y = P[0] + ... + P[S - 1]`` written out as element-wise adds (:func:`split_k_sum`), not as a
reduction, so that fusion joins it to the cast and the layer's epilogue (bias, activation,
residual) in one kernel. Each slice is one batch of the
tensor-core GEMM schedule (:class:`~tvm_sparse_rnn.kernels.cuda.matmul_mma.MmaMatmul`), so a
GEMM of few output tiles runs ``S`` times as many CTAs (split-K, as CUTLASS's
``GemmSplitKParallel``).
"""

from __future__ import annotations

from tvm import te

ACC_DTYPE = "float32"
#: Name of the partial-product stage.
BLOCK_PARTIAL = "split_k_partial"
#: Name of the sum of the slices.
BLOCK_SUM = "split_k_sum"


def split_k_matmul(x: te.Tensor, w: te.Tensor) -> te.Tensor:
    """The partial products of each ``K`` slice.

    Parameters
    ----------
    x : te.Tensor
        ``(M, S, K / S)`` float16.
    w : te.Tensor
        ``(S, K / S, N)`` float16.

    Returns
    -------
    te.Tensor
        ``(S, M, N)`` float32.
    """
    m, splits, part = x.shape
    n = w.shape[2]
    r = te.reduce_axis((0, part), name="k")
    return te.compute(
        (splits, m, n),
        lambda s, i, j: te.sum(x[i, s, r].astype(ACC_DTYPE) * w[s, r, j].astype(ACC_DTYPE), axis=r),
        name=BLOCK_PARTIAL,
    )


def split_k_sum(partial: te.Tensor, dtype: str) -> te.Tensor:
    """``Y[i, j] = (P[0, i, j] + ... + P[S - 1, i, j]).astype(dtype)``, the static ``S`` adds
    unrolled (an injective op, not a reduction).

    Parameters
    ----------
    partial : te.Tensor
        ``(S, M, N)`` float32 from :func:`split_k_matmul`.
    dtype : str
        Dtype of ``Y``.

    Returns
    -------
    te.Tensor
        ``(M, N)``.
    """
    splits, m, n = partial.shape

    def total(i, j):
        value = partial[0, i, j]
        for s in range(1, int(splits)):
            value = value + partial[s, i, j]
        return value.astype(dtype)

    return te.compute((m, n), total, name=BLOCK_SUM)
