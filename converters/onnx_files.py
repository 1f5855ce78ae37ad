"""Reading ONNX files and their tensors, which come from elsewhere (DESIGN §7): damaged
protobufs and tensors become ModelError, and external data is read only from inside
the model's own folder (no absolute paths, no "..", no symlinks out).
"""
from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import numpy_helper

from lstm_engine.errors import ModelError


def load_proto(src) -> tuple[onnx.ModelProto, str | None]:
    """A path, bytes or ModelProto -> (the parsed model, its folder for external data or None)."""
    if isinstance(src, onnx.ModelProto):
        return src, None
    try:
        if isinstance(src, (bytes, bytearray, memoryview)):
            return onnx.load_model_from_string(bytes(src)), None
        path = os.fspath(src)
        if not os.path.isfile(path):
            raise ModelError(f"{path}: no such file")
        with open(path, "rb") as f:
            return onnx.load_model_from_string(f.read()), os.path.dirname(os.path.abspath(path))
    except ModelError:
        raise
    except Exception as e:  # protobuf raises DecodeError and friends
        raise ModelError(f"not a readable ONNX model ({type(e).__name__}: {e})") from None


def _external(t: onnx.TensorProto, base: str | None) -> np.ndarray:
    """An external-data tensor, read only from inside the model's folder (DESIGN §7)."""
    info = {e.key: e.value for e in t.external_data}
    loc = info.get("location", "")
    if base is None:
        raise ModelError(f"tensor {t.name!r}: stored in external file {loc!r}, but the model was "
                         "not loaded from a path; load it with from_onnx(path)")
    if not loc or os.path.isabs(loc) or ".." in loc.replace("\\", "/").split("/"):
        raise ModelError(f"tensor {t.name!r}: external data location {loc!r} leaves the model's folder")
    root = os.path.realpath(base)
    full = os.path.realpath(os.path.join(root, loc))
    if os.path.commonpath([root, full]) != root:
        raise ModelError(f"tensor {t.name!r}: external data {loc!r} resolves outside the model's "
                         "folder (symlink)")
    try:
        offset, length = int(info.get("offset", 0)), info.get("length")
        with open(full, "rb") as f:
            f.seek(offset)
            raw = f.read() if length is None else f.read(int(length))
    except (OSError, ValueError) as e:
        raise ModelError(f"tensor {t.name!r}: cannot read external data {loc!r} ({e})") from None
    t2 = onnx.TensorProto()
    t2.CopyFrom(t)
    del t2.external_data[:]
    t2.data_location = onnx.TensorProto.DEFAULT
    t2.raw_data = raw
    return tensor(t2)


def tensor(t: onnx.TensorProto, base: str | None = None) -> np.ndarray:
    """An initializer or Constant tensor as an array; external data is read from base only."""
    if t.data_location == onnx.TensorProto.EXTERNAL:
        return _external(t, base)
    try:
        return numpy_helper.to_array(t)
    except Exception as e:
        raise ModelError(f"tensor {t.name!r}: damaged ({type(e).__name__}: {e})") from None


def inlined(proto: onnx.ModelProto, base: str | None) -> onnx.ModelProto:
    """A copy of proto whose external tensors (initializers, Constant values) hold their
    data inline, read with tensor()'s checks: for consumers given bytes, like onnxruntime."""
    p = onnx.ModelProto()
    p.CopyFrom(proto)
    attrs = [a.t for n in p.graph.node for a in n.attribute if a.type == onnx.AttributeProto.TENSOR]
    for t in [*p.graph.initializer, *attrs]:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            t.CopyFrom(numpy_helper.from_array(tensor(t, base), t.name))
    return p
