"""The driver: feeds the sans-IO core from the network and the clock, and carries its outputs out.

It is the second driver of ``bft.core.replica.Replica`` after the simulator (``bft.sim.world``) and
carries outputs out the same way: records are appended to the log as they come, and no
``Send``/push leaves before every record appended ahead of it is durable, no ``ToClient`` before
every such record but the lazy ones (``Persist.lazy``: the execution record). It makes no protocol
decisions.

Group commit without blocking the loop: the first output that needs unsynced records starts a
write + fsync of everything appended so far on the log's own thread, and that output (and every
output after it, in order) waits in ``_held``. The loop meanwhile keeps feeding the core; records
appended in the meantime form the next group, started when the current one is durable. So under
load one fsync covers many bursts, and the loop never sits idle while the disk works.

Everything else runs on the event loop thread; the core is never touched from another thread. Input is
queued by the gRPC handlers and processed in bursts: every message that arrived since the last turn
is fed to the core (which verifies signatures as it goes), then the outputs of the whole burst are
carried out once, so a burst's sends to one peer leave as one frame. A burst is cut after
``BURST_INPUTS`` inputs or ``BURST_SECONDS`` so reads and writes keep flowing under load.

Replies go to client session streams by route: the stream a request arrived on, and the stream its
client session claimed with a signed ``SessionClaim`` (so a backup that only saw the request inside
a PRE-PREPARE can still answer a client that sent it to the primary alone). The one thing the node
says on its own: a request whose timestamp is below the last one its session executed here is
dropped by the core without a word, so the node tells the client (``RequestError.min_timestamp``),
reading the core's client table; it decides nothing, and the client believes it only from f+1.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Protocol

from bft.core.clients import MAX_U64
from bft.core.config import ClusterInfo
from bft.core.events import (
    CancelTimer,
    Committed,
    Evidence,
    Output,
    Persist,
    Record,
    RecoveryStarted,
    Send,
    SetTimer,
    StateInstalled,
    ToClient,
    ViewEntered,
)
from bft.core.replica import Replica
from bft.crypto import KEY_LEN, TAG_LEN, Signer, Verifier, sha256
from bft.faults import ByzantineReplica, LinkPolicy
from bft.handshake import seal_push
from bft.pb.bftchat.v1 import protocol_pb2 as pb
from bft.pb.bftchat.v1 import service_pb2 as spb
from bft.runtime.logs import EventLog
from bft.runtime.metrics import Metrics
from bft.runtime.peers import PeerLinks
from bft.wire import WireError, parse

Core = Replica | ByzantineReplica

BURST_INPUTS = 512
BURST_SECONDS = 0.02
PEER_RUN = 4  # peer inputs taken in a row while client requests wait (``Node._next_input``)
MAX_ROUTES = 200_000  # (client key, session) -> session stream, by arrival (oldest forgotten first)
MAX_CLAIMS = 200_000  # and by claim; past this new claims are refused (MAX_SESSIONS x per-stream < it)
MAX_CLAIMS_PER_SESSION = 16  # claims one session stream may hold
MAX_CLAIMS_PER_KEY = 64  # routes of one client key claimed at once (sessions are free to make)
MAX_SUBSCRIPTIONS_PER_KEY = 64
INBOX_HIGH = 20_000  # queued inputs past which readers stop reading until half of it is done
INBOX_HIGH_BYTES = 64 * 1024 * 1024  # queued input bytes, likewise
PEER_INBOX_SHARE = 4096  # queued messages of one peer past which its reader waits (fairness)
SESSION_INBOX = 64  # queued requests of one client session stream past which its reader waits
CLIENT_INBOX_HIGH = 4096  # queued client requests (all sessions) past which session readers wait


class Storage(Protocol):
    """What the node needs of the log (``bft.storage.log.ReplicaLog``)."""

    @property
    def dirty(self) -> bool: ...

    @property
    def size_bytes(self) -> int: ...

    def append(self, record: Record) -> None: ...

    def sync(self) -> float: ...

    def take_group(self) -> Any: ...

    def write_group(self, group: Any) -> float: ...

    def close(self) -> None: ...

    def mark_recovering(self) -> None: ...


class Sink(Protocol):
    """A client session stream, as the node sees it: frames go out, never blocking."""

    def send(self, frame: bytes) -> None: ...


class TimedVerifier:
    """Counts verifications and the time they take (the node reports it per burst)."""

    def __init__(self, inner: Verifier) -> None:
        self._inner = inner
        self.seconds = 0.0
        self.count = 0

    def verify(self, public_key: bytes, data: bytes, signature: bytes) -> bool:
        t = time.perf_counter()
        try:
            return self._inner.verify(public_key, data, signature)
        finally:
            self.seconds += time.perf_counter() - t
            self.count += 1


Route = tuple[bytes, int]  # (client key, session)


def request_meta(raw: bytes) -> tuple[Route, pb.RequestBody] | None:
    """(client key, session) and the body of a request, unverified (the core verifies it)."""
    try:
        env = parse(pb.Envelope, raw)
        body = parse(pb.RequestBody, env.body[TAG_LEN + KEY_LEN :])
    except WireError:
        return None
    return (env.body[TAG_LEN : TAG_LEN + KEY_LEN], body.session), body


class RouteIndex:
    """(client key, session) -> session stream, also indexed by stream, so that a closing stream
    drops its routes in O(its routes), and counted per client key (a key may make any number of
    sessions, so only a per-key count makes a per-key limit). Insertion order is recency (``put``
    moves a route last)."""

    def __init__(self) -> None:
        self._sink: dict[Route, Sink] = {}
        self._of: dict[Sink, set[Route]] = {}
        self._per_key: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self._sink)

    def count_key(self, key: bytes) -> int:
        return self._per_key.get(key, 0)

    def _gone(self, route: Route) -> None:
        left = self._per_key[route[0]] - 1
        if left:
            self._per_key[route[0]] = left
        else:
            del self._per_key[route[0]]

    def get(self, route: Route) -> Sink | None:
        return self._sink.get(route)

    def held_by(self, sink: Sink) -> set[Route]:
        return self._of.get(sink, set())

    def put(self, route: Route, sink: Sink) -> None:
        """``route`` goes to ``sink`` from now on (taken over from another stream if need be)."""
        old = self._sink.pop(route, None)
        if old is None:
            self._per_key[route[0]] = self._per_key.get(route[0], 0) + 1
        elif old is not sink:
            self._of.get(old, set()).discard(route)
        self._sink[route] = sink
        self._of.setdefault(sink, set()).add(route)

    def evict_oldest(self) -> None:
        route = next(iter(self._sink))
        self._of.get(self._sink.pop(route), set()).discard(route)
        self._gone(route)

    def drop(self, sink: Sink) -> None:
        for route in self._of.pop(sink, ()):
            if self._sink.get(route) is sink:
                del self._sink[route]
                self._gone(route)


def _reply_frame(data: bytes) -> bytes:
    return spb.ServerFrame(reply=data).SerializeToString()


class FatalError(Exception):
    """The process must stop (the log could not be written)."""


class Node:
    """One replica's driver. ``core`` and ``link_policy`` are the seams for fault injection: a fault
    endpoint may replace ``core`` with a ``ByzantineReplica`` wrapping it, and set the policy."""

    def __init__(
        self,
        *,
        replica_id: int,
        cluster: ClusterInfo,
        signer: Signer,
        core: Core,
        storage: Storage,
        peers: PeerLinks,
        metrics: Metrics,
        events: EventLog,
        timing: TimedVerifier | None = None,
        on_state_installed: Callable[[], int] | None = None,
    ) -> None:
        self.id = replica_id
        self.cluster = cluster
        self.signer = signer
        self.core = core
        self.storage = storage
        self.peers = peers
        self.metrics = metrics
        self.events = events
        self._timing = timing
        # Called after a state transfer installed a checkpoint (the process passes freeze_heap: the
        # new state, millions of objects, leaves the collector's full passes as the restored one
        # did at start-up); returns the objects now frozen, for the event line.
        self._on_state_installed = on_state_installed
        # Input waiting for the core: peer messages and timers in one queue, ("m", message, peer id)
        # | ("t", name, None), and client requests in one queue per source address, (request, sink,
        # monotonic arrival), served round robin (``_next_input``). Bounded by backpressure, not by
        # dropping: readers stop reading (TCP and HTTP/2 flow control then push back on the sender)
        # while the inbox is over its marks, in total, per peer or per session stream.
        self._inbox: deque[tuple[str, object, object]] = deque()
        self._client_queues: dict[str, deque[tuple[bytes, Sink, float]]] = {}  # dict order = turn
        self._peer_run = 0  # peer inputs taken in a row while client requests waited
        self._inbox_bytes = 0
        self._from_peer: dict[int, int] = {}  # queued messages per peer
        self._from_sink: dict[Sink, int] = {}  # queued requests per session stream
        self._requests = 0  # queued requests in total
        self._room = asyncio.Event()
        # Group commit off the event loop: records appended / made durable so far, outputs waiting
        # for a group to be durable (in order), and the one thread that writes and fsyncs.
        self._appended = 0
        self._needed = 0  # records up to the last one a reply must wait for (not ``Persist.lazy``)
        self._synced = 0
        self._held: deque[tuple[int, Callable[[], None]]] = deque()
        self._held_replies: deque[tuple[int, Callable[[], None]]] = deque()  # same, for ToClient
        self._syncing = False
        self._disk = ThreadPoolExecutor(1, thread_name_prefix="log-sync")
        self._scheduled = False
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._routes = RouteIndex()  # by arrival: the stream the session's last request came on
        self._claims = RouteIndex()  # by a verified SessionClaim
        self._subscribers: dict[bytes, set[Sink]] = {}
        self._subscribed: dict[Sink, set[bytes]] = {}  # the reverse, so forget() is O(own keys)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stopping = False
        self.failed: asyncio.Future[str] | None = None
        self.started_at = 0.0
        self.faults: list[str] = []  # set by the fault-injection controller, shown in status
        self._rejected_seen = 0  # the core's rejected_inputs already added to the metric
        events.bind(self._where)

    # ---------------------------------------------------------------- seams and views

    @property
    def replica(self) -> Replica:
        """The honest core underneath (for status and metrics)."""
        core = self.core
        return core.inner if isinstance(core, ByzantineReplica) else core

    @property
    def link_policy(self) -> LinkPolicy:
        return self.peers.policy

    @link_policy.setter
    def link_policy(self, policy: LinkPolicy) -> None:
        self.peers.policy = policy

    def _where(self) -> tuple[int, int]:
        r = self.replica
        return r.view, r.last_executed

    def status(self) -> spb.StatusReply:
        r = self.replica
        return spb.StatusReply(
            replica_id=self.id,
            view=r.view,
            primary=r.primary,
            view_changing=r.view_changing,
            last_executed=r.last_executed,
            stable_checkpoint=r.h,
            state_digest=r.state_digest(),
            recovering=r.recovering,
            peers_connected=self.peers.connected,
            log_bytes=self.storage.size_bytes,
            cluster_id=self.cluster.cluster_id,
            faults=self.faults,
            accused=sorted({ev.replica for ev in r.evidence}),
            epoch=r.clients.epoch(r.id),
        )

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.failed = self._loop.create_future()
        self.started_at = time.time()
        self.core.start(self.started_at)
        self._carry(self.core.take_outputs())
        self._refresh_gauges()

    def stop(self) -> None:
        """Stop feeding the core and flush what it asked to persist (graceful shutdown)."""
        self.stopping = True
        self._inbox.clear()
        self._client_queues.clear()
        self.metrics.requests_in_flight.clear()
        self._inbox_bytes = self._requests = 0
        self._from_peer.clear()
        self._from_sink.clear()
        self._room.set()
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        self._held.clear()  # outputs not yet sent stay unsent; their records are flushed below
        self._held_replies.clear()
        self._disk.shutdown(wait=True)  # a group being written finishes first (groups stay in order)
        try:
            if self.storage.dirty:
                self.storage.sync()
        except OSError as exc:
            self.events.error("log_flush_failed", error=str(exc))

    # ---------------------------------------------------------------- inputs

    def deliver_peer(self, messages: list[bytes], peer: int = -1) -> None:
        """Serialised PeerMessages from an authenticated peer link (``peer``: its id, for fairness)."""
        if self.stopping:
            return
        inbox = self._inbox
        for m in messages:
            inbox.append(("m", m, peer))
            self._inbox_bytes += len(m)
        self._from_peer[peer] = self._from_peer.get(peer, 0) + len(messages)
        self._schedule()

    def _over(self, divisor: int) -> bool:
        queued = len(self._inbox) + self._requests
        return queued > INBOX_HIGH // divisor or self._inbox_bytes > INBOX_HIGH_BYTES // divisor

    def backlogged(self, peer: int | None = None) -> bool:
        """Should this peer's reader stop reading: the inbox is over its high marks, or this peer
        has more than its share queued (so f faulty peers cannot crowd out the honest ones)."""
        return self._over(1) or (peer is not None and self._from_peer.get(peer, 0) > PEER_INBOX_SHARE)

    async def drained(self, peer: int | None = None) -> None:
        """Wait until the inbox is down to half its marks and ``peer``'s share to half (or the node stops)."""
        while not self.stopping and (
            self._over(2) or (peer is not None and self._from_peer.get(peer, 0) > PEER_INBOX_SHARE // 2)
        ):
            self._room.clear()
            await self._room.wait()

    def submit_request(self, raw: bytes, sink: Sink) -> None:
        """A signed client request from a session; the reply (or an error) goes back to ``sink``."""
        if self.stopping:
            return
        source = getattr(sink, "source", "")
        queue = self._client_queues.get(source)
        if queue is None:
            queue = self._client_queues[source] = deque()
        queue.append((raw, sink, time.monotonic()))
        self._inbox_bytes += len(raw)
        self._requests += 1
        self._from_sink[sink] = self._from_sink.get(sink, 0) + 1
        self._schedule()

    def requests_backlogged(self, sink: Sink) -> bool:
        """Should this session's reader stop reading: it has SESSION_INBOX requests queued, or all
        sessions together CLIENT_INBOX_HIGH, or the inbox is over its marks."""
        return (
            self._from_sink.get(sink, 0) >= SESSION_INBOX
            or self._requests >= CLIENT_INBOX_HIGH
            or self._over(1)
        )

    async def request_room(self, sink: Sink) -> None:
        """Wait until ``sink`` may queue another request (or the node stops)."""
        while not self.stopping and self.requests_backlogged(sink):
            self._room.clear()
            await self._room.wait()

    def subscribe(self, key: bytes, sink: Sink) -> bool:
        subs = self._subscribers.setdefault(key, set())
        if sink not in subs and len(subs) >= MAX_SUBSCRIPTIONS_PER_KEY:
            return False
        subs.add(sink)
        self._subscribed.setdefault(sink, set()).add(key)
        return True

    def claim(self, route: Route, sink: Sink) -> str | None:
        """Replies for ``route`` go to ``sink`` from now on (the claim's signature was verified by
        the caller). A later claim on another stream takes the route over. Returns why it was
        refused, or None."""
        mine = self._claims.held_by(sink)
        if route not in mine and len(mine) >= MAX_CLAIMS_PER_SESSION:
            return f"at most {MAX_CLAIMS_PER_SESSION} claimed sessions per stream"
        if self._claims.get(route) is None:
            if self._claims.count_key(route[0]) >= MAX_CLAIMS_PER_KEY:
                return f"at most {MAX_CLAIMS_PER_KEY} claimed sessions per client key"
            if len(self._claims) >= MAX_CLAIMS:
                return "too many claimed sessions on this replica"
        self._claims.put(route, sink)
        return None

    def forget(self, sink: Sink) -> None:
        """A session ended: drop its routes, claims and subscriptions."""
        self._routes.drop(sink)
        self._claims.drop(sink)
        for key in self._subscribed.pop(sink, ()):
            subs = self._subscribers.get(key)
            if subs is not None:
                subs.discard(sink)
                if not subs:
                    del self._subscribers[key]

    def _schedule(self) -> None:
        if not self._scheduled and self._loop is not None:
            self._scheduled = True
            self._loop.call_soon(self._process)

    def _process(self) -> None:
        """One burst: feed queued inputs to the core, then carry out all outputs once."""
        self._scheduled = False
        if self.stopping:
            return
        start = time.perf_counter()
        v_seconds = self._timing.seconds if self._timing else 0.0
        v_count = self._timing.count if self._timing else 0
        core = self.core
        n = 0
        deadline = start + BURST_SECONDS
        clock = time.perf_counter
        while n < BURST_INPUTS:
            kind, item, extra, arrived = self._next_input()
            if not kind:
                break
            n += 1
            try:
                if kind == "m":
                    core.on_message(item, time.time())  # type: ignore[arg-type]
                elif kind == "r":
                    self._on_request(item, extra, arrived)  # type: ignore[arg-type]
                else:
                    core.on_timer(item, time.time())  # type: ignore[arg-type]
            except Exception as exc:
                # The core turns every input it cannot decode or validate into a counted drop, so an
                # exception here comes from inside a validated transition: the core's state is now
                # unknown. Stop (non-zero exit) and let the restart rebuild it from the log; never
                # carry on, and carry out nothing of this burst.
                self.metrics.core_errors.inc()
                self.events.error("core_error", exc=True, input=kind)
                self._fail(f"core exception on {kind!r} input: {type(exc).__name__}: {exc}")
                return
            if clock() > deadline:  # every input: one input may take milliseconds (a big message)
                break
        try:
            self._carry(core.take_outputs())
        except FatalError:
            return
        if self._inbox or self._client_queues:
            self._schedule()
        if n:
            self._room.set()  # waiting readers re-check their own marks
        if self._timing is not None:
            self.metrics.verify_seconds.observe(self._timing.seconds - v_seconds)
            self.metrics.verifications.inc(self._timing.count - v_count)
        self.metrics.burst_inputs.observe(n)
        self.metrics.burst_seconds.observe(time.perf_counter() - start)
        self._refresh_gauges()

    def _next_input(self) -> tuple[str, object, object, float]:
        """The next input for the core ("" when none waits). Peer messages and timers come first,
        but at most ``PEER_RUN`` in a row while client requests wait; client requests are taken one
        per source address in turn. Why: a flood of client requests (keys are free; addresses are
        not) must neither delay the protocol messages that finish honest clients' batches nor
        queue honest clients behind it, and a faulty replica's messages (bounded per peer) must
        not starve clients."""
        queues = self._client_queues
        if self._inbox and (not queues or self._peer_run < PEER_RUN):
            self._peer_run = self._peer_run + 1 if queues else 0
            kind, item, extra = self._inbox.popleft()
            if kind == "m":
                self._inbox_bytes -= len(item)  # type: ignore[arg-type]
                left = self._from_peer[extra] - 1  # type: ignore[index]
                if left:
                    self._from_peer[extra] = left  # type: ignore[index]
                else:
                    del self._from_peer[extra]  # type: ignore[arg-type]
            return kind, item, extra, 0.0
        if not queues:
            return "", None, None, 0.0
        self._peer_run = 0
        source = next(iter(queues))
        queue = queues.pop(source)
        raw, sink, arrived = queue.popleft()
        if queue:
            queues[source] = queue  # to the back of the turn
        self._inbox_bytes -= len(raw)
        self._requests -= 1
        left = self._from_sink[sink] - 1
        if left:
            self._from_sink[sink] = left
        else:
            del self._from_sink[sink]
        return "r", raw, sink, arrived

    def _on_request(self, raw: bytes, sink: Sink, arrived: float) -> None:
        meta = request_meta(raw)
        kind = "bad" if meta is None else "read" if meta[1].read_only else "ordered"
        self.metrics.client_requests.labels(kind).inc()
        error = self.core.on_request(raw, time.time())
        if error is None and meta is not None and not meta[1].read_only:
            error, floor = self._stale(meta[0], meta[1].timestamp)
        else:
            floor = 0
        if error is not None:
            self.metrics.client_errors.inc()
            refusal = spb.RequestError(request_digest=sha256(raw), message=error, min_timestamp=floor)
            sink.send(spb.ServerFrame(error=refusal).SerializeToString())
            return
        if meta is not None:
            route, body = meta
            self.metrics.requests_in_flight.arrived((*route, body.timestamp), kind, arrived)
            self._routes.put(meta[0], sink)  # most recently used last
            if len(self._routes) > MAX_ROUTES:
                self._routes.evict_oldest()

    def _stale(self, route: Route, timestamp: int) -> tuple[str | None, int]:
        """A request the core accepted without a word: is it one it dropped as stale (timestamp
        below its session's last executed one, so it can never run)? Then say so, and what would do."""
        entry = self.replica.clients.get(route)
        if entry is None or timestamp >= entry.last_timestamp:
            return None, 0
        text = f"stale timestamp {timestamp}: this session already executed timestamp {entry.last_timestamp}"
        return text, min(entry.last_timestamp + 1, MAX_U64)

    # ---------------------------------------------------------------- timers

    def _set_timer(self, name: str, at: float) -> None:
        old = self._timers.pop(name, None)
        if old is not None:
            old.cancel()
        loop = self._loop
        assert loop is not None
        delay = max(0.0, at - time.time())
        self._timers[name] = loop.call_at(loop.time() + delay, self._fire, name, at)

    def _fire(self, name: str, at: float) -> None:
        self._timers.pop(name, None)
        if self.stopping:
            return
        if time.time() < at:  # the loop clock ran ahead of the wall clock: wait for the rest
            self._set_timer(name, at)
            return
        self._inbox.append(("t", name, None))
        self._schedule()

    # ---------------------------------------------------------------- outputs

    def _durable(self, release: Callable[[], None], reply: bool = False) -> None:
        """Carry out ``release`` (an output leaving the process) once every record appended so far
        is durable (for a reply: every record but the lazy ones, see ``Persist``): now if it already
        is, else after the group commit that covers it. Outputs keep their order: while any is
        waiting, later ones of the same sort (peer messages, replies) wait behind it."""
        need, held = (self._needed, self._held_replies) if reply else (self._appended, self._held)
        if not held and self._synced >= need:
            release()
            return
        held.append((need, release))
        self._kick_sync()

    def _kick_sync(self) -> None:
        """Start a group commit of everything appended, on the disk thread, unless one is running.
        The event loop goes on meanwhile (new input, new records for the next group)."""
        if self._syncing or self.stopping or not self.storage.dirty:
            return
        try:
            group = self.storage.take_group()
        except OSError as exc:
            self._fail(f"log sync failed: {exc}")
            return
        self._syncing = True
        upto = self._appended
        loop = self._loop
        assert loop is not None
        fut = loop.run_in_executor(self._disk, self.storage.write_group, group)
        fut.add_done_callback(lambda f: self._group_done(f, upto))

    def _group_done(self, fut: asyncio.Future[float], upto: int) -> None:
        self._syncing = False
        if self.stopping:
            return
        exc = fut.exception()
        if exc is not None:
            self._held.clear()
            self._held_replies.clear()
            self._fail(f"log sync failed: {exc}")
            return
        self.metrics.fsync_seconds.observe(fut.result())
        self._synced = upto
        for held in (self._held, self._held_replies):
            while held and held[0][0] <= upto:
                _, release = held.popleft()
                release()
        if self._held or self._held_replies:
            self._kick_sync()

    def _fail(self, reason: str) -> None:
        self.events.error("fatal", reason=reason)
        self.stopping = True
        if self.failed is not None and not self.failed.done():
            self.failed.set_result(reason)

    def _carry(self, outs: list[Output]) -> None:
        for out in outs:
            if isinstance(out, Send):
                self._durable(partial(self.peers.send, out.to, out.data))
            elif isinstance(out, Persist):
                try:
                    self.storage.append(out.record)
                except OSError as exc:  # an earlier write failed: the log refuses more
                    self._fail(f"log append failed: {exc}")
                    raise FatalError(str(exc)) from None
                self._appended += 1
                if not out.lazy:
                    self._needed = self._appended
            elif isinstance(out, ToClient):
                reply = partial(self._reply, out.client_key, out.session, out.data, out.timestamp)
                self._durable(reply, reply=True)
            elif isinstance(out, SetTimer):
                self._set_timer(out.name, out.at)
            elif isinstance(out, CancelTimer):
                handle = self._timers.pop(out.name, None)
                if handle is not None:
                    handle.cancel()
            elif isinstance(out, Committed):
                self._on_committed(out)
            elif isinstance(out, ViewEntered):
                self.metrics.view_changes.inc()
                self.events.info("view_entered", primary=self.cluster.primary(out.view))
            elif isinstance(out, StateInstalled):
                self.metrics.state_transfers.inc()
                if self._on_state_installed is None:
                    self.events.info("state_installed", checkpoint=out.seq)
                else:
                    frozen = self._on_state_installed()
                    self.events.info("state_installed", checkpoint=out.seq, gc_frozen_objects=frozen)
            elif isinstance(out, RecoveryStarted):
                # Durable before anything the core says next: a restart must not trust this log.
                self.events.error("log_rolled_back", reason=out.reason)
                try:
                    self.storage.mark_recovering()
                except OSError as exc:
                    self._fail(f"cannot mark the data dir recovering: {exc}")
                    raise FatalError(str(exc)) from None
            elif isinstance(out, Evidence):
                self.metrics.evidence.inc()
                self.events.warning("evidence", culprit=out.replica, what=out.what)

    def _reply(self, key: bytes, session: int, data: bytes, timestamp: int) -> None:
        """To the session that proved it owns (key, session), and to the one the request came on."""
        route = (key, session)
        claimed = self._claims.get(route)
        arrived = self._routes.get(route)
        if claimed is not None or arrived is not None:
            frame = _reply_frame(data)
            if claimed is not None:
                claimed.send(frame)
            if arrived is not None and arrived is not claimed:
                arrived.send(frame)
            self.metrics.client_replies.inc()
            self.metrics.requests_in_flight.replied((key, session, timestamp))

    def _push(self, subs: set[Sink], frame: bytes) -> None:
        for sink in list(subs):
            sink.send(frame)
        self.metrics.pushes.inc(len(subs))

    def _on_committed(self, c: Committed) -> None:
        m = self.metrics
        m.committed_batches.inc()
        m.committed_requests.inc(len(c.executed))
        if self.events.enabled(10):
            self.events.debug("committed", batch_seq=c.seq, requests=len(c.executed), digest=c.digest[:8])
        if c.state_digest is not None:
            self.events.debug("checkpoint", checkpoint=c.seq, state_digest=c.state_digest[:8])
        if not self._subscribers:
            return
        for ev in c.app_events:
            key = getattr(ev, "recipient_key", None)
            subs = self._subscribers.get(key) if isinstance(key, bytes) else None
            if not subs:
                continue
            env = seal_push(
                self.signer,
                self.id,
                self.cluster.cluster_id,
                key,  # type: ignore[arg-type]
                str(getattr(ev, "recipient", "")),
                int(getattr(ev, "message_id", 0)),
                int(getattr(ev, "seq", c.seq)),
            )
            frame = spb.ServerFrame(push=env).SerializeToString()
            self._durable(partial(self._push, subs, frame))  # names a committed message: durable first

    def _refresh_gauges(self) -> None:
        r = self.replica
        m = self.metrics
        m.view.set(r.view)
        m.view_changing.set(1 if r.view_changing else 0)
        m.last_executed.set(r.last_executed)
        m.checkpoint_seq.set(r.h)
        m.log_bytes.set(self.storage.size_bytes)
        rejected = r.rejected_inputs
        if rejected > self._rejected_seen:
            m.core_rejected.inc(rejected - self._rejected_seen)
        self._rejected_seen = rejected
