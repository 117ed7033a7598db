"""The session layer of the client library: one client session with every replica of a cluster.

``ClusterSession`` holds one long-lived session stream to every replica (reconnecting with
backoff): a connection to the replica's framed session port when the config names one, else the
gRPC ``Session`` call; the frames are the same (docs/PROTOCOL.md, "Client transport"). It
accepts a result once enough replicas vouch for it: f+1 matching verified replies for
ordered requests, 2f+1 for one-round reads (``bft.replies``). ``client.chat.ChatClient`` builds the
chat operations on top of it; the runtime's tools (bench, demo, cluster) and tests use it directly.

Sending follows PBFT. On every stream, right after the replica's nonce, the session claims its
replies with a signed ``SessionClaim`` (key, session id), so a replica answers on this stream even a
request it only saw inside a PRE-PREPARE. An ordered request goes to the replica the session
believes is primary (view mod n, the view taken from verified replies: the highest f+1 replicas
reported), plus a stand-in backup for each of its f+1 designated repliers (the only replicas that
answer its first execution) the session cannot count on (``Repliers``); with no accepted
result within the retransmission timeout (``RetransmitTimer``: the
session's own latencies, 1 s unless they are long, shorter than the replicas' view-change timer),
or a refusal from that replica, it goes to all replicas, whose backups forward it to the primary and
start their view-change timers. A one-round read goes to all replicas (it needs 2f+1
direct answers); one that does not gather 2f+1 quickly is re-sent as an ordered request. Live pushes
are requested by proving the user's key on each stream and accepted once f+1 replicas signed the
same (message id, seq).

A session is one (key, session id) of the replicas' client table: the id is random per instance, so
several processes (or several instances in one process) can use one key at once, each with its own
timestamps. A timestamp is max(clock in µs, last + 1): monotone whatever the clock does, and for a
new session above the floor the replicas keep for sessions they evicted. If the replicas still call
a timestamp stale — f+1 agreeing ``REPLY_STALE_TIMESTAMP`` replies (below the eviction floor), or
f+1 ``RequestError`` refusals naming a smallest acceptable timestamp (below the session's last
executed one) — the request can never execute, so the session re-signs the operation with a larger
timestamp and retries, a bounded number of times (``StaleTimestamp`` past that). One replica's word
is not enough: re-signing a request that might still execute could execute the operation twice.
Below the floor even f+1 are not enough for an operation that changes state (it may have executed
before its session was evicted): that is ``FateUnknown``, and only idempotent ones are re-signed.
Only one request of a session is outstanding at a time (a lock; why: ``ClusterSession.request``);
concurrency comes from several sessions.

Nothing a single replica says is trusted: replies and pushes are checked against the replicas'
public keys, and a refusal (``RequestError``) only ends the wait as above, or is reported if the
request times out.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import ssl
import struct
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import grpc.aio

from bft.clusterconf import ClusterConfig, ConfigError
from bft.core.config import ClusterInfo
from bft.crypto import CachingVerifier, Ed25519Verifier, Signer, sha256
from bft.framing import SESSION_ALPN, encode_frames, read_frame, tune_socket
from bft.handshake import CheckedPush, auth_proof, check_push, session_claim
from bft.pb.bftchat.v1 import protocol_pb2 as pb
from bft.pb.bftchat.v1 import service_pb2 as spb
from bft.quorums import Quorums
from bft.replies import CheckedReply, ReplyCollector, check_reply
from bft.wire import WireError, make_request, parse
from client.errors import FateUnknown, StaleTimestamp

SESSION_METHOD = "/bftchat.v1.ClientService/Session"
STATUS_METHOD = "/bftchat.v1.ClientService/Status"
RESEND_AFTER = 1.0  # the least time without an accepted result before a request goes to all
RESEND_MAX = 8.0  # the most: the adaptive timeout and the backoff between resends stop here
READ_FALLBACK_AFTER = 1.0  # a one-round read that has not gathered 2f+1 by then is ordered instead
MAX_RECEIVE = 64 * 1024 * 1024
CONNECT_TIMEOUT = 5.0  # TCP and TLS to a session port
STREAM_LIMIT = 1024 * 1024  # asyncio reader buffer before it pauses the socket
MAX_STALE_RETRIES = 5  # re-signings after "stale timestamp" answers before StaleTimestamp is raised
MAX_TIMESTAMP = 2**64 - 1
SUSPECT_FOR = 60.0  # seconds a designated replier that failed us gets a stand-in (cleared by a good reply)
RECENT_RESULTS = 8  # accepted results kept to check late replies of suspects against


def wall_clock_us() -> int:
    """The default timestamp clock: wall-clock time in microseconds."""
    return time.time_ns() // 1000


def rpc_reason(exc: BaseException) -> str:
    """A short, readable reason from a gRPC failure (connection refused, TLS, DNS, deadline ...)."""
    if not isinstance(exc, grpc.aio.AioRpcError):
        return str(exc) or type(exc).__name__
    details = exc.details() or ""
    if "last error:" in details:
        details = details.split("last error:", 1)[1].strip()
    for prefix in ("UNKNOWN: ", "UNAVAILABLE: "):
        details = details.removeprefix(prefix)
    if details.startswith(("ipv4:", "ipv6:")):  # "ipv4:127.0.0.1:7100: Failed ...": drop the address
        parts = details.split(": ", 1)
        details = parts[1] if len(parts) == 2 else details
    code = exc.code().name.lower() if exc.code() is not None else "error"
    text = f"{code}: {details}" if details else code
    return text if len(text) <= 200 else text[:197] + "..."


class RequestFailed(Exception):
    """No result was accepted in time. Says who said what:

    * ``replies``: replica -> (status, result) of the validly signed replies it sent;
    * ``refusals``: replica -> why it refused the request (a ``RequestError``, one replica's word);
    * ``unreachable``: replica -> why its stream was down when the request gave up;
    * ``needed``: how many matching replies would have been accepted (f+1, or 2f+1 for a read).
    """

    def __init__(
        self,
        needed: int,
        replies: Mapping[int, tuple[int, bytes]],
        refusals: Mapping[int, str],
        unreachable: Mapping[int, str],
    ) -> None:
        self.needed = needed
        self.replies = dict(replies)
        self.refusals = dict(refusals)
        self.unreachable = dict(unreachable)
        super().__init__(f"no agreed result in time: {self.detail}")

    @property
    def detail(self) -> str:
        """The replies (grouped by what they said), refusals and unreachable replicas, in one line."""
        if self.replies:
            groups: dict[tuple[int, bytes], list[int]] = {}
            for replica, answer in sorted(self.replies.items()):
                groups.setdefault(answer, []).append(replica)
            said = ", ".join(
                f"{_replicas(ids)} status {status} result {sha256(result).hex()[:8]}"
                for (status, result), ids in groups.items()
            )
            parts = [f"{len(self.replies)} replied, {self.needed} matching needed ({said})"]
        else:
            parts = [f"no replies ({self.needed} matching needed)"]
        for what, named in (("refused by", self.refusals), ("unreachable", self.unreachable)):
            if named:
                parts.append(what + " " + ", ".join(f"replica {i}: {w}" for i, w in sorted(named.items())))
        return "; ".join(parts)


def _replicas(ids: Sequence[int]) -> str:
    return f"replica {ids[0]}" if len(ids) == 1 else "replicas " + ", ".join(map(str, ids))


@dataclass(frozen=True, slots=True)
class _Stale:
    """f+1 replicas refused the request as stale and want timestamps >= ``smallest``."""

    smallest: int


class RetransmitTimer:
    """When to send an unanswered ordered request to all replicas: a TCP-style retransmission
    timeout (RFC 6298) over this session's own commit latencies, srtt + 4·rttvar, never below
    ``RESEND_AFTER`` nor above ``RESEND_MAX`` (the floor wins if a test raises it). Only requests
    answered without a resend are sampled (Karn's rule), and each further resend doubles the wait.

    Why adaptive: under overload a request waits at the primary for longer than a fixed 1 s. Then
    every client resends to all replicas, every backup forwards and re-verifies the request, and the
    extra work lowers throughput further. Seen at n = 7 with 500 closed-loop clients: 348 sends/s
    against 584 at 200. Under a silent primary nothing changes. With latencies in milliseconds the
    timeout stays at its 1 s floor, so failover still takes 1 s plus the replicas' view-change timer.
    """

    def __init__(self) -> None:
        self.srtt: float | None = None
        self.rttvar = 0.0

    def sample(self, seconds: float) -> None:
        if self.srtt is None:
            self.srtt, self.rttvar = seconds, seconds / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - seconds)
            self.srtt = 0.875 * self.srtt + 0.125 * seconds

    def timeout(self, resends: int = 0) -> float:
        base = RESEND_AFTER if self.srtt is None else self.srtt + 4 * self.rttvar
        return max(RESEND_AFTER, min(base * 2**resends, RESEND_MAX))


@dataclass
class ReadCursor:
    """The pure acceptance state of one session, shared with the simulator's client (one copy of
    the rules): which replies to collect, and what an accepted result teaches the session.

    ``last_seq`` is the seq a one-round read must not predate (its ``min_seq``). It only rises from
    accepted results, whose seq the collector takes as the f+1-th highest among the matching
    replies, so no faulty replica can push it beyond what an honest one executed.
    """

    quorums: Quorums
    last_seq: int = 0

    def collector(self, read_only: bool) -> ReplyCollector:
        return ReplyCollector.for_request(self.quorums, read_only)

    def min_seq(self, read_only: bool) -> int:
        return self.last_seq if read_only else 0

    def accept(self, reply: CheckedReply) -> int | None:
        """Take an accepted result. Returns the smallest timestamp the replicas would take when f+1
        agreed the request is below the eviction floor (re-sign above it), else None."""
        if reply.status == pb.REPLY_STALE_TIMESTAMP:
            return int(struct.unpack(">Q", reply.result)[0]) if len(reply.result) == 8 else MAX_TIMESTAMP + 1
        if reply.seq:
            self.last_seq = max(self.last_seq, reply.seq)
        return None


@dataclass
class Repliers:
    """Where an ordered request goes first, given its designated repliers: the pure rule, shared
    with the simulator's client.

    Only the f+1 designated repliers of a request (``Quorums.repliers``) answer its first
    execution, and a backup answers any request the client sent it itself. So the request goes to
    the believed primary, plus, for each designated replier the session cannot count on (its
    stream is down, or it is *suspect*), one stand-in backup outside the designated set: the
    stand-in answers at execution instead, and the session still needs only f+1 replies. A
    designated replier becomes suspect when a request it should have answered had to be resent
    (no accepted result in time, and no reply from it while another replica did answer), or when
    it answered something other than what f+1 replicas agreed on; it stops being suspect when a
    verified reply of it matches an accepted result (in time, or late: ``on_late``), or after
    ``SUSPECT_FOR`` seconds. Without
    stand-ins, one silent replica would make every request it is designated for (f+1 in n) wait
    the whole retransmission timeout; a stand-in costs one more request copy and one more reply.
    """

    quorums: Quorums
    suspects: dict[int, float] = field(default_factory=dict)  # replica -> suspect until (clock seconds)

    def suspect(self, replica: int, now: float) -> bool:
        until = self.suspects.get(replica)
        if until is not None and until <= now:
            del self.suspects[replica]
            return False
        return until is not None

    def first_targets(
        self, designated: Sequence[int], primary: int, ready: Sequence[int], now: float
    ) -> tuple[int, ...] | None:
        """The replicas to send to first: the primary and a stand-in per unreliable designated
        replier; None (all replicas) if the primary is not ready or stand-ins run out."""
        if primary not in ready:
            return None
        missing = sum(1 for r in designated if r not in ready or self.suspect(r, now))
        if not missing:
            return (primary,)
        spare = [r for r in ready if r != primary and r not in designated and not self.suspect(r, now)]
        if len(spare) < missing:
            return None
        return (primary, *spare[:missing])

    def on_resend(self, designated: Sequence[int], collector: ReplyCollector, now: float) -> None:
        """No accepted result in time, but some replica answered (so the request executed): the
        designated repliers that did not answer are suspect. With no answer at all nothing is
        known about them (the request is still being ordered: a slow or silent primary, or
        overload), and suspecting them would only spread stand-ins."""
        if not collector.votes:
            return
        for r in designated:
            if r not in collector.votes:
                self.suspects[r] = now + SUSPECT_FOR

    def on_accepted(
        self, designated: Sequence[int], collector: ReplyCollector, accepted: CheckedReply, now: float
    ) -> None:
        """A designated replier that said something else is suspect; a replica whose reply agreed
        is trusted again."""
        for r, vote in collector.votes.items():
            if (vote.status, vote.result) == (accepted.status, accepted.result):
                self.suspects.pop(r, None)
            elif r in designated:
                self.suspects[r] = now + SUSPECT_FOR

    def on_late(self, reply: CheckedReply, accepted: CheckedReply) -> None:
        """A verified reply that came after its request's result was accepted (a suspect's reply
        loses the race to the stand-in's): if it matches, its replica answers again."""
        if (reply.status, reply.result) == (accepted.status, accepted.result):
            self.suspects.pop(reply.replica, None)


@dataclass
class _Pending:
    timestamp: int
    raw: bytes
    digest: bytes
    read_only: bool
    collector: ReplyCollector
    done: asyncio.Future[CheckedReply | _Stale]
    targets: tuple[int, ...] | None  # the replicas it was sent to (the believed primary first), None: all
    designated: tuple[int, ...] = ()  # its designated repliers (ordered requests)
    refusals: dict[int, str] = field(default_factory=dict)
    stale: dict[int, int] = field(default_factory=dict)  # replica -> smallest timestamp it would take

    def frame(self) -> bytes:
        return spb.ClientFrame(request=self.raw).SerializeToString()


def channel(endpoint: str, ca_pem: bytes | None) -> grpc.aio.Channel:
    """A channel to one replica's client port: TLS against the cluster CA, or plaintext."""
    opts = [
        ("grpc.max_receive_message_length", MAX_RECEIVE),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2000),
        ("grpc.keepalive_time_ms", 20_000),
    ]
    if ca_pem is None:
        return grpc.aio.insecure_channel(endpoint, options=opts)
    return grpc.aio.secure_channel(endpoint, grpc.ssl_channel_credentials(root_certificates=ca_pem), opts)


async def status(endpoint: str, ca_pem: bytes | None, timeout: float = 2.0) -> spb.StatusReply:
    """One replica's status (unary call; raises grpc.aio.AioRpcError when unreachable)."""
    async with channel(endpoint, ca_pem) as ch:
        raw = await ch.unary_unary(STATUS_METHOD)(b"", timeout=timeout)
        assert isinstance(raw, bytes)
        return parse(spb.StatusReply, raw)


def untrusted_text(text: str, limit: int = 200) -> str:
    """A reason one replica (maybe a faulty one) sent, fit for a one-line message: printable
    characters only, at most ``limit`` of them."""
    clean = "".join(ch if ch.isprintable() else "?" for ch in text[: limit + 1])
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."


def _socket_reason(exc: BaseException) -> str:
    """A short reason for a failed session-port connection."""
    if isinstance(exc, TimeoutError):
        return "connect timed out"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port)."""
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)


def session_tls(ca_pem: bytes) -> ssl.SSLContext:
    """TLS to a replica's session port: TLS 1.3, only this cluster's CA, the host name checked,
    ALPN ``bftchat-session/1`` (``bft.runtime.session_port``)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(cadata=ca_pem.decode("ascii", "replace"))
    ctx.set_alpn_protocols([SESSION_ALPN])
    return ctx


TRANSPORTS = ("auto", "grpc")


def session_endpoints(config: ClusterConfig, transport: str = "auto") -> list[str | None] | None:
    """Where each replica serves framed sessions, by the config; None (gRPC for all) for ``grpc``."""
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, not {transport!r}")
    if transport == "grpc":
        return None
    return [r.session_endpoint for r in config.replicas]


class _Conn:
    """The session stream to one replica, reconnected forever until the client closes: on the
    replica's session port when it has one (``session_endpoint``), else the gRPC ``Session`` call."""

    def __init__(
        self, client: ClusterSession, replica: int, endpoint: str, session_endpoint: str | None = None
    ) -> None:
        self.client = client
        self.replica = replica
        self.endpoint = endpoint
        self.session_endpoint = session_endpoint
        self.channel = None if session_endpoint is not None else channel(endpoint, client.ca_pem)
        self.out: deque[bytes] = deque()
        self.wake = asyncio.Event()
        self.up = False
        self.subscribed = False
        self.claimed = False  # the replica confirmed our SessionClaim on this stream
        self.claim_refused: str | None = None
        self.refused: str | None = None  # why the replica ended the session (session port)
        self.nonce = b""
        self.last_error = "no session stream yet"
        self.task: asyncio.Task[None] | None = None

    def prove(self) -> None:
        """Send the subscription proof for this stream's nonce."""
        client = self.client
        if self.up and not self.subscribed:
            proof = auth_proof(client.signer, client.cluster.cluster_id, self.replica, self.nonce)
            self.send(spb.ClientFrame(auth=proof).SerializeToString())

    def claim(self) -> None:
        """Claim this session's replies on this stream (the first frame after the nonce)."""
        c = self.client
        claim = session_claim(c.signer, c.cluster.cluster_id, self.replica, self.nonce, c.session)
        self.send(spb.ClientFrame(claim=claim).SerializeToString())

    def send(self, frame: bytes) -> None:
        if self.up:
            self.out.append(frame)
            self.wake.set()

    async def run(self) -> None:
        backoff = 0.05
        while True:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError, WireError) as exc:
                self.last_error = rpc_reason(exc)
            except (OSError, ssl.SSLError, TimeoutError, asyncio.IncompleteReadError) as exc:
                self.last_error = _socket_reason(exc)
            else:
                if self.refused is None:
                    self.last_error = "the replica ended the session stream"
                else:
                    self.last_error = f"the replica refused the session: {self.refused}"
                    self.refused = None
            if self.up:  # the session came up: reconnect soon; one that never did (refused,
                backoff = 0.05  # unreachable) backs off, so a full replica is not hammered
            self.up = self.subscribed = self.claimed = False
            self.claim_refused = None
            self.out.clear()
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, 1.0)

    async def _session(self) -> None:
        if self.session_endpoint is not None:
            await self._framed_session(self.session_endpoint)
            return
        assert self.channel is not None
        call = self.channel.stream_stream(SESSION_METHOD)()
        reader = asyncio.get_running_loop().create_task(self._read(call))
        # When a write fails the reader is cancelled, and grpc's read turns that cancellation into
        # the stream's error: retrieved here, so asyncio prints no "never retrieved" traceback.
        reader.add_done_callback(lambda t: t.cancelled() or t.exception())
        try:
            while not reader.done():
                while self.out:
                    await call.write(self.out.popleft())
                self.wake.clear()
                if not self.out:
                    waiter = asyncio.get_running_loop().create_task(self.wake.wait())
                    try:
                        await asyncio.wait({waiter, reader}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        waiter.cancel()  # also when this session is cancelled (client closed)
            reader.result()
        finally:
            reader.cancel()
            call.cancel()

    async def _framed_session(self, endpoint: str) -> None:
        """One connection to the session port: frames out as ``out`` fills, frames in to ``_on_frame``."""
        host, port = split_endpoint(endpoint)
        ctx = self.client.session_tls
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                host, port, ssl=ctx, server_hostname=host if ctx is not None else None, limit=STREAM_LIMIT
            ),
            CONNECT_TIMEOUT,
        )
        tune_socket(writer)
        loop = asyncio.get_running_loop()
        reader_task = loop.create_task(self._read_framed(reader))
        reader_task.add_done_callback(lambda t: t.cancelled() or t.exception())
        try:
            while not reader_task.done():
                if self.out:
                    frames = list(self.out)
                    self.out.clear()
                    writer.write(encode_frames(frames))
                    await writer.drain()
                    continue
                self.wake.clear()
                waiter = loop.create_task(self.wake.wait())
                try:
                    await asyncio.wait({waiter, reader_task}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
            reader_task.result()
        finally:
            reader_task.cancel()
            writer.transport.abort()

    async def _read_framed(self, reader: asyncio.StreamReader) -> None:
        while True:
            raw = await read_frame(reader, MAX_RECEIVE)
            if raw is None:
                return
            if not self._on_frame(raw):
                return

    async def _read(self, call: grpc.aio.StreamStreamCall) -> None:
        while True:
            raw = await call.read()
            if raw is grpc.aio.EOF:
                return
            assert isinstance(raw, bytes)
            self._on_frame(raw)

    def _on_frame(self, raw: bytes) -> bool:
        """One ServerFrame from the replica (WireError if malformed); False when it ends the session."""
        client = self.client
        frame = parse(spb.ServerFrame, raw)
        which = frame.WhichOneof("kind")
        if which == "nonce":
            self.up = True
            self.nonce = frame.nonce
            self.claim()  # before any request, so the replica routes their replies here
            if client.want_pushes:
                self.prove()
            client.on_conn_up(self)
        elif which == "reply":
            client.on_reply(self.replica, frame.reply)
        elif which == "error":
            client.on_error(self.replica, frame.error)
        elif which == "push":
            client.on_push(frame.push)
        elif which == "subscribed":
            self.subscribed = frame.subscribed == client.key
        elif which == "auth_error":
            client.auth_errors.append((self.replica, untrusted_text(frame.auth_error)))
        elif which == "claimed":
            got = frame.claimed
            self.claimed = (got.public_key, got.session) == (client.key, client.session)
            if self.claimed:  # a hint until this replica's verified replies say more
                client.on_view_hint(self.replica, got.view)
        elif which == "claim_error":
            self.claimed, self.claim_refused = False, untrusted_text(frame.claim_error)
            client.on_claim_refused(self)
        elif which == "refused":
            self.refused = untrusted_text(frame.refused) or "no reason given"
            return False
        return True


class ClusterSession:
    """One client session (one key, a random session id) with every replica of a cluster. Use as
    ``async with``. ``clock`` gives timestamps' clock in microseconds (tests inject one); ``session``
    pins the session id (tests, and resending an outbox request; two live instances with one id
    that both sign would fight over timestamps)."""

    def __init__(
        self,
        cluster: ClusterInfo,
        endpoints: Sequence[str],
        signer: Signer,
        *,
        ca_pem: bytes | None = None,
        session: int | None = None,
        clock: Callable[[], int] = wall_clock_us,
        session_endpoints: Sequence[str | None] | None = None,
    ) -> None:
        if len(endpoints) != cluster.n:
            raise ValueError("one endpoint per replica")
        if session_endpoints is not None and len(session_endpoints) != cluster.n:
            raise ValueError("one session endpoint (or None) per replica")
        self.cluster = cluster
        self.signer = signer
        self.key = signer.public_key
        self.ca_pem = ca_pem
        self.session = session if session is not None else int.from_bytes(os.urandom(6), "big")
        self.verifier = CachingVerifier(Ed25519Verifier(), 4096)
        self.session_tls = None if ca_pem is None else session_tls(ca_pem)
        framed = session_endpoints or [None] * cluster.n
        self.conns = [_Conn(self, i, ep, framed[i]) for i, ep in enumerate(endpoints)]
        self.want_pushes = False
        self.pushes: asyncio.Queue[CheckedPush] = asyncio.Queue()
        self.auth_errors: list[tuple[int, str]] = []
        self._push_votes: dict[tuple[str, int, int], set[int]] = {}
        self._pushed: set[tuple[str, int, int]] = set()
        self._pending: dict[int, _Pending] = {}
        self._lock = asyncio.Lock()
        self._clock = clock
        self._timestamp = 0
        self._views: dict[int, int] = {}  # replica -> view of its latest verified reply
        self.retransmit = RetransmitTimer()
        self.repliers = Repliers(cluster.quorums)
        self._recent: dict[int, CheckedReply] = {}  # timestamp -> accepted result, the last few
        self.cursor = ReadCursor(cluster.quorums)
        self.last_raw = b""  # the signed bytes of the latest request sent

    @classmethod
    def from_config(
        cls, config: ClusterConfig, signer: Signer, *, insecure: bool = False, transport: str = "auto"
    ) -> ClusterSession:
        """Sessions to every replica of a loaded cluster config: TLS with its CA, or plaintext only
        when asked for with ``insecure`` (a config without ``tls_ca`` is refused otherwise, rather
        than silently falling back to plaintext). ``transport``: ``auto`` uses a replica's session
        port when the config gives one and gRPC otherwise; ``grpc`` always uses gRPC."""
        if not insecure and config.tls_ca is None:
            raise ConfigError(
                f"{config.path}: no tls_ca in the config; pass --insecure to talk to the cluster without "
                "TLS (only if its replicas run --insecure)"
            )
        ca = None if insecure or config.tls_ca is None else Path(config.tls_ca).read_bytes()
        return cls(
            config.info(),
            [r.endpoint for r in config.replicas],
            signer,
            ca_pem=ca,
            session_endpoints=session_endpoints(config, transport),
        )

    async def __aenter__(self) -> ClusterSession:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        for c in self.conns:
            c.task = loop.create_task(c.run())

    async def close(self) -> None:
        for c in self.conns:
            if c.task is not None:
                c.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await c.task
            if c.channel is not None:
                await c.channel.close(grace=None)
        for p in self._pending.values():
            if not p.done.done():
                p.done.cancel()

    async def wait_connected(self, count: int | None = None, timeout: float = 10.0) -> None:
        """Until ``count`` (default all) session streams are up."""
        await self._until_streams("up", count, timeout, "sessions up")

    async def _until_streams(self, flag: str, count: int | None, timeout: float, what: str) -> None:
        """Until ``count`` (default all) streams have ``flag`` set; TimeoutError naming ``what``."""
        need = self.cluster.n if count is None else count
        deadline = time.monotonic() + timeout
        while (have := sum(bool(getattr(c, flag)) for c in self.conns)) < need:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {have} of {need} {what}")
            await asyncio.sleep(0.02)

    @property
    def last_seq(self) -> int:
        """The seq this session's one-round reads must not predate (``ReadCursor``)."""
        return self.cursor.last_seq

    @last_seq.setter
    def last_seq(self, seq: int) -> None:
        self.cursor.last_seq = seq

    # ---- the primary

    @property
    def view(self) -> int:
        """The view this session believes the cluster is in: the highest that f+1 replicas reached
        according to their latest verified replies (one lying replica cannot steer it)."""
        views = sorted(self._views.values(), reverse=True)
        need = self.cluster.quorums.f + 1
        return views[need - 1] if len(views) >= need else 0

    def on_view_hint(self, replica: int, view: int) -> None:
        """A replica's unsigned word on its view (claim answers): counted like reply views, under the
        same f+1 rule, so a new process starts at the current primary and a liar cannot steer it."""
        if view > self._views.get(replica, -1):
            self._views[replica] = view

    @property
    def primary(self) -> int:
        return self.cluster.primary(self.view)

    def _first_targets(self, designated: Sequence[int]) -> tuple[int, ...] | None:
        """Where an ordered request goes first: the believed primary, plus a stand-in for each of
        its designated repliers whose stream is not up with our claim or that is suspect
        (``Repliers``), so that f+1 replicas answer; None (all) if that cannot be arranged."""
        ready = [c.replica for c in self.conns if c.up and c.claim_refused is None]
        return self.repliers.first_targets(designated, self.primary, ready, time.monotonic())

    def _transmit(self, p: _Pending) -> None:
        frame = p.frame()
        for c in self.conns if p.targets is None else (self.conns[i] for i in p.targets):
            c.send(frame)

    # ---- requests

    def _next_timestamp(self) -> int:
        """max(clock, last + 1): above the floor of evicted sessions (barring clock trouble, which the
        stale-timestamp retry covers) and monotone whatever the clock does."""
        self._timestamp = max(self._clock(), self._timestamp + 1)
        return self._timestamp

    def _move_past(self, smallest: int, tries: int) -> None:
        """The replicas want timestamps >= ``smallest``: the next one will be at least that."""
        if tries > MAX_STALE_RETRIES or smallest > MAX_TIMESTAMP:
            raise StaleTimestamp(self.session, self._timestamp, smallest, tries)
        self._timestamp = max(self._timestamp, smallest - 1)

    async def request(
        self,
        op: bytes,
        *,
        read_only: bool = False,
        timeout: float = 30.0,
        on_signed: Callable[[bytes, int, int], None] | None = None,
        idempotent: bool | None = None,
    ) -> CheckedReply:
        """Run one operation and return the result enough replicas agree on.

        Requests of one session run one at a time (callers queue on a lock): the replicas execute a
        session's requests in timestamp order and drop one whose timestamp is below the last
        executed, so a later request ordered first would make an earlier one vanish unanswered.
        Several requests at once need several sessions. A "stale timestamp" answer re-signs the
        operation with a larger timestamp (it was not executed) and runs it again, at most
        ``MAX_STALE_RETRIES`` times; then ``StaleTimestamp``. ``RequestFailed`` if no result is
        accepted within ``timeout`` seconds.

        Below the eviction floor (f+1 agreed ``REPLY_STALE_TIMESTAMP``) the replicas have forgotten
        the session, which says nothing about whether this request executed before they did (it
        may have, then been evicted by other sessions before its reply arrived). So only an
        ``idempotent`` operation (default: ``read_only``) is re-signed there; any other raises
        ``FateUnknown`` rather than risk executing twice.

        ``on_signed(raw, session, timestamp)`` is called with the signed bytes before each
        transmission (the outbox stores them). If such a request ends without an accepted result,
        this instance moves to a fresh session id before anything else is signed, so that request
        stays the last of its session: resent later as is, it executes at most once, or is answered
        from the replicas' client table.
        """
        async with self._lock:
            try:
                again = read_only if idempotent is None else idempotent
                return await self._request(op, read_only, timeout, on_signed, again)
            except BaseException:
                if on_signed is not None:
                    self.new_session()
                raise

    async def _request(
        self,
        op: bytes,
        read_only: bool,
        timeout: float,
        on_signed: Callable[[bytes, int, int], None] | None,
        idempotent: bool,
    ) -> CheckedReply:
        deadline = time.monotonic() + timeout
        stale_tries = 0
        while True:
            reply = await self._attempt(op, read_only, deadline, on_signed)
            if reply is None:  # a read that did not gather 2f+1: order it
                read_only = False
                continue
            if isinstance(reply, _Stale):  # f+1 refused it: below our session's last timestamp
                stale_tries += 1
                self._move_past(reply.smallest, stale_tries)
                continue
            smallest = self.cursor.accept(reply)
            if smallest is not None:  # f+1 agree: below the eviction floor
                if not idempotent:
                    raise FateUnknown(
                        "the replicas forgot this session (evicted by others) before answering: "
                        "the operation may or may not have executed"
                    )
                stale_tries += 1
                self._move_past(smallest, stale_tries)
                continue
            return reply

    async def _attempt(
        self,
        op: bytes,
        read_only: bool,
        deadline: float,
        on_signed: Callable[[bytes, int, int], None] | None = None,
    ) -> CheckedReply | _Stale | None:
        """Sign ``op`` with a fresh timestamp and send it until a result is accepted: an ordered
        request first to the believed primary, then (after the retransmission timeout, or a
        refusal) to all, resent to all with the wait doubling up to RESEND_MAX. None: a one-round
        read that should be ordered instead."""
        ts = self._next_timestamp()
        raw = make_request(
            self.signer,
            self.cluster.cluster_id,
            self.session,
            ts,
            op,
            read_only=read_only,
            min_seq=self.cursor.min_seq(read_only),
        )
        self.last_raw = raw
        if on_signed is not None:
            on_signed(raw, self.session, ts)
        fut: asyncio.Future[CheckedReply | _Stale] = asyncio.get_running_loop().create_future()
        collector = self.cursor.collector(read_only)
        designated = () if read_only else self.cluster.quorums.repliers(self.key, self.session, ts)
        targets = None if read_only else self._first_targets(designated)
        p = _Pending(ts, raw, sha256(raw), read_only, collector, fut, targets, designated)
        self._pending[ts] = p
        try:
            resends = 0
            sent = time.monotonic()
            self._transmit(p)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self._failed(p)
                wait = min(left, READ_FALLBACK_AFTER if read_only else self.retransmit.timeout(resends))
                try:
                    result = await asyncio.wait_for(asyncio.shield(fut), wait)
                except TimeoutError:
                    if read_only and not resends:
                        return None
                else:
                    if not read_only and not resends:
                        self.retransmit.sample(time.monotonic() - sent)  # Karn: unambiguous samples only
                    return result
                resends += 1
                self.repliers.on_resend(p.designated, p.collector, time.monotonic())
                p.targets = None  # no result in time: all replicas (backups forward it, answer, and watch)
                self._transmit(p)
        finally:
            self._pending.pop(ts, None)

    def sign_unsent(self, op: bytes) -> tuple[bytes, int, int]:
        """Sign an ordered request without transmitting it: ``(raw, session, timestamp)``, for the
        outbox to keep while the cluster cannot be reached and ``resend`` as is later. Then, as after
        a request that got no answer, move to a fresh session id, so it stays its session's last
        request (it executes at most once, whenever it first reaches the replicas)."""
        ts = self._next_timestamp()
        session = self.session
        raw = make_request(
            self.signer,
            self.cluster.cluster_id,
            session,
            ts,
            op,
            read_only=False,
            min_seq=self.cursor.min_seq(False),
        )
        self.new_session()
        return raw, session, ts

    def new_session(self) -> None:
        """Use a fresh session id from now on (claimed again on every stream). The old one is never
        used to sign again, so its last request stays its last (see ``request``)."""
        self.session = int.from_bytes(os.urandom(6), "big")
        for c in self.conns:
            c.claimed, c.claim_refused = False, None
            if c.up:
                c.claim()

    async def resend(self, raw: bytes, timestamp: int, *, timeout: float = 30.0) -> CheckedReply | None:
        """Send the exact bytes of an earlier ordered request of this session again, to all
        replicas, never re-signed, until f+1 replicas agree on its reply: the one they cached if it
        executed, its execution if it had not, or ``REPLY_STALE_TIMESTAMP`` if the session was
        evicted. None if f+1 refuse it as below the session's last executed timestamp (it can never
        execute now). ``RequestFailed`` past ``timeout``. This instance must have been built with
        the request's session id and must sign nothing else."""
        async with self._lock:
            self._timestamp = max(self._timestamp, timestamp)
            deadline = time.monotonic() + timeout
            fut: asyncio.Future[CheckedReply | _Stale] = asyncio.get_running_loop().create_future()
            collector = self.cursor.collector(read_only=False)
            designated = self.cluster.quorums.repliers(self.key, self.session, timestamp)
            p = _Pending(timestamp, raw, sha256(raw), False, collector, fut, None, designated)
            self._pending[timestamp] = p
            try:
                resends = 0
                self._transmit(p)
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise self._failed(p)
                    try:
                        result = await asyncio.wait_for(
                            asyncio.shield(fut), min(left, self.retransmit.timeout(resends))
                        )
                    except TimeoutError:
                        resends += 1
                        self._transmit(p)
                        continue
                    return None if isinstance(result, _Stale) else result
            finally:
                self._pending.pop(timestamp, None)

    def _failed(self, p: _Pending) -> RequestFailed:
        replies = {i: (r.status, r.result) for i, r in p.collector.votes.items()}
        down = {c.replica: c.last_error for c in self.conns if not c.up}
        return RequestFailed(p.collector.needed, replies, p.refusals, down)

    def on_conn_up(self, conn: _Conn) -> None:
        """A (re)connected stream (its claim already sent): resend what is still waiting for it."""
        for p in self._pending.values():
            if p.targets is None or conn.replica in p.targets:
                conn.send(p.frame())

    def on_claim_refused(self, conn: _Conn) -> None:
        """A replica will not route our replies to us: what went to the primary alone goes to all."""
        for p in self._pending.values():
            if p.targets is not None and not p.done.done():
                p.targets = None
                self._transmit(p)

    def on_reply(self, replica: int, data: bytes) -> None:
        try:
            ts = parse(pb.ClientReply, data).timestamp
        except WireError:
            return
        p = self._pending.get(ts)
        if p is None or p.done.done():
            accepted = self._recent.get(ts)
            if accepted is not None and replica in self.repliers.suspects:
                with contextlib.suppress(WireError):
                    late = check_reply(data, self.cluster, self.verifier, self.key, self.session, ts)
                    if late.replica == replica:
                        self.repliers.on_late(late, accepted)
            return
        try:
            reply = check_reply(data, self.cluster, self.verifier, self.key, self.session, ts)
        except WireError:
            return
        if reply.replica != replica:
            return  # a replica relaying another's reply gets no extra vote
        self._views[replica] = reply.view
        accepted = p.collector.add(reply)
        if accepted is not None:
            if p.designated:
                self.repliers.on_accepted(p.designated, p.collector, accepted, time.monotonic())
                self._recent[ts] = accepted
                if len(self._recent) > RECENT_RESULTS:
                    del self._recent[next(iter(self._recent))]
            p.done.set_result(accepted)

    def on_error(self, replica: int, err: spb.RequestError) -> None:
        """A refusal is noted (shown if the request times out): one replica's word proves nothing,
        and many refusals are transient (recovering, overloaded), so the request is simply resent.
        A request the primary alone had goes to all at once. A stale-timestamp refusal counts once
        f+1 replicas gave one (at least one honest: the request can never execute): the request
        then ends, to be re-signed above a timestamp that f+1 of them asked for."""
        need = self.cluster.quorums.f + 1
        for p in self._pending.values():
            if p.digest != err.request_digest or p.done.done():
                continue
            p.refusals[replica] = err.message
            if err.min_timestamp:
                p.stale[replica] = err.min_timestamp
                if len(p.stale) >= need:
                    p.done.set_result(_Stale(sorted(p.stale.values(), reverse=True)[need - 1]))
                    continue
            if p.targets is not None:
                p.targets = None
                self._transmit(p)

    # ---- pushes

    async def subscribe(self, count: int | None = None, timeout: float = 10.0) -> None:
        """Prove this key on every stream (and on every reconnect); wait until ``count`` (default all)
        replicas confirmed the subscription."""
        self.want_pushes = True
        for c in self.conns:
            c.prove()
        await self._until_streams("subscribed", count, timeout, "subscriptions")

    def on_push(self, env: pb.Envelope) -> None:
        try:
            push = check_push(env, self.cluster.cluster_id, self.cluster.public_keys, self.verifier)
        except WireError:
            return
        if push.recipient_key != self.key:
            return
        ident = (push.recipient, push.message_id, push.seq)
        if ident in self._pushed:
            return
        votes = self._push_votes.setdefault(ident, set())
        votes.add(push.replica)
        if len(votes) >= self.cluster.quorums.f + 1:
            self._pushed.add(ident)
            del self._push_votes[ident]
            self.pushes.put_nowait(push)
        if len(self._push_votes) > 10_000:  # pushes only f replicas sent: forget the oldest
            del self._push_votes[next(iter(self._push_votes))]
