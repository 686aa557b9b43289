"""Dense float16 matmuls and convolutions on tensor cores for ``sm_90a`` (ScheduleMatmulCUDA).

CPU: the dense float16 build of a GEMM for ``sm_90a`` runs the pipelined ``mma.sync`` kernel
(``ldmatrix``, ``cp.async``), and so does a Conv1d (unfolded by ``Conv1dToLinear``, its columns
padded to 16-byte rows); a GEMM whose rows are not 16-byte aligned takes dlight's ``wmma`` rule
(TVM's dlight alone gives CUDA-core loops), float32 and GEMV-like layers keep dlight's other
schedules; the tiling choice and its checks. GPU: their outputs match numpy in float64.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import te, tirx
from tvm.target import Target

from tvm_sparse_rnn.compile import build_onnx_with_decisions, load_executable
from tvm_sparse_rnn.kernels.cuda.matmul import numeric_arch
from tvm_sparse_rnn.kernels.cuda.matmul_mma import (
    MMA_CONFIGS,
    MmaConfig,
    MmaMatmul,
    choose_mma_config,
    plan_split_k,
)
from tvm_sparse_rnn.pipeline import ASYNC_COPY_CONFIG
from tvm_sparse_rnn.runtime.persistent import cuda_source
from tvm_sparse_rnn.target import resolve_target
from tvm_sparse_rnn.transform import KernelVariant

WMMA = "wmma::mma_sync"
#: The pipelined kernel's instructions (:mod:`tvm_sparse_rnn.kernels.cuda.matmul_mma`).
MMA = ("mma.sync.aligned.m16n8k16", "ldmatrix.sync.aligned", "cp.async.cg.shared.global")
#: float16 result vs float64 reference, relative to the largest |reference|.
FLOAT16_RTOL = 5e-3


def _model(node: onnx.NodeProto, x_shape, y_shape, weights: dict[str, np.ndarray]):
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, y_shape)],
        [numpy_helper.from_array(w, name) for name, w in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _gemm(m: int, n: int, k: int, seed: int = 0):
    """``Y = X W^T`` (``X (m, k)``, dense ``W (n, k)``) and its float64 reference."""
    w = (np.random.default_rng(seed).standard_normal((n, k)) * 0.05).astype(np.float32)
    model = _model(helper.make_node("Gemm", ["X", "W"], ["Y"], transB=1), [m, k], [m, n], {"W": w})
    return model, lambda x: x.astype(np.float64) @ w.T.astype(np.float64)


def _conv1d(batch: int, width: int = 120, seed: int = 0):
    """The DeepSpeech2-like Conv1d (161 -> 256 channels, kernel 11, stride 2) over ``width``
    frames."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((256, 161, 11)) * 0.05).astype(np.float32)
    frames = (width - 11) // 2 + 1
    node = helper.make_node("Conv", ["X", "W"], ["Y"], strides=[2])
    model = _model(node, [batch, 161, width], [batch, 256, frames], {"W": w})

    def reference(x: np.ndarray) -> np.ndarray:
        cols = np.stack([x[:, :, 2 * t : 2 * t + 11] for t in range(frames)], axis=1)
        return np.einsum("btck,ock->bot", cols.astype(np.float64), w.astype(np.float64))

    return model, reference


def _build(model: onnx.ModelProto, dtype: str = "float16"):
    executable, inputs, outputs, decisions = build_onnx_with_decisions(
        model, target="cuda", dtype=dtype, sparse=False
    )
    assert {d.variant for d in decisions} <= {KernelVariant.DENSE}
    return executable, inputs, outputs


def test_numeric_arch_drops_the_feature_suffix():
    assert str(numeric_arch(resolve_target("cuda")).attrs["arch"]) == "sm_90"
    plain = Target({"kind": "cuda", "arch": "sm_80"})
    assert str(numeric_arch(plain).attrs["arch"]) == "sm_80"


def _kernel_kind(source: str) -> str:
    if all(instruction in source for instruction in MMA):
        return "mma"
    return "wmma" if WMMA in source else "cuda cores"


#: (model, its float16 kernel): rows of 196 halves are not 16-byte aligned (no ``cp.async``), so
#: that GEMM goes to dlight's ``wmma`` rule.
CASES = [("gemm", (128, 192), "mma"), ("gemm", (200, 200), "mma"), ("gemm", (96, 196), "wmma")]


def _case_model(case: str, x_shape: tuple[int, ...]):
    if case == "gemm":
        return _gemm(x_shape[0], 320, x_shape[1])
    if case == "partial":  # 24 x 144: neither M nor N a multiple of the tile
        return _gemm(x_shape[0], 144, x_shape[1])
    if case == "narrow":  # DeepSpeech2's output layer: 29 classes, W^T padded to 32 columns
        return _gemm(x_shape[0], 29, x_shape[1])
    if case == "split":  # BERT's second FFN GEMM: few output tiles, K split in slices
        return _gemm(x_shape[0], 768, x_shape[1])
    return _conv1d(*x_shape[::2])


@pytest.mark.parametrize(
    ("case", "x_shape", "kind"),
    [*CASES, ("conv1d", (2, 161, 120), "mma"), ("narrow", (1520, 2048), "mma")],
)
def test_dense_float16_layers_multiply_on_tensor_cores(case, x_shape, kind):
    assert _kernel_kind(cuda_source(_build(_case_model(case, x_shape)[0])[0].mod)) == kind


def test_float16_conv1d_is_an_aligned_linear_layer_and_float32_keeps_the_convolution():
    """The Conv1d's ``161 * 11 = 1771`` unfolded columns are padded to 1776 (16-byte rows for
    ``cp.async``): one dense layer ``conv0``; in float32 (no tensor cores) it stays a
    convolution."""
    model, _ = _conv1d(2)
    *_, decisions = build_onnx_with_decisions(model, target="cuda", dtype="float16", sparse=False)
    assert [(d.layer, d.detail.split(",")[0]) for d in decisions] == [("conv0", "W 256x1776")]
    *_, decisions = build_onnx_with_decisions(model, target="cuda", dtype="float32", sparse=False)
    assert decisions == []


def test_float32_and_gemv_like_layers_keep_cuda_cores():
    assert _kernel_kind(cuda_source(_build(_gemm(128, 256, 192)[0], "float32")[0].mod)) == (
        "cuda cores"
    )
    assert _kernel_kind(cuda_source(_build(_gemm(8, 256, 192)[0])[0].mod)) == "cuda cores"


def test_tiling_fills_the_gpu_before_growing_tiles():
    assert choose_mma_config(1520, 3072, 132) == MmaConfig(128, 128, 32, 2, 2, 3)
    # 48 tiles of 128 x 128 or 192 of 64 x 64, estimated the same: the one filling more SMs
    assert choose_mma_config(1520, 512, 132) == MmaConfig(64, 64, 32, 2, 2, 3)
    skinny = choose_mma_config(128, 768, 132)
    assert skinny.block_m * skinny.block_n < 128 * 128
    assert choose_mma_config(None, 768, 132) == MMA_CONFIGS[0]  # symbolic M: the largest tile
    with pytest.raises(ValueError, match="fragments per warp"):
        MmaConfig(block_m=48, warps_m=2)
    with pytest.raises(ValueError, match="stages"):
        MmaConfig(stages=1)


def test_split_k_only_where_the_output_tiles_are_few():
    assert plan_split_k(128, 768, 3072, 132) == 4  # BERT's FFN2: 24 tiles of 64 x 64
    assert plan_split_k(95, 32, 2048, 132) == 8  # DeepSpeech2's output layer at batch 1
    assert plan_split_k(128, 2304, 768, 132) == 1  # 72 tiles over a short K
    assert plan_split_k(1520, 3072, 1024, 132) == 1  # many tiles: the partials would cost more
    assert plan_split_k(128, 768, 3000, 132) == 1  # no whole 32-column stages per slice
    # the slices of a split GEMM are its batches: the tiling counts them
    assert choose_mma_config(128, 768, 132, batch=4) == MmaConfig(64, 64, 32, 2, 2, 3)


def test_few_tile_gemm_splits_k_and_sums_the_slices_in_one_fused_kernel():
    """``128 x 3072 -> 768``: four slices of 768 columns as batches of the ``mma.sync`` GEMM
    (96 CTAs instead of 24-48), then one kernel adding the float32 partials and casting."""
    model, _ = _gemm(128, 768, 3072)
    executable, _, _, decisions = build_onnx_with_decisions(
        model, target="cuda", dtype="float16", sparse=False
    )
    (decision,) = decisions
    assert "split-K 4" in decision.detail.split(", ")
    source = cuda_source(executable.mod)
    kernels = set(re.findall(r"void (?:__launch_bounds__\(\d+\) )?(\w+_kernel)\(", source))
    assert "split_k_kernel" in kernels
    (summed,) = [k for k in kernels if "split_k_sum" in k]
    assert "cast" in summed  # the cast back to float16 joined the sum
    assert _kernel_kind(source) == "mma"


def test_symbolic_rows_take_the_largest_tiling():
    """A GEMM of symbolic ``M`` (int64 shapes, as Relax legalizes them) is padded to whole
    128-row tiles and still built on ``mma.sync`` with ``cp.async``."""
    rows, k, n = tirx.Var("m", "int64"), tirx.IntImm("int64", 256), tirx.IntImm("int64", 320)
    a = te.placeholder((rows, k), "float16", name="A")
    w = te.placeholder((k, n), "float16", name="W")
    r = te.reduce_axis((tirx.IntImm("int64", 0), k), name="k")
    acc = te.compute(
        (rows, n),
        lambda i, j: te.sum(a[i, r].astype("float32") * w[r, j].astype("float32"), axis=r),
        name="acc",
    )
    c = te.compute((rows, n), lambda i, j: acc[i, j].astype("float16"), name="c")
    target = resolve_target("cuda")
    sch = MmaMatmul().apply(te.create_prim_func([a, w, c]), target, False)
    assert sch is not None
    mod = tvm.IRModule({"main": sch.mod["main"].with_attr("global_symbol", "main")})
    with tvm.transform.PassContext(config={ASYNC_COPY_CONFIG: True}):
        source = cuda_source(tvm.compile(mod, target=target).mod)
    assert _kernel_kind(source) == "mma"


def _output_blocks(func: tirx.PrimFunc, name: str) -> list[str]:
    """The TVMScript of every block of ``func`` that writes buffer ``name``."""
    blocks = func.script().split("with T.sblock(")[1:]
    return [b for b in blocks if f"T.writes({name}[" in b]


def _mma_store_block(m: int, n: int, k: int, out_n: int) -> str:
    """The store block of the ``mma.sync`` schedule of ``c = float16(A @ W)[:, :out_n]``
    (``A (m, k)``, ``W (k, n)``)."""
    a = te.placeholder((m, k), "float16", name="A")
    w = te.placeholder((k, n), "float16", name="W")
    r = te.reduce_axis((0, k), name="k")
    acc = te.compute(
        (m, n),
        lambda i, j: te.sum(a[i, r].astype("float32") * w[r, j].astype("float32"), axis=r),
        name="acc",
    )
    c = te.compute((m, out_n), lambda i, j: acc[i, j].astype("float16"), name="c")
    sch = MmaMatmul().apply(te.create_prim_func([a, w, c]), resolve_target("cuda"), False)
    assert sch is not None
    (store,) = _output_blocks(sch.mod["main"], "c")
    return store


def test_partial_tiles_store_only_inside_the_output():
    """``M`` and ``N`` not multiples of the tile (24 x 144, as a float16 GRU's input projection
    of 3 samples x 8 steps): the epilogue iterates the output's own extents and predicates the
    partial tile (inlined into the copy of the padded tile, it once stored 8 rows and 48
    columns past the output: the neighbouring rows' numbers were overwritten)."""
    store = _mma_store_block(24, 144, 24, 144)
    assert "T.axis.spatial(24," in store and "T.axis.spatial(144," in store
    assert "T.where(" in store and "< 144" in store


def test_padded_output_features_are_sliced_off_in_the_epilogue():
    """A float16 layer of 29 outputs multiplies ``W^T`` padded to 32 columns (the dispatch's
    :data:`DENSE_FEATURE_ALIGN`); the slice back to 29 is the epilogue, which stores 29."""
    model, _ = _gemm(95, 29, 256)  # a short K: no split
    source = cuda_source(_build(model)[0].mod)
    (name,) = set(re.findall(r"void (?:__launch_bounds__\(\d+\) )?(fused_matmul\w*)\(", source))
    assert "strided_slice" in name  # one kernel: the GEMM and the slice
    store = _mma_store_block(95, 32, 64, 29)
    assert "T.axis.spatial(29," in store and "T.axis.spatial(32," not in store


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("case", "x_shape", "kind"),
    [
        *CASES,
        ("conv1d", (2, 161, 120), "mma"),
        ("conv1d", (16, 161, 200), "mma"),
        ("partial", (24, 24), "mma"),
        ("narrow", (95, 2048), "mma"),
        ("narrow", (1520, 2048), "mma"),
        ("split", (128, 3072), "mma"),
    ],
)
def test_gpu_dense_float16_on_tensor_cores_matches_float64(case, x_shape, kind):
    model, reference = _case_model(case, x_shape)
    executable, inputs, outputs = _build(model)
    assert _kernel_kind(cuda_source(executable.mod)) == kind
    x = np.random.default_rng(1).standard_normal(x_shape).astype(np.float32)
    got = load_executable(executable, inputs, outputs, "cuda").run({"X": x})["Y"]
    ref = reference(x)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= FLOAT16_RTOL * np.abs(ref).max()
