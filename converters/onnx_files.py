"""Reading ONNX files, which come from elsewhere (DESIGN §7): damaged protobufs and
tensors become ModelError, and external data is read only from inside the model's own
folder (no absolute paths, no "..", no symlinks out).

External data is resolved once, at load, for every tensor the model holds (initializers,
node attributes, subgraphs): what load_proto returns is self-contained, so nothing
downstream -- constant folding, onnxruntime -- can read a file on its own, relative to
the working directory.
"""
from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import numpy_helper

from lstm_engine.errors import ModelError

_A = onnx.AttributeProto


def load_proto(src) -> onnx.ModelProto:
    """A path, bytes or ModelProto -> the parsed model with all its tensors' data inside.
    A ModelProto or bytes whose tensors live in external files is refused: there is no
    folder to read them from (load it from its path)."""
    if isinstance(src, onnx.ModelProto):
        proto, base = src, None  # a caller's object: only ever read, as base None refuses external data
    else:
        try:
            if isinstance(src, (bytes, bytearray, memoryview)):
                proto, base = onnx.load_model_from_string(bytes(src)), None
            else:
                path = os.fspath(src)
                if not os.path.isfile(path):
                    raise ModelError(f"{path}: no such file")
                with open(path, "rb") as f:
                    proto, base = onnx.load_model_from_string(f.read()), os.path.dirname(os.path.abspath(path))
        except ModelError:
            raise
        except Exception as e:  # protobuf raises DecodeError and friends
            raise ModelError(f"not a readable ONNX model ({type(e).__name__}: {e})") from None
    for t in _tensors(proto.graph):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            t.CopyFrom(_inline(t, base))
    return proto


def _tensors(g: onnx.GraphProto):
    """Every TensorProto a graph holds, its subgraphs' included."""
    yield from g.initializer
    for s in g.sparse_initializer:
        yield from (s.values, s.indices)
    for node in g.node:
        for a in node.attribute:
            if a.type == _A.TENSOR:
                yield a.t
            elif a.type == _A.TENSORS:
                yield from a.tensors
            elif a.type == _A.SPARSE_TENSOR:
                yield from (a.sparse_tensor.values, a.sparse_tensor.indices)
            elif a.type == _A.SPARSE_TENSORS:
                for s in a.sparse_tensors:
                    yield from (s.values, s.indices)
            elif a.type == _A.GRAPH:
                yield from _tensors(a.g)
            elif a.type == _A.GRAPHS:
                for sub in a.graphs:
                    yield from _tensors(sub)


def _inline(t: onnx.TensorProto, base: str | None) -> onnx.TensorProto:
    """An external-data tensor with its data read in, only from inside the model's folder."""
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
    return t2


def tensor(t: onnx.TensorProto) -> np.ndarray:
    """A tensor of a model from load_proto as an array (ModelError when damaged)."""
    try:
        return numpy_helper.to_array(t)
    except Exception as e:
        raise ModelError(f"tensor {t.name!r}: damaged ({type(e).__name__}: {e})") from None
