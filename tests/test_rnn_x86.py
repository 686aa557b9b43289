"""The x86 recurrent sequence op (llvm) against the float64 numpy reference."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from tvm_sparse_rnn.kernels.x86.recurrent import (
    UNROLL,
    RecurrentConfig,
    default_recurrent_config,
    entries_in_lanes,
    pack_row_groups,
    pack_weight,
    padded_columns,
    projection_chains,
    projection_col_block,
    projection_prefetch,
    projection_prim_func,
    projection_row_group,
    projection_row_multiple,
    projection_tile,
    recurrent_knob_choices,
    recurrent_prim_func,
    row_group_tile,
    step_rows,
    unit_major_order,
)
from tvm_sparse_rnn.ops.cells import CellConfig
from tvm_sparse_rnn.ops.reference import recurrent_sequence_reference
from tvm_sparse_rnn.runtime.sequence import RecurrentWeights, build_recurrent_sequence
from tvm_sparse_rnn.target import NO_GATHER, resolve_target
from tvm_sparse_rnn.testing import TOLERANCES, random_recurrent_weights

RTOL, ATOL = TOLERANCES["float32"]


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize(
    ("num_gates", "cols", "multiple"), [(1, 10, UNROLL), (3, 10, 1), (4, 7, 4)]
)
def test_pack_round_trips(num_gates, cols, multiple, dense):
    h = 10
    rng = np.random.default_rng(0)
    shape = (num_gates * h, cols)
    w = (rng.uniform(-1, 1, shape) * (rng.random(shape) < 0.3)).astype("float32")
    packed = pack_weight(w, num_gates, dense, multiple)
    kp = packed.padded_cols
    assert packed.shape == shape and kp == (-(-cols // multiple) * multiple if dense else cols)
    rebuilt = np.zeros((num_gates * h, kp), np.float32)
    for new_row, old_row in enumerate(unit_major_order(num_gates, h)):
        if dense:
            rebuilt[old_row] = packed.values[new_row * kp : (new_row + 1) * kp]
        else:
            lo, hi = packed.indptr[new_row], packed.indptr[new_row + 1]
            assert lo % multiple == 0 and hi % multiple == 0
            np.add.at(rebuilt[old_row], packed.indices[lo:hi], packed.values[lo:hi])
    np.testing.assert_array_equal(rebuilt[:, :cols], w)
    assert packed.nonzeros == np.count_nonzero(w)
    if not dense:
        assert packed.index_dtype == "uint16"
        from_scipy = pack_weight(sp.csr_array(w), num_gates, False, multiple)
        np.testing.assert_array_equal(from_scipy.values, packed.values)


def test_pack_rejects_bad_shape():
    with pytest.raises(ValueError, match="expected 2 \\* H rows"):
        pack_weight(np.zeros((7, 4), np.float32), 2, False)


def test_prim_func_structure():
    """Serial steps inside one thread-pool launch, parallel units with a barrier after each
    phase, a vectorized batch; tiny layers stay serial."""
    cfg = CellConfig("LSTM", 8)
    packed = pack_weight(np.eye(32, 8, dtype="float32"), 4, False)
    script = recurrent_prim_func(cfg, 0, 5, 4, packed, RecurrentConfig(4, 2, 5)).script()
    assert "T.parallel(8)" in script and "T.vectorized(4)" in script
    assert script.count("T.parallel") == 4  # init h, init c, the step, final state
    assert script.count("pragma_parallel_launch_point") == 3  # init, steps, final state
    assert script.count("pragma_parallel_barrier_when_finish") == 3  # init h, init c, a step
    assert "alloc_local" not in script  # scratch stays on the stack, not the workspace pool
    tiny = default_recurrent_config(packed.layout, 5, 4, cores=2)  # too little work: serial
    assert "T.parallel" not in recurrent_prim_func(cfg, 0, 5, 4, packed, tiny).script()
    with pytest.raises(ValueError, match="steps_per_launch=2 must divide T=5"):
        recurrent_prim_func(cfg, 0, 5, 4, packed, RecurrentConfig(4, 2, 2))
    with pytest.raises(ValueError, match="accumulators=3 must divide"):
        recurrent_prim_func(cfg, 0, 5, 4, packed, RecurrentConfig(3, 1, 1))
    with pytest.raises(ValueError, match="unit_block=3 must divide H=8"):
        recurrent_prim_func(cfg, 0, 5, 4, packed, RecurrentConfig(4, 1, 1, 3))


@pytest.mark.parametrize(
    ("hidden", "batch", "block", "choices"),
    [(1024, 1, 16, (1, 16)), (1024, 4, 1, (1, 4)), (70, 1, 1, (1,)), (1024, 16, 1, (1,))],
)
def test_one_sample_vectorizes_the_gate_math_over_16_units(hidden, batch, block, choices):
    """By default only ``N = 1`` blocks units (16 lanes); the tuning space has the block that
    fills a vector for any ``N < 16`` whose block divides ``H``."""
    packed = pack_weight(np.eye(3 * hidden, hidden, dtype="float32"), 3, False)
    assert default_recurrent_config(packed.layout, 8, batch, cores=2).unit_block == block
    assert recurrent_knob_choices(8, hidden, batch, cores=2)["unit_block"] == choices


@pytest.mark.parametrize(
    ("batch", "accumulators", "dense", "lanes"),
    [
        (1, UNROLL, False, True),
        (2, UNROLL, False, False),
        (1, 2, False, False),
        (1, UNROLL, True, False),
    ],
)
def test_one_sample_mat_vec_reads_index_words_into_vector_lanes(batch, accumulators, dense, lanes):
    """At ``N = 1`` with one accumulator per entry a packed row's four uint16 indices are read
    as one int64 word and its four entries multiply as one vector; other cases keep the loop
    of scalar (or batch-vector) FMAs."""
    cfg = CellConfig("GRU", 64, linear_before_reset=True)
    w = sp.random(192, 64, density=0.2, random_state=0, dtype=np.float32)
    packed = pack_weight(w, 3, dense)
    assert entries_in_lanes(packed, batch, accumulators) == lanes
    config = RecurrentConfig(accumulators, 1, 1)
    script = recurrent_prim_func(cfg, 0, 4, batch, packed, config).script()
    assert ('"int64"' in script and "T.Shuffle" in script) == lanes


@pytest.mark.parametrize(
    ("m", "chains", "lanes"), [(1, None, True), (1, 8, True), (4, None, False)]
)
def test_one_column_projection_reads_index_words_into_vector_lanes(m, chains, lanes):
    """A linear layer over one row of ``X`` pads ``W``'s rows to four entries and multiplies
    them as the lanes of one vector (or of two, words in turn, a row's last word alone); from two
    rows the tile's columns are the lanes."""
    import tvm

    w = sp.random(40, 64, density=0.2, random_state=0, dtype=np.float32).toarray()
    w[3] = 0
    tile = projection_tile(m)
    packed = pack_weight(w, 1, False, row_multiple=projection_row_multiple(tile))
    func = projection_prim_func(packed, 1, m, tile=tile, chains=chains)
    script = func.script()
    assert ('"int64"' in script and "T.Shuffle" in script) == lanes
    assert script.count("T.Shuffle") == (chains or 4) // 4 * lanes
    x = np.random.default_rng(1).standard_normal((64, padded_columns(m, tile))).astype("float32")
    bias = np.arange(40, dtype="float32")
    args = [x, *packed.arrays(), bias, np.zeros((1, 40, m), "float32")]
    tensors = [tvm.runtime.tensor(a) for a in args]
    tvm.compile(func, "llvm")(*tensors)
    want = w.astype(np.float64) @ x[:, :m].astype(np.float64) + bias[:, None]
    np.testing.assert_allclose(tensors[-1].numpy()[0], want, rtol=RTOL, atol=ATOL)


def test_x86_targets_build_no_vector_gathers():
    """LLVM would SLP-vectorize the mat-vec's scalar accumulators into slow ``vgatherdps``; the
    package's x86 targets carry ``+prefer-no-gather``."""
    import tvm

    target = resolve_target("llvm")
    assert NO_GATHER in target.attrs["mattr"]
    cfg = CellConfig("GRU", 64, linear_before_reset=True)
    w = sp.random(192, 64, density=0.2, random_state=0, dtype=np.float32)
    packed = pack_weight(w, 3, False)
    func = recurrent_prim_func(cfg, 0, 4, 1, packed, RecurrentConfig(4, 1, 1, 16))
    asm = tvm.compile(func, target=target).mod.inspect_source("asm")
    assert "vfmadd" in asm and "gather" not in asm


@pytest.mark.parametrize(
    ("kind", "options", "density"),
    [("RNN", {}, 0.2), ("GRU", {}, 0.2), ("GRU", {}, 0.9), ("LSTM", {"peepholes": True}, 0.2)],
)
@pytest.mark.parametrize(
    ("config", "batch"),
    [
        (RecurrentConfig(1, 1, 1), 3),
        (RecurrentConfig(2, 2, 1), 3),
        (RecurrentConfig(4, 2, 4), 3),
        (RecurrentConfig(4, 2, 4, unit_block=7), 1),  # gate math of 7 units in one vector
        (RecurrentConfig(4, 1, 1, unit_block=3), 3),  # 3 units x 3 samples
        (RecurrentConfig(4, 1, 1), 1),  # a row's four entries as the lanes of one FMA
        (RecurrentConfig(2, 1, 1), 1),  # one sample, scalar FMAs
    ],
    ids=str,
)
def test_recurrent_kernel_configs_match_reference(kind, options, density, config, batch):
    """Every loop structure (accumulators, one launch per step or per 4 steps on 2 threads,
    barriers between GRU phases, gate math over blocks of units) computes the same layer,
    sequence lengths included."""
    import tvm

    seq_len, hidden = 8, 21
    cfg = CellConfig(kind, hidden, **options)
    G = cfg.num_gates
    w = random_recurrent_weights(kind, hidden, hidden, 1, density, peepholes=cfg.peepholes, seed=7)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((seq_len, batch, hidden)).astype("float32")
    h0 = rng.standard_normal((1, batch, hidden)).astype("float32")
    c0 = rng.standard_normal((1, batch, hidden)).astype("float32")
    lens = np.array([8, 3, 6][:batch], np.int32)
    order = unit_major_order(G, hidden)
    wb, rb = w["B"][0, : G * hidden], w["B"][0, G * hidden :]
    u = (np.einsum("tni,gi->tgn", x, w["W"][0]) + wb[:, None]).astype("float32")
    u_padded = np.zeros((seq_len, step_rows(G * hidden, seq_len, batch), batch), "float32")
    u_padded[:, : G * hidden] = u[:, order]
    packed = pack_weight(w["R"][0], G, dense=density > 0.5)
    lstm = kind == "LSTM"
    args = [u_padded, *packed.arrays(), rb[order]]
    args += [w["P"][0].reshape(3, hidden)] if cfg.peepholes else []
    args += [h0[0]] + ([c0[0]] if lstm else []) + [lens]
    args += [np.zeros((seq_len, batch, hidden), "float32")]
    args += [np.zeros((batch, hidden), "float32")] * (2 if lstm else 1)
    tensors = [tvm.runtime.tensor(np.ascontiguousarray(a)) for a in args]
    kernel = tvm.compile(recurrent_prim_func(cfg, 0, seq_len, batch, packed, config), "llvm")
    kernel(*tensors)
    ref = recurrent_sequence_reference(
        cfg, x, w["W"], w["R"], w["B"], lens, h0, c0 if lstm else None, w.get("P")
    )
    n_out = 3 if lstm else 2
    for got, want in zip(tensors[-n_out:], ref, strict=False):
        np.testing.assert_allclose(got.numpy(), want.reshape(got.shape), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    ("m", "tile", "padded", "chains"),
    [
        (1, 1, 1, 4),
        (3, 4, 4, 4),
        (6, 8, 8, 4),
        (12, 16, 16, 4),
        (16, 16, 16, 4),
        (95, 32, 96, 2),
        (128, 64, 128, 1),
        (200, 32, 224, 2),
    ],
)
def test_projection_tile_is_a_power_of_two_with_little_padding(m, tile, padded, chains):
    """Power-of-two tiles (``m`` rounded up below 16), 64 accumulator floats in flight (4 chains
    at most)."""
    assert projection_tile(m) == tile
    assert padded_columns(m, tile) == padded
    assert projection_chains(tile) == chains


@pytest.mark.parametrize(
    ("rows", "seq_len", "batch", "padded"),
    [
        (3072, 95, 1, 3088),  # DeepSpeech2's GRU: 12 KB steps -> 193 lines
        (18, 7, 5, 48),  # 240 floats = 15 lines
        (3072, 95, 4, 3076),  # 769 lines
        (3072, 95, 16, 3072),  # a tile spans at most 8 steps: no padding
        (3072, 1, 1, 3072),  # one step (the linear layers' Y^T): no padding
    ],
)
def test_step_rows_make_the_step_stride_an_odd_number_of_lines(rows, seq_len, batch, padded):
    """``U``'s steps are an odd number of 64-byte lines apart, so one row's stores over the
    steps of a tile fall in different L1 sets."""
    assert step_rows(rows, seq_len, batch) == padded


@pytest.mark.parametrize(
    ("dense", "seq_len", "batch", "tile", "chains"),
    [
        (False, 4, 3, None, None),  # 12 columns: one tile of 12, no padding, 4 chains
        (True, 4, 3, None, None),
        (False, 65, 4, None, None),  # 260 columns: tiles of 32, 28 padded
        (False, 3, 130, None, None),
        (False, 95, 1, None, None),  # DeepSpeech2's 95 frames: 96 columns
        (False, 95, 1, 64, 1),
        (True, 7, 5, 16, 3),  # rows of 9 entries: 3 groups of 3
        (False, 7, 5, 16, 3),  # 2-5 nonzeros a row: the remainder loop
    ],
)
def test_projection_matches_numpy(dense, seq_len, batch, tile, chains):
    """Step-major output for any ``T*N``, ``XT`` zero-padded to whole tiles, any number of
    accumulator chains (rows whose nonzeros are no multiple of it included)."""
    import tvm

    m = seq_len * batch
    rng = np.random.default_rng(m)
    w = (rng.uniform(-1, 1, (3 * 6, 9)) * (rng.random((18, 9)) < 0.4)).astype("float32")
    xt = rng.standard_normal((9, m)).astype("float32")
    bias = rng.standard_normal(18).astype("float32")
    packed = pack_weight(w, 3, dense, row_multiple=1)
    func = projection_prim_func(packed, seq_len, batch, tile=tile, chains=chains)
    ex = tvm.compile(func, target="llvm")
    order = unit_major_order(3, 6)
    xt_padded = np.zeros((9, padded_columns(m, tile or projection_tile(m))), "float32")
    xt_padded[:, :m] = xt
    u = np.zeros((seq_len, step_rows(18, seq_len, batch), batch), "float32")
    tensors = [tvm.runtime.tensor(a) for a in [xt_padded, *packed.arrays(), bias[order], u]]
    ex(*tensors)
    want = (w @ xt + bias[:, None])[order].reshape(18, seq_len, batch).transpose(1, 0, 2)
    np.testing.assert_allclose(tensors[-1].numpy()[:, :18], want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    ("shape", "m", "dense", "row_group", "ahead"),
    [
        ((4096, 4096), 4, False, 1, 512),  # 10 MB streamed with 4-float tiles
        ((4096, 4096), 1, False, 4, 512),
        ((4096, 4096), 16, False, 1, 0),  # cache-line tiles: X reused, compute-bound
        ((1024, 1024), 4, False, 1, 0),  # 0.6 MB: stays in L2
        ((4096, 4096), 4, True, 1, 0),
    ],
)
def test_projection_prefetches_where_it_streams_a_large_weight(shape, m, dense, row_group, ahead):
    w = sp.random(*shape, density=0.1, random_state=0, dtype=np.float32)
    packed = pack_row_groups(w, row_group) if row_group > 1 else pack_weight(w, 1, dense, 1)
    assert projection_prefetch(projection_tile(m), packed) == ahead


@pytest.mark.parametrize("row_group", [1, 4])
def test_projection_entry_loop_counts_in_64_bits(row_group):
    """The loop over a row group's entries runs on 64-bit bounds and reads 64-bit columns, so
    the value and ``XT`` addresses need no sign extension per entry."""
    w = sp.random(32, 64, density=0.2, random_state=0, dtype=np.float32)
    packed = pack_row_groups(w, row_group) if row_group > 1 else pack_weight(w, 1, False, 1)
    script = projection_prim_func(packed, 1, 32, tile=16).script()
    assert 'range(T.Cast("int64", W_indptr[' in script
    assert 'XT[T.Cast("int64", W_indices[' in script


def test_prefetching_projection_matches_numpy_and_prefetches():
    """Prefetches reach past the last row's entries (they do not fault) and change nothing."""
    import tvm

    rng = np.random.default_rng(3)
    w = (rng.uniform(-1, 1, (24, 40)) * (rng.random((24, 40)) < 0.3)).astype("float32")
    packed = pack_weight(w, 1, False, row_multiple=1)
    func = projection_prim_func(packed, 1, 4, prefetch=8)
    ex = tvm.compile(func, target=resolve_target("llvm"))
    assert "prefetch" in ex.mod.inspect_source("s")
    xt = rng.standard_normal((40, 4)).astype("float32")
    tensors = [tvm.runtime.tensor(a) for a in [xt, *packed.arrays(), np.zeros(24, "float32")]]
    tensors.append(tvm.runtime.tensor(np.zeros((1, 24, 4), "float32")))
    ex(*tensors)
    np.testing.assert_allclose(tensors[-1].numpy()[0], w @ xt, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(
    ("m", "k", "row_group", "tile"),
    [
        (128, 768, 4, 32),  # BERT's QKV, FFN-in and output layers
        (128, 2048, 2, 32),
        (128, 3072, 4, 64),  # a long reduction keeps the projection tile
        (128, 768, 1, 64),  # rows not grouped
        (48, 768, 4, 32),
        (16, 768, 4, 16),
        (8, 768, 4, 8),
    ],
)
def test_row_group_tile_is_narrow_for_short_grouped_rows(m, k, row_group, tile):
    assert row_group_tile(m, k, row_group) == tile


@pytest.mark.parametrize(
    ("row_group", "chains", "tile", "most"),
    [(1, 4, 16, 16), (4, 1, 16, 4), (4, 2, 8, 2), (4, 4, 4, 2), (4, 4, 1, 4), (8, 4, 1, 2)],
)
def test_projection_col_block_keeps_a_block_in_the_registers(row_group, chains, tile, most):
    assert projection_col_block(row_group, chains, tile) == most


@pytest.mark.parametrize(
    ("tile", "row_group", "streamed", "chains"),
    [(1, 1, True, 8), (1, 1, False, 4), (1, 4, True, 4), (16, 1, True, 4), (4, 1, True, 4)],
)
def test_one_column_over_a_streamed_weight_takes_two_lane_vectors(
    tile, row_group, streamed, chains
):
    assert projection_chains(tile, row_group, streamed) == chains


@pytest.mark.parametrize(("tile", "group"), [(16, 8), (32, 8), (64, 4), (128, 2), (256, 1)])
def test_projection_row_group_fits_the_accumulator_registers(tile, group):
    assert projection_row_group(tile) == group


@pytest.mark.parametrize(
    ("row_group", "col_block", "m", "chains"),
    [
        (2, 1, 37, None),
        (4, 1, 128, None),
        (4, 1, 12, 2),
        (1, 4, 1, None),  # one column: blocks of columns, not the lane path
        (1, 8, 16, None),
        (4, 4, 16, None),
        (4, 2, 8, 2),
        (2, 4, 3, 4),  # more chains than the columns of a block
    ],
)
def test_row_groups_share_x_loads_and_match_numpy(row_group, col_block, m, chains):
    """Rows packed in groups and columns in blocks (one column index per block, zeros where a
    row or column of the block holds none; an empty group included) give the same ``Y^T`` as
    the row-by-row packing."""
    import tvm

    rng = np.random.default_rng(row_group * m + col_block)
    blocks = rng.random((4, 10)) < 0.3
    w = np.kron(blocks, np.ones((4, 4))) * rng.uniform(-1, 1, (16, 40))
    w[5, 7] = 0.5  # a scattered nonzero: the block's other values are stored zeros
    w[12:] = 0
    w = w.astype("float32")
    packed = pack_row_groups(w, row_group, col_block)
    assert packed.row_group == row_group and packed.indptr.shape == (16 // row_group + 1,)
    assert packed.col_block == col_block and packed.layout.col_block == col_block
    stored = [
        w[g : g + row_group].reshape(row_group, 40 // col_block, col_block).any(axis=(0, 2))
        for g in range(0, 16, row_group)
    ]
    assert packed.entries == sum(np.count_nonzero(s) for s in stored)
    tile = projection_tile(m)
    func = projection_prim_func(packed, 1, m, tile=tile, chains=chains)
    xt = np.zeros((40, padded_columns(m, tile)), "float32")
    xt[:, :m] = rng.standard_normal((40, m))
    bias = rng.standard_normal(16).astype("float32")
    args = [xt, *packed.arrays(), bias, np.zeros((1, 16, m), "float32")]
    tensors = [tvm.runtime.tensor(a) for a in args]
    tvm.compile(func, target="llvm")(*tensors)
    want = w.astype(np.float64) @ xt[:, :m] + bias[:, None]
    np.testing.assert_allclose(tensors[-1].numpy()[0], want, rtol=RTOL, atol=ATOL)
    with pytest.raises(ValueError, match="must divide the 16 rows"):
        pack_row_groups(w, 3)
    with pytest.raises(ValueError, match="col_block 16 must divide the 40 columns"):
        pack_row_groups(w, 1, 16)


@pytest.mark.parametrize(
    ("kind", "direction", "batch", "density", "options"),
    [
        ("RNN", "forward", 1, 0.1, {}),
        ("RNN", "bidirectional", 5, 0.7, {}),  # dense R
        ("GRU", "reverse", 4, 0.1, {}),
        ("GRU", "forward", 3, 0.1, {"linear_before_reset": True}),
        ("GRU", "bidirectional", 2, 0.9, {}),  # dense R, two-phase step
        ("LSTM", "forward", 4, 0.1, {"peepholes": True, "clip": 1.0}),
        ("LSTM", "bidirectional", 8, 0.2, {}),
        ("LSTM", "reverse", 4, 0.9, {}),  # dense R
    ],
)
def test_x86_op_matches_reference(kind, direction, batch, density, options):
    seq_len, input_size, hidden = 7, 9, 70  # H not a multiple of UNROLL
    cfg = CellConfig(kind, hidden, direction, **options)
    d = cfg.num_directions
    w = random_recurrent_weights(
        kind, hidden, input_size, d, density, peepholes=cfg.peepholes, seed=batch
    )
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((seq_len, batch, input_size)).astype("float32")
    h0 = rng.standard_normal((d, batch, hidden)).astype("float32")
    c0 = rng.standard_normal((d, batch, hidden)).astype("float32")
    lens = rng.integers(1, seq_len + 1, batch).astype("int32")
    layer = build_recurrent_sequence(cfg, RecurrentWeights(**w), x.shape)
    c_in = c0 if kind == "LSTM" else None
    got = layer(x, lens, h0, c_in)
    ref = recurrent_sequence_reference(cfg, x, w["W"], w["R"], w["B"], lens, h0, c_in, w.get("P"))
    assert len(got) == (3 if kind == "LSTM" else 2)
    for g, r in zip(got, ref, strict=False):
        np.testing.assert_allclose(g, r, rtol=RTOL, atol=ATOL)
    # defaults: full lengths and zero states
    got = layer(x)
    ref = recurrent_sequence_reference(cfg, x, w["W"], w["R"], w["B"], P=w.get("P"))
    np.testing.assert_allclose(got[0], ref[0], rtol=RTOL, atol=ATOL)


def test_layer_checks_inputs():
    cfg = CellConfig("RNN", 4)
    w = random_recurrent_weights("RNN", 4, 3, 1, 0.5)
    layer = build_recurrent_sequence(cfg, RecurrentWeights(**w), (2, 1, 3))
    with pytest.raises(ValueError, match="X has shape"):
        layer(np.zeros((3, 1, 3), "float32"))
    with pytest.raises(ValueError, match=r"sequence_lens must be \(1,\) with values in \[1, 2\]"):
        layer(np.zeros((2, 1, 3), "float32"), np.array([3]))
    with pytest.raises(ValueError, match="initial_h has shape"):
        layer(np.zeros((2, 1, 3), "float32"), None, np.zeros((1, 1, 5), "float32"))
    with pytest.raises(ValueError, match=r"weight R has shape \(1, 4, 5\)"):
        bad = RecurrentWeights(w["W"], np.zeros((1, 4, 5), "float32"))
        build_recurrent_sequence(cfg, bad, (2, 1, 3))


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("RNN", {}),
        ("GRU", {}),
        ("GRU", {"linear_before_reset": True}),
        ("LSTM", {"peepholes": True}),
    ],
)
def test_cuda_path_matches_reference(kind, options):
    """The CUDA per-step path (dlight-scheduled Relax ops) on the GPU, bidirectional, lengths."""
    seq_len, batch, input_size, hidden = 5, 3, 6, 32
    cfg = CellConfig(kind, hidden, "bidirectional", **options)
    w = random_recurrent_weights(kind, hidden, input_size, 2, 0.2, peepholes=cfg.peepholes)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((seq_len, batch, input_size)).astype("float32")
    h0 = rng.standard_normal((2, batch, hidden)).astype("float32")
    lens = np.array([5, 2, 4], np.int32)
    layer = build_recurrent_sequence(cfg, RecurrentWeights(**w), x.shape, target="cuda")
    got = layer(x, lens, h0)
    ref = recurrent_sequence_reference(cfg, x, w["W"], w["R"], w["B"], lens, h0, P=w.get("P"))
    for g, r in zip(got, ref, strict=False):
        np.testing.assert_allclose(g, r, rtol=RTOL, atol=ATOL)
