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
from lstm_engine.files import brief, open_regular

_A = onnx.AttributeProto


def load_proto(src) -> onnx.ModelProto:
    """A path, bytes or ModelProto -> the parsed model with all its tensors' data inside.
    A ModelProto or bytes whose tensors live in external files is refused: there is no
    folder to read them from (load it from its path)."""
    if isinstance(src, onnx.ModelProto):
        proto, base = src, None  # a caller's object: only ever read, as base None refuses external data
    else:
        if isinstance(src, (bytes, bytearray, memoryview)):
            data, base = bytes(src), None
        else:
            path = os.fspath(src)
            with open_regular(path) as f:
                data, base = f.read(), os.path.dirname(os.path.abspath(path))
        try:
            proto = onnx.load_model_from_string(data)
        except Exception as e:  # protobuf raises DecodeError and friends
            raise ModelError(f"not a readable ONNX model ({type(e).__name__}: {e})") from None
    external = _External(base)
    for t in _tensors(proto.graph):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            t.CopyFrom(external.inline(t))
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


class _External:
    """Reads external data for the tensors of one model, only from regular files inside its
    folder, and each file's bytes at most once in total: regions are checked against the
    file's real size before anything is read, so neither a huge `length` nor many tensors
    naming the same bytes can make the loader allocate more than the folder holds."""

    def __init__(self, base: str | None):
        self.base = base
        self.unread: dict = {}  # real path -> bytes of it that tensors may still claim

    def inline(self, t: onnx.TensorProto) -> onnx.TensorProto:
        """t with its external data read in."""
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        full = self._resolve(t, loc)
        try:
            f = open_regular(full)
        except ModelError as e:
            raise ModelError(f"tensor {t.name!r}: cannot read external data {loc!r} ({e})") from None
        with f:
            size = os.fstat(f.fileno()).st_size
            offset = _count(t, "offset", info.get("offset", "0"))
            length = _count(t, "length", info.get("length", str(max(size - offset, 0))))
            if offset + length > size:
                raise ModelError(f"tensor {t.name!r}: external data {loc!r} claims bytes {offset}..{offset + length} "
                                 f"of a {size}-byte file")
            left = self.unread.setdefault(full, size)
            if length > left:
                raise ModelError(f"tensor {t.name!r}: the tensors stored in {loc!r} claim more bytes than it "
                                 "holds (several tensors reading the same bytes)")
            self.unread[full] = left - length
            try:
                f.seek(offset)
                raw = f.read(length)
            except OSError as e:
                raise ModelError(f"tensor {t.name!r}: cannot read external data {loc!r} ({e})") from None
        t2 = onnx.TensorProto()
        t2.CopyFrom(t)
        del t2.external_data[:]
        t2.data_location = onnx.TensorProto.DEFAULT
        t2.raw_data = raw
        return t2

    def _resolve(self, t, loc: str) -> str:
        """The real path of loc, which must stay inside the model's folder."""
        if self.base is None:
            raise ModelError(f"tensor {t.name!r}: stored in external file {loc!r}, but the model was "
                             "not loaded from a path; load it with from_onnx(path)")
        if not loc or "\0" in loc or os.path.isabs(loc) or ".." in loc.replace("\\", "/").split("/"):
            raise ModelError(f"tensor {t.name!r}: external data location {loc!r} leaves the model's folder "
                             "or is not a file name")
        root = os.path.realpath(self.base)
        full = os.path.realpath(os.path.join(root, loc))
        if os.path.commonpath([root, full]) != root:
            raise ModelError(f"tensor {t.name!r}: external data {loc!r} resolves outside the model's "
                             "folder (symlink)")
        return full


def _count(t, key, text: str) -> int:
    """An external-data offset or length: at most 20 decimal digits (int() would take ' 1_0')."""
    if not (text.isascii() and text.isdigit() and len(text) <= 20):
        raise ModelError(f"tensor {t.name!r}: external data {key} {brief.repr(text)} is not a byte count")
    return int(text)


def tensor(t: onnx.TensorProto) -> np.ndarray:
    """A tensor of a model from load_proto as an array (ModelError when damaged)."""
    try:
        return numpy_helper.to_array(t)
    except Exception as e:
        raise ModelError(f"tensor {t.name!r}: damaged ({type(e).__name__}: {e})") from None
