"""The session port: client sessions as length-prefixed frames over TLS, beside the gRPC client port.

Why a second transport for the same session: per message, grpc.aio costs several times the CPU of
an asyncio stream carrying the same bytes (``scripts/bench_transport.py``; docs/NOTEBOOK.md,
"Client sessions on a framed port"), and every request, reply and push of every client passes
through it at several replicas. The session itself is unchanged: the same ``ClientFrame`` and
``ServerFrame`` messages (proto/bftchat/v1/service.proto), the same limits and the same code
(``ClientSessionService.serve``); only the carrier differs.

Wire format (version 1, ALPN ``bftchat-session/1``): TLS 1.3, the replica's certificate from the
cluster CA, no client certificate (clients prove their keys inside the session, as on gRPC). One
session per connection. Each frame is ``u32 big-endian length || message``: ``ClientFrame``s from
the client, at most ``MAX_CLIENT_FRAME`` bytes each; ``ServerFrame``s from the replica, the first
one its nonce. Over plain TCP (``--insecure``) the client may half-close (shut down its sending
side) and still read owed answers for ``HALF_CLOSE_LINGER`` seconds; TLS has no half-close. A
session the replica will not take gets one ``ServerFrame{refused}`` and the connection is closed.
TLS contexts: ``tls.session_server_context`` here, ``client.session.session_tls`` at the client.

Limits, checked where they cost nothing: connections are counted from ``accept`` (before the TLS
handshake, so bare connections that never handshake count too) and past ``max_connections`` a new
one is closed at once; the handshake must finish within ``HANDSHAKE_TIMEOUT_MS``; sessions are
capped in total and per source address together with the gRPC ones (``ClientSessionService``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator

from bft.framing import SESSION_ALPN, encode_frame, encode_frames, read_frame, tune_socket
from bft.pb.bftchat.v1 import service_pb2 as spb
from bft.runtime.logs import EventLog
from bft.runtime.metrics import Metrics
from bft.runtime.server import HANDSHAKE_TIMEOUT_MS, MAX_CLIENT_FRAME, ClientSessionService
from bft.wire import WireError

STREAM_LIMIT = 64 * 1024  # asyncio reader buffer before it pauses the socket (a larger frame still reads)
LISTEN_BACKLOG = 1024
CLOSE_SECONDS = 0.5  # a closing connection's TLS goodbye; past it the socket is aborted
FIRST_FRAME_SECONDS = HANDSHAKE_TIMEOUT_MS / 1000  # after the TLS handshake, for the client's first frame


class FramedStream:
    """One connection of the session port as a ``SessionStream``."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: str, half_close: bool
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.address = address
        self._half_close = half_close  # plain TCP: an end of stream may be a half-close

    async def frames(self) -> AsyncIterator[bytes]:
        # An honest client's first frame (its claim) follows the nonce at once: a connection that
        # says nothing does not keep its slot past the handshake deadline.
        first = await asyncio.wait_for(read_frame(self._reader, MAX_CLIENT_FRAME), FIRST_FRAME_SECONDS)
        if first is not None:
            yield first
        while first is not None:
            raw = await read_frame(self._reader, MAX_CLIENT_FRAME)  # WireError ends the session
            if raw is None:
                if not self._half_close:  # TLS: the client is gone; its slot is not kept lingering
                    raise EOFError("the client closed the connection")
                return
            yield raw

    async def write(self, frames: list[bytes]) -> None:
        data = encode_frames(frames)
        frames.clear()  # the transport holds the bytes now: not twice while a slow reader waits
        self._writer.write(data)
        del data
        await self._writer.drain()

    async def refuse(self, why: str) -> None:
        self._writer.write(encode_frame(spb.ServerFrame(refused=why).SerializeToString()))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._writer.drain(), CLOSE_SECONDS)


class SessionPort:
    """Accepts connections on the session port and serves one client session on each."""

    def __init__(
        self,
        service: ClientSessionService,
        tls: ssl.SSLContext | None,
        max_connections: int,
        metrics: Metrics,
        events: EventLog,
    ) -> None:
        self.service = service
        self.tls = tls
        self.max_connections = max_connections
        self.metrics = metrics
        self.events = events
        self.connections = 0  # accepted and not yet closed, handshaking ones included
        # Per source address, counted from accept too: one address (one IPv6 host, one NAT) cannot
        # take the whole port with connections that never become sessions.
        self.max_per_address = max(1, min(service.limits.max_sessions_per_address, max_connections // 4))
        self.per_address: dict[str, int] = {}
        self._sock: socket.socket | None = None
        self._acceptor: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._closing = False

    async def start(self, host: str, port: int) -> None:
        """Listen (OSError if the port is taken) and start accepting."""
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(info[0], socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(info[4])
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._acceptor = asyncio.get_running_loop().create_task(self._accept_loop(sock))
        self._acceptor.add_done_callback(self._acceptor_ended)

    def _acceptor_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None and not self._closing:
            self.events.error("session_port_stopped", error=repr(task.exception()))

    async def close(self) -> None:
        self._closing = True
        if self._acceptor is not None:
            self._acceptor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._acceptor
        if self._sock is not None:
            self._sock.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=CLOSE_SECONDS)
        for task in list(self._handlers):
            task.cancel()

    async def _accept_loop(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing:
            try:
                conn, peer = await loop.sock_accept(sock)
            except OSError as exc:  # EMFILE and the like: wait a little rather than spin
                self.events.warning("session_accept_failed", error=str(exc))
                await asyncio.sleep(0.1)
                continue
            address = str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)
            if (
                self.connections >= self.max_connections
                or self.per_address.get(address, 0) >= self.max_per_address
                or self.service.node.stopping
            ):
                self.metrics.bad_input.labels("session_port_full").inc()
                with contextlib.suppress(OSError):
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                conn.close()  # at once: it never holds a descriptor
                continue
            self.connections += 1
            self.per_address[address] = self.per_address.get(address, 0) + 1
            task = loop.create_task(self._connection(conn, address))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    async def _connection(self, conn: socket.socket, address: str) -> None:
        loop = asyncio.get_running_loop()
        writer: asyncio.StreamWriter | None = None
        try:
            reader = asyncio.StreamReader(limit=STREAM_LIMIT)
            protocol = asyncio.StreamReaderProtocol(reader)
            try:
                transport, _ = await loop.connect_accepted_socket(
                    lambda: protocol,
                    sock=conn,
                    ssl=self.tls,
                    ssl_handshake_timeout=HANDSHAKE_TIMEOUT_MS / 1000 if self.tls is not None else None,
                )
            except (OSError, ssl.SSLError, TimeoutError):
                self.metrics.bad_input.labels("session_handshake").inc()
                return
            writer = asyncio.StreamWriter(transport, protocol, reader, loop)
            self._writers.add(writer)
            tune_socket(writer)
            stream = FramedStream(reader, writer, address, half_close=self.tls is None)
            if self.tls is not None:
                ssl_object = writer.get_extra_info("ssl_object")
                alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
                if alpn != SESSION_ALPN:
                    self.metrics.bad_input.labels("session_handshake").inc()
                    await stream.refuse(f"this port speaks ALPN {SESSION_ALPN!r}, not {alpn!r}")
                    return
            await self.service.serve(stream)
        except (OSError, ssl.SSLError, WireError, asyncio.IncompleteReadError, TimeoutError):
            pass  # the connection broke, sent garbage or nothing: the session ends, the client reconnects
        except Exception as exc:  # not expected: say so, and still give the slot back below
            self.events.warning("session_connection_failed", error=repr(exc))
        finally:
            try:
                if writer is not None:
                    self._writers.discard(writer)
                    writer.close()
                    try:  # TLS waits for the client's goodbye: a client that never sends it ...
                        await asyncio.wait_for(writer.wait_closed(), CLOSE_SECONDS)
                    except asyncio.CancelledError:
                        writer.transport.abort()
                        raise
                    except Exception:
                        writer.transport.abort()  # ... is cut off, so the descriptor goes now
                else:
                    conn.close()
            finally:  # the slot is given back only once the socket is gone
                self.connections -= 1
                left = self.per_address[address] - 1
                if left:
                    self.per_address[address] = left
                else:
                    del self.per_address[address]
