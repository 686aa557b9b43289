"""The x86 CSR kernel in K panels (unstructured linear layers over wide inputs) vs float64."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from tvm_sparse_rnn.kernels.x86.panel_spmm import (
    K_PANEL,
    ROW_BLOCK,
    pack_k_panels,
    panel_spmm_prim_func,
    panel_tile,
    row_blocks,
    uses_k_panels,
)


def _weight(n: int, k: int, seed: int) -> np.ndarray:
    w = sp.random(n, k, density=0.1, random_state=seed, dtype=np.float32).toarray()
    w[1] = 0  # an empty row
    w[2, :K_PANEL] = 0  # a row empty in the first panel only
    return w


@pytest.mark.parametrize(("n", "k", "threads"), [(10, 300, 2), (40, 128, 1), (7, 1, 3)])
def test_pack_k_panels_round_trips(n, k, threads):
    w = _weight(n, k, 0) if k > 1 else np.ones((n, k), np.float32)
    w[0, 0] = 0.0
    packed = pack_k_panels(w, threads)
    assert packed.panels == -(-k // K_PANEL) and packed.offsets.dtype == np.uint8
    rebuilt = np.zeros((n, k), np.float32)
    for p in range(packed.panels):
        for at, r in enumerate(packed.order[p]):
            lo, hi = packed.indptr[p, at], packed.indptr[p, at + 1]
            cols = p * K_PANEL + packed.offsets[lo:hi].astype(int)
            assert np.all(np.diff(cols) > 0)
            rebuilt[r, cols] = packed.values[lo:hi]
    np.testing.assert_array_equal(rebuilt, w)
    assert packed.indptr[-1, -1] == np.count_nonzero(w)


def test_rows_run_by_count_within_each_block_and_panel():
    """Each block's rows, and only those, in order of their nonzero count in the panel."""
    rng = np.random.default_rng(5)
    w = (rng.random((700, 300)) < rng.random((700, 1)) * 0.3).astype(np.float32)
    packed = pack_k_panels(w, threads=2)
    assert (packed.blocks, packed.block_rows) == row_blocks(700, 2)
    for p in range(packed.panels):
        counts = np.diff(packed.indptr[p])
        for b in range(packed.blocks):
            at = slice(b * packed.block_rows, (b + 1) * packed.block_rows)
            rows = packed.order[p, at]
            np.testing.assert_array_equal(np.sort(rows), np.arange(700)[at])
            assert np.all(np.diff(counts[at]) >= 0)
            panel = w[rows, p * K_PANEL : (p + 1) * K_PANEL]
            np.testing.assert_array_equal(counts[at], np.count_nonzero(panel, axis=1))


@pytest.mark.parametrize(
    ("n", "k", "m", "tile", "threads"),
    [
        (300, 300, 64, 64, 2),
        (ROW_BLOCK + 9, 129, 128, 128, 1),
        (72, 1000, 192, 64, 2),
        (4, 64, 64, 64, 3),  # 3 blocks of 2 rows: the last one empty
    ],
)
def test_panel_kernel_matches_float64(n, k, m, tile, threads):
    """Row blocks with a partial last one, a narrower last panel, several column tiles (``X^T``
    copied tile-major), empty rows; the bias enters at the first panel."""
    import tvm

    rng = np.random.default_rng(3)
    w = _weight(n, k, 1)
    x = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    packed = pack_k_panels(w, threads)
    kernel = tvm.compile(panel_spmm_prim_func(packed, m, tile), target="llvm")
    out = np.zeros((1, n, m), np.float32)
    args = [tvm.runtime.tensor(a) for a in (np.ascontiguousarray(x.T), *packed.arrays(), b, out)]
    kernel(*args)
    ref = w.astype(np.float64) @ x.T.astype(np.float64) + b[:, None]
    np.testing.assert_allclose(args[-1].numpy()[0], ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("rows", "threads", "blocks", "block_rows"),
    [(768, 2, 4, 192), (3072, 2, 12, 256), (2304, 2, 10, 231), (5, 3, 3, 2)],
)
def test_row_blocks_split_evenly_over_the_threads(rows, threads, blocks, block_rows):
    assert row_blocks(rows, threads) == (blocks, block_rows)
    assert blocks % threads == 0 and block_rows <= ROW_BLOCK and blocks * block_rows >= rows


def test_panel_kernel_rejects_columns_off_its_tile():
    with pytest.raises(ValueError, match="m = 96 columns must be a multiple of the tile 64"):
        panel_spmm_prim_func(pack_k_panels(_weight(8, 64, 2), 2), 96, 64)


@pytest.mark.parametrize(
    ("m", "row_group", "tile"),
    [
        (128, 1, 128),
        (256, 1, 128),
        (192, 1, 64),
        (64, 1, 64),
        (128, 4, None),
        (16, 1, None),
        (96, 1, None),
    ],
)
def test_uses_k_panels_at_the_widest_dividing_tile(m, row_group, tile):
    assert uses_k_panels(m, row_group) == (tile is not None)
    if row_group == 1:
        assert panel_tile(m) == tile
