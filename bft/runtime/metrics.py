"""Prometheus metrics of one replica process, in a registry of its own, on an optional HTTP port.

Gauges that mirror the core (view, executed seq, checkpoint, log size) are refreshed by the node
after each burst of input, so a scrape only reads the registry.

The endpoint is a small HTTP/1.0 responder on the replica's event loop, not prometheus-client's
threaded server (a thread per connection: a flood of connections was a flood of threads). It reads
one request head (at most ``MAX_HEAD`` bytes within ``HEAD_TIMEOUT``), answers ``GET /metrics``,
and closes; at most ``MAX_CONNECTIONS`` connections at once, more are closed unanswered.

Every labelled series whose label values are known in advance (peers, endpoints, request kinds) is
created at zero at start, so a rate or an alert sees 0 rather than no series until the first event.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

from bft.version import version

MAX_CONNECTIONS = 16
MAX_HEAD = 8192
HEAD_TIMEOUT = 5.0

# bft_bad_input_total{endpoint}: every value the gRPC and peer layers count (created at zero).
BAD_INPUT_ENDPOINTS = (
    "auth",
    "claim",
    "client_frame",
    "sessions_full",
    "sessions_per_address",
    "peer_hello",
    "peer_frame",
    "peer_pending_full",
    "session_port_full",
    "session_handshake",
    "grpc_sessions_off",
)
REQUEST_KINDS = ("ordered", "read", "bad")  # bft_client_requests_total{kind}
LATENCY_KINDS = ("ordered", "read")  # bft_request_seconds{kind}
MAX_TIMED_REQUESTS = 4096  # requests awaiting their reply in the latency table (oldest dropped first)

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_FAST = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    """``n``: the cluster size, to create the per-peer series (all peers but this replica) at zero."""

    def __init__(self, replica_id: int, n: int = 0) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.replica_id = replica_id
        self.build_info = Info("bft_build", "The bftchat version this replica runs", registry=r)
        self.build_info.info({"version": version()})
        self.committed_requests = Counter(
            "bft_committed_requests", "Client requests executed in committed batches", registry=r
        )
        self.committed_batches = Counter(
            "bft_committed_batches", "Batches committed and executed", registry=r
        )
        self.view = Gauge("bft_view", "Current view", registry=r)
        self.view_changing = Gauge("bft_view_changing", "1 while a view change is in progress", registry=r)
        self.view_changes = Counter("bft_view_changes", "Views entered after a view change", registry=r)
        self.last_executed = Gauge("bft_last_executed_seq", "Last executed sequence number", registry=r)
        self.checkpoint_seq = Gauge("bft_checkpoint_seq", "Last stable checkpoint", registry=r)
        self.state_transfers = Counter(
            "bft_state_transfers", "Checkpoints installed by state transfer", registry=r
        )
        self.evidence = Counter("bft_evidence", "Conflicting signed messages seen from a replica", registry=r)
        self.log_bytes = Gauge("bft_log_bytes", "Size of the replica log on disk", registry=r)
        self.fsync_seconds = Histogram(
            "bft_fsync_seconds",
            "One group commit of the log (write + fsync + seal)",
            buckets=_FAST,
            registry=r,
        )
        self.verify_seconds = Histogram(
            "bft_verify_seconds",
            "Signature verification time spent in one burst of input",
            buckets=_FAST,
            registry=r,
        )
        self.verifications = Counter("bft_signature_verifications", "Ed25519 verifications done", registry=r)
        self.burst_seconds = Histogram(
            "bft_burst_seconds", "Event-loop time to process one burst of input", buckets=_FAST, registry=r
        )
        self.burst_inputs = Histogram(
            "bft_burst_inputs",
            "Inputs (peer messages, requests, timers) processed per burst",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=r,
        )
        self.peers_connected = Gauge("bft_peers_connected", "Outgoing peer links up", registry=r)
        self.peer_dropped = Counter(
            "bft_peer_messages_dropped", "Outgoing peer messages dropped (queue full)", ["peer"], registry=r
        )
        self.peer_frames = Counter(
            "bft_peer_frames_sent", "Frames written to peer links", ["peer"], registry=r
        )
        self.peer_messages = Counter(
            "bft_peer_messages_sent", "Peer messages written to peer links", ["peer"], registry=r
        )
        self.bad_input = Counter(
            "bft_bad_input", "Malformed or refused input at the gRPC layer", ["endpoint"], registry=r
        )
        self.core_rejected = Counter(
            "bft_core_rejected_inputs",
            "Peer messages and requests the core dropped: malformed, oversized, badly signed, refused",
            registry=r,
        )
        self.core_errors = Counter(
            "bft_core_errors", "Exceptions inside a core transition (each stops the replica)", registry=r
        )
        self.client_sessions = Gauge("bft_client_sessions", "Open client session streams", registry=r)
        self.session_frames_dropped = Counter(
            "bft_session_frames_dropped",
            "Frames for client sessions dropped: the session's queue or all sessions' queues were full",
            registry=r,
        )
        self.client_requests = Counter(
            "bft_client_requests",
            "Client requests received on client session streams (not forwarded by replicas), by kind",
            ["kind"],
            registry=r,
        )
        self.client_errors = Counter("bft_client_request_errors", "Client requests refused", registry=r)
        self.pushes = Counter("bft_pushes_sent", "Signed pushes sent to subscribed sessions", registry=r)
        self.client_replies = Counter(
            "bft_client_replies",
            "Replies written to client session streams (an ordered request's first execution is "
            "answered by its f+1 designated repliers only, and by any replica the client sent it to)",
            registry=r,
        )
        self.request_seconds = Histogram(
            "bft_request_seconds",
            "Client requests from their arrival on a session stream to their reply being written, by kind",
            ["kind"],
            buckets=_LATENCY,
            registry=r,
        )
        self.requests_in_flight = RequestTimes(self)
        for peer in range(n):
            if peer != replica_id:
                for family in (self.peer_dropped, self.peer_frames, self.peer_messages):
                    family.labels(str(peer))
        for endpoint in BAD_INPUT_ENDPOINTS:
            self.bad_input.labels(endpoint)
        for kind in REQUEST_KINDS:
            self.client_requests.labels(kind)
        for kind in LATENCY_KINDS:
            self.request_seconds.labels(kind)
        self._http_open = 0

    async def serve(self, port: int, host: str = "127.0.0.1") -> asyncio.Server:
        """Expose ``/metrics`` over HTTP on the running event loop (raises OSError if the port is taken)."""
        return await asyncio.start_server(self._http, host, port, limit=MAX_HEAD)

    async def _http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._http_open >= MAX_CONNECTIONS:
            writer.transport.abort()
            return
        self._http_open += 1
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
            method, _, rest = head.partition(b" ")
            path = rest.partition(b" ")[0].partition(b"?")[0]
            if method == b"GET" and path in (b"/metrics", b"/"):
                body, status, ctype = generate_latest(self.registry), b"200 OK", CONTENT_TYPE_LATEST.encode()
            else:
                body, status, ctype = b"not found\n", b"404 Not Found", b"text/plain"
            writer.write(
                b"HTTP/1.0 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                % (status, ctype, len(body))
                + body
            )
            await asyncio.wait_for(writer.drain(), HEAD_TIMEOUT)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a broken, slow or oversized request: just close
        finally:
            self._http_open -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)


RequestId = tuple[bytes, int, int]  # (client key, session, timestamp): what a reply names


class RequestTimes:
    """Arrival times of requests accepted from client sessions, until their reply is written: feeds
    ``bft_request_seconds``. Network-fed, so bounded: at most ``MAX_TIMED_REQUESTS`` entries (fixed
    size each), the oldest arrival dropped first; a request that never gets a reply here (refused
    later, replied by a newer one of its session, or, at the primary, one this replica is not a
    designated replier for) just ages out. A retransmission keeps the first
    arrival."""

    def __init__(self, metrics: Metrics, limit: int = MAX_TIMED_REQUESTS) -> None:
        self._metrics = metrics
        self._limit = limit
        self._arrived: dict[RequestId, tuple[str, float]] = {}

    def __len__(self) -> int:
        return len(self._arrived)

    def arrived(self, request: RequestId, kind: str, at: float) -> None:
        if request in self._arrived:
            return
        if len(self._arrived) >= self._limit:
            del self._arrived[next(iter(self._arrived))]
        self._arrived[request] = (kind, at)

    def replied(self, request: RequestId, now: float | None = None) -> None:
        entry = self._arrived.pop(request, None)
        if entry is not None:
            kind, at = entry
            now = time.monotonic() if now is None else now
            self._metrics.request_seconds.labels(kind).observe(max(0.0, now - at))

    def clear(self) -> None:
        self._arrived.clear()
