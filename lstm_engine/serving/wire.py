"""The example service's binary WebSocket frames, both ways: a little-endian uint64
sequence number, then little-endian float32 values (a frame in, an output out)."""
from __future__ import annotations

import struct

import numpy as np

SEQ = struct.Struct("<Q")


def encode(seq: int, values) -> bytes:
    return SEQ.pack(seq) + np.asarray(values, "<f4").tobytes()


def decode(data: bytes):
    """(seq, float32 values); ValueError for a frame too short or of a ragged length."""
    if len(data) < SEQ.size or (len(data) - SEQ.size) % 4:
        raise ValueError(f"a frame is an 8-byte sequence number and float32 values; got {len(data)} bytes")
    return SEQ.unpack_from(data)[0], np.frombuffer(data, "<f4", offset=SEQ.size)
