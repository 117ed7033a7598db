"""The driver in isolation (a scripted core, a recording log, no network): outputs are carried out in
order, consecutive records share one group commit that is durable before the next output leaves, timers fire
from the loop clock, replies and pushes reach only the sessions entitled to them."""

from __future__ import annotations

import asyncio
import struct
import time

import pytest

from bft.app.chat import NewMessage
from bft.core.clients import ClientTable
from bft.core.config import ClusterInfo
from bft.core.events import (
    CancelTimer,
    CommitRecord,
    Committed,
    Output,
    Persist,
    Send,
    SetTimer,
    ToClient,
    ViewRecord,
)
from bft.crypto import Ed25519Signer, Ed25519Verifier, cluster_id_from
from bft.faults import LinkPolicy
from bft.pb.bftchat.v1 import service_pb2 as spb
from bft.runtime.handshake import check_push
from bft.runtime.logs import EventLog
from bft.runtime.metrics import Metrics
from bft.runtime.node import MAX_CLAIMS_PER_SESSION, Node
from bft.runtime.peers import PeerLinks
from bft.wire import make_request

pytestmark = pytest.mark.timeout(30)

SIGNERS = [Ed25519Signer(bytes([i + 1]) * 32) for i in range(4)]
CLUSTER = ClusterInfo(tuple(s.public_key for s in SIGNERS), cluster_id_from(b"node test"))


class FakeReplica:
    """Stands in for the core: returns scripted outputs, records its inputs."""

    def __init__(self) -> None:
        self.script: list[Output] = []
        self.inputs: list[tuple[str, object]] = []
        self.view = 0
        self.last_executed = 0
        self.h = 0
        self.primary = 0
        self.view_changing = False
        self.recovering = False
        self.evidence: list[object] = []
        self.clients = ClientTable(16)
        self.rejected_inputs = 0
        self.explode = False

    def start(self, now: float) -> None:
        self.inputs.append(("start", now))

    def on_message(self, raw: bytes, now: float) -> None:
        self.inputs.append(("message", raw))
        if self.explode:
            raise struct.error("required argument is not within range")

    def on_request(self, raw: bytes, now: float, forwarded: bool = False) -> str | None:
        self.inputs.append(("request", raw))
        return "refused" if raw.endswith(b"bad") else None

    def on_timer(self, name: str, now: float) -> None:
        self.inputs.append(("timer", name))

    def take_outputs(self) -> list[Output]:
        out, self.script = self.script, []
        return out

    def state_digest(self) -> bytes:
        return bytes(32)


class RecordingLog:
    def __init__(self, trace: list[str]) -> None:
        self.trace = trace
        self.pending = 0

    @property
    def dirty(self) -> bool:
        return self.pending > 0

    @property
    def size_bytes(self) -> int:
        return 0

    def append(self, record: object) -> None:
        self.pending += 1
        self.trace.append("append")

    def take_group(self) -> int:
        self.trace.append(f"sync{self.pending}")
        group, self.pending = self.pending, 0
        return group

    def write_group(self, group: int) -> float:
        return 0.001

    def sync(self) -> float:
        return self.write_group(self.take_group())

    def close(self) -> None:
        pass

    def mark_recovering(self) -> None:
        self.trace.append("recovering")


class RecordingPeers(PeerLinks):
    def __init__(self, trace: list[str]) -> None:
        super().__init__(0, Metrics(0))
        self.trace = trace

    def send(self, to: int | None, data: bytes) -> None:
        if to is None or self.policy.allows(to):
            self.trace.append(f"send{to}:{data.decode()}")


class Sink:
    def __init__(self, trace: list[str], name: str) -> None:
        self.trace = trace
        self.name = name
        self.frames: list[spb.ServerFrame] = []

    def send(self, frame: bytes) -> None:
        self.frames.append(spb.ServerFrame.FromString(frame))
        self.trace.append(f"{self.name}:{self.frames[-1].WhichOneof('kind')}")


def make_node(trace: list[str]) -> tuple[Node, FakeReplica]:
    core = FakeReplica()
    node = Node(
        replica_id=0,
        cluster=CLUSTER,
        signer=SIGNERS[0],
        core=core,  # type: ignore[arg-type]
        storage=RecordingLog(trace),
        peers=RecordingPeers(trace),
        metrics=Metrics(0),
        events=EventLog(0),
    )
    return node, core


def test_records_are_synced_once_before_the_next_output_leaves() -> None:
    async def scenario() -> list[str]:
        trace: list[str] = []
        node, core = make_node(trace)
        node.start()
        user = Ed25519Signer.generate()
        raw = make_request(user, CLUSTER.cluster_id, 7, 1, b"op")
        sink = Sink(trace, "client")
        core.script = [
            Persist(ViewRecord(1)),
            Persist(ViewRecord(2)),
            Send(None, b"a"),
            Send(2, b"b"),
            Persist(ViewRecord(3)),
            ToClient(user.public_key, 7, 1, b"reply"),
            Persist(ViewRecord(4)),
        ]
        node.submit_request(raw, sink)
        await asyncio.sleep(0.01)
        assert core.inputs[-1] == ("request", raw)
        return trace

    trace = asyncio.run(scenario())
    # The first send starts a group commit of records 1-2 on the disk thread; the loop goes on
    # (records 3-4 are appended meanwhile) and every output waits, in order, for the group that
    # covers what was appended before it.
    assert trace == [
        "append",
        "append",
        "sync2",
        "append",
        "append",
        "sendNone:a",
        "send2:b",
        "sync2",
        "client:reply",
    ]


def test_a_reply_does_not_wait_for_the_execution_record_but_a_peer_message_does() -> None:
    """Issue 13's critical path: the execution record (``Persist.lazy``) is not synced before the
    reply, so a request's latency loses one fsync; a later peer message (e.g. our CHECKPOINT) still
    waits for it, and a reply still waits for a non-lazy record appended before it."""

    async def scenario() -> list[str]:
        trace: list[str] = []
        node, core = make_node(trace)
        node.start()
        user = Ed25519Signer.generate()
        raw = make_request(user, CLUSTER.cluster_id, 7, 1, b"op")
        sink = Sink(trace, "client")
        core.script = [
            Persist(CommitRecord(1, 0, bytes(32), b"proof"), lazy=True),
            ToClient(user.public_key, 7, 1, b"reply"),
            Send(None, b"checkpoint"),
            Persist(ViewRecord(2)),
            ToClient(user.public_key, 7, 1, b"reply"),
        ]
        node.submit_request(raw, sink)
        await asyncio.sleep(0.01)
        return trace

    trace = asyncio.run(scenario())
    assert trace == [
        "append",
        "client:reply",  # the lazy execution record is not waited for
        "sync1",
        "append",
        "sendNone:checkpoint",
        "sync1",
        "client:reply",
    ]


def test_the_loop_keeps_working_during_a_slow_fsync_and_a_failed_one_stops_the_node() -> None:
    """While a group is being written (here: held for 0.2 s), input is still processed and its
    records go into the next group; an output never overtakes the group it depends on. A write
    error stops the node (exit path) and nothing that depended on the lost group is sent."""

    class SlowLog(RecordingLog):
        def __init__(self, trace: list[str]) -> None:
            super().__init__(trace)
            self.fail = False

        def write_group(self, group: int) -> float:
            time.sleep(0.2)
            if self.fail:
                raise OSError(5, "Input/output error")
            self.trace.append(f"durable{group}")
            return 0.2

    async def scenario() -> tuple[list[str], Node]:
        trace: list[str] = []
        node, core = make_node(trace)
        log = SlowLog(trace)
        node.storage = log
        node.start()
        core.script = [Persist(ViewRecord(1)), Send(1, b"a")]
        node.deliver_peer([b"m1"])
        await asyncio.sleep(0.05)  # the group of record 1 is being written
        core.script = [Persist(ViewRecord(2)), Send(1, b"b")]
        node.deliver_peer([b"m2"])
        await asyncio.sleep(0.05)
        assert ("message", b"m2") in core.inputs  # processed while the disk was busy
        assert "send1:a" not in trace
        await asyncio.sleep(0.5)
        log.fail = True
        core.script = [Persist(ViewRecord(3)), Send(1, b"c")]
        node.deliver_peer([b"m3"])
        await asyncio.sleep(0.4)
        assert node.failed is not None and node.failed.done()
        return trace, node

    trace, node = asyncio.run(scenario())
    first = ["append", "sync1", "append", "durable1", "send1:a"]  # record 2 joined while 1 was written
    second = ["sync1", "durable1", "send1:b"]
    assert trace == [*first, *second, "append", "sync1"]  # the third group failed: no send1:c
    assert "send1:c" not in trace
    assert node.stopping


def test_refused_requests_get_an_error_and_shutdown_flushes() -> None:
    async def scenario() -> tuple[list[str], Sink]:
        trace: list[str] = []
        node, core = make_node(trace)
        node.start()
        sink = Sink(trace, "client")
        node.submit_request(b"xbad", sink)
        await asyncio.sleep(0.01)
        core.script = [Persist(ViewRecord(1))]
        node.deliver_peer([b"m1", b"m2"])
        await asyncio.sleep(0.01)
        node.stop()
        node.deliver_peer([b"after stop"])
        await asyncio.sleep(0.01)
        assert ("message", b"after stop") not in core.inputs
        assert [i for i in core.inputs if i[0] == "message"] == [("message", b"m1"), ("message", b"m2")]
        return trace, sink

    trace, sink = asyncio.run(scenario())
    assert sink.frames[0].error.message == "refused"
    assert trace == ["client:error", "append", "sync1"]


def test_timers_fire_once_and_cancel() -> None:
    async def scenario() -> list[tuple[str, object]]:
        trace: list[str] = []
        node, core = make_node(trace)
        node.start()
        now = time.time()
        core.script = [SetTimer("a", now + 0.05), SetTimer("b", now + 0.05), SetTimer("a", now + 0.1)]
        node.deliver_peer([b"x"])
        await asyncio.sleep(0.01)
        core.script = [CancelTimer("b")]
        node.deliver_peer([b"y"])
        await asyncio.sleep(0.2)
        return core.inputs

    inputs = asyncio.run(scenario())
    assert [i for i in inputs if i[0] == "timer"] == [("timer", "a")]


def test_replies_and_pushes_reach_only_their_sessions() -> None:
    async def scenario() -> tuple[Sink, Sink, Sink]:
        trace: list[str] = []
        node, core = make_node(trace)
        node.start()
        alice, bob = Ed25519Signer.generate(), Ed25519Signer.generate()
        s_alice, s_bob, s_watch = Sink(trace, "alice"), Sink(trace, "bob"), Sink(trace, "watcher")
        node.submit_request(make_request(alice, CLUSTER.cluster_id, 1, 1, b"op"), s_alice)
        node.submit_request(make_request(bob, CLUSTER.cluster_id, 2, 1, b"op"), s_bob)
        await asyncio.sleep(0.01)
        assert node.subscribe(alice.public_key, s_watch)
        event = NewMessage("alice", alice.public_key, 5, 9)
        core.script = [
            ToClient(alice.public_key, 1, 1, b"for alice"),
            ToClient(bob.public_key, 2, 1, b"for bob"),
            ToClient(bob.public_key, 3, 1, b"no session"),
            Committed(9, 0, b"d", (), None, (event,)),
        ]
        node.deliver_peer([b"x"])
        await asyncio.sleep(0.01)
        node.forget(s_watch)
        core.script = [Committed(10, 0, b"d", (), None, (NewMessage("alice", alice.public_key, 6, 10),))]
        node.deliver_peer([b"y"])
        await asyncio.sleep(0.01)
        return s_alice, s_bob, s_watch

    s_alice, s_bob, s_watch = asyncio.run(scenario())
    assert [f.reply for f in s_alice.frames] == [b"for alice"]
    assert [f.reply for f in s_bob.frames] == [b"for bob"]
    assert len(s_watch.frames) == 1
    push = check_push(s_watch.frames[0].push, CLUSTER.cluster_id, CLUSTER.public_keys, Ed25519Verifier())
    assert (push.replica, push.recipient, push.message_id, push.seq) == (0, "alice", 5, 9)


def test_a_full_inbox_makes_peer_readers_wait_until_half_of_it_is_done() -> None:
    """The peer listener stops reading a connection while the node is backlogged (TCP then pushes
    back on the sender) and resumes once the inbox is down to half the high mark."""
    from bft.runtime.node import INBOX_HIGH

    async def scenario() -> tuple[bool, bool, int]:
        node, core = make_node([])
        node.start()
        node.deliver_peer([b"m"] * (INBOX_HIGH + 100))
        backlogged = node.backlogged()
        waiter = asyncio.ensure_future(node.drained())
        await asyncio.sleep(0)
        early = waiter.done()  # nothing processed yet: still waiting
        await asyncio.wait_for(waiter, 10)
        return backlogged, early, len([i for i in core.inputs if i[0] == "message"])

    backlogged, early, processed = asyncio.run(scenario())
    assert backlogged and not early
    assert processed >= INBOX_HIGH // 2 + 100  # it returns only once the inbox is down to half


def test_link_policy_is_a_seam() -> None:
    trace: list[str] = []
    node, _ = make_node(trace)
    node.link_policy = LinkPolicy(drop_to={2})
    assert node.peers.policy.drop_to == {2}
    node.peers.send(2, b"dropped")
    node.peers.send(1, b"kept")
    assert trace == ["send1:kept"]


def test_claimed_sessions_get_their_replies_and_lose_them_with_the_stream() -> None:
    """A reply goes to the stream that claimed its (key, session) and to the one its request came
    on; a later claim elsewhere takes the route over; the route goes with the stream."""

    async def scenario() -> tuple[Sink, Sink, Sink, list[str | None]]:
        trace: list[str] = []
        node, core = make_node(trace)
        node.start()
        alice = Ed25519Signer.generate()
        claimed, arrived, later = Sink(trace, "claimed"), Sink(trace, "arrived"), Sink(trace, "later")
        refusals = [node.claim((alice.public_key, 1), claimed)]
        node.submit_request(make_request(alice, CLUSTER.cluster_id, 1, 1, b"op"), arrived)
        await asyncio.sleep(0.01)
        core.script = [ToClient(alice.public_key, 1, 1, b"both")]
        node.deliver_peer([b"x"])
        await asyncio.sleep(0.01)
        node.forget(arrived)
        refusals.append(node.claim((alice.public_key, 1), later))  # a reconnect claims again
        core.script = [
            ToClient(alice.public_key, 1, 2, b"later only"),
            ToClient(alice.public_key, 2, 1, b"x"),
        ]
        node.deliver_peer([b"y"])
        await asyncio.sleep(0.01)
        node.forget(later)
        core.script = [ToClient(alice.public_key, 1, 3, b"nobody")]
        node.deliver_peer([b"z"])
        await asyncio.sleep(0.01)
        for s in range(2, 3 + MAX_CLAIMS_PER_SESSION):  # the route of session 1 moved to `later`
            refusals.append(node.claim((alice.public_key, s), claimed))
        return claimed, arrived, later, refusals

    claimed, arrived, later, refusals = asyncio.run(scenario())
    assert [f.reply for f in claimed.frames] == [b"both"]
    assert [f.reply for f in arrived.frames] == [b"both"]
    assert [f.reply for f in later.frames] == [b"later only"]
    assert refusals[:-1] == [None] * (len(refusals) - 1)
    assert refusals[-1] == f"at most {MAX_CLAIMS_PER_SESSION} claimed sessions per stream"


def test_a_request_below_its_sessions_last_timestamp_is_refused_as_stale() -> None:
    """The core drops it without a word; the node says so, naming the smallest timestamp it takes.
    The timestamp already executed (a retransmission) and one-round reads are not refused."""

    async def scenario() -> Sink:
        trace: list[str] = []
        node, core = make_node(trace)
        node.start()
        alice = Ed25519Signer.generate()
        core.clients.record((alice.public_key, 7), 10, 3, 0, b"")
        sink = Sink(trace, "client")
        for ts, read_only in ((5, False), (10, False), (11, False), (1, True)):
            node.submit_request(
                make_request(alice, CLUSTER.cluster_id, 7, ts, b"op", read_only=read_only), sink
            )
        other = make_request(alice, CLUSTER.cluster_id, 8, 1, b"op")  # another session: not stale
        node.submit_request(other, sink)
        await asyncio.sleep(0.01)
        text = node.metrics.registry.get_sample_value("bft_client_requests_total", {"kind": "ordered"})
        assert text == 4
        return sink

    sink = asyncio.run(scenario())
    assert [f.WhichOneof("kind") for f in sink.frames] == ["error"]
    err = sink.frames[0].error
    assert err.min_timestamp == 11 and "stale timestamp 5" in err.message


def test_an_exception_inside_the_core_stops_the_replica_and_nothing_of_its_burst_leaves() -> None:
    """A core transition that raises leaves the core in an unknown state: the node stops (the exit
    path, non-zero), logs it and counts it, carries out nothing of that burst and takes no more
    input. Inputs the core dropped as invalid are only counted."""

    async def scenario() -> tuple[list[str], Node, FakeReplica]:
        trace: list[str] = []
        node, core = make_node(trace)
        node.start()
        core.rejected_inputs = 3  # the core dropped three bad inputs: a metric, nothing else
        core.script = [Send(1, b"fine")]
        node.deliver_peer([b"m1"])
        await asyncio.sleep(0.01)
        assert node.failed is not None and not node.failed.done()
        core.explode = True
        core.script = [Send(1, b"half-done")]
        node.deliver_peer([b"boom", b"after"])
        await asyncio.sleep(0.01)
        node.deliver_peer([b"later"])
        await asyncio.sleep(0.01)
        return trace, node, core

    trace, node, core = asyncio.run(scenario())
    assert node.failed is not None and node.failed.done()
    assert "core exception" in node.failed.result()
    assert node.stopping
    assert trace == ["send1:fine"]
    assert [raw for kind, raw in core.inputs if kind == "message"] == [b"m1", b"boom"]
    assert node.metrics.core_errors._value.get() == 1
    assert node.metrics.core_rejected._value.get() == 3


def _latency_count(node: Node, kind: str = "ordered") -> float:
    value = node.metrics.registry.get_sample_value("bft_request_seconds_count", {"kind": kind})
    assert value is not None  # the series exists from the start
    return value


def test_request_latency_is_timed_from_arrival_to_reply_in_a_bounded_table() -> None:
    async def scenario() -> None:
        trace: list[str] = []
        node, core = make_node(trace)
        node.start()
        alice = Ed25519Signer.generate()
        sink = Sink(trace, "alice")
        assert _latency_count(node) == 0 and _latency_count(node, "read") == 0
        node.submit_request(make_request(alice, CLUSTER.cluster_id, 1, 7, b"op"), sink)
        await asyncio.sleep(0.05)  # the reply comes 50 ms after the arrival
        assert len(node.metrics.requests_in_flight) == 1
        core.script = [ToClient(alice.public_key, 1, 7, b"done")]
        node.deliver_peer([b"x"])
        await asyncio.sleep(0.01)
        assert [f.reply for f in sink.frames] == [b"done"]
        assert _latency_count(node) == 1 and len(node.metrics.requests_in_flight) == 0
        total = node.metrics.registry.get_sample_value("bft_request_seconds_sum", {"kind": "ordered"})
        assert total is not None and total >= 0.04
        # A reply for a request not timed here (another timestamp) observes nothing.
        core.script = [ToClient(alice.public_key, 1, 8, b"other")]
        node.deliver_peer([b"y"])
        await asyncio.sleep(0.01)
        assert _latency_count(node) == 1
        # Requests that never get a reply do not pile up: the oldest are dropped past the bound.
        limit = 3
        node.metrics.requests_in_flight._limit = limit
        for ts in range(10, 16):
            node.submit_request(make_request(alice, CLUSTER.cluster_id, 1, ts, b"op"), sink)
        await asyncio.sleep(0.01)
        assert len(node.metrics.requests_in_flight) == limit
        core.script = [ToClient(alice.public_key, 1, 10, b"old"), ToClient(alice.public_key, 1, 15, b"new")]
        node.deliver_peer([b"z"])
        await asyncio.sleep(0.01)
        assert _latency_count(node) == 2  # 10 was dropped from the table, 15 was timed
        node.stop()
        assert len(node.metrics.requests_in_flight) == 0

    asyncio.run(scenario())


def test_client_requests_are_served_round_robin_by_source_address_and_peer_messages_go_first() -> None:
    """A flood of requests from one address (keys are free, addresses are not) must not queue
    another address's request behind it, nor the protocol messages that finish honest batches;
    and peer messages take at most PEER_RUN turns in a row while requests wait."""
    from bft.runtime.node import PEER_RUN

    async def scenario() -> list[tuple[str, object]]:
        trace: list[str] = []
        node, core = make_node(trace)
        node.start()
        flood = Sink(trace, "flood")
        flood.source = "127.0.0.2"  # type: ignore[attr-defined]
        honest = Sink(trace, "honest")
        honest.source = "127.0.0.1"  # type: ignore[attr-defined]
        keys = [Ed25519Signer.generate() for _ in range(40)]
        for i, k in enumerate(keys):
            node.submit_request(make_request(k, CLUSTER.cluster_id, 1, i + 1, b"flood"), flood)
        node.submit_request(make_request(keys[0], CLUSTER.cluster_id, 9, 1, b"honest"), honest)
        node.deliver_peer([b"peer%d" % i for i in range(10)], peer=1)
        await asyncio.sleep(0.05)
        return core.inputs[1:]

    inputs = asyncio.run(scenario())
    kinds = ["p" if k == "message" else "h" if b"honest" in raw else "f" for k, raw in inputs]  # type: ignore[operator]
    assert len(kinds) == 51
    # The honest request waits behind one flood request, not forty; the peer messages behind none.
    assert kinds.index("h") <= 2 * (PEER_RUN + 1)
    first_peer = kinds.index("p")
    assert first_peer <= 1
    assert kinds[: PEER_RUN * 3].count("p") >= PEER_RUN * 2  # peer messages go first, ...
    assert "p" * (PEER_RUN + 1) not in "".join(kinds)  # ... but never more than PEER_RUN in a row
