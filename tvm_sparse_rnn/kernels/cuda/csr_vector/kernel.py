"""CSR-vector ``sparse_dense`` for a few rows of ``X``: ``Y = X W^T`` with ``W`` unstructured.

With ``M`` of 1 to 16 the kernel is bound by streaming ``W``; what limits it is how many bytes
of ``W`` are in flight, so each lane loads 16 bytes of values and 16 of columns per round (the
CSR-vector SpMV of Bell and Garland, SC'09, with 16-byte groups as in Sputnik's vector loads,
Gale et al., SC'20)::

    blockIdx.x  : CTA b of a grid sized to the GPU (``ctas``), rows n = (i * ctas + b) * warps + w
    threadIdx.y : warp w, one row of W at a time
    threadIdx.x : lane l
      Xs <- X^T (K x M', 16-byte stores by all threads), once per CTA;  __syncthreads
      for each of the warp's rows n:
        acc[M] = 0
        for group g = indptr[n] + l, + 32, ... < indptr[n + 1]:
          v[8] <- values[g] (16 bytes), c[8] <- columns[g] (16 bytes)
          for j < 8: x[M'] <- Xs[c[j], :] (one vector load: the column's M values)
                     acc[m] += v[j] * x[m]     for m < M   (float32)
        acc[m] = butterfly all-reduce over the warp (5 __shfl_xor_sync)
        lane 0: Y[m, n] = epilogue(acc[m])

The packing is :mod:`~tvm_sparse_rnn.kernels.cuda.csr_vector.packing`. ``X`` lives in shared
memory column-major, ``M' = M`` rounded up to a power of two values per column (up to the
device's opt-in limit), so a nonzero's ``M`` values of ``X`` are one shared-memory vector load
(``M = 4`` float16: one 8-byte load instead of four 2-byte loads to the same bank).

Profile with ``ncu --set full python benchmarks/bench_sparse_dense.py --device gpu --quick``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from tvm import tirx
from tvm.script import tirx as T  # noqa: N812

from ....errors import UnsupportedError
from ....ops.epilogue import ACC_DTYPE, IDENTITY, Epilogue
from .packing import GROUP_BYTES, CsrVectorLayout

logger = logging.getLogger(__name__)

LANES = 32
#: Most rows of ``X`` (register accumulators per lane).
MAX_ROWS = 16
#: Butterfly offsets of the warp all-reduce.
SHUFFLE_OFFSETS = (16, 8, 4, 2, 1)
FULL_MASK = 0xFFFFFFFF
#: Position of ``bias`` among the kernel's parameters (dropped without a bias).
BIAS_PARAM = 4


@dataclass(frozen=True)
class CsrVectorConfig:
    """Knobs of the CSR-vector kernel.

    The defaults were the fastest (or within 2 %) of warps 8 / 16 x CTAs per SM 2 / 4 at every
    ``M`` of 1 to 8 on an H100 (N = K = 4096, 90 %, float16 and float32).

    Attributes
    ----------
    warps : int
        Warps (rows of ``W`` in flight) per CTA.
    ctas_per_sm : int
        CTAs per SM of the grid (each stages ``X`` once and loops over its rows); fewer where
        their copies of ``X`` would not fit the SM's shared memory together.
    """

    warps: int = 16
    ctas_per_sm: int = 2


#: Candidate values per knob (the grid ``bench_sparse_dense.py --sweep`` times).
KNOB_CHOICES: dict[str, tuple[int, ...]] = {"warps": (8, 16), "ctas_per_sm": (2, 4)}


def _itemsize(dtype: str) -> int:
    return np.dtype(dtype).itemsize


def padded_rows(m: int) -> int:
    """Rows of ``X`` per column in shared memory: ``m`` rounded up to a power of two, so that
    one column's values are one aligned vector load."""
    return 1 << (m - 1).bit_length()


def shared_bytes(m: int, k: int, dtype: str) -> int:
    """Shared memory of a CTA: all of ``X``, column-major with :func:`padded_rows` rows."""
    return padded_rows(m) * k * _itemsize(dtype)


def check_supported(columns: int, dtype: str, m: int, shared_limit: int) -> None:
    """Raise :class:`UnsupportedError` unless the kernel takes ``m`` rows of an ``X`` of
    ``columns`` columns in ``dtype`` (the weight's) within ``shared_limit`` bytes of shared
    memory per CTA."""
    if not 1 <= m <= MAX_ROWS:
        raise UnsupportedError(f"csr_vector: rows of X must be 1..{MAX_ROWS}, got {m}")
    if columns * _itemsize(dtype) % GROUP_BYTES:
        raise UnsupportedError(
            f"csr_vector: rows of X ({columns} columns) must be whole 16-byte loads"
        )
    need = shared_bytes(m, columns, dtype)
    if need > shared_limit:
        raise UnsupportedError(
            f"csr_vector: X ({padded_rows(m)} x {columns} {dtype}) needs {need} bytes of shared "
            f"memory, more than the device's {shared_limit}"
        )


def make_csr_vector_kernel(
    layout: CsrVectorLayout,
    m: int,
    config: CsrVectorConfig,
    num_sms: int | None,
    shared_limit: int,
    epilogue: Epilogue = IDENTITY,
    x_dtype: str | None = None,
) -> tirx.PrimFunc:
    """The kernel ``main(X[m, K], values, columns, indptr[, bias[N]], Y[m, N])`` (``bias`` with
    ``epilogue.bias``).

    Parameters
    ----------
    layout : CsrVectorLayout
        The packed weight's geometry (:func:`~.packing.pack_csr_vector`).
    m : int
        Rows of ``X`` (static, 1 .. :data:`MAX_ROWS`).
    config : CsrVectorConfig
        Warps per CTA and CTAs per SM.
    num_sms : int or None
        The device's SM count (:func:`tvm_sparse_rnn.target.device_limits`); ``None`` (a target
        of unknown model): one CTA per ``warps`` rows.
    shared_limit : int
        Opt-in shared memory per CTA (:func:`tvm_sparse_rnn.target.shared_memory_per_block`).
    epilogue : Epilogue
        Bias, activation and output dtype applied to the float32 sums.
    x_dtype : str, optional
        Dtype of ``X`` when it differs from the weight's: the staging copy casts it (a float32
        model input of a float16 layer needs no cast kernel of its own).

    Raises
    ------
    UnsupportedError
        See :func:`check_supported`.
    """
    n, k = layout.shape
    check_supported(k, layout.dtype, m, shared_limit)
    dtype, group = layout.dtype, layout.group
    words = group // 2
    warps = config.warps
    ctas = -(-n // warps)
    if num_sms is not None:  # the CTAs that are resident at once, each staging X once
        resident = max(1, min(config.ctas_per_sm, shared_limit // shared_bytes(m, k, dtype)))
        ctas = min(num_sms * resident, ctas)
    row_rounds = -(-n // (ctas * warps))
    x_dtype = x_dtype or dtype
    mp = padded_rows(m)
    vector = GROUP_BYTES // _itemsize(dtype)  # elements of one 16-byte shared-memory store
    chunks = k * mp // vector
    copy_rounds = -(-chunks // (warps * LANES))
    column_vector = min(mp, vector)
    out_dtype = epilogue.output_dtype(dtype)
    bias_shape = (n,) if epilogue.bias else (1,)

    @T.prim_func
    def main(
        x: T.Buffer((m, k), x_dtype),
        values: T.Buffer((layout.groups * group,), dtype),
        columns: T.Buffer((layout.groups * words,), "uint32"),
        indptr: T.Buffer((n + 1,), "int32"),
        bias: T.Buffer(bias_shape, dtype),
        y: T.Buffer((m, n), out_dtype),
    ):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        for b in T.thread_binding(ctas, thread="blockIdx.x"):
            for w in T.thread_binding(warps, thread="threadIdx.y"):
                for lane in T.thread_binding(LANES, thread="threadIdx.x"):
                    xs = T.alloc_buffer((k * mp,), dtype, scope="shared.dyn")
                    xl = T.alloc_buffer((vector,), dtype, scope="local")
                    xv = T.alloc_buffer((mp,), dtype, scope="local")
                    wv = T.alloc_buffer((group,), dtype, scope="local")
                    wc = T.alloc_buffer((words,), "uint32", scope="local")
                    acc = T.alloc_buffer((m,), ACC_DTYPE, scope="local")
                    for i in T.unroll(copy_rounds):
                        t = (i * warps + w) * LANES + lane
                        if t < chunks:
                            for v in T.unroll(vector):
                                q = t * vector + v
                                xl[v] = T.if_then_else(
                                    q % mp < m,
                                    T.Cast(dtype, x[T.min(q % mp, m - 1), q // mp]),
                                    T.Cast(dtype, 0),
                                )
                            for v in T.vectorized(vector):
                                xs[t * vector + v] = xl[v]
                    T.tvm_storage_sync("shared")
                    for r in T.serial(row_rounds):
                        row = (r * ctas + b) * warps + w
                        if row < n:
                            for i in T.unroll(m):
                                acc[i] = T.float32(0)
                            start = indptr[row]
                            end = indptr[row + 1]
                            for g in T.serial((end - start - lane + LANES - 1) // LANES):
                                e = start + g * LANES + lane
                                for v in T.vectorized(group):
                                    wv[v] = values[e * group + v]
                                for v in T.vectorized(words):
                                    wc[v] = columns[e * words + v]
                                for j in T.unroll(group):
                                    col = T.Cast(
                                        "int32",
                                        T.shift_right(wc[j // 2], T.uint32(16 * (j % 2)))
                                        & T.uint32(0xFFFF),
                                    )
                                    for c in T.unroll(mp // column_vector):
                                        for v in T.vectorized(column_vector):
                                            xv[c * column_vector + v] = xs[
                                                col * mp + c * column_vector + v
                                            ]
                                    for i in T.unroll(m):
                                        acc[i] = acc[i] + T.Cast(ACC_DTYPE, wv[j]) * T.Cast(
                                            ACC_DTYPE, xv[i]
                                        )
                            for i in T.unroll(m):
                                for s in T.unroll(len(SHUFFLE_OFFSETS)):
                                    acc[i] = acc[i] + T.tvm_warp_shuffle_xor(
                                        T.uint32(FULL_MASK), acc[i], 16 >> s, LANES, LANES
                                    )
                                if lane == 0:
                                    y[i, row] = _epilogue(epilogue, acc[i], bias, row, dtype)

    return main if epilogue.bias else _without_param(main, BIAS_PARAM)


def _without_param(func: tirx.PrimFunc, index: int) -> tirx.PrimFunc:
    """``func`` without its parameter ``index`` (one its body does not read)."""
    params = [p for i, p in enumerate(func.params) if i != index]
    return tirx.PrimFunc(params, func.body, func.ret_type, func.attrs)


def _epilogue(epilogue: Epilogue, acc, bias, row, dtype):
    """``epilogue`` of ``acc`` for output column ``row``."""
    return epilogue.apply(acc, bias[row] if epilogue.bias else None, dtype)
