"""Target-neutral TE compute of the block-sparse ``sparse_dense`` operator.

``Y[M, N] = X[M, K] @ W.T`` with ``W[N, K]`` in BSR form (see :mod:`tvm_sparse_rnn.bsr`).
Products are accumulated in float32 for float16 inputs and cast back in a separate stage.

``te.create_prim_func`` turns the data-dependent reduction (over the stored blocks of a block
row) into two nested blocks: :data:`BLOCK_OUTER` (loops ``m, n, c`` and the init) around
:data:`BLOCK_INNER` (the loop over the row's blocks). Schedules look them up by these names.
"""

from __future__ import annotations

from tvm import te, tirx

#: Name of the reduction compute; create_prim_func names its outer block ``<name>_l1``.
COMPUTE_NAME = "sparse_dense"
BLOCK_OUTER = f"{COMPUTE_NAME}_l1"
BLOCK_INNER = COMPUTE_NAME
#: Elementwise float32 -> float16 cast stage, present only for float16.
BLOCK_CAST = "sparse_dense_cast"
ACC_DTYPE = "float32"


def sparse_dense(
    x: te.Tensor, w_data: te.Tensor, w_indices: te.Tensor, w_indptr: te.Tensor
) -> te.Tensor:
    """TE compute of ``Y = X @ W.T`` with ``W`` block-sparse.

    Parameters
    ----------
    x : te.Tensor
        ``(M, K)`` float32 or float16; ``M`` may be symbolic.
    w_data : te.Tensor
        ``(nnzb, bs_r, bs_c)``, same dtype as ``x``.
    w_indices : te.Tensor
        ``(nnzb,)`` int32 block-column indices.
    w_indptr : te.Tensor
        ``(N // bs_r + 1,)`` int32 block-row pointers.

    Returns
    -------
    te.Tensor
        ``(M, N)`` in ``x``'s dtype, accumulated in float32.
    """
    m, _ = x.shape
    _, bs_r, bs_c = (int(s) for s in w_data.shape)
    n = (int(w_indptr.shape[0]) - 1) * bs_r
    dtype = x.dtype

    def _fcompute(i: tirx.Var, j: tirx.Var) -> tirx.PrimExpr:
        row = j // bs_r
        start = w_indptr[row]
        elem = te.reduce_axis((0, w_indptr[row + 1] - start), name="elem")
        c = te.reduce_axis((0, bs_c), name="c")
        w = w_data[start + elem, j % bs_r, c]
        a = x[i, w_indices[start + elem] * bs_c + c]
        if dtype != ACC_DTYPE:
            w, a = w.astype(ACC_DTYPE), a.astype(ACC_DTYPE)
        return te.sum(w * a, axis=[elem, c])

    acc = te.compute((m, n), _fcompute, name=COMPUTE_NAME, tag="sparse_dense_bsr")
    if dtype == ACC_DTYPE:
        return acc
    return te.compute((m, n), lambda i, j: acc[i, j].astype(dtype), name=BLOCK_CAST)


def sparse_dense_prim_func(
    m: int | tirx.Var,
    n: int,
    k: int,
    block_size: tuple[int, int],
    nnzb: int,
    dtype: str = "float32",
) -> tirx.PrimFunc:
    """Return the unscheduled PrimFunc ``main(X, W_data, W_indices, W_indptr, Y)``.

    Parameters
    ----------
    m : int or tirx.Var
        Rows of ``X`` (the batch); a ``tirx.Var`` gives a dynamic batch.
    n, k : int
        ``W`` is ``(n, k)``.
    block_size : tuple of int
        ``(bs_r, bs_c)``.
    nnzb : int
        Stored blocks.
    dtype : str
        ``"float32"`` or ``"float16"``.
    """
    bs_r, bs_c = block_size
    x = te.placeholder((m, k), dtype, name="X")
    w_data = te.placeholder((nnzb, bs_r, bs_c), dtype, name="W_data")
    w_indices = te.placeholder((nnzb,), "int32", name="W_indices")
    w_indptr = te.placeholder((n // bs_r + 1,), "int32", name="W_indptr")
    y = sparse_dense(x, w_data, w_indices, w_indptr)
    return te.create_prim_func([x, w_data, w_indices, w_indptr, y])
