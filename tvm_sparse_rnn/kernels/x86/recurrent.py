"""x86 (llvm) kernels of the recurrent sequence op: one PrimFunc runs all steps of a direction.

Design (the CPU counterpart of the sparse persistent RNN, Zhu et al., ICLR 2018):

* The recurrent weight ``R`` (``G*H x H``, all gates) is packed **unit-major**: row ``j*G + g``
  holds gate ``g`` of hidden unit ``j``, so one parallel iteration owns every gate of its unit and
  the cell update (sigmoid/tanh, ``c_t``) is fused right after the mat-vec. Each row is padded with
  ``<col 0, 0.0>`` pairs to a multiple of :data:`UNROLL`, so the inner loop has no remainder and
  runs up to :data:`UNROLL` independent accumulators (hides the FMA latency).
* The state is kept as ``h[H, N]`` (batch innermost): one nonzero ``R[r, c]`` multiplies the
  contiguous vector ``h[c, 0:N]``, which is what the batch loop vectorizes.
* Sparse rows use CSR with 16-bit column indices when ``H <= 65535`` (6 bytes per nonzero); the
  dense variant of the same code path drops the index array (``col = k - row_start``) and pads
  rows to ``Hpad`` (a multiple of :data:`UNROLL`), reading zero rows of ``h`` past ``H``.
* A step is one parallel loop over hidden units (two for GRU with ``linear_before_reset=0``, whose
  candidate mat-vec needs every unit's reset gate first); the loop over ``t`` is serial inside the
  PrimFunc, so there is no per-step Python or VM dispatch. By default the whole sequence is one
  thread-pool launch: every core keeps the same slice of units (its rows of ``R`` stay in its
  L2) and a spin barrier separates the phases (:func:`_parallel_region`); TVM's codegen would
  otherwise launch and join the pool for every parallel loop. The loop structure is set by
  :class:`RecurrentConfig` (tuned through :mod:`tvm_sparse_rnn.tuning.rnn_x86_space`; the
  dispatch pass resolves it).
* ``sequence_lens``: at step ``s`` a batch entry with ``s >= len[b]`` keeps its state and gets a
  zero output. The kernel runs forward; a reverse direction over full-length sequences has
  its ``U`` written backwards by the projection and writes ``Y`` backwards (``reverse``), and
  with ``sequence_lens`` the caller (:mod:`tvm_sparse_rnn.transform.dispatch.recurrent_x86`)
  reverses each sequence's valid prefix around it.
* Activations are inline polynomial ``exp`` (:func:`_exp`) so the gate math vectorizes too:
  over the batch, and over blocks of units (:attr:`RecurrentConfig.unit_block`, 16 at
  ``N = 1``, where it would otherwise be scalar): a block's mat-vecs first, their
  pre-activations in stack buffers, then one vector pass over ``block * N`` lanes.
* ``U``'s step stride is padded to an odd number of cache lines (:func:`step_rows`): the
  projection stores a row's tile across steps, which at a 4 KB-multiple stride all hit one L1
  set.
* Scratch buffers are stack allocations (:func:`stack_buffer`), never per-iteration workspace
  calls.

:func:`projection_prim_func` computes the input projection ``X @ W^T + Wb`` for all steps before
the recurrence with the same packing (sparse or dense ``W``), one nonzero times a contiguous row of
``X^T``. Measured on the shared 2-vCPU KVM Xeon (Emerald Rapids, noisy), H=1792 B=4 10 %: the
recurrent mat-vec costs 0.65-0.85 ns (~2 cycles) per stored entry on one core whether ``R`` fits in
L2 or not (index, value and ``h``-row loads plus one 128-bit FMA per entry; 8-wide unrolling,
64-bit index loads and 64-bit addressing measured no faster), plus ~28 ns per unit and step for the
gate math and loop overheads; two cores run it 1.9-2.1x faster. At ``N = 1`` a row's entries are
the lanes of one vector FMA, their indices read four at a time (:func:`entries_in_lanes`; 0.22 ns
an entry on the AMD EPYC VM instead of 0.32). ``U`` is step-major so a step streams one contiguous
slice (unit-major rows of one step would be read ``G*1 KB`` apart, a cache miss per gate and unit:
6-17 % slower for LSTM). The projection is bound by L2 bandwidth for wide tiles (a 128-256 B row
slice of ``X^T`` per nonzero and tile); narrow tiles (``M`` = 4 .. 16) are bound by the FMA latency
of one accumulator chain unless the nonzeros go to several chains (:func:`projection_chains`: 4096
x 4096 at 10 %, ``M = 4``: 0.77 -> 0.34 ms with 4 chains on the 2-core VM; 16 columns 0.86 -> 0.45
ms; 64 columns gain nothing).

Profile with ``perf record -g python benchmarks/bench_rnn_cpu.py`` (the kernel shows up as the
``*_compute_`` closures of ``recurrent_x86``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from tvm import ir, tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T  # noqa: N812 - TVMScript convention

from ...ops.cells import (
    CellConfig,
    gru_gates,
    gru_output,
    lstm_cell,
    rnn_cell,
    unit_major_order,
)
from ...ops.epilogue import Activation

logger = logging.getLogger(__name__)

#: Independent accumulators of the recurrent mat-vec; its packed rows are padded to a multiple.
UNROLL = 4
#: Accumulator tiles (elements) of the input projection, preferred first on equal padding.
PROJECTION_TILES = (64, 128, 32, 16)
#: Accumulator floats the projection keeps in flight (several independent FMA chains).
PROJECTION_CHAIN_FLOATS = 64
#: Most accumulator floats of a row group (16 AVX-512 registers), and most rows in a group.
PROJECTION_GROUP_FLOATS = 256
PROJECTION_MAX_GROUP = 8
#: float32 values per 64-byte cache line.
CACHE_LINE_FLOATS = 16
#: Lanes (units x samples) of the gate math of a unit block: one AVX-512 vector of float32.
GATE_LANES = 16
#: Relative cost per column of the narrowest projection tile (50 vs 85 GFLOPS measured).
_NARROW_TILE_COST = 1.6
#: Row-grouped weights with at most this many columns ``K`` prefer 32-column tiles (see
#: :func:`row_group_tile`).
ROW_GROUP_NARROW_MAX_K = 2048
_ROW_GROUP_NARROW_TILE = 32
#: Multiply-adds (per step for the recurrence) below which a kernel runs on one core.
MIN_PARALLEL_WORK = 1 << 14
#: Most columns of a block sharing one column index in the projection (:func:`pack_row_groups`).
MAX_COL_BLOCK = 16
#: Most values of a column block times accumulator chains of a row group (see
#: :func:`projection_col_block`).
COL_BLOCK_GROUP_VALUES = 16
#: Entries of a row's values and columns the projection prefetches ahead where it streams ``W``.
PREFETCH_ENTRIES = 512
#: Packed weights from this size (bytes) on are streamed from L3 or memory, beyond L2.
PREFETCH_MIN_BYTES = 2 << 20
_F32 = "float32"


@dataclass(frozen=True)
class PackedWeight:
    """A ``(G*H, K)`` weight (``W`` or ``R`` of one direction) in the kernels' layout.

    Rows are unit-major (row ``j*G + g`` is gate ``g`` of hidden unit ``j``, see
    :func:`unit_major_order`), so that one parallel iteration owns every gate of its unit.

    Attributes
    ----------
    values : numpy.ndarray
        ``(nnz,)`` float32; row ``r`` is ``values[indptr[r]:indptr[r+1]]`` (sparse) or
        ``values[r*padded_cols:(r+1)*padded_cols]`` (dense).
    indices : numpy.ndarray or None
        ``(nnz,)`` column indices, uint16 when ``K <= 65535`` (6 bytes per nonzero with the
        value) else int32; ``None`` for dense.
    indptr : numpy.ndarray or None
        ``(G*H + 1,)`` int32 row pointers, multiples of ``row_multiple``; ``None`` for dense.
    num_gates : int
        ``G``.
    shape : tuple of int
        ``(G*H, K)``.
    padded_cols : int
        ``K`` rounded up to ``row_multiple`` (dense rows are zero-padded to it).
    row_multiple : int
        Every row holds a multiple of this many entries (padding: ``<col 0, 0.0>``).
    nonzeros : int
        Nonzeros of the weight before padding.
    row_group : int
        Consecutive rows packed together (sparse, ``G = 1``): group ``i`` (rows
        ``i*row_group ...``) has one column list ``indices[indptr[i]:indptr[i+1]]`` (the union
        of its rows' columns) and ``values[e * row_group + j]`` for entry ``e`` and row ``j``
        (zero where row ``j`` lacks the column), so one load of ``X^T[c, :]`` feeds
        ``row_group`` rows (a weight pruned in ``row_group x c`` blocks stores no zero).
    col_block : int
        Consecutive columns sharing one index (sparse, ``G = 1``): entry ``e`` of a group is
        the block of columns ``indices[e] ... indices[e] + col_block - 1`` and its values are
        ``values[(e * col_block + i) * row_group + j]`` for column ``i`` and row ``j`` of the
        block, so a weight pruned in ``row_group x col_block`` blocks reads one index a block
        and contiguous rows of ``X^T``.
    """

    values: np.ndarray
    indices: np.ndarray | None
    indptr: np.ndarray | None
    num_gates: int
    shape: tuple[int, int]
    padded_cols: int
    row_multiple: int
    nonzeros: int
    row_group: int = 1
    col_block: int = 1

    @property
    def dense(self) -> bool:
        """Whether this is the dense (index-free) variant."""
        return self.indices is None

    @property
    def index_dtype(self) -> str | None:
        """dtype name of :attr:`indices` (``None`` for dense)."""
        return None if self.indices is None else self.indices.dtype.name

    @property
    def entries(self) -> int:
        """Entries per row group (the length of :attr:`indices`; of :attr:`values` for
        ``row_group = col_block = 1``), padding included."""
        return int(self.values.size) // (self.row_group * self.col_block)

    @property
    def layout(self) -> PackedLayout:
        """What a kernel bakes in of this weight (shapes and dtypes, not values)."""
        return PackedLayout(
            self.shape,
            self.num_gates,
            self.padded_cols,
            self.row_multiple,
            self.entries,
            self.index_dtype,
            self.row_group,
            self.col_block,
        )

    def arrays(self) -> list[np.ndarray]:
        """The kernels' weight arguments, in parameter order."""
        if self.dense:
            return [self.values]
        return [self.values, self.indices, self.indptr]


@dataclass(frozen=True)
class PackedLayout:
    """The shapes and dtypes of a :class:`PackedWeight`: all its kernels depend on.

    Attributes
    ----------
    shape : tuple of int
        ``(G*H, K)``.
    num_gates : int
        ``G``.
    padded_cols : int
        ``K`` rounded up to ``row_multiple``.
    row_multiple : int
        Every packed row holds a multiple of this many entries.
    entries : int
        Entries per row group (the ``indices`` array), padding included.
    index_dtype : str or None
        dtype of the column indices; ``None`` for the dense variant.
    row_group : int
        Rows sharing one column list (:attr:`PackedWeight.row_group`).
    col_block : int
        Columns sharing one index (:attr:`PackedWeight.col_block`).
    """

    shape: tuple[int, int]
    num_gates: int
    padded_cols: int
    row_multiple: int
    entries: int
    index_dtype: str | None
    row_group: int = 1
    col_block: int = 1

    @property
    def dense(self) -> bool:
        """Whether this is the dense (index-free) variant."""
        return self.index_dtype is None


def pack_weight(
    w: np.ndarray | sp.sparray, num_gates: int, dense: bool, row_multiple: int = UNROLL
) -> PackedWeight:
    """Pack a ``(G*H, K)`` weight with ONNX gate-major rows for the x86 kernels.

    Parameters
    ----------
    w : numpy.ndarray or scipy sparse
        ``(G*H, K)`` weight of one direction (``W``: ``K = I``; ``R``: ``K = H``).
    num_gates : int
        ``G``; must divide the row count.
    dense : bool
        Pack all entries (dense kernel variant) instead of the nonzeros.
    row_multiple : int
        Pad every row to a multiple of this many entries (:data:`UNROLL` for ``R``, 1 for ``W``).

    Raises
    ------
    ValueError
        If ``num_gates`` does not divide the number of rows.
    """
    gh, k = w.shape
    if gh % num_gates:
        raise ValueError(f"weight has shape {w.shape}; expected {num_gates} * H rows")
    order = unit_major_order(num_gates, gh // num_gates)
    if dense:
        kpad = -(-k // row_multiple) * row_multiple
        wd = w.toarray() if sp.issparse(w) else np.asarray(w)
        vals = np.zeros((gh, kpad), np.float32)
        vals[:, :k] = wd[order]
        nnz = int(np.count_nonzero(wd))
        return PackedWeight(
            vals.reshape(-1), None, None, num_gates, (gh, k), kpad, row_multiple, nnz
        )
    csr = sp.csr_array(w, dtype=np.float32)[order]
    csr.sum_duplicates()
    csr.sort_indices()
    counts = np.diff(csr.indptr)
    indptr = np.zeros(gh + 1, np.int64)
    np.cumsum(-(-counts // row_multiple) * row_multiple, out=indptr[1:])
    idx_dtype = np.uint16 if k <= np.iinfo(np.uint16).max else np.int32
    vals = np.zeros(max(int(indptr[-1]), row_multiple), np.float32)  # TVM buffers can't be empty
    cols = np.zeros(vals.shape[0], idx_dtype)
    pos = indptr[:-1].repeat(counts) + (np.arange(csr.nnz) - csr.indptr[:-1].repeat(counts))
    vals[pos] = csr.data
    cols[pos] = csr.indices
    nnz = int(np.count_nonzero(csr.data))
    return PackedWeight(
        vals, cols, indptr.astype(np.int32), num_gates, (gh, k), k, row_multiple, nnz
    )


def pack_row_groups(w: np.ndarray | sp.sparray, row_group: int, col_block: int = 1) -> PackedWeight:
    """Pack an ``(N, K)`` linear weight for the CSR kernel with ``row_group`` rows per column
    list and ``col_block`` columns per index (:attr:`PackedWeight.row_group`,
    :attr:`PackedWeight.col_block`; ``G = 1``, no padding; a block holding any nonzero is
    stored whole).

    Raises
    ------
    ValueError
        If ``row_group`` does not divide ``N`` or ``col_block`` does not divide ``K``.
    """
    n, k = w.shape
    if row_group < 1 or n % row_group:
        raise ValueError(f"row_group {row_group} must divide the {n} rows of the weight")
    if col_block < 1 or k % col_block:
        raise ValueError(f"col_block {col_block} must divide the {k} columns of the weight")
    csr = sp.csr_array(w, dtype=np.float32)
    csr.eliminate_zeros()
    csr.sort_indices()
    rows = np.repeat(np.arange(n), np.diff(csr.indptr))
    group = rows // row_group
    k_blocks = k // col_block
    key_of = group * k_blocks + csr.indices // col_block
    keys = np.unique(key_of)  # each group's column blocks, in order
    indptr = np.searchsorted(keys, np.arange(n // row_group + 1) * k_blocks).astype(np.int32)
    entries = max(keys.size, 1)  # TVM buffers can't be empty
    vals = np.zeros((entries, col_block, row_group), np.float32)
    vals[np.searchsorted(keys, key_of), csr.indices % col_block, rows % row_group] = csr.data
    cols = np.zeros(entries, np.uint16 if k <= np.iinfo(np.uint16).max else np.int32)
    cols[: keys.size] = keys % k_blocks * col_block
    return PackedWeight(
        vals.reshape(-1), cols, indptr, 1, (n, k), k, 1, int(csr.nnz), row_group, col_block
    )


def _f32(value: float) -> tirx.PrimExpr:
    return tirx.const(value, _F32)


def _let(name: str, value: tirx.PrimExpr, body: Callable) -> tirx.PrimExpr:
    """``body(v)`` with ``v = value`` bound once (keeps expression trees from blowing up)."""
    var = tirx.Var(name, _F32)
    return tirx.Let(var, value, body(var))


def _exp(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """``exp(x)`` for float32 as inline arithmetic (Cephes ``expf``, ~1 ulp), so that it
    vectorizes; LLVM would otherwise call the scalar libm ``expf`` once per lane."""

    def with_x(x: tirx.PrimExpr) -> tirx.PrimExpr:
        def with_n(n: tirx.PrimExpr) -> tirx.PrimExpr:
            def with_r(r: tirx.PrimExpr) -> tirx.PrimExpr:
                p = _f32(1.9875691500e-4)
                for coef in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1):
                    p = p * r + _f32(coef)
                y = (p * r + _f32(0.5)) * r * r + r + _f32(1.0)
                return y * tirx.reinterpret(_F32, tirx.shift_left(tirx.Cast("int32", n) + 127, 23))

            # Cody-Waite reduction r = x - n * ln2, ln2 split into an exact and a small part
            return _let("r", x - n * _f32(0.693359375) + n * _f32(2.12194440e-4), with_r)

        return _let("n", tirx.floor(x * _f32(1.44269504088896341) + _f32(0.5)), with_n)

    return _let("x", tirx.max(tirx.min(x, _f32(88.3762626647949)), _f32(-87.3365447505531)), with_x)


class TirOps:
    """:class:`~tvm_sparse_rnn.ops.cells.CellOps` on float32 TIR expressions (vectorizable)."""

    def add(self, a: tirx.PrimExpr, b: tirx.PrimExpr) -> tirx.PrimExpr:
        return a + b

    def mul(self, a: tirx.PrimExpr, b: tirx.PrimExpr) -> tirx.PrimExpr:
        return a * b

    def one_minus(self, a: tirx.PrimExpr) -> tirx.PrimExpr:
        return tirx.const(1.0, _F32) - a

    def activation(self, name: str, a: tirx.PrimExpr) -> tirx.PrimExpr:
        if name == "Sigmoid":
            return _f32(1.0) / (_f32(1.0) + _exp(-a))
        if name == "Tanh":  # sign(a) * (1 - e) / (1 + e), e = exp(-2|a|) <= 1: no overflow
            return _let("a", a, self._tanh)
        return tirx.max(a, _f32(0.0))

    @staticmethod
    def _tanh(a: tirx.PrimExpr) -> tirx.PrimExpr:
        def from_e(e: tirx.PrimExpr) -> tirx.PrimExpr:
            t = (_f32(1.0) - e) / (_f32(1.0) + e)
            return tirx.Select(a < _f32(0.0), -t, t)

        return _let("e", _exp(_f32(-2.0) * tirx.abs(a)), from_e)

    def clip(self, a: tirx.PrimExpr, bound: float) -> tirx.PrimExpr:
        return tirx.max(tirx.min(a, tirx.const(bound, _F32)), tirx.const(-bound, _F32))


def _prefetch(buffer: tirx.Buffer, index: tirx.PrimExpr) -> None:
    """Emit a read prefetch of ``buffer[index]`` into all cache levels (``llvm.prefetch``; an
    address past the buffer's end does not fault)."""
    i32 = "int32"
    read, keep, data = tirx.const(0, i32), tirx.const(3, i32), tirx.const(1, i32)
    address = tirx.address_of(buffer[index])
    T.evaluate(tirx.call_llvm_intrin("void", "llvm.prefetch.p0", address, read, keep, data))


def stack_buffer(shape: tuple[int, ...]) -> tirx.Buffer:
    """A small per-iteration scratch buffer that LLVM keeps on the stack (in registers).

    ``scope="global"`` is deliberate: in TVM 0.27 ``LowerTVMBuiltin`` turns small constant-size
    *global* allocations on the CPU into ``alloca``, while ``"local"`` ones become a
    ``TVMBackendAllocWorkspace`` call per loop iteration (hundreds of ns per hidden unit).
    """
    return T.alloc_buffer(shape, _F32, scope="global")


@dataclass(frozen=True)
class RecurrentConfig:
    """Knobs of :func:`recurrent_prim_func`; they change the generated loops, not the math.

    Attributes
    ----------
    accumulators : int
        Independent partial sums per row in the mat-vec (hide the FMA latency); must divide
        :data:`UNROLL`, the packed rows' multiple.
    threads : int
        1: everything on one core. More: the loops over units run on TVM's thread pool (all its
        threads; its size is ``TVM_NUM_THREADS``, see :mod:`tvm_sparse_rnn.cpu_threads`).
    steps_per_launch : int
        With ``threads > 1``: steps per thread-pool launch, a divisor of ``T``. Within a launch
        every core keeps its slice of units (so its rows of ``R`` stay in its own cache) and a
        spin barrier ends every phase of a step (see :func:`_parallel_region`); 1 is one launch
        per step, ``T`` one launch for the whole sequence.
    unit_block : int
        Units whose mat-vecs run before their gate math, which is then vectorized over
        ``unit_block * N`` lanes (units x batch) instead of ``N``; must divide ``H``. At
        ``N = 1`` the gate math is otherwise scalar (:func:`unit_block_choices`).
    """

    accumulators: int = UNROLL
    threads: int = 1
    steps_per_launch: int = 1
    unit_block: int = 1


def unit_block_choices(hidden: int, batch: int) -> tuple[int, ...]:
    """Candidate :attr:`RecurrentConfig.unit_block`: 1, and below :data:`GATE_LANES` samples
    the block that fills :data:`GATE_LANES` lanes (``16 / N`` units) if it divides ``H``."""
    block = GATE_LANES // batch if batch < GATE_LANES else 1
    return (1, block) if block > 1 and hidden % block == 0 else (1,)


def recurrent_knob_choices(
    seq_len: int, hidden: int, batch: int, cores: int
) -> dict[str, tuple[int, ...]]:
    """Candidate values of every :class:`RecurrentConfig` knob (the tuning space) for ``T``
    steps of ``H`` units and ``N`` samples on a machine with ``cores`` physical cores."""
    launch = sorted({1, seq_len} | {d for d in (8,) if d < seq_len and seq_len % d == 0})
    return {
        "accumulators": tuple(d for d in range(1, UNROLL + 1) if UNROLL % d == 0),
        "threads": tuple(sorted({1, cores})),
        "steps_per_launch": tuple(launch),
        "unit_block": unit_block_choices(hidden, batch),
    }


def default_recurrent_config(
    layout: PackedLayout, seq_len: int, batch: int, cores: int
) -> RecurrentConfig:
    """The hand-picked config: all ``cores`` in one launch for the whole sequence, unless a step
    is too little work (:data:`MIN_PARALLEL_WORK`) to pay for the barriers; at ``N = 1`` the
    gate math of 16 units at a time in one vector (:func:`unit_block_choices`; H = 1024, one
    core of the AMD EPYC VM: RNN 61 -> 38, GRU 133 -> 110, LSTM 195 -> 147 us a step; with
    ``N = 2`` or 4 lanes of several units the GRU got slower, so only ``N = 1`` by default)."""
    block = unit_block_choices(layout.shape[1], batch)[-1] if batch == 1 else 1
    if cores > 1 and layout.entries * batch >= MIN_PARALLEL_WORK:
        return RecurrentConfig(UNROLL, cores, seq_len, block)
    return RecurrentConfig(UNROLL, 1, 1, block)


def entries_in_lanes(packed: PackedWeight | PackedLayout, columns: int, accumulators: int) -> bool:
    """Whether a mat-vec over ``packed`` (:func:`recurrent_prim_func`'s at ``N = columns``,
    :func:`projection_prim_func`'s at a tile of ``columns``) runs with a row's :data:`UNROLL`
    entries as the lanes of one vector FMA: one column, one accumulator per entry (whole
    vectors of them), rows padded
    to :data:`UNROLL` entries and 16-bit column indices (:data:`UNROLL` of them read as one
    64-bit word, :func:`_word_index`), where the scalar loop spends three loads per entry.

    Measured on the 2-core AMD EPYC VM (an ad-hoc ``time_evaluator`` script, one core, the
    ``1536 x 1024`` rows at 10 % one core holds of DeepSpeech2's GRU, variants interleaved):
    50.1 -> 34.9 us a mat-vec (0.32 -> 0.22 ns an entry); the indices as an int32 vector
    extracted lane by lane 57.7 us, the word with four scalar FMAs 49.8, eight lanes 39.3,
    AVX-512 gathers 75. The whole GRU recurrence (T = 95, two cores): 6.95 -> 5.06 ms (two
    runs; the unchanged two-accumulator build took 10.63 and 10.45 ms in them).
    """
    return (
        columns == 1
        and accumulators % UNROLL == 0
        and not packed.dense
        and packed.row_group == 1
        and packed.col_block == 1
        and packed.row_multiple % UNROLL == 0
        and packed.index_dtype == np.dtype(np.uint16).name
    )


def _lane_fma(
    acc: tirx.Buffer,
    vals: tirx.Buffer,
    words: tirx.Buffer,
    word: tirx.PrimExpr,
    x_of_column: Callable[[tirx.PrimExpr], tirx.PrimExpr],
    vector: int = 0,
) -> None:
    """``acc[v:v + UNROLL] += vals[entries] * x(columns)`` for the :data:`UNROLL` entries of
    index word ``word`` (:func:`entries_in_lanes`), ``v = vector * UNROLL``; ``acc`` is a stack
    buffer of whole :data:`UNROLL`-float vectors."""
    cols = [_word_index(words[word], u) for u in range(UNROLL)]
    x_lanes = tirx.Shuffle([x_of_column(col) for col in cols], list(range(UNROLL)))
    lanes = tirx.Ramp(vector * UNROLL, 1, UNROLL)
    size = int(np.prod([int(d) for d in acc.shape]))
    flat = T.decl_buffer((size,), _F32, data=acc.data)
    T.buffer_store(flat, flat[lanes] + vals[tirx.Ramp(word * UNROLL, 1, UNROLL)] * x_lanes, [lanes])


def _index_words(packed: PackedWeight | PackedLayout, indices: tirx.Buffer) -> tirx.Buffer:
    """``indices`` (uint16) viewed as int64 words of :data:`UNROLL` indices."""
    return T.decl_buffer((packed.entries // UNROLL,), "int64", data=indices.data)


def _word_index(word: tirx.PrimExpr, lane: int) -> tirx.PrimExpr:
    """Column index ``lane`` of the four little-endian uint16 indices in the int64 ``word``."""
    i64 = "int64"
    shifted = tirx.shift_right(word, tirx.const(16 * lane, i64))
    return tirx.Cast("int32", tirx.bitwise_and(shifted, tirx.const(0xFFFF, i64)))


def _parallel_region(threads: int) -> tuple[Callable, Callable, Callable]:
    """``(region, phase, loop)`` context-manager factories.

    With ``threads > 1``, ``region()`` (``pragma_parallel_launch_point``) is one thread-pool
    launch whose tasks all run its body; each ``loop`` (``T.parallel``) inside is split
    statically over the tasks (the same slice of units, hence the same rows of ``R``, on one core
    for every step), and ``phase()`` (``pragma_parallel_barrier_when_finish``) ends such a loop
    with ``TVMBackendParallelBarrier``, a spin barrier, instead of a launch and join per loop.
    TVM's llvm codegen otherwise makes every ``T.parallel`` loop a launch of its own.
    """
    if threads == 1:
        return contextlib.nullcontext, contextlib.nullcontext, T.serial
    zero = tirx.const(0, "int32")
    one = tirx.const(1, "int32")
    return (
        lambda: T.attr(zero, "pragma_parallel_launch_point", one),
        lambda: T.attr(zero, "pragma_parallel_barrier_when_finish", one),
        T.parallel,
    )


def _arg(name: str, shape: tuple[int, ...], dtype: str = _F32) -> tirx.Buffer:
    return T.arg(name, T.buffer(shape, dtype))


def recurrent_prim_func(
    cfg: CellConfig,
    direction: int,
    seq_len: int,
    batch: int,
    packed: PackedWeight | PackedLayout,
    config: RecurrentConfig,
    reverse: bool = False,
) -> tirx.PrimFunc:
    """Build the PrimFunc running ``seq_len`` forward steps of one direction.

    Parameters
    ----------
    cfg : CellConfig
        Cell math (kind, activations, clip, GRU/LSTM options).
    direction : int
        Which direction's activations to use (0 or 1).
    seq_len, batch : int
        ``T`` and ``N`` (static).
    packed : PackedWeight or PackedLayout
        ``R`` packed by :func:`pack_weight` with ``row_multiple=UNROLL`` (or just its layout):
        only its shapes and dtypes are baked in, not its values.
    config : RecurrentConfig
        Loop structure (:func:`default_recurrent_config`, or the dispatch pass's tuned or
        shipped config: :mod:`tvm_sparse_rnn.tuning.rnn_x86_space`).
    reverse : bool
        Write step ``s`` to ``Y[T - 1 - s]``: a reverse direction over full-length sequences,
        whose ``U`` the projection wrote backwards (no flip of ``U`` or ``Y`` around the kernel).

    Returns
    -------
    tvm.tirx.PrimFunc
        ``main(U, R_values, [R_indices, R_indptr,] Rb, [P,] H0, [C0,] L, Y, Y_h, [Y_c])`` with

        * ``U`` ``(T, step_rows(G*H, T, N), N)`` float32: ``X @ W^T + Wb`` with unit-major rows
          (:func:`step_rows` pads them), step-major, in processing order
          (:func:`projection_prim_func` computes it);
        * ``Rb`` ``(G*H,)`` unit-major, ``P`` ``(3, H)`` (LSTM peepholes), ``H0``/``C0``
          ``(N, H)``;
        * ``L`` ``(N,)`` int32 sequence lengths;
        * outputs ``Y`` ``(T, N, H)``, ``Y_h``/``Y_c`` ``(N, H)``.

    Raises
    ------
    ValueError
        If ``packed`` does not match ``cfg`` or ``config.accumulators`` does not divide
        :data:`UNROLL`.
    """
    H, G, N, Hp = cfg.hidden_size, cfg.num_gates, batch, packed.padded_cols
    if packed.shape != (G * H, H) or packed.row_multiple != UNROLL or packed.row_group != 1:
        raise ValueError(f"R is packed as {packed.shape} rows of {packed.row_multiple}")
    acc_n, spl = config.accumulators, config.steps_per_launch
    if acc_n < 1 or UNROLL % acc_n:
        raise ValueError(f"accumulators={acc_n} must divide the row multiple {UNROLL}")
    if config.threads < 1 or spl < 1 or seq_len % spl:
        raise ValueError(f"steps_per_launch={spl} must divide T={seq_len}; threads >= 1")
    if config.unit_block < 1 or H % config.unit_block:
        raise ValueError(f"unit_block={config.unit_block} must divide H={H}")
    lstm = cfg.kind.has_cell_state
    lanes_of_entries = entries_in_lanes(packed, batch, acc_n)
    region, phase, loop = _parallel_region(config.threads)
    ops = TirOps()
    zero = tirx.const(0.0, _F32)
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("recurrent_x86")
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            U = _arg("U", (seq_len, step_rows(G * H, seq_len, N), N))
            vals = _arg("R_values", (packed.entries,))
            if not packed.dense:
                idx = _arg("R_indices", (packed.entries,), packed.index_dtype)
                ptr = _arg("R_indptr", (G * H + 1,), "int32")
            Rb = _arg("Rb", (G * H,))
            P = _arg("P", (3, H)) if cfg.peepholes else None
            H0 = _arg("H0", (N, H))
            C0 = _arg("C0", (N, H)) if lstm else None
            L = _arg("L", (N,), "int32")
            Y = _arg("Y", (seq_len, N, H))
            Yh = _arg("Y_h", (N, H))
            Yc = _arg("Y_c", (N, H)) if lstm else None

            hs = T.alloc_buffer((2, Hp, N), _F32)  # ping-pong state, batch innermost
            cs = T.alloc_buffer((H, N), _F32) if lstm else None  # c is per unit: updated in place
            if cfg.two_phase:
                zs = T.alloc_buffer((H, N), _F32)  # update gate z of the step
                rh = T.alloc_buffer((Hp, N), _F32)  # reset * h_prev, input of the h-gate mat-vec

            if lanes_of_entries:
                words = _index_words(packed, idx)

            def mat_vec(j: tirx.PrimExpr, g: int, src: Callable) -> tirx.Buffer:
                """Local ``(N,)`` buffer with ``sum_c R[g*H + j, c] * src(c, b)``."""
                r = j * G + g
                if packed.dense:
                    start, end = 0, Hp // UNROLL
                else:
                    start, end = ptr[r] // UNROLL, ptr[r + 1] // UNROLL
                part = stack_buffer((acc_n, N))
                total = stack_buffer((N,))
                with T.unroll(0, acc_n) as a:
                    with T.vectorized(0, N) as b:
                        T.buffer_store(part, zero, [a, b])
                with T.serial(start, end) as kk:
                    if lanes_of_entries:  # entry u of the word is lane u of one vector FMA
                        _lane_fma(part, vals, words, kk, lambda col: src(col, 0))
                    else:
                        for u in range(UNROLL):  # unrolled; entry u feeds accumulator u % acc_n
                            if packed.dense:
                                k, col = r * Hp + kk * UNROLL + u, kk * UNROLL + u
                            else:
                                k = kk * UNROLL + u
                                col = tirx.Cast("int32", idx[k])
                            a = u % acc_n
                            with T.vectorized(0, N) as b:
                                value = part[a, b] + vals[k] * src(col, b)
                                T.buffer_store(part, value, [a, b])
                with T.vectorized(0, N) as b:
                    acc = part[0, b]
                    for a in range(1, acc_n):
                        acc = acc + part[a, b]
                    T.buffer_store(total, acc, [b])
                return total

            with region():  # ---- initial state (rows past H stay zero for the dense variant)
                with phase(), loop(0, Hp) as j:
                    with T.serial(0, N) as b:
                        init = tirx.if_then_else(j < H, H0[b, tirx.min(j, H - 1)], zero)
                        T.buffer_store(hs, init, [0, j, b])
                        T.buffer_store(hs, zero, [1, j, b])
                        if cfg.two_phase:
                            T.buffer_store(rh, zero, [j, b])
                if lstm:
                    with phase(), loop(0, H) as j:
                        with T.serial(0, N) as b:
                            T.buffer_store(cs, C0[b, j], [j, b])

            # ---- the recurrence; gate math vectorized over the lanes (units x batch)
            ub = config.unit_block
            with T.serial(0, seq_len // spl) as launch, region(), T.serial(0, spl) as step:
                s = launch * spl + step
                cur = tirx.floormod(s, 2)

                # the step's h as its own buffer: the mat-vec's addresses then need no step term
                h_ptr = T.bind(
                    tirx.address_of(hs[cur, 0, 0]),
                    type_annotation=ir.PointerType(ir.PrimType(_F32)),
                )
                h_cur = T.decl_buffer((Hp, N), _F32, data=h_ptr)

                def h_prev(col: tirx.PrimExpr, b: tirx.PrimExpr) -> tirx.PrimExpr:
                    return h_cur[col, b]

                def units(gates: tuple[int, ...], src: Callable, math: Callable) -> None:
                    """A phase over all units: for ``ub`` units at a time the input
                    pre-activations of all gates and the recurrent ones of ``gates`` (mat-vecs
                    over ``src``) into stack buffers, then ``math(j, b, xs, rs, lane, scratch)``
                    vectorized over their ``ub * N`` lanes (``xs``/``rs``: gate -> value at the
                    lane, ``scratch`` a ``(2, ub * N)`` stack buffer)."""
                    with phase(), loop(0, H // ub) as jb:
                        inputs = stack_buffer((G, ub * N))
                        sums = stack_buffer((len(gates), ub * N))
                        scratch = stack_buffer((2, ub * N))
                        with T.serial(0, ub) as jj:
                            j = jb * ub + jj
                            with T.vectorized(0, N) as b:
                                for g in range(G):
                                    T.buffer_store(inputs, U[s, j * G + g, b], [g, jj * N + b])
                            for i, g in enumerate(gates):
                                total = mat_vec(j, g, src)
                                with T.vectorized(0, N) as b:
                                    rec = total[b] + Rb[j * G + g]
                                    T.buffer_store(sums, rec, [i, jj * N + b])
                        with T.vectorized(0, ub * N) as v:
                            xs = {g: inputs[g, v] for g in range(G)}
                            rs = {g: sums[i, v] for i, g in enumerate(gates)}
                            math(jb * ub + v // N, v % N, xs, rs, v, scratch)

                if cfg.two_phase:  # GRU, lbr=0: z, r and reset * h_prev of every unit first

                    def gates_zr(j, b, xs: dict, rs: dict, lane, scratch) -> None:
                        z, reset = gru_gates(ops, cfg, direction, xs, rs)
                        T.buffer_store(zs, z, [j, b])
                        T.buffer_store(rh, reset * hs[cur, j, b], [j, b])

                    units((0, 1), h_prev, gates_zr)

                def update(j, b, xs: dict, rs: dict, lane, new: tirx.Buffer) -> None:
                    """The cell update of one lane; ``new`` holds h_t, c_t before masking."""
                    active = s < L[b]
                    if cfg.kind == "RNN":
                        h_new = rnn_cell(ops, cfg, direction, xs, rs)
                    elif cfg.two_phase:
                        h_new = gru_output(
                            ops, cfg, direction, zs[j, b], None, xs[2], rs[2], hs[cur, j, b]
                        )
                    elif cfg.kind == "GRU":
                        z, reset = gru_gates(ops, cfg, direction, xs, rs)
                        h_new = gru_output(
                            ops, cfg, direction, z, reset, xs[2], rs[2], hs[cur, j, b]
                        )
                    else:
                        peep = None if P is None else [P[k, j] for k in range(3)]
                        h_new, c_new = lstm_cell(ops, cfg, direction, xs, rs, cs[j, b], peep)
                        T.buffer_store(new, c_new, [1, lane])
                    T.buffer_store(new, h_new, [0, lane])  # both read c_{t-1} before its update
                    if lstm:
                        T.buffer_store(cs, tirx.Select(active, new[1, lane], cs[j, b]), [j, b])
                    h_next = tirx.Select(active, new[0, lane], hs[cur, j, b])
                    T.buffer_store(hs, h_next, [1 - cur, j, b])
                    y_step = seq_len - 1 - s if reverse else s
                    T.buffer_store(Y, tirx.Select(active, new[0, lane], zero), [y_step, b, j])

                if cfg.two_phase:
                    units((2,), lambda col, b: rh[col, b], update)
                else:
                    units(tuple(range(G)), h_prev, update)

            # ---- final state
            with region(), loop(0, H) as j:
                with T.serial(0, N) as b:
                    T.buffer_store(Yh, hs[seq_len % 2, j, b], [b, j])
                    if lstm:
                        T.buffer_store(Yc, cs[j, b], [b, j])
    return ib.get()


def projection_tile(m: int) -> int:
    """Accumulator tile (columns of ``XT``) of :func:`projection_prim_func` for ``m`` columns.

    Power-of-two tiles of 32-128 floats measured 82-88 GFLOPS on the 2-core AVX-512 VM (2048 ->
    3072 at 10 %, ``m`` = 96 or 128) and tiles of 48 or 96 floats 11 (LLVM legalizes those
    vectors badly), 16 floats 50: the tile is the one of :data:`PROJECTION_TILES` (16 counted
    :data:`_NARROW_TILE_COST` times) with the fewest padded columns. Below 16 columns it is
    ``m`` rounded up to a power of two: on the 2-core Zen 3 VM (AVX2, one thread, 90 %
    unstructured ``N = K`` = 1024 / 4096) ``m`` = 3, 5, 6, 7 and 12 ran at 9.1, 14.2, 16.9,
    13.9 and 8.6 / 5.7, 9.3, 11.6, 10.7, 8.2 GFLOPS on a tile of ``m`` and 12.9, 21.2, 25.6,
    29.0, 33.0 / 9.6, 14.2, 17.4, 20.4, 25.5 on tiles of 4, 8, 8, 8, 16 (session 25).
    """
    if m < PROJECTION_TILES[-1]:
        return 1 << (m - 1).bit_length()

    def cost(tile: int) -> float:
        narrow = _NARROW_TILE_COST if tile == PROJECTION_TILES[-1] else 1.0
        return padded_columns(m, tile) * narrow

    return min(PROJECTION_TILES, key=cost)


def row_group_tile(m: int, k: int, row_group: int) -> int:
    """Accumulator tile of :func:`projection_prim_func` for a weight of ``k`` columns packed in
    row groups of ``row_group`` rows (:func:`pack_row_groups`) over ``m`` columns of ``X^T``.

    :func:`projection_tile`, except that grouped rows with ``k <=``
    :data:`ROW_GROUP_NARROW_MAX_K` take 32 columns instead of 64 or 128 (no more padding): 90 %
    4x4 blocks in groups of 4 ran 5-21 % faster with 32 columns than with 64 for ``k`` = 768
    and 1024 (``m`` = 64 and 128; BERT's QKV ``2304 x 768``: 184 vs 166 GFLOPS) and 1536
    (``m`` = 64; equal at 128), about the same at 2048 and 3-11 % slower at 3072 (2-core AMD
    EPYC VM, an ad-hoc script timing four weights in turn, session 21).
    """
    tile = projection_tile(m)
    if row_group > 1 and k <= ROW_GROUP_NARROW_MAX_K and tile > _ROW_GROUP_NARROW_TILE:
        return _ROW_GROUP_NARROW_TILE
    return tile


def projection_chains(tile: int, row_group: int = 1, streamed: bool = False) -> int:
    """Accumulator chains of :func:`projection_prim_func` for a ``tile``-column accumulator
    of ``row_group`` rows: enough that :data:`PROJECTION_CHAIN_FLOATS` floats are in flight
    (an FMA's latency is ~4 cycles, its throughput 2 per cycle), at most 4; at one column over
    a ``streamed`` weight (:func:`streams_weight`), two vectors of :data:`UNROLL` lanes.

    Two lane vectors at ``m`` = 1 (90 % unstructured, two threads on the Zen 3 VM, 80 rounds
    paired, two runs, a call after 64 MB were touched / the calls after it): ``4096 x 4096``
    1.01-1.02x / 1.08-1.09x, ``2048 x 2048`` 1.06-1.07x / 1.05-1.07x, ``1024 x 1024`` (in L2)
    0.99-1.01x / 0.96-0.97x.
    """
    if tile == 1 and row_group == 1 and streamed:
        return 2 * UNROLL
    return max(1, min(4, PROJECTION_CHAIN_FLOATS // (tile * row_group)))


def projection_row_multiple(tile: int) -> int:
    """Entries a sparse ``W``'s rows are padded to a multiple of for :func:`projection_prim_func`
    at ``tile`` columns: :data:`UNROLL` for one column (a row's entries then multiply as vector
    lanes, :func:`entries_in_lanes`), else 1 (no padding)."""
    return UNROLL if tile == 1 else 1


def projection_row_group(tile: int, group_floats: int = PROJECTION_GROUP_FLOATS) -> int:
    """The most rows per column list (:func:`pack_row_groups`) whose accumulators
    (``row_group * tile`` floats) fit ``group_floats``: a power of two, at most
    :data:`PROJECTION_MAX_GROUP`."""
    group = 1
    while 2 * group <= PROJECTION_MAX_GROUP and 2 * group * tile <= group_floats:
        group *= 2
    return group


def projection_col_block(row_group: int, chains: int, tile: int) -> int:
    """The most columns per block of :func:`pack_row_groups` (one column index for each
    ``row_group x col_block`` block of values) for :func:`projection_prim_func` with
    ``chains`` accumulator chains of ``tile`` columns: :data:`MAX_COL_BLOCK` for single rows.
    For row groups, :data:`COL_BLOCK_GROUP_VALUES` values over all chains (at one column, over
    one chain: the accumulators are scalars), at least 2 columns.

    Measured with 4x4 blocks in groups of 4 (one thread on the Zen 3 VM, 90 %, ``N = K`` =
    1024 / 4096, GFLOPS at 1 / 2 / 4 columns a block): ``m`` = 1 17.2 / 18.0 / 21.5 and 14.6 /
    13.9 / 17.4; ``m`` = 2 12.3 / 19.1 / 13.9 and 11.7 / 16.2 / 13.4; ``m`` = 4 23.9 / 36.6 /
    27.9 and 23.3 / 31.6 / 27.1; ``m`` = 8 (two chains) 68.4 / 72.3 / 45.0 and 57.8 / 59.3 / 42.6
    (LLVM loads four columns' broadcasts ahead and spills); ``m`` = 16 (one chain) four columns
    83 -> 95 and 54 -> 80 against one.
    """
    if row_group == 1:
        return MAX_COL_BLOCK
    if tile == 1:
        return max(1, COL_BLOCK_GROUP_VALUES // row_group)
    return max(2, COL_BLOCK_GROUP_VALUES // (row_group * chains))


def projection_prefetch(tile: int, packed: PackedWeight | PackedLayout) -> int:
    """Entries :func:`projection_prim_func` prefetches ahead in ``W``'s values and columns:
    :data:`PREFETCH_ENTRIES` where the kernel streams a large sparse ``W`` with little reuse
    (accumulator tiles narrower than a cache line, :data:`PREFETCH_MIN_BYTES` or more of
    weight), else 0.

    Measured on the 2-core AMD EPYC VM (``llvm.prefetch`` 512 entries ahead, interleaved with
    the same build without it): three 4096 x 4096 90 % layers at ``M = 4``, steady state, 2.06
    -> 1.90 ms median (minima 1.81 -> 1.48; ``M = 1``: 1.32 -> 1.08); the
    ``mlp4096_unstructured`` model 1.18x (paired median); cache-resident layers lose 3-12 %
    (``M = 128`` BERT layers: 5 %).
    """
    if tile >= CACHE_LINE_FLOATS:
        return 0
    return PREFETCH_ENTRIES if streams_weight(packed) else 0


def streams_weight(packed: PackedWeight | PackedLayout) -> bool:
    """Whether ``packed`` is a sparse weight of :data:`PREFETCH_MIN_BYTES` or more: read from
    L3 or memory, beyond L2."""
    if packed.dense:
        return False
    index_bytes = np.dtype(packed.index_dtype).itemsize
    weight_bytes = packed.entries * (packed.row_group * packed.col_block * 4 + index_bytes)
    return weight_bytes >= PREFETCH_MIN_BYTES


def padded_columns(m: int, tile: int) -> int:
    """Columns of ``XT`` the projection reads: ``m`` rounded up to a multiple of ``tile``."""
    return -(-m // tile) * tile


def step_rows(rows: int, seq_len: int, batch: int) -> int:
    """Rows of each step slice of ``U (T, step_rows, N)``: ``rows`` padded so that the step
    stride is an odd number of 64-byte cache lines.

    The projection stores one row's accumulator tile (up to ``tile / N`` steps) at that stride;
    with ``rows * N * 4`` bytes a multiple of 4 KB (``G*H = 3072``, ``N = 1``) every store of a
    row falls in one L1 set and evicts the others: DeepSpeech2's ``512 -> 3072`` projection
    took 789 us instead of 375 (2-core AMD EPYC VM). From 16 samples a tile spans at most 8
    steps, which the 8-way L1 holds: no padding then, nor for one step (the linear layers'
    ``Y^T``).
    """
    if seq_len == 1 or batch >= CACHE_LINE_FLOATS:
        return rows
    padded = rows
    while (padded * batch) % CACHE_LINE_FLOATS or (padded * batch // CACHE_LINE_FLOATS) % 2 == 0:
        padded += 1
    return padded


def projection_prim_func(
    packed: PackedWeight | PackedLayout,
    seq_len: int,
    batch: int,
    parallel: bool | None = None,
    tile: int | None = None,
    chains: int | None = None,
    reverse: bool = False,
    prefetch: int | None = None,
    activation: Activation = Activation.NONE,
    panel_tasks: int = 0,
) -> tirx.PrimFunc:
    """The input projection ``U[t, r, :] = activation(W[r, :] @ X[t]^T + Wb[r])`` for all steps
    at once.

    ``XT`` is ``X`` transposed to ``(I, T*N)`` and zero-padded to a multiple of the tile
    (:func:`padded_columns`), so one nonzero ``W[r, c]`` multiplies the contiguous row
    ``XT[c, :]``: the accumulator is a tile of columns held in vector registers (several
    independent FMA chains), rows run in parallel (Elsen et al., "Fast Sparse ConvNets", CVPR
    2020; XNNPACK's SpMM). The same code serves sparse (CSR) and dense ``W``. ``U`` is written
    step-major, so that each step of :func:`recurrent_prim_func` reads one contiguous
    ``(G*H, N)`` slice; the linear layers' CSR kernel uses it with ``T = 1, N = M`` (``U`` is
    then ``Y^T`` as ``(1, N_out, M)``).

    Parameters
    ----------
    packed : PackedWeight or PackedLayout
        ``W`` of one direction (:func:`pack_weight`, any ``row_multiple``).
    seq_len, batch : int
        ``T`` and ``N``; ``X`` has ``m = T*N`` columns.
    parallel : bool, optional
        Split the rows over all cores; ``None`` decides by the work (:data:`MIN_PARALLEL_WORK`).
    tile : int, optional
        Columns per accumulator tile; ``None``: :func:`projection_tile`.
    chains : int, optional
        Independent accumulator tiles the nonzeros of a row go to in turn (summed at the end):
        more FMA chains in flight for narrow tiles; ``None``: :func:`projection_chains`.
    reverse : bool
        Write step ``t`` of ``X`` to ``U[T - 1 - t]`` (a reverse direction in processing order).
    prefetch : int, optional
        Software-prefetch the row's values and columns this many entries ahead (``0``: none);
        ``None``: :func:`projection_prefetch`.
    activation : Activation
        Applied to the sums before the store (a linear layer's fused activation).
    panel_tasks : int
        ``0``: the row groups in the outer loop, ``XT`` read in place. ``n > 0``: the column
        tiles in the outer loop, each split in ``n`` tasks of row groups, and each task first
        copies its tile of ``XT`` into a contiguous ``(I, tile)`` panel (the packing of a GEMM
        micro-kernel): a tile of a row-major ``XT`` of ``2^k`` columns is one line per row,
        ``2^k`` floats apart, and the reads fall on a fraction of the cache's sets (see
        :mod:`~tvm_sparse_rnn.kernels.x86.csr_tiling`).

    Returns
    -------
    tvm.tirx.PrimFunc
        ``main(XT (I, padded_columns(m, tile)), W_values, [W_indices, W_indptr,] Wb (G*H,),
        U (T, step_rows(G*H, T, N), N))``; ``Wb`` and the rows of ``U`` are unit-major like
        ``W``'s.
    """
    rows, k_in = packed.shape
    rg, cb = packed.row_group, packed.col_block
    m = seq_len * batch
    tile = tile or projection_tile(m)
    m_pad = padded_columns(m, tile)
    chains = chains or projection_chains(tile, rg, streams_weight(packed))
    prefetch = projection_prefetch(tile, packed) if prefetch is None else prefetch
    lanes_of_entries = entries_in_lanes(packed, tile, chains)
    if parallel is None:
        parallel = packed.entries * cb * rg * m >= MIN_PARALLEL_WORK
    loop = T.parallel if parallel else T.serial
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("projection_x86")
            T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
            XT = _arg("XT", (k_in, m_pad))
            vals = _arg("W_values", (packed.entries * cb * rg,))
            if not packed.dense:
                idx = _arg("W_indices", (packed.entries,), packed.index_dtype)
                ptr = _arg("W_indptr", (rows // rg + 1,), "int32")
            Wb = _arg("Wb", (rows,))
            U = _arg("U", (seq_len, step_rows(rows, seq_len, batch), batch))
            if lanes_of_entries:
                words = _index_words(packed, idx)

            def row_group(g: tirx.PrimExpr, mo: tirx.PrimExpr, x_at: Callable) -> None:
                """Accumulate and store row group ``g`` over column tile ``mo``; ``x_at(col,
                mi)`` reads ``X^T[col, mo * tile + mi]``."""
                acc = stack_buffer((chains * rg, tile))
                with T.unroll(0, chains * rg) as c:
                    with T.vectorized(0, tile) as mi:
                        T.buffer_store(acc, tirx.const(0.0, _F32), [c, mi])

                def accumulate(
                    entry: tirx.PrimExpr, col: tirx.PrimExpr, chain: int | tirx.PrimExpr
                ) -> None:
                    """Add ``W[rows of g, col] * X^T[col, tile]``; the rows' values are at
                    ``entry`` (in row-group units)."""
                    with T.vectorized(0, tile) as mi:
                        x = x_at(col, mi)  # one load for the group's rows
                        for j in range(rg):
                            if packed.dense:
                                w_val = vals[g * packed.padded_cols + entry]
                            else:
                                w_val = vals[entry * rg + j]
                            value = acc[chain * rg + j, mi] + w_val * x
                            T.buffer_store(acc, value, [chain * rg + j, mi])

                def accumulate_entry(k: tirx.PrimExpr, chain: int | tirx.PrimExpr) -> None:
                    accumulate(k, k if packed.dense else tirx.Cast("int64", idx[k]), chain)

                if packed.dense:
                    start, end = 0, k_in
                else:
                    # 64-bit entry and column math: no sign extensions in the loop (4x4 blocks in
                    # row groups of 4, M = 128, one thread: 3072 x 768 76-77 -> 80-82 GFLOPS,
                    # 768 x 3072 47-65 -> 66-68; see docs/results, session 24)
                    start, end = tirx.Cast("int64", ptr[g]), tirx.Cast("int64", ptr[g + 1])
                if cb > 1:
                    # one index per block, its columns' X^T rows contiguous (one thread, Zen 3
                    # VM, 90 %, N = K = 1024 / 4096, GFLOPS: 1x16 blocks m = 16 42 / 30 -> 50 /
                    # 37, m = 1 6.9 / 5.7 -> 13.9 / 10.2; 4x4 in groups of 4, m = 16 83 / 54
                    # -> 95 / 80; see docs/results, session 25)
                    with T.serial(start, end) as blk:
                        if prefetch:
                            ahead = blk + prefetch // cb
                            _prefetch(vals, ahead * cb * rg)
                            _prefetch(idx, ahead)
                        first = tirx.Cast("int64", idx[blk])
                        for i in range(cb):
                            accumulate(blk * cb + i, first + i, i % chains)
                else:
                    with T.serial(0, (end - start) // chains) as group:
                        if prefetch:
                            ahead = start + group * chains + prefetch
                            _prefetch(vals, ahead * rg)
                            _prefetch(idx, ahead)
                        if lanes_of_entries:  # chains / UNROLL vector accumulators
                            vectors = chains // UNROLL
                            for v in range(vectors):
                                word = start // UNROLL + group * vectors + v
                                _lane_fma(acc, vals, words, word, lambda col: x_at(col, 0), v)
                        else:
                            with T.unroll(0, chains) as c:
                                accumulate_entry(start + group * chains + c, c)
                    with T.serial(start + (end - start) // chains * chains, end) as k:
                        accumulate_entry(k, 0)
                for j in range(rg):
                    r = g * rg + j
                    with T.vectorized(0, tile) as mi:
                        total = Wb[r]
                        for c in range(chains):
                            total = total + acc[c * rg + j, mi]
                        T.buffer_store(acc, activation.apply(total), [j, mi])
                    with T.serial(0, tile) as mi:
                        column = mo * tile + mi
                        step = column // batch
                        step = seq_len - 1 - step if reverse else step
                        if m_pad == m:
                            T.buffer_store(U, acc[j, mi], [step, r, column % batch])
                        else:
                            with T.If(column < m), T.Then():
                                T.buffer_store(U, acc[j, mi], [step, r, column % batch])

            n_groups, n_tiles = rows // rg, m_pad // tile
            if panel_tasks:  # tiles outer; each task reads its tile of XT from a packed panel
                per_task = -(-n_groups // panel_tasks)
                with loop(0, n_tiles * panel_tasks) as task:
                    mo, first = task // panel_tasks, task % panel_tasks * per_task
                    panel = T.alloc_buffer((k_in, tile), _F32, scope="global")
                    with T.serial(0, k_in) as c:
                        with T.vectorized(0, tile) as mi:
                            T.buffer_store(panel, XT[c, mo * tile + mi], [c, mi])
                    count = tirx.max(tirx.min(per_task, n_groups - first), 0)
                    with T.serial(0, count) as g:
                        row_group(first + g, mo, lambda col, mi: panel[col, mi])
            else:
                with loop(0, n_groups * n_tiles) as task:
                    g, mo = task // n_tiles, task % n_tiles
                    row_group(g, mo, lambda col, mi, mo=mo: XT[col, mo * tile + mi])
    return ib.get()
