"""The torch-built model zoo: pruning masks, deterministic exports, small models match ORT."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tvm_sparse_rnn.zoo import magnitude_mask, parse_pruning

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from tvm_sparse_rnn.compile import build_onnx, load_executable  # noqa: E402
from tvm_sparse_rnn.demo import random_inputs  # noqa: E402
from tvm_sparse_rnn.zoo import (  # noqa: E402
    ZOO,
    build_bert_encoder,
    build_deepspeech2,
    build_wide_mlp,
)


def test_parse_pruning():
    assert parse_pruning("unstructured") == (1, 1)
    assert parse_pruning("4x4") == (4, 4)
    assert parse_pruning("1x16") == (1, 16)
    with pytest.raises(ValueError, match="pruning"):
        parse_pruning("dense")


@pytest.mark.parametrize("block", [(1, 1), (4, 4), (1, 16)])
def test_magnitude_mask_prunes_smallest_blocks(block):
    w = np.random.default_rng(0).standard_normal((32, 64)).astype("float32")
    keep = magnitude_mask(w, 0.75, block)
    r, c = block
    blocks = keep.reshape(32 // r, r, 64 // c, c)
    assert (blocks.all(axis=(1, 3)) == blocks.any(axis=(1, 3))).all()  # whole blocks
    assert keep.mean() == pytest.approx(0.25)
    norms = np.abs(w).reshape(32 // r, r, 64 // c, c).sum(axis=(1, 3))
    kept = blocks.any(axis=(1, 3))
    assert norms[kept].min() >= norms[~kept].max()


def _check(model):
    """Build ``model`` with the package and compare its first output with onnxruntime's."""
    executable, inputs, outputs = build_onnx(model, target="llvm")
    feeds = random_inputs(inputs)
    got = load_executable(executable, inputs, outputs, "llvm").run(feeds)
    ref = ort.InferenceSession(model.SerializeToString()).run(None, feeds)
    np.testing.assert_allclose(got[outputs[0].name], ref[0], rtol=1e-4, atol=1e-5)


def test_models_are_deterministic():
    a = build_wide_mlp(width=64, batch=2, layers=2)
    b = build_wide_mlp(width=64, batch=2, layers=2)
    assert a.SerializeToString() == b.SerializeToString()


@pytest.mark.parametrize("pruning", ["unstructured", "4x4"])
def test_small_mlp_and_encoder_match_onnxruntime(pruning):
    _check(build_wide_mlp(width=128, batch=4, layers=2, pruning=pruning))
    _check(build_bert_encoder(layers=1, d_model=64, heads=4, ffn=128, seq_len=8, pruning=pruning))


def test_small_deepspeech2_matches_onnxruntime():
    _check(build_deepspeech2(features=16, channels=32, hidden=32, classes=5, seq_len=31))


def test_zoo_names():
    assert set(ZOO) >= {"bert_unstructured", "bert_4x4", "deepspeech2", "mlp4096_unstructured"}


@pytest.mark.parametrize("batch", [1, 64])
def test_inspect_puts_every_deepspeech2_gru_direction_on_the_persistent_kernel(
    batch, tmp_path, capsys
):
    """The DeepSpeech2-like model (2-layer bidirectional GRU 1024, 90 %) for the H200: every
    recurrent layer and direction on the persistent kernel at batch 1 and 64, both directions of
    a layer (and at batch 64 its batch slices) in one launch (CPU-visible)."""
    from tvm_sparse_rnn.cli.main import main

    path = tmp_path / f"ds2_b{batch}.onnx"
    path.write_bytes(build_deepspeech2(batch=batch, seq_len=31).SerializeToString())
    assert main(["inspect", str(path), "--target", "cuda"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    recurrent = [row for row in rows if row and re.fullmatch(r"/gru/GRU(_1)?\[(fw|bw)\]", row[0])]
    assert len(recurrent) == 4
    assert all(row[1] == "persistent" and f"N={batch}:" in row for row in recurrent)
    assert all(" ".join(row).count("2 directions x ") == 1 for row in recurrent)  # one launch
    # batch 64 as slices of the batch on their own CTAs (replicas), still one launch
    assert all(("replicas x" in " ".join(row)) == (batch == 64) for row in recurrent)


@pytest.mark.parametrize(("flags", "packed"), [([], True), (["--float32-accumulation"], False)])
def test_inspect_float16_recurrences_sum_in_packed_halves_unless_asked(
    flags, packed, tmp_path, capsys
):
    """``--dtype float16``: the persistent GRUs take packed-half FMA chunks
    (``fp16_chunk``), ``--float32-accumulation`` keeps every product in float32 (CPU-visible)."""
    from tvm_sparse_rnn.cli.main import main

    path = tmp_path / "ds2.onnx"
    path.write_bytes(build_deepspeech2(batch=1, seq_len=31).SerializeToString())
    args = ["inspect", str(path), "--target", "cuda", "--dtype", "float16", *flags]
    assert main(args) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "persistent" in line]
    assert len(rows) == 4 and all("float16" in row for row in rows)
    assert all(("f16x2/16" in row) == packed for row in rows)
