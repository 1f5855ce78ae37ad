"""Importers and exporters between lstm_engine.Model and other formats."""
from .onnx_export import to_onnx

__all__ = ["to_onnx"]
