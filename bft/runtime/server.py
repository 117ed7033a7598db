"""The gRPC services of a replica's client port: client sessions and status (peer links: peers.py).

The client session itself (``ClientSessionService.serve``) does not depend on gRPC: it runs over any
``SessionStream``, the gRPC ``Session`` call here or a connection to the framed session port
(``session_port.py``), with the same limits for both.

Handlers take and give raw bytes and parse them with ``bft.wire.parse``, so malformed input becomes
a clear error for the sender instead of a gRPC deserialisation traceback. Size limits are enforced
by gRPC itself (``grpc.max_receive_message_length``) before anything is read, and again by the core.

Resource limits (docs/SECURITY.md, "Replica runtime"): gRPC caps connections, streams per
connection, the TLS handshake time, idle time and age, and enforces keepalive ping strikes; this
module caps sessions in total and per source address, the bytes queued for each session and for
all of them, and stops reading a session's requests while the node's inbox is over its marks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import ssl
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from bft.crypto import Verifier, sha256
from bft.handshake import NONCE_LEN, check_auth_proof, check_session_claim
from bft.pb.bftchat.v1 import service_pb2 as spb
from bft.runtime.logs import EventLog
from bft.runtime.metrics import Metrics
from bft.runtime.node import Node
from bft.runtime.peers import PeerListener
from bft.wire import MAX_REQUEST_BYTES, WireError, parse

if TYPE_CHECKING:
    from bft.runtime.session_port import SessionPort

CLIENT_SERVICE = "bftchat.v1.ClientService"
MAX_CLIENT_FRAME = MAX_REQUEST_BYTES + 4096  # a signed request plus the ClientFrame around it
MAX_SESSIONS = 10_000
MAX_KEYS_PER_SESSION = 16
SESSION_QUEUE_BYTES = 4 * 1024 * 1024  # frames waiting for one slow client; oldest dropped past this
SESSIONS_QUEUE_BYTES = 128 * 1024 * 1024  # all sessions: past it, a session with a backlog gets no more
HALF_CLOSE_LINGER = 10.0  # seconds a session stays open for replies after the client stops sending
HANDSHAKE_TIMEOUT_MS = 5_000  # TLS handshake + HTTP/2 preface of a new connection
MAX_CONNECTION_IDLE_MS = 5 * 60_000  # a connection without a stream for this long is closed
MAX_CONNECTION_AGE_MS = 60 * 60_000  # every connection is asked to go away after this (GOAWAY) ...
MAX_CONNECTION_AGE_GRACE_MS = 5 * 60_000  # ... and closed this much later
MAX_PING_STRIKES = 2  # pings more often than every 5 s without data: GOAWAY after this many


@dataclass(frozen=True)
class ClientLimits:
    """The client port's operator-set limits (``bftchat-replica`` flags)."""

    max_connections: int = 4096  # --max-client-connections (also capped by RLIMIT_NOFILE - reserve)
    max_sessions: int = MAX_SESSIONS  # --max-sessions
    max_sessions_per_address: int = 1024  # --max-sessions-per-address

    @property
    def max_streams_per_connection(self) -> int:
        """HTTP/2 streams on one connection: one address's sessions plus room for unary calls.
        (Clients in one process share one connection per replica, so it is not smaller.)"""
        return self.max_sessions_per_address + 64


def server_options(max_receive: int, limits: ClientLimits | None = None) -> list[tuple[str, int]]:
    limits = limits or ClientLimits()
    return [
        ("grpc.max_receive_message_length", max_receive),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
        ("grpc.http2.max_ping_strikes", MAX_PING_STRIKES),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.max_allowed_incoming_connections", limits.max_connections),
        ("grpc.server_handshake_timeout_ms", HANDSHAKE_TIMEOUT_MS),
        ("grpc.max_concurrent_streams", limits.max_streams_per_connection),
        ("grpc.max_connection_idle_ms", MAX_CONNECTION_IDLE_MS),
        ("grpc.max_connection_age_ms", MAX_CONNECTION_AGE_MS),
        ("grpc.max_connection_age_grace_ms", MAX_CONNECTION_AGE_GRACE_MS),
    ]


def peer_address(peer: str) -> str:
    """The source address of a gRPC peer string (``ipv4:127.0.0.2:5555``, ``ipv6:[::1]:5555``)."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return peer
    host = rest.rpartition(":")[0]
    return host.strip("[]")


class QueueBudget:
    """The bytes queued for all client sessions together (``SESSIONS_QUEUE_BYTES``)."""

    def __init__(self) -> None:
        self.total = 0


# ---------------------------------------------------------------- client sessions


class ClientSession:
    """One client's stream: the node routes replies and pushes here; a writer task sends them."""

    def __init__(self, metrics: Metrics, budget: QueueBudget | None = None, source: str = "") -> None:
        self.source = source  # the client's address: the node serves requests round robin by it
        self.queue: deque[bytes] = deque()
        self.queued = 0
        self.wake = asyncio.Event()
        self.keys: set[bytes] = set()
        self.dropped = 0
        self.writing = 0  # bytes taken by ``take_all`` and not yet written (still in ``queued``)
        self._metrics = metrics
        self._budget = budget or QueueBudget()
        self.closed = False

    def send(self, frame: bytes) -> None:
        """Queue a frame, never blocking. Past SESSION_QUEUE_BYTES the oldest frames go; while all
        sessions together hold SESSIONS_QUEUE_BYTES, a session that has not taken its earlier
        frames gets no new ones (a client that reads keeps getting its own), and past twice that
        nobody does (the hard bound)."""
        if self.closed:  # a late output for a stream that has ended
            return
        budget = self._budget
        over = budget.total + len(frame) - SESSIONS_QUEUE_BYTES
        if over > 0 and (self.queue or over > SESSIONS_QUEUE_BYTES):
            self._dropped(1)
            return
        self.queue.append(frame)
        self.queued += len(frame)
        budget.total += len(frame)
        while self.queued > SESSION_QUEUE_BYTES and len(self.queue) > 1:
            size = len(self.queue.popleft())
            self.queued -= size
            budget.total -= size
            self._dropped(1)
        self.wake.set()

    def _dropped(self, count: int) -> None:
        self.dropped += count
        self._metrics.session_frames_dropped.inc(count)

    def take(self) -> bytes:
        frame = self.queue.popleft()
        self.queued -= len(frame)
        self._budget.total -= len(frame)
        return frame

    def take_all(self) -> list[bytes]:
        """Everything queued, oldest first, for one write (a transport sends it as one buffer where
        it can). Its bytes stay counted, here and in the shared budget, until ``written``: a write
        that waits for a slow reader holds them as much as the queue does."""
        frames = list(self.queue)
        self.queue.clear()
        self.writing = sum(map(len, frames))
        return frames

    def written(self) -> None:
        """The frames of the last ``take_all`` left (or the write failed): they leave the budgets."""
        if not self.closed:
            self.queued -= self.writing
            self._budget.total -= self.writing
        self.writing = 0

    def close(self) -> None:
        """The session ended: what it still had queued leaves the shared budget."""
        self.closed = True
        self._budget.total -= self.queued
        self.queue.clear()
        self.queued = 0


class SessionStream(Protocol):
    """One client session's transport, as ``ClientSessionService.serve`` sees it: the gRPC
    ``Session`` stream (``GrpcStream``) or a connection to the session port
    (``bft.runtime.session_port``)."""

    @property
    def address(self) -> str:
        """The client's source address (sessions are capped and served round robin by it)."""
        ...

    def frames(self) -> AsyncIterator[bytes]:
        """The client's frames (serialised ``ClientFrame``s) until it half-closes; raises when the
        connection breaks."""
        ...

    async def write(self, frames: list[bytes]) -> None:
        """Send serialised ``ServerFrame``s, in order; returns once the transport takes more."""
        ...

    async def refuse(self, why: str) -> None:
        """End a session that is not served (limits), telling the client why."""
        ...


class GrpcStream:
    """The gRPC ``Session`` stream as a ``SessionStream``."""

    def __init__(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
        self._requests = requests
        self._context = context
        self.address = peer_address(context.peer())

    def frames(self) -> AsyncIterator[bytes]:
        return self._requests

    async def write(self, frames: list[bytes]) -> None:
        for frame in frames:
            await self._context.write(frame)

    async def refuse(self, why: str) -> None:
        await self._context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, why)


def _error_frame(raw: bytes, message: str) -> bytes:
    err = spb.RequestError(request_digest=sha256(raw), message=message)
    return spb.ServerFrame(error=err).SerializeToString()


class ClientSessionService:
    """Client sessions (requests out, replies and pushes back) and the status call."""

    def __init__(
        self,
        node: Node,
        verifier: Verifier,
        metrics: Metrics,
        events: EventLog,
        limits: ClientLimits | None = None,
        grpc_sessions: bool = True,
    ) -> None:
        self.node = node
        self.verifier = verifier
        self.metrics = metrics
        self.events = events
        self.limits = limits or ClientLimits()
        # Serve the gRPC Session call? Off by default where the replica has a session port: the
        # same session costs the replica several times the CPU per message there, so an attacker
        # would pick it (docs/SECURITY.md, read floods by transport).
        self.grpc_sessions = grpc_sessions
        self.sessions: set[ClientSession] = set()
        self.per_address: dict[str, int] = {}
        self.budget = QueueBudget()

    async def session(self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
        """The gRPC ``Session`` stream (refused unless ``grpc_sessions``)."""
        if not self.grpc_sessions:
            self.metrics.bad_input.labels("grpc_sessions_off").inc()
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "client sessions are served on this replica's session port (session_port in the "
                "cluster config), not over gRPC (the replica runs without --grpc-sessions)",
            )
            return
        await self.serve(GrpcStream(requests, context))

    async def serve(self, stream: SessionStream) -> None:
        """One client session, on whichever transport carries it, until either side ends it."""
        limits = self.limits
        address = stream.address
        if len(self.sessions) >= limits.max_sessions or self.node.stopping:
            self.metrics.bad_input.labels("sessions_full").inc()
            await stream.refuse("too many client sessions")
            return
        if self.per_address.get(address, 0) >= limits.max_sessions_per_address:
            self.metrics.bad_input.labels("sessions_per_address").inc()
            await stream.refuse(
                f"too many client sessions from this address (at most {limits.max_sessions_per_address})"
            )
            return
        sess = ClientSession(self.metrics, self.budget, address)
        self.sessions.add(sess)
        self.per_address[address] = self.per_address.get(address, 0) + 1
        self.metrics.client_sessions.set(len(self.sessions))
        nonce = os.urandom(NONCE_LEN)
        sess.send(spb.ServerFrame(nonce=nonce).SerializeToString())
        loop = asyncio.get_running_loop()
        reader = loop.create_task(self._read(stream.frames(), sess, nonce))
        linger_until: float | None = None
        try:
            while True:
                if sess.queue:
                    try:
                        await stream.write(sess.take_all())
                    finally:
                        sess.written()
                    continue
                sess.wake.clear()
                if reader.done():
                    # The client finished sending (half-close): answers may still be on their way.
                    if not reader.result():
                        break
                    if linger_until is None:
                        linger_until = loop.time() + HALF_CLOSE_LINGER
                    left = linger_until - loop.time()
                    if left <= 0:
                        break
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(sess.wake.wait(), left)
                else:
                    await sess.wake.wait()
        finally:
            reader.cancel()
            self.node.forget(sess)
            sess.close()
            self.sessions.discard(sess)
            left = self.per_address[address] - 1
            if left:
                self.per_address[address] = left
            else:
                del self.per_address[address]
            self.metrics.client_sessions.set(len(self.sessions))

    async def _read(self, requests: AsyncIterator[bytes], sess: ClientSession, nonce: bytes) -> bool:
        """Feed the client's frames to the node; True if the client half-closed cleanly."""
        node = self.node
        try:
            async for raw in requests:
                try:
                    frame = parse(spb.ClientFrame, raw)
                except WireError as exc:
                    self.metrics.bad_input.labels("client_frame").inc()
                    sess.send(_error_frame(raw, str(exc)))
                    continue
                which = frame.WhichOneof("kind")
                if which == "request":
                    node.submit_request(frame.request, sess)
                    if node.requests_backlogged(sess):  # HTTP/2 flow control pushes back meanwhile
                        await node.request_room(sess)
                elif which == "auth":
                    self._subscribe(frame.auth, sess, nonce)
                elif which == "claim":
                    self._claim(frame.claim, sess, nonce)
                else:
                    self.metrics.bad_input.labels("client_frame").inc()
                    sess.send(_error_frame(raw, "empty client frame"))
        except Exception:  # the client went away (however gRPC reports it)
            return False
        finally:
            sess.wake.set()
        return True

    def _subscribe(self, proof: spb.AuthProof, sess: ClientSession, nonce: bytes) -> None:
        node = self.node
        try:
            key = check_auth_proof(proof, node.cluster.cluster_id, node.id, nonce, self.verifier)
        except WireError as exc:
            self.metrics.bad_input.labels("auth").inc()
            sess.send(spb.ServerFrame(auth_error=str(exc)).SerializeToString())
            return
        if key not in sess.keys and len(sess.keys) >= MAX_KEYS_PER_SESSION:
            text = f"at most {MAX_KEYS_PER_SESSION} subscriptions per session"
            sess.send(spb.ServerFrame(auth_error=text).SerializeToString())
            return
        if not node.subscribe(key, sess):
            sess.send(
                spb.ServerFrame(auth_error="too many sessions subscribed to this key").SerializeToString()
            )
            return
        sess.keys.add(key)
        sess.send(spb.ServerFrame(subscribed=key).SerializeToString())

    def _claim(self, claim: spb.SessionClaim, sess: ClientSession, nonce: bytes) -> None:
        """Route the replies of the claimed client session to this stream, if the claim verifies."""
        node = self.node
        try:
            route = check_session_claim(claim, node.cluster.cluster_id, node.id, nonce, self.verifier)
        except WireError as exc:
            self.metrics.bad_input.labels("claim").inc()
            sess.send(spb.ServerFrame(claim_error=str(exc)).SerializeToString())
            return
        refused = node.claim(route, sess)
        if refused is not None:
            sess.send(spb.ServerFrame(claim_error=refused).SerializeToString())
            return
        done = spb.SessionClaimed(public_key=route[0], session=route[1], view=self.node.replica.view)
        sess.send(spb.ServerFrame(claimed=done).SerializeToString())

    async def status(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return self.node.status().SerializeToString()


# ---------------------------------------------------------------- servers


def _generic(service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(service, handlers)


class Servers:
    """A replica's two listening ports: the gRPC client port (sessions, status, health, reflection,
    and the admin endpoint when fault injection is allowed) and the peer port (``PeerListener``)."""

    def __init__(
        self,
        node: Node,
        verifier: Verifier,
        metrics: Metrics,
        events: EventLog,
        *,
        client_creds: grpc.ServerCredentials | None,
        peer_tls: ssl.SSLContext | None,
        admin: grpc.GenericRpcHandler | None = None,
        limits: ClientLimits | None = None,
        session_port: int | None = None,
        session_tls: ssl.SSLContext | None = None,
        grpc_sessions: bool = True,
    ) -> None:
        limits = limits or ClientLimits()
        self.peer_listener = PeerListener(node, verifier, metrics, events, peer_tls)
        self.client_service = ClientSessionService(node, verifier, metrics, events, limits, grpc_sessions)
        self.client_creds = client_creds
        grpc_limits = limits
        self.session_port: SessionPort | None = None
        self._session_port_number = session_port
        if session_port is not None:
            # One descriptor budget for both client ports (--max-client-connections): half each.
            from bft.runtime.session_port import SessionPort

            half = max(1, limits.max_connections // 2)
            grpc_limits = dataclasses.replace(limits, max_connections=max(1, limits.max_connections - half))
            self.session_port = SessionPort(self.client_service, session_tls, half, metrics, events)
        self.client = grpc.aio.server(options=server_options(MAX_CLIENT_FRAME, grpc_limits))
        self.health = health_aio.HealthServicer()
        self.client.add_generic_rpc_handlers(
            (
                _generic(
                    CLIENT_SERVICE,
                    {
                        "Session": grpc.stream_stream_rpc_method_handler(self.client_service.session),
                        "Status": grpc.unary_unary_rpc_method_handler(self.client_service.status),
                    },
                ),
            )
        )
        if admin is not None:  # fault injection: only with --allow-fault-injection
            self.client.add_generic_rpc_handlers((admin,))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.client)
        names = (
            CLIENT_SERVICE,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(names, self.client)

    def bind(self, client_addr: str) -> None:
        """Bind the client port (raises RuntimeError if the port is taken)."""
        creds = self.client_creds
        server = self.client
        port = (
            server.add_secure_port(client_addr, creds)
            if creds is not None
            else server.add_insecure_port(client_addr)
        )
        if port == 0:
            raise RuntimeError(f"cannot listen on {client_addr}")

    async def start(self, peer_host: str, peer_port: int) -> None:
        """Start the client port and listen on the peer port and the session port, if there is one
        (RuntimeError if a port is taken)."""
        session_port = self._session_port_number
        try:
            await self.peer_listener.start(peer_host, peer_port)
        except OSError as exc:
            raise RuntimeError(f"cannot listen on {peer_host}:{peer_port}: {exc.strerror or exc}") from None
        if self.session_port is not None and session_port is not None:
            try:
                await self.session_port.start(peer_host, session_port)
            except OSError as exc:
                raise RuntimeError(
                    f"cannot listen on {peer_host}:{session_port}: {exc.strerror or exc}"
                ) from None
        await self.client.start()

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.health.set("", status)
        await self.health.set(CLIENT_SERVICE, status)

    async def stop(self, grace: float) -> None:
        closing = [self.client.stop(grace), self.peer_listener.close()]
        if self.session_port is not None:
            closing.append(self.session_port.close())
        await asyncio.gather(*closing)
