"""Length-prefixed frames over an asyncio stream: ``u32 big-endian length || payload``.

One home for the framing that the peer links (``bft.runtime.peers``), the framed client session port
(``bft.runtime.session_port``) and the client library's session streams (``client.session``) share.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

from bft.wire import WireError

FRAME_LEN = struct.Struct(">I")
SESSION_ALPN = "bftchat-session/1"  # the session port's wire format, version 1 (ALPN protocol id)
KEEPALIVE = (10, 5, 3)  # idle seconds, probe interval, probes: a vanished peer is noticed in ~25 s
USER_TIMEOUT_MS = 20_000  # unacknowledged data for this long ends the connection


def encode_frame(payload: bytes) -> bytes:
    return FRAME_LEN.pack(len(payload)) + payload


def encode_frames(payloads: list[bytes]) -> bytes:
    """Several frames as one buffer (one write, one TLS record where they fit)."""
    pack = FRAME_LEN.pack
    return b"".join(part for p in payloads for part in (pack(len(p)), p))


async def read_frame(reader: asyncio.StreamReader, limit: int) -> bytes | None:
    """The next frame's payload; None at a clean end of stream; WireError for a broken or oversized one."""
    try:
        head = await reader.readexactly(4)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise WireError("link closed inside a frame header") from None
    (size,) = FRAME_LEN.unpack(head)
    if size > limit:
        raise WireError(f"frame of {size} bytes is over the {limit}-byte limit")
    try:
        return await reader.readexactly(size)
    except asyncio.IncompleteReadError:
        raise WireError(f"link closed inside a {size}-byte frame") from None


def tune_socket(writer: asyncio.StreamWriter) -> None:
    """No Nagle delay (frames are already coalesced) and keepalive to notice a vanished peer."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        idle, interval, count = KEEPALIVE
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)
