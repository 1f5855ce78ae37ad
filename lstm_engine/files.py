"""Opening model files, which come from elsewhere (DESIGN §7).

Every reader of a model file (native, ONNX and its external data, .pt, .safetensors)
opens it here: only regular files are read, since a FIFO or a device named like a model
would block the load forever or never end. The check is made on the opened descriptor,
so a file swapped for a FIFO after a check by name cannot slip through.
"""
from __future__ import annotations

import json
import os
import reprlib
import stat
import struct

import numpy as np

from .errors import ModelError

# open() of a FIFO without a writer blocks unless non-blocking; a regular file ignores it
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)

brief = reprlib.Repr()  # file contents quoted in messages: bounded, however large or self-referencing
brief.maxstring = brief.maxother = 80


def open_regular(path):
    """`path` opened for binary reading, or ModelError when it is missing or not a regular file."""
    path = os.fspath(path)
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise ModelError(f"{path}: no such file") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the name
        raise ModelError(f"{path!r}: cannot open ({getattr(e, 'strerror', None) or e})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ModelError(f"{path}: not a regular file (a directory, FIFO or device); model files "
                             "are read only from regular files")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


# ---- safetensors ----------------------------------------------------------------------
_SAFE_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "BF16": "bf16",
                "I64": np.int64, "I32": np.int32}


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16) -> float32: they are the upper half of the float32."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def _count(v) -> int:
    """A size or offset from a JSON header: a non-negative integer (not a bool, not a float)."""
    if type(v) is not int or v < 0:
        raise ValueError(f"{brief.repr(v)} is not a count")
    return v


def _header(data: bytes, path):
    """The JSON header of a safetensors file and the offset of the tensor data after it."""
    try:
        (n,) = struct.unpack_from("<Q", data)
        if n > len(data) - 8:
            raise ValueError("header longer than the file")
        header = json.loads(data[8:8 + n])
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
    except (struct.error, ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ModelError(f"{path}: not a readable safetensors file ({str(e)[:200]})") from None
    return header, 8 + n


def _entry(name, info, body_size, path):
    """(start, end, dtype, shape) of one tensor, checked against the data it claims."""
    try:
        dt = _SAFE_DTYPES[info["dtype"]]
        start, end = (_count(v) for v in info["data_offsets"])
        shape = tuple(_count(v) for v in info["shape"])
    except (KeyError, TypeError, ValueError):
        raise ModelError(f"{path}: tensor {name!r}: unsupported dtype or damaged entry "
                         f"{brief.repr(info)}") from None
    if not start <= end <= body_size:
        raise ModelError(f"{path}: tensor {name!r} lies outside the file (truncated?)")
    itemsize = 2 if dt == "bf16" else np.dtype(dt).itemsize
    if end - start != itemsize * int(np.prod(shape, dtype=object)):
        raise ModelError(f"{path}: tensor {name!r}: {end - start} bytes do not hold shape {shape}")
    return start, end, dt, shape


def read_safetensors(path) -> tuple[dict, dict]:
    """A .safetensors file as ({name: array}, metadata). Every entry is checked against the
    file, and no two tensors may share bytes (as the format requires), so the arrays hold
    no more than the file does; bfloat16 becomes float32, other arrays view the file's bytes."""
    with open_regular(path) as f:
        data = f.read()
    header, at = _header(data, path)
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise ModelError(f"{path}: safetensors metadata is not a JSON object")
    body = memoryview(data)[at:]
    entries = sorted(((name, *_entry(name, info, len(body), path)) for name, info in header.items()),
                     key=lambda e: e[1:3])
    out, last = {}, 0
    for name, start, end, dt, shape in entries:
        if start < last and end > start:
            raise ModelError(f"{path}: tensor {name!r} overlaps another tensor's bytes")
        last = max(last, end)
        raw = np.frombuffer(body[start:end], np.uint16 if dt == "bf16" else dt)
        out[name] = (bf16_to_f32(raw) if dt == "bf16" else raw).reshape(shape)
    return out, meta


def safetensors_metadata(path) -> dict:
    """The metadata of a safetensors file, reading only its header."""
    with open_regular(path) as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        data = head + f.read(min(n, os.fstat(f.fileno()).st_size))  # n may claim exabytes
    header, _ = _header(data, path)
    meta = header.get("__metadata__") or {}
    return meta if isinstance(meta, dict) else {}
