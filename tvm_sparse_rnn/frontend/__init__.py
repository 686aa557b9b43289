"""Model importers: ONNX (dense layers and ``RNN``/``GRU``/``LSTM``) into Relax."""

from .onnx import TensorSpec, analyze_onnx, from_onnx, import_relax, load_onnx, model_signature

__all__ = [
    "TensorSpec",
    "analyze_onnx",
    "from_onnx",
    "import_relax",
    "load_onnx",
    "model_signature",
]
