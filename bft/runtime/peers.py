"""Replica-to-replica links: length-prefixed frames over mutual-TLS TCP, one connection per direction.

Why not gRPC here (client sessions have a framed port of their own too, ``session_port.py``): per
message, grpc.aio costs this stack 2–10× the CPU of an asyncio stream carrying the same bytes
(``scripts/bench_transport.py``), and peer frames
are most of a replica's traffic (docs/NOTEBOOK.md, "Peer transport").

Wire format, both directions: ``u32 big-endian length || protobuf`` (``LinkDown`` from the
listening replica, ``LinkUp`` from the connecting one; proto/bftchat/v1/service.proto). Replica A
connects to B and carries all of A's traffic to B; B's traffic to A goes on B's own connection.

1. TLS 1.3, both ends present a certificate of this cluster's CA (``tls.peer_contexts``).
2. B sends ``LinkDown{nonce}``; A answers ``LinkUp{hello}``: its replica key's signature over that
   nonce, B's id and the cluster id (``handshake.link_hello``). B checks it, and that the TLS
   certificate names the same replica, then sends ``LinkDown{accepted}`` or ``LinkDown{error}``
   and closes.
3. A streams ``LinkUp{messages}`` frames; B never answers them (the protocol retransmits).

Sending never blocks the node: ``PeerLinks.send`` appends to the peer's bounded queue and returns.
Each peer's writer task takes everything queued (one loop turn's worth, since the node carries out
a whole burst of outputs synchronously) and writes it as one frame. A slow or dead peer only fills
its own queue; past the bound the oldest messages are dropped, which is safe because the protocol
retransmits (status ticks, vote resends, commit-proof catch-up).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import ssl
from collections import deque
from collections.abc import Callable
from typing import Protocol

from bft.core.config import ClusterInfo
from bft.crypto import Verifier
from bft.faults import LinkPolicy
from bft.framing import FRAME_LEN, encode_frame, read_frame, tune_socket
from bft.handshake import NONCE_LEN, check_link_hello
from bft.pb.bftchat.v1 import service_pb2 as spb
from bft.runtime.logs import EventLog, RateLimit
from bft.runtime.metrics import Metrics
from bft.runtime.tls import peer_cert_names
from bft.wire import MAX_MESSAGE_BYTES, WireError, parse, varint, varint_len

FRAME_BYTES = MAX_MESSAGE_BYTES  # a frame holds at least one message, and stops growing past this
MAX_FRAME_WIRE = MAX_MESSAGE_BYTES + 64 * 1024  # largest LinkUp accepted: the receive limit
MAX_HANDSHAKE_FRAME = 64 * 1024  # a hello or a LinkDown
QUEUE_MESSAGES = 8192
MAX_FRAME_MESSAGES = QUEUE_MESSAGES  # an honest frame never holds more (it is one queue's worth)
MAX_PENDING_LINKS = 64  # connections on the peer port not yet authenticated, in total
MAX_PENDING_PER_ADDRESS = 8  # and from one source address
QUEUE_BYTES = 32 * 1024 * 1024
QUEUE_MESSAGES_DOWN = 512  # while the link is down: what is queued then is mostly stale
BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0
CONNECT_TIMEOUT = 5.0
HANDSHAKE_TIMEOUT = 5.0
CLOSE_PHASE_SECONDS = 0.5
STREAM_LIMIT = 1024 * 1024  # asyncio reader buffer before it pauses the socket

_MESSAGES_TAG = b"\x12"  # LinkUp.messages: field 2, length-delimited


def _field_bytes(size: int) -> int:
    """Wire size of one ``messages`` entry of ``size`` bytes: tag, varint length, payload."""
    return 1 + varint_len(size) + size


def split_messages(raw: bytes, limit: int = MAX_FRAME_MESSAGES) -> list[bytes]:
    """The messages of a ``LinkUp`` data frame (field 2 only): WireError for any other field, a
    broken length, or more than ``limit`` messages. Each entry starts with the byte 0x12, so a frame
    with at most ``limit`` such bytes holds at most ``limit`` messages and protobuf (C) parses it;
    otherwise the frame is walked in Python, which stops at message ``limit + 1`` before slicing
    more (a frame of millions of tiny messages costs no memory)."""
    if raw.count(0x12) <= limit:
        up = parse(spb.LinkUp, raw)
        messages = list(up.messages)
        if up.HasField("hello") or sum(_field_bytes(len(m)) for m in messages) != len(raw):
            raise WireError("a link frame after the hello may only carry messages")
        return messages
    out: list[bytes] = []
    view = memoryview(raw)
    pos, end = 0, len(raw)
    while pos < end:
        if raw[pos] != 0x12:
            raise WireError("a link frame after the hello may only carry messages")
        pos += 1
        size = shift = 0
        while True:
            if pos >= end or shift > 28:
                raise WireError("broken message length in a link frame")
            b = raw[pos]
            pos += 1
            size |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        if size > end - pos:
            raise WireError("message runs past the end of its link frame")
        if len(out) == limit:
            raise WireError(f"more than {limit} messages in one link frame")
        out.append(bytes(view[pos : pos + size]))
        pos += size
    return out


class LinkRefused(Exception):
    """The peer refused our hello (its reason is the message): a configuration problem, not a crash."""


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), CLOSE_PHASE_SECONDS)


# ---------------------------------------------------------------- outgoing


class PeerLink:
    """The link to one peer: a bounded queue and the task that connects and drains it into frames."""

    def __init__(
        self,
        peer_id: int,
        host: str,
        port: int,
        tls: ssl.SSLContext | None,
        hello: Callable[[bytes], spb.LinkHello],
        metrics: Metrics,
        log: EventLog,
        on_state: Callable[[], None],
    ) -> None:
        self.peer_id = peer_id
        self.host = host
        self.port = port
        self.target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._tls = tls
        self._hello = hello
        self._metrics = metrics
        self._log = log
        self._on_state = on_state
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.connected = False
        self.dropped = 0
        self._label = str(peer_id)

    # ---- called by the node (synchronous, never blocks)

    def enqueue(self, data: bytes) -> None:
        if len(data) > MAX_MESSAGE_BYTES:
            self._drop(1)
            return
        self._queue.append(data)
        self._queued_bytes += len(data)
        cap = QUEUE_MESSAGES if self.connected else QUEUE_MESSAGES_DOWN
        while len(self._queue) > cap or self._queued_bytes > QUEUE_BYTES:
            self._queued_bytes -= len(self._queue.popleft())
            self._drop(1)
        self._wake.set()

    def _drop(self, count: int) -> None:
        self.dropped += count
        self._metrics.peer_dropped.labels(self._label).inc(count)

    # ---- the writer task

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"peer-link-{self.peer_id}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._task, CLOSE_PHASE_SECONDS * 2)

    async def _run(self) -> None:
        backoff = BACKOFF_MIN
        failures = 0
        while True:
            refused = False
            try:
                await self._session()
                reason = "connection closed by the peer"
            except asyncio.CancelledError:
                raise
            except LinkRefused as exc:
                reason, refused = f"refused: {exc}", True
            except (WireError, OSError, TimeoutError, ssl.SSLError, EOFError) as exc:
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            except Exception as exc:  # a transport failure must never end the link for good
                reason = f"{type(exc).__name__}: {exc}"
            finally:
                writer, self._writer = self._writer, None
                if writer is not None:
                    await _close(writer)
            if self.connected:
                self.connected = False
                self._on_state()
                self._log.info("peer_down", peer=self.peer_id, reason=reason)
                backoff, failures = BACKOFF_MIN, 0
            else:
                failures += 1
                if refused and failures == 1:  # keys or certificates do not match: say so once
                    self._log.warning("peer_refused_link", peer=self.peer_id, reason=reason)
                elif failures in (1, 10) or failures % 100 == 0:
                    self._log.debug(
                        "peer_connect_failed", peer=self.peer_id, attempts=failures, reason=reason
                    )
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _session(self) -> None:
        tls = self._tls
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                self.host,
                self.port,
                ssl=tls,
                server_hostname=self.host if tls is not None else None,
                limit=STREAM_LIMIT,
            ),
            CONNECT_TIMEOUT,
        )
        self._writer = writer
        tune_socket(writer)
        down = await self._read_down(reader)
        writer.write(encode_frame(spb.LinkUp(hello=self._hello(down.nonce)).SerializeToString()))
        answer = await self._read_down(reader)
        if not answer.accepted:
            raise LinkRefused(answer.error or "no reason given")
        self.connected = True
        self._on_state()
        self._log.info("peer_up", peer=self.peer_id, target=self.target)
        # The peer sends nothing more; a read that ends means the connection is gone.
        watch = asyncio.ensure_future(reader.read(1))
        watch.add_done_callback(lambda _: self._wake.set())
        frames = self._metrics.peer_frames.labels(self._label)
        sent = self._metrics.peer_messages.labels(self._label)
        try:
            while not watch.done():
                if not self._queue:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                parts, count = self._take_frame()
                writer.writelines(parts)
                frames.inc()
                sent.inc(count)
                await writer.drain()
        finally:
            watch.cancel()

    async def _read_down(self, reader: asyncio.StreamReader) -> spb.LinkDown:
        raw = await asyncio.wait_for(read_frame(reader, MAX_HANDSHAKE_FRAME), HANDSHAKE_TIMEOUT)
        if raw is None:
            raise EOFError("link closed during the handshake")
        down = parse(spb.LinkDown, raw)
        if down.error:
            raise LinkRefused(down.error)
        return down

    def _take_frame(self) -> tuple[list[bytes], int]:
        """Everything queued, up to FRAME_BYTES, as the parts of one length-prefixed LinkUp frame,
        without re-parsing or copying any message."""
        parts: list[bytes] = [b""]
        size = 0
        count = 0
        q = self._queue
        while q:
            data = q[0]
            head = _MESSAGES_TAG + varint(len(data))
            if count and size + len(head) + len(data) > FRAME_BYTES:
                break
            q.popleft()
            self._queued_bytes -= len(data)
            parts.append(head)
            parts.append(data)
            size += len(head) + len(data)
            count += 1
        parts[0] = FRAME_LEN.pack(size)
        return parts, count


class PeerLinks:
    """All outgoing links of one replica, with the link-fault seam (``policy``) the fault tool sets."""

    def __init__(self, my_id: int, metrics: Metrics, policy: LinkPolicy | None = None) -> None:
        self.my_id = my_id
        self.links: dict[int, PeerLink] = {}
        self.policy = policy or LinkPolicy()
        self._metrics = metrics

    def add(self, link: PeerLink) -> None:
        self.links[link.peer_id] = link

    def start(self) -> None:
        for link in self.links.values():
            link.start()

    async def close(self) -> None:
        await asyncio.gather(*(link.close() for link in self.links.values()), return_exceptions=True)

    @property
    def connected(self) -> int:
        return sum(1 for link in self.links.values() if link.connected)

    def update_gauge(self) -> None:
        self._metrics.peers_connected.set(self.connected)

    def send(self, to: int | None, data: bytes) -> None:
        """Queue ``data`` for peer ``to`` (every peer when None), as the link policy allows."""
        targets = self.links.values() if to is None else [self.links[to]] if to in self.links else []
        policy = self.policy
        for link in targets:
            if not policy.allows(link.peer_id):
                continue
            if policy.delay > 0:
                asyncio.get_running_loop().call_later(policy.delay, link.enqueue, data)
            else:
                link.enqueue(data)


# ---------------------------------------------------------------- incoming


class Inbox(Protocol):
    """What the listener needs of the node (``bft.runtime.node.Node``)."""

    id: int
    cluster: ClusterInfo
    stopping: bool

    def deliver_peer(self, messages: list[bytes], peer: int = -1) -> None: ...

    def backlogged(self, peer: int | None = None) -> bool: ...

    async def drained(self, peer: int | None = None) -> None: ...


class PeerListener:
    """The peer port: authenticates each connecting replica, then hands its frames' messages to the node."""

    def __init__(
        self, node: Inbox, verifier: Verifier, metrics: Metrics, events: EventLog, tls: ssl.SSLContext | None
    ) -> None:
        self.node = node
        self.verifier = verifier
        self.metrics = metrics
        self.events = events
        self.tls = tls
        self.inbound: dict[int, int] = {}
        self._current: dict[int, asyncio.StreamWriter] = {}  # the one live inbound link per replica
        self._pending: dict[str, int] = {}  # unauthenticated connections per source address
        self._limit = RateLimit()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, host: str, port: int) -> None:
        """Listen (raises OSError if the port is taken)."""
        # The TLS handshake runs before ``_handle`` (asyncio has no hook in front of it; 3.11's
        # server-side StreamWriter.start_tls does not work): it is bounded in time only. The caps on
        # unauthenticated links count from the end of the TLS handshake to the end of the hello.
        self._server = await asyncio.start_server(
            self._handle,
            host,
            port,
            ssl=self.tls,
            limit=STREAM_LIMIT,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT if self.tls is not None else None,
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        # End the connections rather than cancel their handlers: a handler task that ends cancelled
        # makes asyncio log a traceback (StreamReaderProtocol asks it for its exception).
        for writer in list(self._writers):
            writer.transport.abort()
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=CLOSE_PHASE_SECONDS)
        for task in list(self._handlers):
            task.cancel()

    def _bad(self, what: str, peer: str, error: str) -> None:
        self.metrics.bad_input.labels(what).inc()
        if self._limit.allow(what + peer):
            self.events.warning("bad_peer_input", what=what, remote=peer, error=error)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peername = writer.get_extra_info("peername")
        remote = str(peername)
        address = str(peername[0]) if isinstance(peername, tuple) and peername else remote
        if (
            sum(self._pending.values()) >= MAX_PENDING_LINKS
            or self._pending.get(address, 0) >= MAX_PENDING_PER_ADDRESS
        ):
            self.metrics.bad_input.labels("peer_pending_full").inc()
            writer.transport.abort()  # no handshake, no goodbye: it costs us nothing more
            return
        self._handlers.add(task)
        self._writers.add(writer)
        self._pending[address] = self._pending.get(address, 0) + 1
        pending = True
        tune_socket(writer)
        try:
            peer = await self._accept(reader, writer, remote)
            self._unpend(address)
            pending = False
            if peer is not None:
                await self._receive(reader, writer, peer)
        except (OSError, ssl.SSLError, TimeoutError, asyncio.IncompleteReadError):
            pass  # the connection broke; the peer reconnects
        finally:
            if pending:
                self._unpend(address)
            self._handlers.discard(task)
            self._writers.discard(writer)
            await _close(writer)

    def _unpend(self, address: str) -> None:
        left = self._pending[address] - 1
        if left:
            self._pending[address] = left
        else:
            del self._pending[address]

    async def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, remote: str
    ) -> int | None:
        """The authenticated peer id, or None after telling the connecting side why not."""
        node = self.node
        nonce = os.urandom(NONCE_LEN)
        writer.write(encode_frame(spb.LinkDown(nonce=nonce).SerializeToString()))
        try:
            first = await asyncio.wait_for(read_frame(reader, MAX_HANDSHAKE_FRAME), HANDSHAKE_TIMEOUT)
            if first is None:
                return None
            up = parse(spb.LinkUp, first)
            if not up.HasField("hello"):
                raise WireError("a link must start with a hello")
            cluster = node.cluster
            peer = check_link_hello(
                up.hello, cluster.cluster_id, cluster.public_keys, node.id, nonce, self.verifier
            )
            if self.tls is not None:
                named = cert_replica_ids(peer_cert_names(writer.get_extra_info("peercert")))
                if named and peer not in named:
                    raise WireError(f"hello from replica {peer} over replica {sorted(named)}'s certificate")
        except WireError as exc:
            self._bad("peer_hello", remote, str(exc))
            writer.write(encode_frame(spb.LinkDown(error=str(exc)).SerializeToString()))
            await writer.drain()
            return None
        writer.write(encode_frame(spb.LinkDown(accepted=True).SerializeToString()))
        await writer.drain()
        return peer

    async def _receive(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: int) -> None:
        """One replica's messages, until its link ends. A replica has one live inbound link: a newer
        authenticated one replaces this (the honest case is a reconnect; a faulty replica opening
        more gains nothing)."""
        node = self.node
        older = self._current.get(peer)
        self._current[peer] = writer
        if older is not None:
            older.transport.abort()  # its reader sees the connection end and returns
            self.events.info("peer_link_replaced", peer=peer)
        self.inbound[peer] = self.inbound.get(peer, 0) + 1
        self.events.debug("peer_link_in", peer=peer)
        try:
            while not node.stopping:
                try:
                    raw = await read_frame(reader, MAX_FRAME_WIRE)
                except WireError as exc:  # oversized or cut: the stream cannot be resynchronised
                    self._bad("peer_frame", str(peer), str(exc))
                    return
                if raw is None:
                    return
                try:
                    messages = split_messages(raw)
                except WireError as exc:  # dropped whole (the work to find out was bounded)
                    self._bad("peer_frame", str(peer), str(exc))
                    continue
                if messages:
                    node.deliver_peer(messages, peer)
                    if node.backlogged(peer):  # TCP pushes back on a peer that sends faster than we process
                        await node.drained(peer)
        finally:
            self.inbound[peer] -= 1
            if self._current.get(peer) is writer:
                del self._current[peer]


def cert_replica_ids(names: list[str]) -> set[int]:
    """Replica ids named by a verified peer certificate (CN or DNS SAN ``[bftchat-]replica-<i>``)."""
    ids: set[int] = set()
    for name in names:
        base = name.removeprefix("bftchat-")
        if base.startswith("replica-") and base[8:].isdigit():
            ids.add(int(base[8:]))
    return ids
