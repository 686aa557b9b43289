"""A zoo of pruned reference models generated in code with torch (nothing downloaded or committed).

Every model is seeded and deterministic. Its torch builder returns a :class:`TorchModel` (the
pruned module and an example input: what a torch user runs); :func:`export` writes it with the
TorchScript ONNX exporter (``dynamo=False``, opset 17) to a checked :class:`onnx.ModelProto`:

* :func:`bert_encoder` -- a BERT-base-like encoder: ``layers`` x
  :class:`torch.nn.TransformerEncoderLayer` (batch first, GELU, post-norm) on hidden states
  ``x [batch, seq, d_model]`` (no embedding); the attention in/out projections and both FFN
  Linear weights pruned by magnitude, unstructured or in ``bs_r x bs_c`` blocks.
* :func:`deepspeech2` -- a DeepSpeech2-like acoustic model: Conv1d over spectrogram
  frames ``x [batch, features, T]`` (kernel 11, stride 2, ReLU), a stack of bidirectional GRUs
  (``W`` and ``R`` pruned unstructured) and a Linear classifier, output
  ``logits [T', batch, classes]`` with ``T' = (T - 11) // 2 + 1``.
* :func:`wide_mlp` -- ``layers`` x (Linear + ReLU) of width ``width`` on ``x [batch, width]``.

``build_bert_encoder`` etc. export in one call. torch is imported inside the builders only (it
is not a dependency of the package); a missing torch raises :class:`ImportError` saying
``pip install torch``. :data:`ZOO` (ONNX) and :data:`TORCH_ZOO` (torch) map a model name to a
builder with the benchmark defaults; every size is a keyword argument, so tests build small
versions fast.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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


@dataclass
class TorchModel:
    """A zoo model as torch builds it, before export (what a torch user would run).

    Attributes
    ----------
    module : torch.nn.Module
        The pruned module, in eval mode, on the CPU in float32.
    example : torch.Tensor
        A seeded input of the model's static shape.
    input_name, output_name : str
        The ONNX names of the single input and output.
    name : str
        The ONNX graph name.
    """

    module: Any
    example: Any
    input_name: str
    output_name: str
    name: str


def export(model: TorchModel) -> onnx.ModelProto:
    """Export ``model.module(model.example)`` to a checked ONNX model (opset :data:`OPSET`,
    static shapes; the plain multi-head-attention ops, not torch's fused fast path)."""
    torch = _torch()
    buffer = io.BytesIO()
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # the shapes are static: the GRU exporter's batch-size advice does not apply
            warnings.filterwarnings("ignore", message=".*batch_size other than 1")
            torch.onnx.export(
                model.module,
                (model.example,),
                buffer,
                opset_version=OPSET,
                dynamo=False,
                input_names=[model.input_name],
                output_names=[model.output_name],
                do_constant_folding=True,
            )
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    onnx_model = onnx.load_from_string(buffer.getvalue())
    onnx_model.graph.name = model.name
    onnx.checker.check_model(onnx_model)
    return onnx_model


def bert_encoder(
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
) -> TorchModel:
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
    TorchModel
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
    return TorchModel(encoder.eval(), x, "x", "y", f"bert_encoder_{layers}x{d_model}_{pruning}")


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


def deepspeech2(
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
) -> TorchModel:
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
    TorchModel
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
    return TorchModel(module.eval(), x, "x", "logits", f"deepspeech2_h{hidden}")


def wide_mlp(
    *,
    layers: int = 3,
    width: int = 4096,
    batch: int = 4,
    sparsity: float = 0.9,
    pruning: Pruning = "unstructured",
    seed: int = 0,
) -> TorchModel:
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
    TorchModel
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
    return TorchModel(module.eval(), x, "x", "y", f"wide_mlp_{layers}x{width}_{pruning}")


def build_bert_encoder(**kwargs: Any) -> onnx.ModelProto:
    """:func:`bert_encoder` exported to ONNX (same keywords)."""
    return export(bert_encoder(**kwargs))


def build_deepspeech2(**kwargs: Any) -> onnx.ModelProto:
    """:func:`deepspeech2` exported to ONNX (same keywords)."""
    return export(deepspeech2(**kwargs))


def build_wide_mlp(**kwargs: Any) -> onnx.ModelProto:
    """:func:`wide_mlp` exported to ONNX (same keywords)."""
    return export(wide_mlp(**kwargs))


#: The zoo's torch models: name -> builder with the benchmark defaults (keywords override).
TORCH_ZOO: dict[str, Callable[..., TorchModel]] = {
    "bert_unstructured": partial(bert_encoder, pruning="unstructured"),
    "bert_4x4": partial(bert_encoder, pruning="4x4"),
    "deepspeech2": deepspeech2,
    "mlp4096_unstructured": partial(wide_mlp, pruning="unstructured"),
    "mlp4096_4x4": partial(wide_mlp, pruning="4x4"),
}


def _exported(builder: Callable[..., TorchModel]) -> Callable[..., onnx.ModelProto]:
    def build(**kwargs: Any) -> onnx.ModelProto:
        return export(builder(**kwargs))

    return build


#: The zoo: model name -> ONNX builder with the benchmark defaults (call it; keywords override).
ZOO: dict[str, Callable[..., onnx.ModelProto]] = {
    name: _exported(builder) for name, builder in TORCH_ZOO.items()
}
