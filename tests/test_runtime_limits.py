"""Runtime limits in one process: the peer frame splitter refuses a frame of millions of tiny
messages after counting a bounded number, a peer's share of the inbox and a session's queued
requests make only their own reader wait, closing a session costs O(its own subscriptions), and
client session queues are bounded per session and in total."""

from __future__ import annotations

import asyncio

import pytest
from test_runtime_node import Sink, make_node

from bft.pb.bftchat.v1 import service_pb2 as spb
from bft.runtime.metrics import Metrics
from bft.runtime.node import PEER_INBOX_SHARE, SESSION_INBOX
from bft.runtime.peers import MAX_FRAME_MESSAGES, split_messages
from bft.runtime.server import SESSION_QUEUE_BYTES, SESSIONS_QUEUE_BYTES, ClientSession, QueueBudget
from bft.wire import WireError


def test_split_messages_matches_protobuf_and_bounds_the_count() -> None:
    msgs = [b"", b"a", bytes(300), bytes(range(256)) * 70]
    raw = spb.LinkUp(messages=msgs).SerializeToString()
    assert split_messages(raw) == msgs
    tiny = b"\x12\x01\x00" * (MAX_FRAME_MESSAGES + 1)
    with pytest.raises(WireError, match="more than"):
        split_messages(tiny)
    assert len(split_messages(b"\x12\x01\x00" * MAX_FRAME_MESSAGES)) == MAX_FRAME_MESSAGES
    for bad in (b"\x0a\x00", b"\x12\x05ab", b"\x12\xff\xff\xff\xff\xff\xff", b"\x12\x01a\x1a\x00"):
        with pytest.raises(WireError):
            split_messages(bad)


def test_one_peer_past_its_share_waits_alone() -> None:
    async def scenario() -> tuple[bool, bool, bool]:
        node, _ = make_node([])
        node.deliver_peer([b"m"] * (PEER_INBOX_SHARE + 1), peer=3)
        return node.backlogged(3), node.backlogged(2), node.backlogged()

    faulty, honest, total = asyncio.run(scenario())
    assert faulty and not honest and not total


def test_a_session_with_many_queued_requests_waits_alone() -> None:
    async def scenario() -> tuple[bool, bool, int]:
        trace: list[str] = []
        node, core = make_node(trace)
        node.start()
        greedy, other = Sink(trace, "greedy"), Sink(trace, "other")
        for _ in range(SESSION_INBOX):
            node.submit_request(b"r", greedy)
        waits, other_waits = node.requests_backlogged(greedy), node.requests_backlogged(other)
        await asyncio.wait_for(node.request_room(greedy), 5)  # the node works it off
        return waits, other_waits, len(core.inputs)

    waits, other_waits, processed = asyncio.run(scenario())
    assert waits and not other_waits and processed >= 1


class CountingSink:
    """A session stream that counts how often it is hashed (every set/dict lookup of it)."""

    hashes = 0

    def send(self, frame: bytes) -> None:
        pass

    def __hash__(self) -> int:
        CountingSink.hashes += 1
        return id(self) >> 4


def test_closing_a_session_costs_its_own_subscriptions_not_everyone_elses() -> None:
    node, _ = make_node([])
    sinks = [CountingSink() for _ in range(2000)]
    for i, s in enumerate(sinks):
        assert node.subscribe(i.to_bytes(32, "big"), s)
    CountingSink.hashes = 0
    node.forget(sinks[0])
    assert CountingSink.hashes < 20, CountingSink.hashes  # was one lookup per subscribed key
    assert len(node._subscribers) == 1999


def test_session_queues_are_bounded_per_session_and_in_total() -> None:
    metrics = Metrics(0)
    budget = QueueBudget()
    frame = bytes(1024 * 1024)
    sessions = [ClientSession(metrics, budget) for _ in range(64)]
    for s in sessions:  # nobody reads
        for _ in range(40):
            s.send(frame)
    assert all(s.queued <= SESSION_QUEUE_BYTES for s in sessions)
    assert budget.total <= 2 * SESSIONS_QUEUE_BYTES
    assert budget.total == sum(s.queued for s in sessions)
    # A session that reads still gets its frames while the others hold the budget.
    reader = ClientSession(metrics, budget)
    reader.send(b"reply")
    assert reader.take() == b"reply"
    for s in sessions:
        s.close()
    assert budget.total == 0
    sessions[0].send(b"late")  # an output for a stream that has ended costs nothing
    assert budget.total == 0


def test_claims_are_capped_per_client_key_and_counted_back_down() -> None:
    from bft.runtime.node import MAX_CLAIMS_PER_KEY, MAX_CLAIMS_PER_SESSION

    node, _ = make_node([])
    key, other = b"k" * 32, b"o" * 32
    sinks = [Sink([], f"s{i}") for i in range(MAX_CLAIMS_PER_KEY // MAX_CLAIMS_PER_SESSION + 1)]
    session = 0
    for sink in sinks[:-1]:
        for _ in range(MAX_CLAIMS_PER_SESSION):
            session += 1
            assert node.claim((key, session), sink) is None
    refused = node.claim((key, session + 1), sinks[-1])
    assert refused is not None and "per client key" in refused
    assert node.claim((other, 1), sinks[-1]) is None  # another key is not affected
    assert node.claim((key, 1), sinks[-1]) is None  # taking over an existing route is no new claim
    node.forget(sinks[0])
    assert node.claim((key, session + 1), sinks[-1]) is None  # room again
