"""A zoo of pruned reference models generated in code with torch (nothing downloaded or committed).

Every builder is seeded and deterministic, exports with the TorchScript ONNX exporter
(``dynamo=False``, opset 17) and returns a checked :class:`onnx.ModelProto`:

* :func:`build_bert_encoder` -- a BERT-base-like encoder: ``layers`` x
  :class:`torch.nn.TransformerEncoderLayer` (batch first, GELU, post-norm) on hidden states
  ``x [batch, seq, d_model]`` (no embedding); the attention in/out projections and both FFN
  Linear weights pruned by magnitude, unstructured or in ``bs_r x bs_c`` blocks.
* :func:`build_deepspeech2` -- a DeepSpeech2-like acoustic model: Conv1d over spectrogram
  frames ``x [batch, features, T]`` (kernel 11, stride 2, ReLU), a stack of bidirectional GRUs
  (``W`` and ``R`` pruned unstructured) and a Linear classifier, output
  ``logits [T', batch, classes]`` with ``T' = (T - 11) // 2 + 1``.
* :func:`build_wide_mlp` -- ``layers`` x (Linear + ReLU) of width ``width`` on ``x [batch, width]``.

torch is imported inside the builders only (it is not a dependency of the package); a missing
torch raises :class:`ImportError` saying ``pip install torch``. :data:`ZOO` maps a model name to a
builder with the benchmark defaults; every size is a keyword argument, so tests build small
versions fast.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import numpy as np
import onnx

logger = logging.getLogger(__name__)

#: Opset of the exported models.
OPSET = 17

#: Pruning patterns the builders accept: unstructured, or a block ``"RxC"`` such as ``"4x4"``.
Pruning = str


def parse_pruning(pruning: Pruning) -> tuple[int, int]:
    """The block ``(bs_r, bs_c)`` of a pruning pattern name.

    Parameters
    ----------
    pruning : str
        ``"unstructured"`` (= ``(1, 1)``) or ``"RxC"``, e.g. ``"4x4"``, ``"1x16"``.

    Returns
    -------
    tuple of int
        ``(bs_r, bs_c)``.

    Raises
    ------
    ValueError
        If the name is neither.
    """
    if pruning == "unstructured":
        return (1, 1)
    try:
        r, c = (int(v) for v in pruning.lower().split("x"))
    except ValueError as err:
        raise ValueError(
            f"pruning must be 'unstructured' or 'RxC' (e.g. '4x4'), got {pruning!r}"
        ) from err
    if r < 1 or c < 1:
        raise ValueError(f"pruning block must be positive, got {pruning!r}")
    return (r, c)


def magnitude_mask(
    weight: np.ndarray, sparsity: float, block: tuple[int, int] = (1, 1)
) -> np.ndarray:
    """Keep-mask of magnitude pruning: zero the ``sparsity`` fraction of blocks of least L1 norm.

    Parameters
    ----------
    weight : numpy.ndarray
        ``(N, K)`` weight; ``block`` must divide both dims.
    sparsity : float
        Fraction of blocks to prune, in ``[0, 1]``; ``round(sparsity * blocks)`` are pruned.
    block : tuple of int
        ``(bs_r, bs_c)``; ``(1, 1)`` is unstructured pruning.

    Returns
    -------
    numpy.ndarray
        ``(N, K)`` bool, ``True`` where the weight is kept. Ties break by position (stable sort),
        so the mask is deterministic.

    Raises
    ------
    ValueError
        If ``block`` does not divide ``weight``'s shape or ``sparsity`` is outside ``[0, 1]``.
    """
    n, k = weight.shape
    r, c = block
    if n % r or k % c:
        raise ValueError(f"block {block} does not divide weight shape {weight.shape}")
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    norms = np.abs(weight).reshape(n // r, r, k // c, c).sum(axis=(1, 3))
    pruned = round(sparsity * norms.size)
    keep = np.ones(norms.size, bool)
    keep[np.argsort(norms, axis=None, kind="stable")[:pruned]] = False
    return np.kron(keep.reshape(norms.shape), np.ones((r, c), bool)).astype(bool)


def _torch() -> Any:
    """Import torch or raise an ImportError that says how to install it."""
    try:
        import torch
    except ImportError as err:
        raise ImportError("the model zoo exports its models with torch: pip install torch") from err
    return torch


def _prune_(param: Any, sparsity: float, block: tuple[int, int]) -> None:
    """Magnitude-prune a 2-D torch parameter in place (see :func:`magnitude_mask`)."""
    torch = _torch()
    mask = magnitude_mask(param.detach().cpu().numpy(), sparsity, block)
    with torch.no_grad():
        param.mul_(torch.from_numpy(mask).to(param.dtype))


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator for the block, restoring the caller's state after it."""
    torch = _torch()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _export(
    module: Any, example: Any, input_name: str, output_name: str, name: str
) -> onnx.ModelProto:
    """Export ``module(example)`` to a checked ONNX model (opset :data:`OPSET`, static shapes)."""
    torch = _torch()
    buffer = io.BytesIO()
    module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        # the shapes are static: the GRU exporter's batch-size advice does not apply
        warnings.filterwarnings("ignore", message=".*batch_size other than 1")
        torch.onnx.export(
            module,
            (example,),
            buffer,
            opset_version=OPSET,
            dynamo=False,
            input_names=[input_name],
            output_names=[output_name],
            do_constant_folding=True,
        )
    model = onnx.load_from_string(buffer.getvalue())
    model.graph.name = name
    onnx.checker.check_model(model)
    return model


def build_bert_encoder(
    *,
    layers: int = 2,
    d_model: int = 768,
    heads: int = 12,
    ffn: int = 3072,
    seq_len: int = 128,
    batch: int = 1,
    sparsity: float = 0.9,
    pruning: Pruning = "unstructured",
    seed: int = 0,
) -> onnx.ModelProto:
    """A pruned BERT-like encoder (see the module docstring).

    Parameters
    ----------
    layers, d_model, heads, ffn : int
        Encoder layers, hidden size, attention heads (dividing ``d_model``) and FFN width.
    seq_len, batch : int
        Static input shape ``[batch, seq_len, d_model]``.
    sparsity : float
        Pruned fraction of every Linear weight (attention ``in_proj``, ``out_proj``, FFN).
    pruning : str
        ``"unstructured"`` or a block such as ``"4x4"`` (:func:`parse_pruning`).
    seed : int
        Seed of the weights.

    Returns
    -------
    onnx.ModelProto
        Input ``x [batch, seq_len, d_model]`` float32, output ``y`` of the same shape.
    """
    torch = _torch()
    block = parse_pruning(pruning)
    with _seeded(seed):
        layer = torch.nn.TransformerEncoderLayer(
            d_model, heads, ffn, dropout=0.0, activation="gelu", batch_first=True
        )
        encoder = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        for block_layer in encoder.layers:
            attn = block_layer.self_attn
            for param in (
                attn.in_proj_weight,
                attn.out_proj.weight,
                block_layer.linear1.weight,
                block_layer.linear2.weight,
            ):
                _prune_(param, sparsity, block)
        x = torch.randn(batch, seq_len, d_model)
    name = f"bert_encoder_{layers}x{d_model}_{pruning}"
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # export the plain MHA ops, not the fused one
    try:
        return _export(encoder, x, "x", "y", name)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _deepspeech2_module(
    features: int, channels: int, hidden: int, gru_layers: int, classes: int
) -> Any:
    """The torch module of :func:`build_deepspeech2` (defined here so torch stays lazy)."""
    torch = _torch()

    class DeepSpeech2(torch.nn.Module):
        """Conv1d + ReLU -> bidirectional GRU stack -> Linear, time-major output."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv1d(features, channels, kernel_size=11, stride=2)
            self.gru = torch.nn.GRU(channels, hidden, gru_layers, bidirectional=True)
            self.fc = torch.nn.Linear(2 * hidden, classes)

        def forward(self, x: Any) -> Any:
            h = torch.relu(self.conv(x)).permute(2, 0, 1)  # [T', B, C]
            y, _ = self.gru(h)  # [T', B, 2H]
            return self.fc(y)

    return DeepSpeech2()


def build_deepspeech2(
    *,
    features: int = 161,
    channels: int = 512,
    hidden: int = 1024,
    gru_layers: int = 2,
    classes: int = 29,
    seq_len: int = 200,
    batch: int = 1,
    sparsity: float = 0.9,
    seed: int = 0,
) -> onnx.ModelProto:
    """A DeepSpeech2-like model with pruned bidirectional GRUs (see the module docstring).

    Parameters
    ----------
    features, channels, hidden, gru_layers, classes : int
        Spectrogram bins, Conv1d output channels, GRU hidden size, GRU layers, output classes.
    seq_len, batch : int
        Static input shape ``[batch, features, seq_len]`` (``seq_len`` >= 11). The default
        ``T = 200`` frames (2 s of 10 ms frames, 95 GRU steps) keeps one call near a second
        on a 2-core CPU for the dense engines.
    sparsity : float
        Unstructured pruned fraction of every GRU ``W`` and ``R`` (per direction and layer).
    seed : int
        Seed of the weights.

    Returns
    -------
    onnx.ModelProto
        Input ``x [batch, features, seq_len]`` float32, output
        ``logits [(seq_len - 11) // 2 + 1, batch, classes]``.
    """
    torch = _torch()
    with _seeded(seed):
        module = _deepspeech2_module(features, channels, hidden, gru_layers, classes)
        for name, param in module.gru.named_parameters():
            if name.startswith("weight_"):
                _prune_(param, sparsity, (1, 1))
        x = torch.randn(batch, features, seq_len)
    return _export(module, x, "x", "logits", f"deepspeech2_h{hidden}")


def build_wide_mlp(
    *,
    layers: int = 3,
    width: int = 4096,
    batch: int = 4,
    sparsity: float = 0.9,
    pruning: Pruning = "unstructured",
    seed: int = 0,
) -> onnx.ModelProto:
    """A wide pruned MLP: ``layers`` x (Linear ``width -> width`` + ReLU).

    Parameters
    ----------
    layers, width : int
        Depth and width.
    batch : int
        Rows of the static input ``[batch, width]``.
    sparsity : float
        Pruned fraction of every Linear weight.
    pruning : str
        ``"unstructured"`` or a block such as ``"4x4"`` (:func:`parse_pruning`).
    seed : int
        Seed of the weights.

    Returns
    -------
    onnx.ModelProto
        Input ``x [batch, width]`` float32, output ``y [batch, width]``.
    """
    torch = _torch()
    block = parse_pruning(pruning)
    with _seeded(seed):
        stack = []
        for _ in range(layers):
            linear = torch.nn.Linear(width, width)
            _prune_(linear.weight, sparsity, block)
            stack += [linear, torch.nn.ReLU()]
        module = torch.nn.Sequential(*stack)
        x = torch.randn(batch, width)
    return _export(module, x, "x", "y", f"wide_mlp_{layers}x{width}_{pruning}")


#: The zoo: model name -> builder with the benchmark defaults (call it; keywords override).
ZOO: dict[str, Callable[..., onnx.ModelProto]] = {
    "bert_unstructured": partial(build_bert_encoder, pruning="unstructured"),
    "bert_4x4": partial(build_bert_encoder, pruning="4x4"),
    "deepspeech2": build_deepspeech2,
    "mlp4096_unstructured": partial(build_wide_mlp, pruning="unstructured"),
    "mlp4096_4x4": partial(build_wide_mlp, pruning="4x4"),
}
