"""The float16 tensor-core ``sparse_dense`` kernel: packing, source (no GPU), numerics (gpu)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import tvm

from tvm_sparse_rnn.compile import build_onnx_with_decisions, load_executable
from tvm_sparse_rnn.demo import build_demo_model, random_inputs
from tvm_sparse_rnn.errors import UnsupportedError
from tvm_sparse_rnn.kernels.cuda.csr_vector.kernel import CsrVectorConfig
from tvm_sparse_rnn.kernels.cuda.sparse_dense import CudaConfig
from tvm_sparse_rnn.kernels.cuda.tensor_core.kernel import (
    ROW_STRIDE,
    TensorCoreConfig,
    make_tensor_core_kernel,
    padded_rows,
)
from tvm_sparse_rnn.kernels.cuda.tensor_core.packing import pack_tiled, unpack_tiled
from tvm_sparse_rnn.runtime.persistent import cuda_source
from tvm_sparse_rnn.runtime.sparse_dense import build_sparse_dense
from tvm_sparse_rnn.target import resolve_target, shared_memory_per_block
from tvm_sparse_rnn.testing import random_bsr, run_onnxruntime
from tvm_sparse_rnn.transform import KernelVariant
from tvm_sparse_rnn.zoo import build_bert_encoder

TARGET = resolve_target({"kind": "cuda", "arch": "sm_90a"})
SHARED = shared_memory_per_block(TARGET)
#: float16 result vs float64 reference, relative to the largest |reference|.
FLOAT16_RTOL = 2e-3


def _weight(n: int, k: int, block: tuple[int, int], density: float, seed: int = 0) -> np.ndarray:
    return random_bsr(n, k, block, density, "float16", seed=seed).toarray().astype(np.float16)


@pytest.mark.parametrize("row_frags", [1, 2, 4])
@pytest.mark.parametrize(
    ("n", "k", "block", "density"),
    [
        (100, 70, (1, 1), 0.3),
        (64, 300, (4, 4), 0.2),
        (256, 512, (16, 16), 0.1),
        (48, 64, (1, 1), 0.0),
    ],
)
def test_packing_round_trips(n, k, block, density, row_frags):
    w = _weight(n, k, block, density)
    packed = pack_tiled(w, row_frags, 2)
    assert np.array_equal(unpack_tiled(packed), w)
    lay = packed.layout
    assert packed.words.shape == (lay.tiles, lay.warps, lay.quads_per_lane, 32, 4)
    assert packed.cols.shape == (lay.tiles, lay.warps, lay.segments_per_warp)
    assert lay.quads_per_lane * 4 <= 64  # the register budget


def test_packing_splits_full_chunks_and_takes_scipy_input():
    """A chunk with more words than a segment holds is split; scipy CSR packs like dense."""
    rng = np.random.default_rng(1)
    w = np.where(rng.random((32, 256)) < 0.05, rng.standard_normal((32, 256)), 0)
    w[:16, :64] = rng.standard_normal((16, 64))  # one full chunk: 1024 words
    w = w.astype(np.float16)
    packed = pack_tiled(sp.csr_array(w.astype(np.float32)), 1, 1)
    assert packed.layout.slots * 32 < 1024
    assert np.array_equal(unpack_tiled(packed), w)


def test_packing_rejects_bad_knobs_and_dense_weights():
    w = _weight(64, 64, (1, 1), 0.1)
    with pytest.raises(UnsupportedError, match="row_frags must be one of"):
        pack_tiled(w, 3, 4)
    with pytest.raises(UnsupportedError, match=r"warps must be in 1\.\.32"):
        pack_tiled(w, 1, 0)
    dense = np.ones((64, 8192), np.float16)
    with pytest.raises(UnsupportedError, match="use the dense kernel"):
        pack_tiled(dense, 4, 4)


def test_kernel_rejects_bad_tiles_and_shared_memory():
    layout = pack_tiled(_weight(64, 128, (1, 1), 0.1), 1, 4).layout
    with pytest.raises(UnsupportedError, match="m_tile must be 16, 32 or 64"):
        make_tensor_core_kernel(layout, 48, 48, SHARED)
    with pytest.raises(UnsupportedError, match="m_tile must be 16, 32 or 64"):
        make_tensor_core_kernel(layout, 40, 16, SHARED)
    with pytest.raises(UnsupportedError, match="bytes of shared memory"):
        make_tensor_core_kernel(layout, 64, 64, 1024)


def test_cuda_source_multiplies_on_tensor_cores():
    """sm_90a source, no GPU: 16-byte pair loads, padded tile rows, wmma mma."""
    layout = pack_tiled(_weight(256, 512, (1, 1), 0.1), 2, 4).layout
    func = make_tensor_core_kernel(layout, 32, 16, SHARED)
    source = tvm.compile(tvm.IRModule({"main": func}), target=TARGET).mod.imports[0]
    source = source.inspect_source()
    assert "nvcuda::wmma::mma_sync" in source
    assert "nvcuda::wmma::load_matrix_sync" in source and f", {ROW_STRIDE});" in source
    assert "*(uint4*)(regs" in source  # the pair words arrive in 16-byte loads
    assert "__syncwarp()" in source


def _run(w: np.ndarray, x: np.ndarray, row_frags: int, warps: int, m_tile: int) -> np.ndarray:
    packed = pack_tiled(w, row_frags, warps)
    m, k = x.shape
    mp, kp = padded_rows(m, m_tile), packed.layout.padded_k
    xp = np.zeros((mp, kp), np.float16)
    xp[:m, :k] = x
    func = make_tensor_core_kernel(packed.layout, mp, m_tile, SHARED)
    lib = tvm.compile(tvm.IRModule({"main": func}), target=TARGET)
    dev = tvm.cuda(0)
    y = tvm.runtime.empty((mp, w.shape[0]), "float16", dev)
    args = [tvm.runtime.tensor(a, dev) for a in (xp, *packed.arrays())]
    lib["main"](*args, y)
    return y.numpy()[:m]


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("block", "m", "config"),
    [
        ((1, 1), 16, (2, 8, 16)),
        ((1, 1), 37, (1, 4, 32)),
        ((4, 4), 64, (2, 8, 16)),
        ((1, 16), 128, (2, 8, 64)),
        ((16, 16), 128, (1, 8, 64)),
        ((1, 1), 16, (4, 16, 16)),
    ],
)
def test_gpu_matches_float64(block, m, config):
    n, k = 1000, 1080  # a ragged last tile and chunk
    w = _weight(1008, 1088, block, 0.1, seed=2)[:n, :k]
    x = np.random.default_rng(3).uniform(-1, 1, (m, k)).astype(np.float16)
    ref = x.astype(np.float64) @ w.astype(np.float64).T
    got = _run(w, x, *config)
    assert np.abs(got - ref).max() <= FLOAT16_RTOL * np.abs(ref).max()


#: Demo MLPs: 16 rows and aligned widths; 37 rows and a hidden width of 208 (X padded to 48
#: rows and 256 columns around the kernel, Y sliced back).
MODELS = {
    "aligned": {"seq_len": 4, "batch": 4, "hidden": 512},
    "ragged": {"seq_len": 37, "batch": 1, "hidden": 208},
}


def _model(shape: str):
    return build_demo_model(**MODELS[shape], mlp=1024, classes=16, recurrent=False)


@pytest.mark.parametrize("shape", MODELS)
def test_float16_model_builds_with_tensor_core_layers(shape):
    """sm_90a, no GPU: fc1 and fc2 of the float16 model run the tensor-core kernel."""
    executable, _, _, decisions = build_onnx_with_decisions(
        _model(shape), target="cuda", dtype="float16"
    )
    variants = {d.layer: d.variant for d in decisions}
    assert variants["fc1"] is variants["fc2"] is KernelVariant.TENSOR_CORE
    assert "tensor cores: 16-row tiles" in next(d.detail for d in decisions if d.layer == "fc1")
    assert "sparse_dense_tensor_core" in cuda_source(executable.mod)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", MODELS)
def test_gpu_float16_model_on_tensor_cores_matches_onnxruntime(shape):
    model = _model(shape)
    executable, inputs, outputs, decisions = build_onnx_with_decisions(
        model, target="cuda", dtype="float16"
    )
    assert KernelVariant.TENSOR_CORE in {d.variant for d in decisions}
    feeds = random_inputs(inputs)
    got = load_executable(executable, inputs, outputs, "cuda").run(feeds)
    for spec, ref in zip(outputs, run_onnxruntime(model, feeds), strict=True):
        assert np.abs(got[spec.name] - ref).max() <= 1e-2 * np.abs(ref).max()


@pytest.mark.gpu
def test_gpu_build_sparse_dense_takes_tensor_cores_from_16_rows():
    """The public ``build_sparse_dense``: float16 from 16 rows on runs the tensor-core kernel
    (X padded to whole tiles and chunks); below it 4x4 blocks take the CSR-vector kernel from 4
    rows (a nonzero's 8 rows of X are one 16-byte load) and the block kernel at 1 row."""
    weight = random_bsr(256, 200, (4, 4), 0.1, "float16", seed=5)
    rng = np.random.default_rng(6)
    for m, kind in ((37, TensorCoreConfig), (8, CsrVectorConfig), (1, CudaConfig)):
        kernel = build_sparse_dense(weight, m, "cuda")
        assert isinstance(kernel.config, kind)
        x = rng.uniform(-1, 1, (m, 200)).astype(np.float16)
        ref = x.astype(np.float64) @ weight.toarray().astype(np.float64).T
        got = kernel(x)
        assert got.shape == (m, 256)
        assert np.abs(got - ref).max() <= FLOAT16_RTOL * np.abs(ref).max()


@pytest.mark.parametrize("pruning", ["unstructured", "4x4"])
def test_float16_pruned_transformer_runs_its_linear_layers_on_tensor_cores(pruning):
    """sm_90a, no GPU: a pruned BERT-like encoder layer (seq 32) in float16 runs its four
    pruned Linear layers (in/out projections, both FFN) on ``wmma``."""
    pytest.importorskip("torch")
    model = build_bert_encoder(layers=1, d_model=128, heads=4, ffn=256, seq_len=32, pruning=pruning)
    executable, _, _, decisions = build_onnx_with_decisions(model, target="cuda", dtype="float16")
    assert [d.variant for d in decisions] == [KernelVariant.TENSOR_CORE] * 4
    source = cuda_source(executable.mod)
    assert source.count("nvcuda::wmma::mma_sync") >= 4
