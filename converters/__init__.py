"""Importers and exporters between lstm_engine.Model and other formats."""
from .onnx_export import to_onnx
from .onnx_import import GraphIO, from_onnx, import_onnx
from .torch_import import from_torch

__all__ = ["GraphIO", "from_onnx", "from_torch", "import_onnx", "to_onnx"]
