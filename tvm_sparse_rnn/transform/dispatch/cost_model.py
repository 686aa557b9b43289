"""Per-layer BSR block-size choice and the sparse-or-dense cost rule (pure numpy).

Old TVM (``relay.transform.DenseToSparse``) converted every weight whose element-wise density was
under a threshold, all with one block size for the whole model. That converts layers whose
nonzeros are scattered (a big block then stores mostly zeros) and misses the block size that fits
each layer's pruning pattern. Here each layer is judged on its own:

1. For every candidate block size ``(bs_r, bs_c)`` that divides the weight ``(N, K)``, count the
   blocks holding a nonzero (``nnzb``) and the **stored fraction**
   ``s = nnzb * bs_r * bs_c / (N * K)``: the share of the dense multiply-adds the kernel still
   does, explicit zeros inside stored blocks (the **fill**) included.
2. Estimate the sparse kernel's work relative to the dense layer's as
   ``block cost = s * (1 + block_overhead / (bs_r * bs_c))``: each stored block costs its
   ``bs_r * bs_c`` multiply-adds plus a fixed ``block_overhead`` (loading its column index,
   gathering the input slice, loop control), counted in multiply-adds.
3. Pick the candidate of least block cost (ties go to the larger block).
4. Add the kernel's fixed cost (launch, thread-pool wake-up), ``kernel_overhead`` multiply-adds,
   relative to the dense layer's work ``max(M, memory_bound_rows) * N * K`` (below
   ``memory_bound_rows`` rows the dense layer is bound by reading its weight, so it does not get
   cheaper): ``cost = block cost + kernel_overhead / (max(M, memory_bound_rows) * N * K)``.
   Small layers therefore stay dense.
5. On x86 with a static ``M``, the CSR kernel vectorized along ``M`` is estimated at
   ``density * csr_factor``; it replaces the block-sparse kernel where that is cheaper than the
   best block cost (unstructured weights), and from ``csr_min_rows`` rows on (with a
   power-of-two factor of at least 8) for every weight; the kernel overhead of step 4 applies
   to it too.
6. On cuda, a float16 layer with a static ``M >= tensor_core_min_rows`` that goes sparse runs
   the tensor-core kernel instead of the block-sparse one (N = K = 4096 at 90 % on the H100:
   11.5 us at M = 16 and 58.5 us at M = 128, against 133 us and 174 us for the dense float16
   layer TVM builds and 30.1 / 23.3 us for the block-sparse kernel with 1x16 / 4x4 blocks at
   M = 16; ``docs/results/README.md``). From ``tensor_core_max_rows`` rows on, the float16
   layer stays dense instead: the tensor-core kernel expands ``W`` again for every 64-row tile
   of ``X``, while the dense matmul runs the pipelined ``mma.sync`` kernel
   (:mod:`tvm_sparse_rnn.kernels.cuda.matmul_mma`). On the H100 (float16, 90 % unstructured)
   the sparse kernel took 20.2 us for BERT's qkv layer (``128 x 2304 x 768``) and 18.8 us for
   its second FFN layer (``128 x 768 x 3072``), CUDA graphs, session 8; the dense kernel
   9.1 us and 19.3 us (``time_evaluator``, session 9). At ``M = 95`` (DeepSpeech2's GRU input
   projections, H200, session 13) the dense kernel took 40.5 + 12.7 us against 56.3 + 32.9 us
   sparse, so the limit is 64 rows.
7. Keep the layer **dense** unless its element-wise sparsity reaches ``sparsity_threshold`` *and*
   ``cost <= break_even``: the sparse kernels reach only part of a dense GEMM's arithmetic rate,
   so sparse must do sufficiently less work to be faster.
8. On cuda with a static ``M``, the dense matmul TVM builds (dlight's ``Matmul`` rule) gives
   each CTA a ``dense_tile`` of the output and does not split the reduction over ``K``: a layer
   of few output tiles leaves most SMs idle, its time set by one tile's serial work. Such a
   layer, pruned or not, runs on the block-sparse kernel (which splits ``K`` over a warp's
   lanes) with every block of the weight stored when ``tiles * cost <= starved_tiles`` and
   ``K >= starved_min_k`` (a shorter reduction keeps both launch-bound). Fit on
   the H100 (float16, 95 rows, one layer per build, CUDA graphs): the DeepSpeech2-like
   classifier ``Linear(2048, 29)`` (3 tiles, cost 1.1) 8.6 us on the block kernel against 86 us
   dense; its Conv1d as im2col + linear ``512 x 1771`` (24 tiles, cost 1.06) 203 us against 100
   us dense -- ``starved_tiles = 12`` sends the first to the block kernel and keeps the second
   dense. ``sparsity_threshold = 1`` (``build_onnx(sparse=False)``) keeps every layer dense.

The per-target constants are in :data:`COST_PARAMS` and can be overridden per call. The llvm
values fit ``benchmarks/calibrate_cost_rule.py`` (x86 ``sparse_dense`` with its default schedule
vs the layer compiled dense by this package, 90 % sparsity, 2-core development CPU; see
``docs/relax_pass.md``): measured sparse/dense time is about ``cost / 0.8``, and
``break_even = 0.45`` keeps a margin. ``csr_factor = 2`` fits the CSR kernel against the dense
layer at 10 % density, N = K = 1024 and 4096, M = 1 ... 128 (measured 0.04-0.2x dense, ad-hoc
timing on the 2-core VM; ``benchmarks/bench_cpu_kernels.py`` has the kernel table). The cuda
values fit the same script on the H100 against the dense layer TVM's default GPU pipeline
(dlight) builds: at ``M = 16`` every block size at 90 % is 0.14-0.21x the dense time (1x1
included: block overheads matter little), about ``cost / 1.6`` with ``block_overhead = 2``; at
``M = 1`` both are launch-bound (0.66-0.96x).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ...errors import UnsupportedError

logger = logging.getLogger(__name__)

#: Block sizes tried by ``block_size="auto"`` (those that do not divide the weight are skipped).
DEFAULT_CANDIDATES: tuple[tuple[int, int], ...] = (
    (1, 1),
    (1, 4),
    (1, 8),
    (1, 16),
    (2, 2),
    (4, 1),
    (4, 4),
    (8, 1),
    (8, 8),
    (16, 1),
    (16, 16),
    (32, 1),
)


@dataclass(frozen=True)
class CostParams:
    """Constants of the cost rule for one target kind.

    Parameters
    ----------
    block_overhead : float
        Fixed cost of one stored block, in multiply-adds.
    break_even : float
        Largest estimated sparse/dense cost ratio at which sparse is still chosen.
    kernel_overhead : float
        Fixed cost of one sparse kernel call, in multiply-adds of the dense layer.
    memory_bound_rows : int
        Rows ``M`` below which the dense layer's time does not shrink (it reads its weight).
    csr_factor : float or None
        Cost of the CSR kernel vectorized along ``M`` (x86) per nonzero, relative to a dense
        multiply-add: its estimate is ``density * csr_factor``; ``None`` where the target has
        no such kernel.
    tensor_core_min_rows : int or None
        From this many rows ``M`` on, a float16 layer that goes sparse runs on the tensor-core
        kernel (CUDA) instead of the block-sparse one; ``None`` where the target has none.
    tensor_core_max_rows : int or None
        From this many rows ``M`` on, a float16 layer stays dense (step 6); ``None``: no limit.
    dense_tile : tuple of int or None
        Output rows x columns per CTA of the dense matmul the target's default schedule builds
        (step 8 of the rule); ``None`` where the dense schedule fills the machine (llvm).
    starved_tiles : float
        A layer whose dense matmul has ``tiles`` output tiles runs on the block-sparse kernel
        when ``tiles * cost <= starved_tiles`` (step 8) ...
    starved_min_k : int
        ... and its reduction is at least this long.
    csr_min_rows : int
        From this many rows ``M`` on (with a power-of-two factor of at least 8, the CSR kernel's
        tile), the CSR kernel replaces the block-sparse one also for block-pruned weights (the
        block kernel re-reads ``W`` per row tile; at 90 % with 4x4 blocks, N = K = 1024, the CSR
        kernel measured 1.3x / 2x / 2.1x the block kernel at M = 16 / 32 / 128, 0.55x at M = 37).
    """

    block_overhead: float
    break_even: float
    kernel_overhead: float = 0.0
    memory_bound_rows: int = 1
    csr_factor: float | None = None
    csr_min_rows: int = 16
    tensor_core_min_rows: int | None = None
    tensor_core_max_rows: int | None = None
    dense_tile: tuple[int, int] | None = None
    starved_tiles: float = 12.0
    starved_min_k: int = 256


#: Cost-rule constants per TVM target kind.
COST_PARAMS: dict[str, CostParams] = {
    "llvm": CostParams(
        block_overhead=16.0,
        break_even=0.45,
        kernel_overhead=1e6,
        memory_bound_rows=8,
        csr_factor=2.0,
    ),
    "cuda": CostParams(
        block_overhead=2.0,
        break_even=0.6,
        tensor_core_min_rows=16,
        tensor_core_max_rows=64,
        dense_tile=(32, 64),
    ),
}


@dataclass(frozen=True)
class BlockStats:
    """How a weight looks stored with one block size.

    Attributes
    ----------
    block_size : tuple of int
        ``(bs_r, bs_c)``.
    nnzb : int
        Blocks holding at least one nonzero.
    stored_fraction : float
        ``nnzb * bs_r * bs_c / (N * K)``.
    fill : float
        Explicit zeros over stored elements (0 when nothing is stored).
    cost : float
        Block cost: stored work with block overheads over dense work (step 2 of the rule).
    """

    block_size: tuple[int, int]
    nnzb: int
    stored_fraction: float
    fill: float
    cost: float


@dataclass(frozen=True)
class LayerPlan:
    """The decision for one dense layer.

    Attributes
    ----------
    shape : tuple of int
        ``(N, K)`` of the weight in ``nn.Linear`` layout.
    sparsity : float
        Element-wise zero fraction of the weight.
    choice : BlockStats or None
        The chosen block size and its statistics; ``None`` when no candidate divides the shape.
    cost : float
        Estimated sparse over dense time, kernel overhead included (``inf`` without a choice).
    sparse : bool
        Whether the layer becomes sparse.
    reason : str
        One line saying why (printed by ``tvm-sparse-rnn inspect``).
    csr : bool
        The sparse kernel is the CSR kernel vectorized along ``M`` (unstructured weights on
        x86), not the block-sparse one.
    starved : bool
        The layer runs on the block-sparse kernel because the dense matmul would leave SMs
        idle (step 8), whatever its sparsity.
    """

    shape: tuple[int, int]
    sparsity: float
    choice: BlockStats | None
    cost: float
    sparse: bool
    reason: str
    csr: bool = False
    starved: bool = False


def cost_params(target_kind: str) -> CostParams:
    """Return the cost-rule constants of a target kind (``"llvm"`` or ``"cuda"``)."""
    try:
        return COST_PARAMS[target_kind]
    except KeyError:
        raise UnsupportedError(
            f"no sparse cost rule for target kind {target_kind!r}; use one of {sorted(COST_PARAMS)}"
        ) from None


def block_stats(
    nonzero: np.ndarray, block_size: tuple[int, int], block_overhead: float
) -> BlockStats:
    """Statistics of storing a weight with ``block_size``.

    Parameters
    ----------
    nonzero : numpy.ndarray
        ``(N, K)`` bool, where the weight is nonzero.
    block_size : tuple of int
        ``(bs_r, bs_c)``; must divide ``(N, K)``.
    block_overhead : float
        Fixed cost of a stored block in multiply-adds.
    """
    n, k = nonzero.shape
    bs_r, bs_c = block_size
    blocks = nonzero.reshape(n // bs_r, bs_r, k // bs_c, bs_c).any(axis=(1, 3))
    nnzb = int(blocks.sum())
    stored = nnzb * bs_r * bs_c
    fill = 1.0 - int(nonzero.sum()) / stored if stored else 0.0
    stored_fraction = stored / (n * k)
    cost = stored_fraction * (1.0 + block_overhead / (bs_r * bs_c))
    return BlockStats((bs_r, bs_c), nnzb, stored_fraction, fill, cost)


def choose_block_size(
    weight: np.ndarray,
    candidates: tuple[tuple[int, int], ...] = DEFAULT_CANDIDATES,
    block_overhead: float = COST_PARAMS["llvm"].block_overhead,
) -> BlockStats | None:
    """Pick the candidate block size of least estimated cost for ``weight``.

    Parameters
    ----------
    weight : numpy.ndarray
        ``(N, K)`` dense weight in ``nn.Linear`` layout (any dtype).
    candidates : tuple of (int, int)
        Block sizes to try; those not dividing ``(N, K)`` are skipped.
    block_overhead : float
        Fixed cost of a stored block in multiply-adds.

    Returns
    -------
    BlockStats or None
        The cheapest candidate (ties: the larger block); ``None`` if no candidate divides.
    """
    nonzero = np.asarray(weight) != 0
    n, k = nonzero.shape
    stats = [
        block_stats(nonzero, (r, c), block_overhead)
        for r, c in candidates
        if n % r == 0 and k % c == 0
    ]
    if not stats:
        return None
    return min(stats, key=lambda s: (round(s.cost, 9), -s.block_size[0] * s.block_size[1]))


def plan_layer(
    weight: np.ndarray,
    target_kind: str,
    sparsity_threshold: float = 0.5,
    block_size: str | tuple[int, int] = "auto",
    candidates: tuple[tuple[int, int], ...] = DEFAULT_CANDIDATES,
    params: CostParams | None = None,
    rows: int | None = None,
    dtype: str = "float32",
) -> LayerPlan:
    """Decide whether a dense layer becomes sparse, and with which block size.

    Parameters
    ----------
    weight : numpy.ndarray
        ``(N, K)`` dense weight in ``nn.Linear`` layout.
    target_kind : str
        ``"llvm"`` or ``"cuda"``; selects :data:`COST_PARAMS` unless ``params`` is given.
    sparsity_threshold : float
        Minimum element-wise zero fraction, in ``[0, 1]``.
    block_size : "auto" or tuple of int
        ``"auto"`` tries ``candidates``; a fixed ``(bs_r, bs_c)`` is used for every layer it
        divides (the others stay dense).
    candidates : tuple of (int, int)
        Block sizes tried by ``"auto"``.
    params : CostParams, optional
        Overrides the target's cost constants.
    rows : int, optional
        Rows ``M`` of the layer's input; ``None`` (dynamic) assumes ``memory_bound_rows``.
    dtype : str
        The layer's compute dtype (``"float16"`` layers may run on tensor cores, step 6).

    Raises
    ------
    ValueError
        If ``sparsity_threshold`` is outside ``[0, 1]`` or ``block_size`` is malformed.
    """
    if not 0.0 <= sparsity_threshold <= 1.0:
        raise ValueError(f"sparsity_threshold must be in [0, 1], got {sparsity_threshold}")
    params = params or cost_params(target_kind)
    w = np.asarray(weight)
    shape = (int(w.shape[0]), int(w.shape[1]))
    sparsity = 1.0 - float(np.count_nonzero(w)) / w.size
    if block_size == "auto":
        choice = choose_block_size(w, candidates, params.block_overhead)
    else:
        r, c = parse_block_size(block_size)
        divides = shape[0] % r == 0 and shape[1] % c == 0
        choice = block_stats(w != 0, (r, c), params.block_overhead) if divides else None
    if choice is None:
        return LayerPlan(shape, sparsity, None, math.inf, False, "no block size divides the shape")
    dense_work = max(rows or 1, params.memory_bound_rows) * shape[0] * shape[1]
    cost = choice.cost + params.kernel_overhead / dense_work
    csr = (
        params.csr_factor is not None
        and rows is not None
        and block_size == "auto"
        and (
            (1.0 - sparsity) * params.csr_factor < choice.cost
            or (rows >= params.csr_min_rows and rows & -rows >= 8)  # power-of-two row tiles
        )
    )
    if csr:
        cost = (1.0 - sparsity) * params.csr_factor + params.kernel_overhead / dense_work
    most = params.tensor_core_max_rows
    if dtype == "float16" and most is not None and rows is not None and rows >= most:
        reason = f"float16 at {rows} >= {most} rows: dense on tensor cores is as fast"
        return LayerPlan(shape, sparsity, choice, cost, False, reason, csr)
    if sparsity >= sparsity_threshold and cost <= params.break_even:
        reason = f"est. cost {cost:.2f} x dense <= break-even {params.break_even:.2f}"
        return LayerPlan(shape, sparsity, choice, cost, True, reason, csr)
    tiles = dense_tiles(params, rows, shape[0])
    starved = tiles is not None and shape[1] >= params.starved_min_k and sparsity_threshold < 1.0
    if starved and tiles * cost <= params.starved_tiles:
        reason = (
            f"the dense matmul runs {tiles} CTA(s), no split over K: {tiles} x est. cost "
            f"{cost:.2f} <= {params.starved_tiles:g}"
        )
        return LayerPlan(shape, sparsity, choice, cost, True, reason, False, starved=True)
    if sparsity < sparsity_threshold:
        reason = f"sparsity {sparsity:.1%} < threshold {sparsity_threshold:.1%}"
    else:
        reason = f"est. cost {cost:.2f} x dense > break-even {params.break_even:.2f}"
    return LayerPlan(shape, sparsity, choice, cost, False, reason, csr)


def dense_tiles(params: CostParams, rows: int | None, columns: int) -> int | None:
    """CTAs of the dense matmul of ``rows x columns`` outputs (step 8 of the rule); ``None`` when
    ``rows`` is dynamic or the target's dense schedule is not tiled that way."""
    if params.dense_tile is None or rows is None:
        return None
    tile_rows, tile_columns = params.dense_tile
    return -(-rows // tile_rows) * -(-columns // tile_columns)


#: Largest share of stored zeros at which the x86 CSR kernel packs rows in groups (a group
#: of ``g`` rows loads ``X^T[c, :]`` once for ``g`` rows, and multiplies its stored zeros).
MAX_ROW_GROUP_FILL = 0.25


def csr_row_group(weight: np.ndarray, most: int) -> int:
    """Rows per column list of the x86 CSR kernel for ``weight`` (``N x K``): the largest power
    of two up to ``most`` dividing ``N`` whose ``g x 1`` blocks store at most
    :data:`MAX_ROW_GROUP_FILL` zeros (4 for a weight pruned in 4x4 blocks, 1 for an
    unstructured one)."""
    return _widest_filled_block(np.asarray(weight) != 0, most, lambda rows: (rows, 1))


def csr_col_block(weight: np.ndarray, row_group: int, most: int) -> int:
    """Columns per index of the x86 CSR kernel for ``weight`` (``N x K``) packed in row groups
    of ``row_group``: the largest power of two up to ``most`` dividing ``K`` whose
    ``row_group x col_block`` blocks store at most :data:`MAX_ROW_GROUP_FILL` zeros (16 for a
    weight pruned in 1x16 blocks, 4 for 4x4 blocks in groups of 4, 1 for an unstructured
    one)."""
    return _widest_filled_block(np.asarray(weight) != 0, most, lambda cols: (row_group, cols))


def _widest_filled_block(
    nonzero: np.ndarray, most: int, block_of: Callable[[int], tuple[int, int]]
) -> int:
    """The largest power of two ``b`` up to ``most`` whose blocks ``block_of(b)`` divide the
    ``(N, K)`` mask ``nonzero`` and store at most :data:`MAX_ROW_GROUP_FILL` zeros; 1 if
    none."""
    size = most
    while size > 1:
        block = block_of(size)
        divides = all(d % b == 0 for d, b in zip(nonzero.shape, block, strict=True))
        if divides and block_stats(nonzero, block, 0.0).fill <= MAX_ROW_GROUP_FILL:
            return size
        size //= 2
    return 1


def uses_tensor_cores(params: CostParams, rows: int | None, dtype: str) -> bool:
    """Whether a sparse layer of ``rows`` rows (``None``: dynamic) and ``dtype`` runs on the
    tensor-core kernel."""
    minimum = params.tensor_core_min_rows
    return dtype == "float16" and minimum is not None and rows is not None and rows >= minimum


#: Fewest rows of ``X`` at which a block-sparse weight runs on the CSR-vector kernel.
CSR_VECTOR_MIN_BLOCK_ROWS = 4
#: Most bytes of a nonzero's ``X`` values (rows x itemsize) at which a block-sparse weight runs
#: on the CSR-vector kernel: one 16-byte shared-memory load per nonzero.
CSR_VECTOR_MAX_BLOCK_ROW_BYTES = 16


def uses_csr_vector(block_size: tuple[int, int], rows: int, dtype: str) -> bool:
    """Whether a sparse layer on CUDA with ``block_size`` blocks and ``rows`` static rows of
    ``dtype`` goes to the CSR-vector kernel (where that kernel takes it) rather than the
    block-sparse one: always for an unstructured weight; for a block-sparse one from
    :data:`CSR_VECTOR_MIN_BLOCK_ROWS` rows while a nonzero's ``X`` values are one 16-byte load.

    H100, N = K = 4096, 90 %, us block kernel -> CSR-vector (session 17, a probe script):
    float16 ``M = 4`` 4x4 6.55 -> 6.52, 1x16 9.90 -> 7.34, 16x16 14.70 -> 8.34; ``M = 8``
    12.91 -> 9.96, 16.90 -> 12.55, 24.98 -> 14.71; float32 ``M = 4`` 10.33 -> 8.42, 12.53 ->
    7.53, 15.46 -> 8.14. Not taken: ``M = 1`` 4x4 (3.19 vs 4.21 float16) and float32 ``M = 8``
    4x4 (18.42 vs 21.42).
    """
    if block_size == (1, 1):
        return True
    itemsize = 2 if dtype == "float16" else 4
    return rows >= CSR_VECTOR_MIN_BLOCK_ROWS and rows * itemsize <= CSR_VECTOR_MAX_BLOCK_ROW_BYTES


def parse_block_size(block_size: str | tuple[int, int]) -> tuple[int, int]:
    """Parse ``"RxC"`` or ``(R, C)`` into a tuple of positive ints.

    Raises
    ------
    ValueError
        If the value is not two positive integers.
    """
    parts = block_size.lower().split("x") if isinstance(block_size, str) else list(block_size)
    try:
        r, c = (int(p) for p in parts)
    except (TypeError, ValueError):
        raise ValueError(f"block size must be 'RxC' or (R, C), got {block_size!r}") from None
    if r < 1 or c < 1:
        raise ValueError(f"block size must be positive, got {block_size!r}")
    return r, c
