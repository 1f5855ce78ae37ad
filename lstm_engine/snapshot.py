"""The bytes of Stream.snapshot(): a stream's state, tagged with its model, checksummed.

Layout (little-endian): magic, version, the model's sha256 fingerprint, n, then n
float32 of state, then zlib.crc32 of everything before it. Snapshots travel (stores,
other processes), so any damaged byte is refused; CRC-32 catches every error within
32 consecutive bits, so every single-byte change.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np

from .inputs import nonfinite

MAGIC = b"LSTMSNAP"
VERSION = 2  # 1 had no checksum
_HEAD = struct.Struct("<8sH32sI")  # magic, version, model fingerprint, floats of state
_CRC = struct.Struct("<I")


def encode(fingerprint: bytes, state: np.ndarray) -> bytes:
    body = _HEAD.pack(MAGIC, VERSION, fingerprint, state.size) + state.astype("<f4").tobytes()
    return body + _CRC.pack(zlib.crc32(body))


def decode(blob, fingerprint: bytes, n: int) -> np.ndarray:
    """The n floats of state in `blob`, a snapshot of the model with `fingerprint`;
    ValueError saying what is wrong otherwise."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise TypeError(f"restore needs the bytes from Stream.snapshot(), got {type(blob).__name__}")
    blob = bytes(blob)
    if len(blob) < _HEAD.size + _CRC.size:
        raise ValueError("snapshot is truncated")
    magic, version, fp, count = _HEAD.unpack_from(blob)
    if magic != MAGIC:
        raise ValueError("not an lstm-engine snapshot")
    if version != VERSION:
        raise ValueError(f"snapshot version {version}; this lstm-engine reads {VERSION}")
    size = len(blob) - _HEAD.size - _CRC.size
    if size != 4 * count:
        raise ValueError(f"snapshot holds {size} bytes of state, its header says {4 * count}")
    if zlib.crc32(blob[:-_CRC.size]) != _CRC.unpack_from(blob, len(blob) - _CRC.size)[0]:
        raise ValueError("snapshot is damaged (checksum mismatch)")
    if fp != fingerprint:
        raise ValueError("snapshot was taken on a different model (fingerprint differs)")
    if count != n:  # an equal fingerprint means an equal model: this is a corrupt writer
        raise ValueError(f"snapshot holds {count} floats of state, this model has {n}")
    state = np.frombuffer(blob, "<f4", count, _HEAD.size)
    if not np.isfinite(state).all():
        raise nonfinite("snapshot state")
    return state
