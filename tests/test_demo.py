"""The embedded demo model (the README's main job) builds for both targets."""

from __future__ import annotations

import shutil

import pytest
from tvm.support import nvcc

from tvm_sparse_rnn.demo import build_demo_model
from tvm_sparse_rnn.frontend.onnx import from_onnx
from tvm_sparse_rnn.pipeline import build
from tvm_sparse_rnn.target import resolve_target


def test_demo_model_cuda_source_compiles_for_sm90a():
    """Every kernel of the demo model (sparse MLP + recurrent layer) is valid CUDA for sm_90a.

    Guards against default GPU schedules emitting invalid code (e.g. a vectorized boolean
    select, which NVRTC rejected on the H100).
    """
    target = resolve_target("cuda")
    executable, _ = build(from_onnx(build_demo_model()), target)
    (cuda,) = [m for m in executable.mod.imports[0].imports if m.kind == "cuda"]
    source = cuda.inspect_source()
    assert source.count("__global__") >= 3
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not available")
    with target:
        cubin = nvcc.compile_cuda(source, target_format="cubin", arch="sm_90a", compiler="nvcc")
    assert len(cubin) > 0
