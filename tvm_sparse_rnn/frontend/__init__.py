"""Model importers: ONNX (dense layers and ``RNN``/``GRU``/``LSTM``) into Relax."""

from .onnx import TensorSpec, dense_layer_names, from_onnx, load_onnx, model_signature

__all__ = ["TensorSpec", "dense_layer_names", "from_onnx", "load_onnx", "model_signature"]
