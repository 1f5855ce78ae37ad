"""lstm-engine: fast batch-1 streaming LSTM inference on the CPU."""
from .activations import Activation
from .engine import Engine, Stream
from .errors import ModelError
from .files import safetensors_metadata
from .kernels.isa import ISA as _ISA
from .model import FORMAT, Direction, Embedding, Head, Layer, Model

__version__ = "0.1.0"


def kernel_isa() -> str:
    """The micro-kernel variant this process runs: "avx512", "avx2" or "generic" (chosen
    from the CPU at import; the environment variable LSTM_ENGINE_ISA overrides)."""
    return _ISA.name


def load(path) -> Model:
    """Load a model file, chosen by suffix: the native file (.lstm), and -- through the
    converters -- .onnx, .pt/.pth and .safetensors."""
    import os

    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix == ".onnx":
        from converters import from_onnx

        return from_onnx(path)
    if suffix in (".pt", ".pth") or suffix == ".safetensors" and FORMAT not in safetensors_metadata(path):
        from converters import from_torch

        return from_torch(path)
    return Model.load(path)


__all__ = ["Activation", "Direction", "Embedding", "Engine", "Head", "Layer", "Model",
           "ModelError", "Stream", "kernel_isa", "load"]
