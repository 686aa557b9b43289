"""The x86 CSR kernels' register tiling per ISA family, and ``X^T`` in tile panels, vs float64."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from tvm.target import Target

from tvm_sparse_rnn.kernels.x86.csr_tiling import CSR_TILINGS, csr_tiling
from tvm_sparse_rnn.kernels.x86.recurrent import (
    pack_row_groups,
    pack_weight,
    padded_columns,
    projection_prim_func,
)
from tvm_sparse_rnn.kernels.x86.vector import vector_registers
from tvm_sparse_rnn.testing import TOLERANCES
from tvm_sparse_rnn.transform.dispatch.linear_csr_x86 import CsrSpmmLinear

RTOL, ATOL = TOLERANCES["float32"]
_PANELS = ", X^T packed in tile panels"


def _x86(mcpu: str) -> Target:
    return Target({"kind": "llvm", "mcpu": mcpu, "mtriple": "x86_64-linux-gnu"})


@pytest.mark.parametrize(
    ("mcpu", "family", "registers"),
    [("skylake-avx512", "avx512", 32), ("znver4", "avx512", 32), ("znver3", "avx2", 16)],
)
def test_tiling_and_registers_follow_the_isa_family(mcpu, family, registers):
    target = _x86(mcpu)
    assert csr_tiling(target) == CSR_TILINGS[family]
    assert vector_registers(target) == registers


def test_cpus_of_no_known_family_take_the_narrow_tiling():
    assert csr_tiling(_x86("x86-64")) == CSR_TILINGS["avx2"]


def _blocks_4x4(n: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = np.kron(rng.random((n // 4, k // 4)) < 0.2, np.ones((4, 4))) * rng.uniform(-1, 1, (n, k))
    w[:4] = 0  # an empty row group
    return w.astype(np.float32)


def _blocks_1x16(n: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = np.kron(rng.random((n, k // 16)) < 0.15, np.ones((1, 16))) * rng.uniform(-1, 1, (n, k))
    w[2] = 0
    return w.astype(np.float32)


def _unstructured(n: int, k: int, seed: int) -> np.ndarray:
    w = sp.random(n, k, density=0.1, random_state=seed, dtype=np.float32).toarray()
    w[1] = 0
    return w


@pytest.mark.parametrize(
    ("family", "weight", "rows", "detail"),
    [
        ("avx2", "4x4", 128, "rows in groups of 4, 4-column blocks, 16-column tiles" + _PANELS),
        ("avx512", "4x4", 128, "rows in groups of 4, 4-column blocks, 32-column tiles"),
        ("avx2", "4x4", 37, "rows in groups of 4, 4-column blocks, 16-column tiles" + _PANELS),
        ("avx2", "unstructured", 128, "K panels of 128, 64-column tiles, X^T copied tile-major"),
        ("avx512", "unstructured", 128, "K panels of 128, 128-column tiles"),
        ("avx2", "unstructured", 37, "rows, 32-column tiles, X^T packed in tile panels"),
        ("avx2", "unstructured", 3, "rows, 4-column tiles"),
        ("avx2", "4x4", 8, "rows in groups of 4, 2-column blocks, 8-column tiles"),
        ("avx2", "4x4", 4, "rows in groups of 4, 2-column blocks, 4-column tiles"),
        ("avx2", "4x4", 1, "rows in groups of 4, 4-column blocks, 1-column tiles"),
        ("avx2", "1x16", 16, "rows, 16-column blocks, 16-column tiles"),
        ("avx2", "1x16", 12, "rows, 16-column blocks, 16-column tiles"),
        ("avx2", "1x16", 1, "rows, 16-column blocks, 1-column tiles"),
        ("avx512", "1x16", 37, "rows, 16-column blocks, 64-column tiles"),
        ("avx2", "1x16", 64, "K panels of 128, 64-column tiles"),
    ],
)
def test_csr_layer_plans_by_family_and_matches_float64(family, weight, rows, detail):
    """Each family's plan runs as the standalone kernel does: ``X`` to the kernel's ``XT``
    (padded columns zero), the CSR kernel (packing tiles of ``XT`` or not), ``Y^T`` to ``Y``."""
    import tvm

    n, k = 64, 256
    make = {"4x4": _blocks_4x4, "1x16": _blocks_1x16, "unstructured": _unstructured}[weight]
    w = make(n, k, rows)
    layer = CsrSpmmLinear.plan(w, rows, CSR_TILINGS[family], threads=2)
    assert layer.detail() == detail
    x_layout, y_layout = layer.layout_funcs(tvm.target.Target("llvm"))
    funcs = {"main": layer.prim_func(), "x_layout": x_layout, "y_layout": y_layout}
    mod = tvm.IRModule({name: f.with_attr("global_symbol", name) for name, f in funcs.items()})
    lib = tvm.compile(mod, target="llvm")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((rows, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    xt = tvm.runtime.empty((k, layer.padded_rows), "float32")
    lib["x_layout"](tvm.runtime.tensor(x), xt)
    yt = tvm.runtime.tensor(np.full((1, n, rows), np.nan, np.float32))
    weights = [tvm.runtime.tensor(a) for a in layer.packed.arrays()]
    lib["main"](xt, *weights, tvm.runtime.tensor(bias), yt)
    y = tvm.runtime.empty((rows, n), "float32")
    lib["y_layout"](yt, y)
    want = x.astype(np.float64) @ w.T.astype(np.float64) + bias
    np.testing.assert_allclose(y.numpy(), want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("row_group", [1, 4])
@pytest.mark.parametrize(("m", "tasks"), [(37, 1), (37, 3), (128, 2), (64, 5)])
def test_packed_x_panels_match_float64(row_group, m, tasks):
    """The CSR kernel with the column tiles outer and each tile of ``XT`` packed into a panel:
    1-5 tasks of row groups per tile (more tasks than groups of a tile included), a padded last
    tile, an empty row group."""
    import tvm

    n, k = 48, 200
    w = _blocks_4x4(n, k, m) if row_group > 1 else _unstructured(n, k, m)
    packed = pack_row_groups(w, row_group) if row_group > 1 else pack_weight(w, 1, False, 1)
    tile = 16
    func = projection_prim_func(packed, 1, m, tile=tile, panel_tasks=tasks)
    rng = np.random.default_rng(tasks)
    xt = np.zeros((k, padded_columns(m, tile)), np.float32)
    xt[:, :m] = rng.standard_normal((k, m))
    bias = rng.standard_normal(n).astype(np.float32)
    args = [tvm.runtime.tensor(a) for a in (xt, *packed.arrays(), bias, np.zeros((1, n, m), "f4"))]
    tvm.compile(func, target="llvm")(*args)
    want = w.astype(np.float64) @ xt[:, :m].astype(np.float64) + bias[:, None]
    np.testing.assert_allclose(args[-1].numpy()[0], want, rtol=RTOL, atol=ATOL)
