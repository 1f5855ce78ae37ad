"""A minimal WebSocket client (RFC 6455) for the load test: one asyncio Protocol per
connection, no extensions, no fragmented messages.

Why not a WebSocket library: the load generator shares a 2-core machine with the
service it measures, and a library's per-message tasks and buffering cost several
times what parsing a frame header here does; a generator that falls behind would
report its own lag as the server's latency.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_LEN16, _LEN64 = struct.Struct(">H"), struct.Struct(">Q")
BINARY, TEXT, CLOSE, PING, PONG = 0x2, 0x1, 0x8, 0x9, 0xA


class WsClient(asyncio.Protocol):
    """Connects, upgrades, then hands every binary message to `on_binary(data)` and every
    text message to `on_text(str)`. `opened` resolves with the upgrade response's headers
    (lower-case names); `closed` resolves when the connection ends."""

    def __init__(self, host: str, port: int, path: str, on_binary, on_text):
        self._request_head = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                              "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n")
        self.on_binary, self.on_text = on_binary, on_text
        loop = asyncio.get_running_loop()
        self.opened, self.closed = loop.create_future(), loop.create_future()
        self._transport = None
        self._buf = b""
        self._accept = None  # the Sec-WebSocket-Accept the server must answer

    # ---- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport):
        self._transport = transport
        key = base64.b64encode(os.urandom(16))
        self._accept = base64.b64encode(hashlib.sha1(key + _GUID).digest()).decode()
        transport.write(self._request_head.encode() + b"Sec-WebSocket-Key: " + key + b"\r\n\r\n")

    def data_received(self, data):
        self._buf += data
        if not self.opened.done():
            if not self._handshake():
                return
        self._frames()

    def connection_lost(self, exc):
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed before the WebSocket upgrade ({exc})"))
        if not self.closed.done():
            self.closed.set_result(exc)

    # ---- sending -------------------------------------------------------------------------
    def send_binary(self, payload: bytes) -> None:
        self._send(BINARY, payload)

    def close(self, code: int = 1000) -> None:
        """Send a close frame: 1000 ends the stream for a service that resumes streams
        (it deletes the stream's checkpoint), any other code leaves it resumable."""
        if self._transport is not None and not self._transport.is_closing():
            self._send(CLOSE, struct.pack(">H", code))

    def abort(self) -> None:
        """Drop the connection without a close frame (the service sees it end abnormally
        and keeps the stream resumable)."""
        if self._transport is not None:
            self._transport.abort()

    def _send(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        if n < 126:
            head = bytes((0x80 | opcode, 0x80 | n))
        elif n < 1 << 16:
            head = bytes((0x80 | opcode, 0x80 | 126)) + _LEN16.pack(n)
        else:
            head = bytes((0x80 | opcode, 0x80 | 127)) + _LEN64.pack(n)
        key = os.urandom(4)  # a client masks every frame (RFC 6455 §5.3); XOR as one big integer
        mask = int.from_bytes((key * (n // 4 + 1))[:n], "little")
        self._transport.write(head + key + (int.from_bytes(payload, "little") ^ mask).to_bytes(n, "little"))

    # ---- receiving --------------------------------------------------------------------------
    def _handshake(self) -> bool:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            return False
        lines = self._buf[:end].decode("latin-1").split("\r\n")
        self._buf = self._buf[end + 4:]
        headers = dict((k.strip().lower(), v.strip()) for k, _, v in (h.partition(":") for h in lines[1:]))
        if not lines[0].startswith("HTTP/1.1 101") or headers.get("sec-websocket-accept") != self._accept:
            self.opened.set_exception(ConnectionError(f"WebSocket upgrade refused: {lines[0]}"))
            self._transport.close()
            return False
        self.opened.set_result(headers)
        return True

    def _frames(self):
        buf, pos = self._buf, 0
        while len(buf) - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n, at = b1 & 0x7F, pos + 2
            if n == 126:
                if len(buf) - at < 2:
                    break
                n, at = _LEN16.unpack_from(buf, at)[0], at + 2
            elif n == 127:
                if len(buf) - at < 8:
                    break
                n, at = _LEN64.unpack_from(buf, at)[0], at + 8
            if len(buf) - at < n:
                break
            payload, pos = buf[at:at + n], at + n
            if not b0 & 0x80 or b1 & 0x80:  # a fragment, or a masked server frame: not this protocol
                self._transport.close()
                self._buf = b""
                return
            opcode = b0 & 0x0F
            if opcode == BINARY:
                self.on_binary(payload)
            elif opcode == TEXT:
                self.on_text(payload.decode())
            elif opcode == PING:
                self._send(PONG, payload)
            elif opcode == CLOSE:
                self._transport.close()
        self._buf = buf[pos:]


async def connect(host: str, port: int, path: str, on_binary, on_text):
    """An open WsClient and the upgrade response's headers."""
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(lambda: WsClient(host, port, path, on_binary, on_text), host, port)
    try:
        headers = await client.opened
    except BaseException:  # refused, or given up on (a timeout): the socket goes too
        client.abort()
        raise
    return client, headers
