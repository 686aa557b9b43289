"""Target-neutral TE compute of the block-sparse ``sparse_dense`` operator.

``Y[M, N] = X[M, K] @ W.T`` with ``W[N, K]`` in BSR form (see :mod:`tvm_sparse_rnn.bsr`).
Products are accumulated in float32 (also for float16 inputs, cast back in a last stage).

The compute has two (three for float16) stages, shaped so that schedules can vectorize and
bind them without rewriting the data-dependent loop:

1. :data:`BLOCK_PARTIAL` ``P[m, n, l, c]``: the stored blocks of block row ``n // bs_r`` are
   dealt round-robin to ``lanes`` lanes; lane ``l`` sums, over *its* blocks ``e``, the
   products ``W[e, n % bs_r, c] * X[m, indices[e] * bs_c + c]``. Every axis of ``P`` is spatial,
   the only reduction is the data-dependent loop over the lane's blocks. ``te.create_prim_func``
   makes two nested blocks of it: ``<name>_l1`` (loops ``m, n, l, c``) around :data:`BLOCK_PARTIAL`
   (the loop over the lane's blocks, with the init).
2. :data:`BLOCK_SUM` ``Y[m, n] = sum_{l, c} P[m, n, l, c]``: with ``lanes > 1`` a static
   reduction that CUDA schedules bind to threads (a warp-shuffle all-reduce); with
   ``lanes = 1`` a pairwise tree (stages :data:`BLOCK_TREE` ``0, 1, ...`` halve the ``bs_c``
   columns, :data:`BLOCK_SUM` reads column 0) that CPU schedules vectorize.
3. :data:`BLOCK_OUTPUT` (float16, or with an :class:`~tvm_sparse_rnn.ops.epilogue.Epilogue`):
   ``Y = activation(Yacc + bias).astype(out_dtype)``.

``lanes = 1`` (x86) makes stage 1 the plain row loop; ``lanes = 32`` (CUDA) lets a warp share
one row.
"""

from __future__ import annotations

from collections.abc import Callable

from tvm import s_tir, te, tirx

from .epilogue import ACC_DTYPE, IDENTITY, Epilogue

COMPUTE_NAME = "sparse_dense"
#: Stage 1, data-dependent reduction (inner block); its outer block is :data:`BLOCK_PARTIAL_OUTER`.
BLOCK_PARTIAL = f"{COMPUTE_NAME}_partial"
BLOCK_PARTIAL_OUTER = f"{BLOCK_PARTIAL}_l1"
#: Stage 2, static reduction over lanes and block columns.
BLOCK_SUM = COMPUTE_NAME
#: Optional stage 0, ``X`` with its block columns replicated ``bs_r`` times.
BLOCK_XREP = f"{COMPUTE_NAME}_xrep"
#: Prefix of the pairwise-sum stages ``<prefix>0``, ``<prefix>1``, ... of ``lanes = 1``.
BLOCK_TREE = f"{COMPUTE_NAME}_tree"
#: Stage 3, the epilogue and the cast to the output dtype; absent for float32 without epilogue.
BLOCK_OUTPUT = f"{COMPUTE_NAME}_output"
#: ``tag`` of the :data:`BLOCK_SUM` compute.
TAG = "sparse_dense_bsr"


def sparse_dense(
    x: te.Tensor,
    w_data: te.Tensor,
    w_indices: te.Tensor,
    w_indptr: te.Tensor,
    lanes: int = 1,
    replicate_x: bool = False,
    epilogue: Epilogue = IDENTITY,
    bias: te.Tensor | None = None,
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
    lanes : int
        Lanes sharing one block row (block ``e`` of a row goes to lane ``e % lanes``).
    replicate_x : bool
        Read ``X`` through :data:`BLOCK_XREP` ``Xr[m, k // bs_c, r, k % bs_c] = X[m, k]``
        (``bs_r`` copies), so that a block's ``bs_r * bs_c`` products read ``W_data`` and ``Xr``
        at the same contiguous offsets: one vector FMA per block on CPUs.
    epilogue : Epilogue
        Bias, activation and output dtype applied to the float32 sums.
    bias : te.Tensor, optional
        ``(N,)`` in ``x``'s dtype; required when ``epilogue.bias`` is set.

    Returns
    -------
    te.Tensor
        ``(M, N)`` in the epilogue's output dtype, accumulated in float32.
    """
    m, _ = x.shape
    _, bs_r, bs_c = (int(s) for s in w_data.shape)
    n = (int(w_indptr.shape[0]) - 1) * bs_r
    dtype = x.dtype
    if replicate_x:
        k_blocks = int(x.shape[1]) // bs_c
        xrep = te.compute(
            (m, k_blocks, bs_r, bs_c), lambda i, kb, r, c: x[i, kb * bs_c + c], name=BLOCK_XREP
        )

        def x_at(i: tirx.PrimExpr, kb: tirx.PrimExpr, r: tirx.PrimExpr, c: tirx.PrimExpr):
            return xrep[i, kb, r, c]
    else:

        def x_at(i: tirx.PrimExpr, kb: tirx.PrimExpr, r: tirx.PrimExpr, c: tirx.PrimExpr):
            return x[i, kb * bs_c + c]

    def _partial(i: tirx.Var, j: tirx.Var, lane: tirx.Var, c: tirx.Var) -> tirx.PrimExpr:
        row = j // bs_r
        start = w_indptr[row]
        length = w_indptr[row + 1] - start
        # Lane `lane` owns blocks start + lane, start + lane + lanes, ... < indptr[row + 1]. All
        # lanes run the same trip count (the last round is predicated), so that the lanes of a
        # warp leave the loop together: the shuffle all-reduce after it uses __activemask().
        elem = te.reduce_axis((0, (length + lanes - 1) // lanes), name="elem")
        # A unit static reduction axis puts the init in the outer block, so that rows (or
        # lanes) without blocks are zeroed too; the init of the inner block only runs at elem 0.
        unit = te.reduce_axis((0, 1), name="unit")
        e = start + elem * lanes + lane + unit
        w = w_data[e, j % bs_r, c]
        a = x_at(i, w_indices[e], j % bs_r, c)
        if dtype != ACC_DTYPE:
            w, a = w.astype(ACC_DTYPE), a.astype(ACC_DTYPE)
        prod = w * a
        if lanes > 1:
            prod = tirx.if_then_else(elem * lanes + lane < length, prod, tirx.const(0, ACC_DTYPE))
        return te.sum(prod, axis=[unit, elem])

    part = te.compute((m, n, lanes, bs_c), _partial, name=BLOCK_PARTIAL)
    if lanes == 1:
        acc = _tree_sum(part)
    else:
        lane = te.reduce_axis((0, lanes), name="lane")
        c = te.reduce_axis((0, bs_c), name="c")
        acc = te.compute(
            (m, n),
            lambda i, j: te.sum(part[i, j, lane, c], axis=[lane, c]),
            name=BLOCK_SUM,
            tag=TAG,
        )
    if epilogue.is_identity and epilogue.output_dtype(dtype) == ACC_DTYPE:
        return acc

    def _output(i: tirx.PrimExpr, j: tirx.PrimExpr) -> tirx.PrimExpr:
        return epilogue.apply(acc[i, j], bias[j] if epilogue.bias else None, dtype)

    return te.compute((m, n), _output, name=BLOCK_OUTPUT)


def has_output_stage(sch: s_tir.Schedule) -> bool:
    """Whether the PrimFunc of ``sch`` has the :data:`BLOCK_OUTPUT` stage."""
    root = sch.get_sblock("root")
    return any(sch.get(b).name_hint == BLOCK_OUTPUT for b in sch.get_child_blocks(root))


def _reader(stage: te.Tensor) -> Callable[..., tirx.PrimExpr]:
    """``stage[i, j, c]`` as a function, like the first stage's reader of ``P``."""
    return lambda i, j, c: stage[i, j, c]


def _halve(src: Callable[..., tirx.PrimExpr], width: int) -> Callable[..., tirx.PrimExpr]:
    """``out[i, j, c] = src[i, j, c] + src[i, j, c + ceil(width / 2)]`` (0 past ``width``)."""
    half = (width + 1) // 2

    def fcompute(i: tirx.PrimExpr, j: tirx.PrimExpr, c: tirx.PrimExpr) -> tirx.PrimExpr:
        upper = src(i, j, tirx.min(c + half, width - 1))
        if width % 2:  # odd: the last lower column has no partner
            upper = tirx.Select(c + half < width, upper, tirx.const(0, ACC_DTYPE))
        return src(i, j, c) + upper

    return fcompute


def _tree_sum(part: te.Tensor) -> te.Tensor:
    """``Y[m, n] = sum_c P[m, n, 0, c]`` as a pairwise tree: stage ``t`` (:data:`BLOCK_TREE`
    ``t``) adds the upper half of the previous stage's columns to the lower half, so that a CPU
    reduces the ``bs_c`` vector in ``ceil(log2(bs_c))`` vector adds instead of a serial chain.

    Parameters
    ----------
    part : te.Tensor
        ``(M, N, 1, bs_c)`` float32 partial sums.

    Returns
    -------
    te.Tensor
        ``(M, N)`` float32, named :data:`BLOCK_SUM`.
    """
    m, n, _, width = part.shape
    src, width, level = (lambda i, j, c: part[i, j, 0, c]), int(width), 0
    while width > 1:
        stage = te.compute(
            (m, n, (width + 1) // 2), _halve(src, width), name=f"{BLOCK_TREE}{level}"
        )
        src, width, level = _reader(stage), (width + 1) // 2, level + 1
    return te.compute((m, n), lambda i, j: src(i, j, 0), name=BLOCK_SUM, tag=TAG)


def sparse_dense_prim_func(
    m: int | tirx.Var,
    n: int,
    k: int,
    block_size: tuple[int, int],
    nnzb: int,
    dtype: str = "float32",
    lanes: int = 1,
    replicate_x: bool = False,
    epilogue: Epilogue = IDENTITY,
) -> tirx.PrimFunc:
    """Return the unscheduled PrimFunc ``main(X, W_data, W_indices, W_indptr[, bias], Y)``.

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
    lanes, replicate_x, epilogue
        See :func:`sparse_dense`; with ``epilogue.bias`` the function takes ``bias (n,)``.
    """
    bs_r, bs_c = block_size
    x = te.placeholder((m, k), dtype, name="X")
    w_data = te.placeholder((nnzb, bs_r, bs_c), dtype, name="W_data")
    w_indices = te.placeholder((nnzb,), "int32", name="W_indices")
    w_indptr = te.placeholder((n // bs_r + 1,), "int32", name="W_indptr")
    bias = [te.placeholder((n,), dtype, name="bias")] if epilogue.bias else []
    y = sparse_dense(x, w_data, w_indices, w_indptr, lanes, replicate_x, epilogue, *bias)
    return te.create_prim_func([x, w_data, w_indices, w_indptr, *bias, y])
