"""DenseToSparse + DispatchKernels on dense layers, and the block-size rule: structure, numerics."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

from tvm_sparse_rnn.bsr import BSRWeight
from tvm_sparse_rnn.demo import pruned_weight
from tvm_sparse_rnn.errors import UnsupportedError
from tvm_sparse_rnn.kernels.x86.dense import choose_tile, schedule_dense_func
from tvm_sparse_rnn.pipeline import build, sparse_pipeline
from tvm_sparse_rnn.target import resolve_target
from tvm_sparse_rnn.testing import TOLERANCES
from tvm_sparse_rnn.transform import (
    DenseToSparse,
    DispatchKernels,
    DispatchOptions,
    KernelVariant,
    ScheduleDenseCPU,
)
from tvm_sparse_rnn.transform.dispatch import emit_sparse_dense
from tvm_sparse_rnn.transform.dispatch.cost_model import (
    COST_PARAMS,
    CostParams,
    block_stats,
    choose_block_size,
    csr_col_block,
    csr_row_group,
    dense_tiles,
    parse_block_size,
    plan_layer,
)

LLVM = resolve_target("llvm")
#: The llvm rule without its per-kernel overhead, so that small test layers are judged by their
#: blocks alone (the overhead term has its own test).
WORK_ONLY = CostParams(block_overhead=16.0, break_even=0.45)
#: The same with the x86 CSR kernel (llvm's default csr_factor).
WORK_ONLY_CSR = CostParams(block_overhead=16.0, break_even=0.45, csr_factor=2.0)


# ----------------------------------------------------------------------------- block-size rule
@pytest.mark.parametrize("block", [(1, 16), (4, 4), (8, 1), (16, 1)])
def test_choose_block_size_finds_the_pruning_block(block):
    w = pruned_weight(np.random.default_rng(0), (64, 128), 0.9, block)
    choice = choose_block_size(w)
    assert choice.block_size == block
    assert choice.fill == 0.0
    assert choice.stored_fraction == pytest.approx(np.count_nonzero(w) / w.size)


def test_choose_block_size_unstructured_picks_1x1():
    w = pruned_weight(np.random.default_rng(1), (64, 64), 0.95)
    assert choose_block_size(w).block_size == (1, 1)


def test_block_stats_counts_fill_by_hand():
    w = np.zeros((4, 4), "float32")
    w[0, 0] = w[0, 1] = w[3, 3] = 1.0  # 2x2 blocks: (0,0) holds 2 nonzeros, (1,1) holds 1
    stats = block_stats(w != 0, (2, 2), block_overhead=4.0)
    assert stats.nnzb == 2
    assert stats.stored_fraction == 8 / 16
    assert stats.fill == 1 - 3 / 8
    assert stats.cost == pytest.approx(0.5 * (1 + 4 / 4))


def test_choose_block_size_skips_non_dividing_candidates():
    w = pruned_weight(np.random.default_rng(2), (12, 20), 0.5, (4, 4))
    assert choose_block_size(w, candidates=((3, 3), (4, 4))).block_size == (4, 4)
    assert choose_block_size(w, candidates=((3, 3),)) is None


def test_plan_layer_threshold_cost_and_fixed_block():
    rng = np.random.default_rng(3)
    blocked = pruned_weight(rng, (64, 64), 0.9, (1, 16))
    plan = plan_layer(blocked, "llvm", sparsity_threshold=0.8, params=WORK_ONLY)
    assert plan.sparse and plan.choice.block_size == (1, 16)
    below = plan_layer(blocked, "llvm", sparsity_threshold=0.95, params=WORK_ONLY)
    assert not below.sparse and "threshold" in below.reason
    # 50 % unstructured: sparse enough for the old element-wise rule, too costly for ours
    scattered = pruned_weight(rng, (64, 64), 0.5)
    costly = plan_layer(scattered, "llvm", sparsity_threshold=0.4, params=WORK_ONLY)
    assert not costly.sparse and "break-even" in costly.reason
    forced = plan_layer(
        blocked, "llvm", sparsity_threshold=0.5, block_size=(16, 1), params=WORK_ONLY
    )
    assert forced.choice.block_size == (16, 1) and forced.choice.fill > 0.5
    assert not plan_layer(blocked, "llvm", block_size=(3, 1), params=WORK_ONLY).sparse
    with pytest.raises(ValueError, match="sparsity_threshold"):
        plan_layer(blocked, "llvm", sparsity_threshold=1.5)
    with pytest.raises(UnsupportedError, match="rocm"):
        plan_layer(blocked, "rocm")


def test_kernel_overhead_keeps_small_layers_dense():
    """The per-kernel term: the same 90 %-pruned pattern is sparse when big, dense when small,
    and a larger batch amortizes it (below memory_bound_rows rows it does not shrink)."""
    rng = np.random.default_rng(11)
    big = plan_layer(pruned_weight(rng, (1024, 1024), 0.9, (1, 16)), "llvm", rows=1)
    small = plan_layer(pruned_weight(rng, (128, 128), 0.9, (1, 16)), "llvm", rows=1)
    assert big.sparse and not small.sparse
    assert small.choice.block_size == (1, 16) and "break-even" in small.reason
    w = pruned_weight(rng, (512, 512), 0.9, (1, 16))
    costs = [plan_layer(w, "llvm", rows=m).cost for m in (1, 8, 64)]
    assert costs[0] == costs[1] > costs[2]
    assert costs[1] - costs[2] == pytest.approx(1e6 / (8 * 512 * 512) - 1e6 / (64 * 512 * 512))


def test_parse_block_size():
    assert parse_block_size("4x1") == (4, 1)
    assert parse_block_size((2, 8)) == (2, 8)
    for bad in ("4", "0x4", "ax1", (1, 2, 3)):
        with pytest.raises(ValueError, match="block size"):
            parse_block_size(bad)


# ----------------------------------------------------------------------------- pass structure
def _dense_module(x_shape, weights, form="permute"):
    """``main(x)`` chaining ``x @ W.T`` for each ``(N, K)`` weight, in the given IR form."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(x_shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            h = x
            for w in weights:
                if form == "permute":
                    wt = bb.emit(relax.op.permute_dims(relax.const(w)))
                elif form == "masked":  # (w_dense * mask).T, as a pruned export carries it
                    masked = relax.op.multiply(
                        relax.const(np.where(w != 0, w, 1.0).astype("float32")),
                        relax.const((w != 0).astype("float32")),
                    )
                    wt = bb.emit(relax.op.permute_dims(bb.emit(masked)))
                else:  # "constant": ONNX MatMul with a (K, N) initializer
                    wt = relax.const(np.ascontiguousarray(w.T))
                h = bb.emit(relax.op.matmul(h, wt))
            out = bb.emit_output(h)
        bb.emit_func_output(out)
    return bb.get()


def _expected_module(x_shape, weights, blocks):
    """What the pass must produce: sparse_dense per weight (``None`` block keeps it dense)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(x_shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            h = x
            for w, block in zip(weights, blocks, strict=True):
                if block is None:
                    h = bb.emit(relax.op.matmul(h, relax.const(np.ascontiguousarray(w.T))))
                else:
                    h = emit_sparse_dense(bb, h, BSRWeight.from_dense(w, block), LLVM)
            out = bb.emit_output(h)
        bb.emit_func_output(out)
    return bb.get()


def _canonical(mod):
    return relax.transform.CanonicalizeBindings()(relax.transform.DeadCodeElimination()(mod))


def _dispatch(mod, target=LLVM, **options):
    """``DenseToSparse`` then ``DispatchKernels``; returns the module and the dispatch pass."""
    dispatch = DispatchKernels(target, DispatchOptions(**options))
    return dispatch(DenseToSparse()(mod)), dispatch


@pytest.mark.parametrize("form", ["permute", "masked", "constant"])
def test_structure_per_layer_block_and_dense_kept(form):
    rng = np.random.default_rng(4)
    weights = [
        pruned_weight(rng, (64, 32), 0.9, (1, 16)),
        pruned_weight(rng, (64, 64), 0.9, (4, 4)),
        pruned_weight(rng, (16, 64), 0.3),  # under the threshold: stays dense
    ]
    after, dispatch = _dispatch(
        _dense_module((8, 32), weights, form), sparsity_threshold=0.5, cost_params=WORK_ONLY
    )
    expected = _expected_module((8, 32), weights, [(1, 16), (4, 4), None])
    tvm.ir.assert_structural_equal(_canonical(after), _canonical(expected))
    variants = [d.variant for d in dispatch.decisions]
    assert variants == [KernelVariant.SPARSE_DENSE] * 2 + [KernelVariant.DENSE]
    assert [d.layer for d in dispatch.decisions] == ["dense0", "dense1", "dense2"]


def test_target_from_scope_and_missing_target():
    w = pruned_weight(np.random.default_rng(5), (32, 32), 0.9, (1, 16))
    mod = DenseToSparse()(_dense_module((4, 32), [w]))
    assert "tvm_sparse_rnn.linear" in mod.script()  # a target-neutral placeholder
    with LLVM:
        after = DispatchKernels(options=DispatchOptions(cost_params=WORK_ONLY))(mod)
    assert "call_tir" in after.script() and "tvm_sparse_rnn.linear" not in after.script()
    with pytest.raises(UnsupportedError, match="needs a target"):
        DispatchKernels()(mod)


def test_inspect_front_does_not_build():
    """The pipeline's front (mark + dispatch) decides without compiling anything."""
    w = pruned_weight(np.random.default_rng(6), (32, 32), 0.9, (1, 16))
    pipeline = sparse_pipeline(LLVM, DispatchOptions(cost_params=WORK_ONLY))
    with LLVM:
        pipeline.front()(_dense_module((4, 32), [w]))
    (decision,) = pipeline.decisions
    assert decision.variant is KernelVariant.SPARSE_DENSE and "block 1x16" in decision.detail


def test_non_constant_and_unsupported_dtype_untouched():
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4, 32), "float32"))
    w = relax.Var("w", relax.TensorType((32, 32), "float32"))
    xi = relax.Var("xi", relax.TensorType((4, 32), "int32"))
    wi = np.zeros((32, 32), "int32")
    wi[0, 0] = 1
    with bb.function("main", [x, w, xi]):
        with bb.dataflow():
            a = bb.emit(relax.op.matmul(x, w))
            b = bb.emit(relax.op.matmul(xi, relax.const(wi)))
            out = bb.emit_output(relax.Tuple([a, b]))
        bb.emit_func_output(out)
    mod = bb.get()
    after, dispatch = _dispatch(mod, sparsity_threshold=0.0)
    tvm.ir.assert_structural_equal(after, mod)
    assert dispatch.decisions == []


# ----------------------------------------------------------------------------- numerics
def _run(mod, *args):
    executable, _ = build(mod, LLVM)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in args]).numpy()


def test_batched_3d_input_and_linear_match_numpy():
    """``relax.op.linear`` on a ``[B, S, K]`` input, bias added after the sparse kernel."""
    rng = np.random.default_rng(7)
    w = pruned_weight(rng, (48, 32), 0.9, (8, 1))
    b = rng.standard_normal(48).astype("float32")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 3, 32), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.linear(x, relax.const(w), relax.const(b)))
        bb.emit_func_output(out)
    after, dispatch = _dispatch(bb.get(), cost_params=WORK_ONLY)
    assert "block 8x1" in dispatch.decisions[0].detail
    assert "matmul" not in after.script()
    xv = rng.standard_normal((2, 3, 32)).astype("float32")
    rtol, atol = TOLERANCES["float32"]
    np.testing.assert_allclose(_run(after, xv), xv @ w.T + b, rtol=rtol, atol=atol)


def test_user_pipeline_numerics_multi_layer():
    rng = np.random.default_rng(8)
    weights = [
        pruned_weight(rng, (64, 32), 0.9, (1, 16)),
        pruned_weight(rng, (32, 64), 0.9, (4, 4)),
    ]
    mod = _dense_module((5, 32), weights, "masked")
    options = DispatchOptions(block_size=(1, 4), cost_params=CostParams(16.0, break_even=1.0))
    pipeline = tvm.transform.Sequential(
        [DenseToSparse(), DispatchKernels(LLVM, options), relax.transform.CanonicalizeBindings()]
    )
    after = pipeline(mod)
    xv = rng.standard_normal((5, 32)).astype("float32")
    rtol, atol = TOLERANCES["float32"]
    np.testing.assert_allclose(
        _run(after, xv), xv @ weights[0].T @ weights[1].T, rtol=rtol, atol=atol
    )
    assert after.script().count("call_tir") == 2


def test_cost_params_override_keeps_layer_dense():
    w = pruned_weight(np.random.default_rng(9), (32, 32), 0.9, (1, 16))
    after, dispatch = _dispatch(
        _dense_module((4, 32), [w]), cost_params=CostParams(block_overhead=4.0, break_even=0.01)
    )
    assert "call_tir" not in after.script()
    assert dispatch.decisions[0].variant is KernelVariant.DENSE


# ----------------------------------------------------------------------------- dense CPU schedule
@pytest.mark.parametrize(
    ("x_shape", "n"),
    [
        ((32, 48), 64),
        ((5, 24), 10),
        ((2, 3, 16), 8),
        ((95, 40), 29),  # rows and columns padded to the tile
        ((7, 1, 24), 48),  # a unit row axis joins the batch axis
    ],
)
def test_cpu_pipeline_schedules_dense_layers(x_shape, n):
    """Layers kept dense get ScheduleDenseCPU (parallel, vectorized) and stay exact."""
    rng = np.random.default_rng(10)
    w = rng.standard_normal((n, x_shape[-1])).astype("float32")
    b = rng.standard_normal(n).astype("float32")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(x_shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = relax.op.nn.relu(relax.op.linear(x, relax.const(w), relax.const(b)))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    with LLVM:
        lowered = tvm.transform.Sequential(
            cpu_generic.library_dispatch_passes(LLVM)
            + cpu_generic.legalize_passes(LLVM)
            + [ScheduleDenseCPU]
        )(bb.get())
    scheduled = [
        f
        for _, f in lowered.functions_items()
        if isinstance(f, tvm.tirx.PrimFunc) and "matmul" in f.script()
    ]
    assert scheduled and all(f.attrs["tirx.is_scheduled"] for f in scheduled)
    assert "T.parallel" in scheduled[0].script()
    xv = rng.standard_normal(x_shape).astype("float32")
    rtol, atol = TOLERANCES["float32"]
    np.testing.assert_allclose(
        _run(bb.get(), xv), np.maximum(xv @ w.T + b, 0), rtol=rtol, atol=atol
    )


@pytest.mark.parametrize(
    ("rows", "cols", "lanes", "registers", "tile"),
    [
        (95, 512, 16, 32, (14, 2)),  # nothing but 1 divides 95: pad to 98
        (128, 768, 16, 32, (8, 2)),  # 8 divides: no padding copies (12 would model 4 % less work)
        (100, 64, 16, 32, (4, 2)),
        (1, 29, 16, 32, (1, 2)),
        (4, 16, 16, 32, (4, 1)),
        (95, 512, 8, 16, (6, 2)),  # AVX2: at most 6 x 2 accumulators; 95 padded to 96
        (128, 768, 8, 16, (6, 2)),  # padded to 132: 4 x 2 models 9 % more work and runs slower
        (16, 1024, 8, 16, (6, 2)),  # 4 x 2 models as much work
        (4, 16, 8, 16, (4, 2)),
    ],
)
def test_dense_tile_trades_padding_for_reuse_within_the_registers(
    rows, cols, lanes, registers, tile
):
    chosen = choose_tile(rows, cols, lanes, registers)
    assert (chosen.rows, chosen.vectors) == tile
    assert chosen.cols == lanes * tile[1]
    assert chosen.rows * chosen.vectors + chosen.vectors + 1 <= registers


def _attention_scores(heads: int, seq: int, dim: int) -> tvm.tirx.PrimFunc:
    """``S^T[h, j, i] = sum_d K[h * dim + d, j] Q[h * dim + d, i]`` on feature-major sources."""
    from tvm import te

    keys = te.placeholder((heads * dim, seq), "float32", name="k")
    queries = te.placeholder((heads * dim, seq), "float32", name="q")
    d = te.reduce_axis((0, dim), "d")
    scores = te.compute(
        (heads, seq, seq),
        lambda h, j, i: te.sum(keys[h * dim + d, j] * queries[h * dim + d, i], axis=d),
        name="matmul",
    )
    return te.create_prim_func([keys, queries, scores])


@pytest.mark.parametrize(("mcpu", "rows"), [("znver3", 4), ("znver4", 8), (None, None)])
def test_heads_read_in_place_take_a_tile_dividing_the_rows(mcpu, rows):
    """Attention scores read at ``h * D + d`` (``pad_einsum`` cannot pad them): 64 keys take a
    4-row tile on AVX2 instead of the padded 6 (AVX-512 models its dividing 8 as cheap as a
    padded 14), and match float64 (this CPU's tile)."""
    heads, seq, dim = 2, 64, 16
    target = resolve_target("llvm")
    if mcpu is not None:
        target = tvm.target.Target({"kind": "llvm", "mcpu": mcpu, "mtriple": "x86_64-linux-gnu"})
    func = schedule_dense_func(_attention_scores(heads, seq, dim), target)
    assert func is not None
    if mcpu is not None:
        assert f"T.unroll({rows})" in func.script()
        return
    rng = np.random.default_rng(2)
    k, q = (rng.standard_normal((heads * dim, seq)).astype(np.float32) for _ in range(2))
    out = tvm.runtime.tensor(np.zeros((heads, seq, seq), np.float32))
    tvm.compile(func, target=target)(tvm.runtime.tensor(k), tvm.runtime.tensor(q), out)
    k3, q3 = (a.reshape(heads, dim, seq).astype(np.float64) for a in (k, q))
    want = np.einsum("hdj,hdi->hji", k3, q3)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- CSR kernel (x86)
@pytest.mark.parametrize(
    ("x_shape", "n"), [((5, 64), 48), ((2, 3, 64), 48), ((1, 64), 32), ((37, 96), 40)]
)
def test_unstructured_layers_use_the_csr_kernel_and_match_float64(x_shape, n):
    """90 % unstructured weights (an empty row included) take the CSR kernel vectorized along M
    on llvm, for any M (tiles of 16, 8, 4, 2 or 1 rows) and batched inputs."""
    rng = np.random.default_rng(11)
    w = pruned_weight(rng, (n, x_shape[-1]), 0.9)
    w[3] = 0
    after, dispatch = _dispatch(_dense_module(x_shape, [w]), cost_params=WORK_ONLY_CSR)
    (decision,) = dispatch.decisions
    assert decision.variant is KernelVariant.CSR_SPMM and "CSR" in decision.detail
    assert "groups" not in decision.detail  # scattered rows share no columns
    assert "csr_spmm" in after.script()
    xv = rng.standard_normal(x_shape).astype("float32")
    ref = xv.astype(np.float64) @ w.T.astype(np.float64)
    np.testing.assert_allclose(_run(after, xv), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("x_shape", "panels"), [((128, 300), True), ((2, 64, 300), True), ((16, 300), False)]
)
def test_unstructured_layers_over_wide_inputs_run_in_k_panels(x_shape, panels):
    """From 64 rows of ``X`` (a multiple of the tile) an unstructured layer's CSR kernel runs
    in K panels (``K`` = 300: a narrower last panel), with its bias; at 16 rows it does not."""
    rng = np.random.default_rng(15)
    w = pruned_weight(rng, (72, x_shape[-1]), 0.9)
    w[3] = 0
    b = rng.standard_normal(72).astype("float32")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(x_shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.linear(x, relax.const(w), relax.const(b)))
        bb.emit_func_output(out)
    after, dispatch = _dispatch(bb.get(), cost_params=WORK_ONLY_CSR)
    (decision,) = dispatch.decisions
    assert decision.variant is KernelVariant.CSR_SPMM
    assert ("K panels of 128" in decision.detail) == panels
    xv = rng.standard_normal(x_shape).astype("float32")
    ref = xv.astype(np.float64) @ w.T.astype(np.float64) + b
    np.testing.assert_allclose(_run(after, xv), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("block", "most", "group"), [((4, 4), 8, 4), ((8, 1), 4, 4), ((2, 2), 8, 2), ((1, 1), 8, 1)]
)
def test_csr_row_group_follows_the_rows_pruned_together(block, most, group):
    rng = np.random.default_rng(14)
    assert csr_row_group(pruned_weight(rng, (64, 64), 0.9, block), most) == group


@pytest.mark.parametrize(
    ("block", "row_group", "most", "col_block"),
    [
        ((1, 16), 1, 16, 16),
        ((1, 16), 1, 4, 4),
        ((4, 4), 4, 16, 4),
        ((4, 4), 4, 2, 2),
        ((2, 8), 2, 16, 8),
        ((1, 1), 1, 16, 1),
        ((1, 16), 1, 64, 16),  # 32 columns would store half zeros
    ],
)
def test_csr_col_block_follows_the_columns_pruned_together(block, row_group, most, col_block):
    rng = np.random.default_rng(15)
    weight = pruned_weight(rng, (64, 96), 0.9, block)
    assert csr_col_block(weight, row_group, most) == col_block


def test_block_pruned_layers_from_16_rows_take_the_csr_kernel_in_row_groups():
    """A 4x4-pruned weight at M = 32: the CSR kernel with rows in groups of 4 (one load of
    ``X^T[c, :]`` for four rows), numbers vs float64."""
    rng = np.random.default_rng(13)
    blocked = pruned_weight(rng, (64, 64), 0.9, (4, 4))
    after, dispatch = _dispatch(_dense_module((32, 64), [blocked]), cost_params=WORK_ONLY_CSR)
    (decision,) = dispatch.decisions
    assert decision.variant is KernelVariant.CSR_SPMM
    assert "rows in groups of 4" in decision.detail
    xv = rng.standard_normal((32, 64)).astype("float32")
    ref = xv.astype(np.float64) @ blocked.T.astype(np.float64)
    np.testing.assert_allclose(_run(after, xv), ref, rtol=1e-5, atol=1e-5)


def test_block_pruned_and_dynamic_batch_layers_keep_the_block_kernel():
    rng = np.random.default_rng(12)
    blocked = pruned_weight(rng, (64, 64), 0.9, (4, 4))
    _, dispatch = _dispatch(_dense_module((8, 64), [blocked]), cost_params=WORK_ONLY_CSR)
    assert dispatch.decisions[0].variant is KernelVariant.SPARSE_DENSE
    bb = relax.BlockBuilder()
    m = tvm.tirx.Var("m", "int64")
    x = relax.Var("x", relax.TensorType((m, 64), "float32"))
    w = pruned_weight(rng, (64, 64), 0.9)
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.matmul(x, relax.const(np.ascontiguousarray(w.T))))
        bb.emit_func_output(out)
    _, dispatch = _dispatch(bb.get(), cost_params=WORK_ONLY_CSR)
    assert dispatch.decisions[0].variant is not KernelVariant.CSR_SPMM  # needs a static M


def test_cuda_dense_layer_of_few_output_tiles_runs_on_the_block_kernel():
    """Step 8 of the rule: dlight's 32 x 64 output tiles, one per CTA; the DeepSpeech2
    classifier (95 x 29 outputs: 3 tiles) takes the block kernel, unpruned; its convolution as a
    linear layer (95 x 512: 24 tiles) stays dense, as measured."""
    rng = np.random.default_rng(12)
    fc = rng.standard_normal((29, 2048)).astype("float32")
    plan = plan_layer(fc, "cuda", rows=95)
    assert plan.sparse and plan.starved and plan.choice.stored_fraction == 1.0
    assert "runs 3 CTA(s)" in plan.reason
    assert dense_tiles(COST_PARAMS["cuda"], 95, 29) == 3
    conv = rng.standard_normal((512, 1771)).astype("float32")
    assert not plan_layer(conv, "cuda", rows=95).sparse
    assert not plan_layer(fc, "cuda", rows=None).sparse  # M dynamic
    assert not plan_layer(fc, "cuda", rows=95, sparsity_threshold=1.0).sparse
    assert not plan_layer(fc, "llvm", rows=95).sparse
    many = plan_layer(fc, "cuda", rows=95 * 16)  # 48 tiles
    assert not many.sparse and not many.starved
    assert not plan_layer(fc[:, :128], "cuda", rows=95).sparse  # a short reduction


def test_cuda_float16_layers_of_many_rows_stay_dense():
    """Step 6: from 64 rows on, a float16 layer stays dense (tensor cores on both sides; the
    sparse tensor-core kernel re-expands W per 64-row tile); float32 and fewer rows go sparse."""
    w = pruned_weight(np.random.default_rng(13), (3072, 512), 0.9)
    assert plan_layer(w, "cuda", rows=48, dtype="float16").sparse
    big = plan_layer(w, "cuda", rows=1520, dtype="float16")
    assert not big.sparse and "1520 >= 64 rows" in big.reason
    assert not plan_layer(w, "cuda", rows=95, dtype="float16").sparse  # DeepSpeech2 at B = 1
    assert plan_layer(w, "cuda", rows=1520).sparse  # float32: no dense tensor cores
    assert plan_layer(w, "cuda", rows=None, dtype="float16").sparse  # M dynamic
