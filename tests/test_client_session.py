"""The client library's session layer (``client.session.ClusterSession``) against real replicas.

Reply-route claims: the proof (unit) and the replica's answer on a raw stream. Primary-first
sending, seen from the replicas' ``bft_client_requests`` metric: in normal operation an ordered
request reaches the primary alone and backups still answer (over the claimed route); with the
primary silenced a request commits after the resend to all and the view change, and the next one
goes to the new primary. One key in two sessions at once. Stale timestamps (a clock that jumped
back, an evicted session's floor) recovered from by re-signing.

One n = 4 cluster with TLS and fault injection for the module; its client table holds only 4
sessions, so the eviction floor comes into play.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
import re
import time
import urllib.request
from collections.abc import Callable, Iterator

import grpc
import grpc.aio
import pytest
from cluster_helper import TEST_PARAMS, ChatUser, Cluster, RawSession, run
from test_byzantine_real import FAULT, fault

from bft.core.config import ClusterInfo
from bft.crypto import Ed25519Signer, Ed25519Verifier, cluster_id_from
from bft.keys import generate_user_key
from bft.pb.bftchat.v1 import protocol_pb2 as pb
from bft.pb.bftchat.v1 import service_pb2 as spb
from bft.quorums import Quorums
from bft.replies import CheckedReply, ReplyCollector
from bft.runtime.handshake import auth_proof, check_auth_proof, check_session_claim, session_claim
from bft.wire import WireError
from client import e2e
from client import session as session_module
from client.chat import ChatClient
from client.errors import FateUnknown
from client.session import (
    RESEND_AFTER,
    RESEND_MAX,
    ClusterSession,
    Repliers,
    RetransmitTimer,
)

CID = cluster_id_from(b"claims")
NONCE = bytes(range(32))

# ---- the claim proof ----------------------------------------------------------------------------


def test_the_retransmission_timeout_follows_the_sessions_latency_within_bounds() -> None:
    t = RetransmitTimer()
    assert t.timeout() == RESEND_AFTER  # nothing measured yet
    for _ in range(20):
        t.sample(0.01)  # a healthy cluster: milliseconds
    assert t.timeout() == RESEND_AFTER  # failover is not slowed down: the floor holds
    for _ in range(50):
        t.sample(1.5)  # overload: requests wait 1.5 s at the primary
    assert 1.5 < t.timeout() < 2.5  # resends only once a request is clearly late
    assert t.timeout(1) == min(2 * t.timeout(), RESEND_MAX)  # backoff between resends
    assert t.timeout(5) == RESEND_MAX
    for _ in range(50):
        t.sample(30.0)
    assert t.timeout() == RESEND_MAX  # never waits longer than the cap


def test_stand_ins_replace_suspect_designated_repliers_only_on_evidence() -> None:
    """``Repliers``, the rule the client library and the simulator share. A resend with no answer
    at all (the request was still being ordered: a silent primary, overload) suspects nobody;
    one where another replica answered suspects the designated repliers that did not; a suspect
    gets a stand-in outside the designated set, and a late matching reply clears it."""
    q = Quorums.for_n(7)
    rules = Repliers(q)
    designated = (2, 3, 4)
    assert rules.first_targets(designated, 0, range(7), 0.0) == (0,)
    assert rules.first_targets(designated, 0, [0, 1, 2, 3], 0.0) == (0, 1)  # 4's stream is down
    assert rules.first_targets(designated, 5, range(5), 0.0) is None  # the primary is not reachable
    votes = ReplyCollector.for_request(q, read_only=False)
    rules.on_resend(designated, votes, 1.0)
    assert not rules.suspects, "nothing answered: nothing is known about the repliers"
    ok = CheckedReply(2, 0, 9, pb.REPLY_OK, b"fine")
    votes.add(ok)
    rules.on_resend(designated, votes, 1.0)
    assert set(rules.suspects) == {3, 4}
    assert rules.first_targets(designated, 0, range(7), 2.0) == (0, 1, 5)
    rules.on_late(CheckedReply(3, 0, 9, pb.REPLY_OK, b"fine"), ok)
    rules.on_late(CheckedReply(4, 0, 9, pb.REPLY_OK, b"a lie"), ok)
    assert set(rules.suspects) == {4}
    assert rules.first_targets(designated, 0, range(7), 2.0) == (0, 1)
    assert rules.first_targets(designated, 0, range(7), 1.0 + session_module.SUSPECT_FOR) == (0,)


def test_a_claim_verifies_for_its_stream_only() -> None:
    user, other = Ed25519Signer.generate(), Ed25519Signer.generate()
    v = Ed25519Verifier()
    claim = session_claim(user, CID, 2, NONCE, 77)
    assert check_session_claim(claim, CID, 2, NONCE, v) == (user.public_key, 77)
    with pytest.raises(WireError):  # recorded on another stream
        check_session_claim(claim, CID, 2, bytes(32), v)
    with pytest.raises(WireError):  # shown to another replica
        check_session_claim(claim, CID, 3, NONCE, v)
    with pytest.raises(WireError):  # another cluster
        check_session_claim(claim, cluster_id_from(b"other"), 2, NONCE, v)
    moved = spb.SessionClaim()
    moved.CopyFrom(claim)
    moved.session = 78  # someone else's session under our signature
    with pytest.raises(WireError):
        check_session_claim(moved, CID, 2, NONCE, v)
    stolen = spb.SessionClaim(public_key=other.public_key, session=77, signature=claim.signature)
    with pytest.raises(WireError):  # another key's replies
        check_session_claim(stolen, CID, 2, NONCE, v)
    short = spb.SessionClaim(public_key=user.public_key[:31], session=77, signature=claim.signature)
    with pytest.raises(WireError):
        check_session_claim(short, CID, 2, NONCE, v)


def test_a_push_subscription_is_no_claim_and_a_claim_no_subscription() -> None:
    user = Ed25519Signer.generate()
    v = Ed25519Verifier()
    proof = auth_proof(user, CID, 2, NONCE)
    as_claim = spb.SessionClaim(public_key=user.public_key, session=0, signature=proof.signature)
    with pytest.raises(WireError):
        check_session_claim(as_claim, CID, 2, NONCE, v)
    claim = session_claim(user, CID, 2, NONCE, 0)
    with pytest.raises(WireError):
        check_auth_proof(
            spb.AuthProof(public_key=user.public_key, signature=claim.signature), CID, 2, NONCE, v
        )


# ---- a real cluster -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def c4(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    params = dataclasses.replace(TEST_PARAMS, client_table_capacity=4)
    with Cluster(tmp_path_factory.mktemp("session4"), 4, params=params) as c:
        for i in range(c.n):
            c.start(i, FAULT)
        c.wait_healthy(timeout=60)
        c.wait_agree(timeout=60)
        yield c


def requests_seen(c: Cluster) -> dict[int, float]:
    """Each replica's count of ordered client requests that reached it straight from a client."""
    out = {}
    for i in range(c.n):
        port = c.config.replicas[i].metrics_port
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        m = re.search(r'^bft_client_requests_total\{kind="ordered"\} (\S+)$', text, re.M)
        out[i] = float(m.group(1)) if m else 0.0
    return out


def replies_sent(c: Cluster) -> dict[int, float]:
    """Each replica's count of replies written to client session streams."""
    out = {}
    for i in range(c.n):
        port = c.config.replicas[i].metrics_port
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        m = re.search(r"^bft_client_replies_total (\S+)$", text, re.M)
        out[i] = float(m.group(1)) if m else 0.0
    return out


def pin_next_timestamp(client: ClusterSession, want: Callable[[tuple[int, ...]], bool]) -> int:
    """Make the session's next request use the first timestamp after its last (and the clock) whose designated
    repliers satisfy ``want`` (the clock is the session's own: tests inject one)."""
    ts = max(client._timestamp, session_module.wall_clock_us()) + 1
    while not want(client.cluster.quorums.repliers(client.key, client.session, ts)):
        ts += 1
    client._clock = lambda: ts
    return ts


def watch_replies(client: ClusterSession) -> set[int]:
    """The replicas that sent this session a reply frame (wraps ``on_reply``)."""
    seen: set[int] = set()
    inner = client.on_reply

    def on_reply(replica: int, data: bytes) -> None:
        seen.add(replica)
        inner(replica, data)

    client.on_reply = on_reply  # type: ignore[method-assign]
    return seen


async def claimed_everywhere(client: ClusterSession, timeout: float = 10.0) -> None:
    await client.wait_connected(timeout=timeout)
    for _ in range(int(timeout / 0.02)):
        if all(c.claimed for c in client.conns):
            return
        await asyncio.sleep(0.02)
    raise TimeoutError([(c.replica, c.claimed, c.claim_refused) for c in client.conns])


@pytest.mark.timeout(60)
def test_the_replica_answers_a_claim_on_the_stream(c4: Cluster) -> None:
    async def scenario() -> tuple[str, spb.SessionClaimed]:
        user = Ed25519Signer.generate()
        async with await RawSession.open(c4, 1) as raw:
            bad = session_claim(user, c4.cluster.cluster_id, 1, bytes(32), 5)  # not this stream's nonce
            await raw.write(spb.ClientFrame(claim=bad).SerializeToString())
            refused = await raw.read()
            good = session_claim(user, c4.cluster.cluster_id, 1, raw.nonce, 5)
            await raw.write(spb.ClientFrame(claim=good).SerializeToString())
            accepted = await raw.read()
        assert accepted.claimed.public_key == user.public_key
        return refused.claim_error, accepted.claimed

    error, claimed = run(scenario(), 30)  # type: ignore[misc]
    assert "does not verify" in error and claimed.session == 5


@pytest.mark.timeout(90)
def test_an_ordered_request_reaches_the_primary_alone_and_backups_answer(
    c4: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No resend to all, however loaded the machine: this test is about the first send.
    monkeypatch.setattr(session_module, "RESEND_AFTER", 20.0)
    primary = c4.wait_agree(timeout=30).primary

    async def scenario() -> tuple[dict[int, float], dict[int, float], set[int], int]:
        async with ChatUser(c4, "prim") as u:
            await claimed_everywhere(u.client)
            await u.register()  # learns the view from the replies
            assert u.client.primary == primary
            repliers = watch_replies(u.client)
            before = requests_seen(c4)
            for _ in range(3):
                await u.op(e2e.ack_op("prim", 0))
            return before, requests_seen(c4), repliers, u.client.primary

    before, after, repliers, believed = run(scenario(), 80)  # type: ignore[misc]
    assert believed == primary
    assert after[primary] - before[primary] == 3
    assert all(after[i] == before[i] for i in range(c4.n) if i != primary), (before, after)
    assert repliers - {primary}, "backups answer over the claimed route"


@pytest.mark.timeout(90)
def test_a_first_time_ordered_request_is_answered_by_its_designated_repliers_alone(
    c4: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen from the replicas' ``bft_client_replies`` metric: each of several first-time ordered
    requests got exactly one reply from each of its f+1 designated repliers and none from the
    others (it went to the primary alone, so no other replica was asked)."""
    monkeypatch.setattr(session_module, "RESEND_AFTER", 20.0)  # no resend to all, however loaded
    c4.wait_agree(timeout=30)

    async def scenario() -> list[tuple[tuple[int, ...], dict[int, float], dict[int, float], set[int]]]:
        rounds = []
        async with ChatUser(c4, "desig") as u:
            await claimed_everywhere(u.client)
            await u.register()
            seen = watch_replies(u.client)
            for _ in range(4):
                seen.clear()
                before = replies_sent(c4)
                await u.op(e2e.ack_op("desig", 0))
                ts = u.client._timestamp
                designated = u.client.cluster.quorums.repliers(u.client.key, u.client.session, ts)
                # The replies after acceptance (none expected) would still be on their way: wait
                # until every replica's metric has settled.
                await asyncio.sleep(0.3)
                rounds.append((designated, before, replies_sent(c4), set(seen)))
        return rounds

    for designated, before, after, seen in run(scenario(), 80):  # type: ignore[attr-defined]
        assert len(designated) == (c4.n - 1) // 3 + 1
        grew = {i: after[i] - before[i] for i in range(c4.n) if after[i] != before[i]}
        assert grew == dict.fromkeys(designated, 1.0), (designated, grew)
        assert seen == set(designated)


@pytest.mark.timeout(240)
def test_a_mute_designated_replier_is_routed_around(c4: Cluster) -> None:
    """A designated replier that votes but never answers clients: its request completes through
    the resend to all (every replica the client asked answers), the replica becomes suspect, and
    the next request it is designated for goes to the primary and a stand-in backup, which
    answers instead."""
    c4.wait_agree(timeout=30)

    async def scenario() -> tuple[int, bool, dict[int, float], dict[int, float], int]:
        async with ChatUser(c4, "mute") as u:
            await claimed_everywhere(u.client)
            await u.register()
            primary = u.client.primary
            mute = next(i for i in range(c4.n) if i != primary)
            fault(c4, mute, "mute-to-clients")
            try:
                pin_next_timestamp(u.client, lambda d: mute in d)
                await u.op(e2e.ack_op("mute", 0), timeout=90)  # to the primary, then to all after 1 s
                suspect = u.client.repliers.suspect(mute, time.monotonic())
                pin_next_timestamp(u.client, lambda d: mute in d)
                before = requests_seen(c4)
                await u.op(e2e.ack_op("mute", 0), timeout=90)
                after = requests_seen(c4)
                return mute, suspect, before, after, primary
            finally:
                fault(c4, mute, "heal")

    mute, suspected, before, after, primary = run(scenario(), 200)  # type: ignore[misc]
    assert suspected, "the mute designated replier became suspect"
    grew = {i for i in range(c4.n) if after[i] != before[i]}
    # The second request: the primary and one stand-in outside the designated set, not all.
    assert primary in grew and len(grew) == 2 and mute not in grew, grew
    c4.wait_agree(timeout=60)


@pytest.mark.timeout(120)
def test_one_key_in_two_sessions_at_once(c4: Cluster) -> None:
    key = generate_user_key()

    async def scenario() -> tuple[list[str], set[int]]:
        async with ChatClient(c4.config, key) as a, ChatClient(c4.config, key) as b:
            await a.register("twin")
            b.account = "twin"
            sends = [a.send("twin", f"a{i}") for i in range(3)] + [b.send("twin", f"b{i}") for i in range(3)]
            ids = {s.id for s in await asyncio.gather(*sends)}
            inbox = await b.inbox()
            assert a.session.session != b.session.session
            return sorted(m.text for m in inbox), ids

    texts, ids = run(scenario(), 100)  # type: ignore[misc]
    assert texts == ["a0", "a1", "a2", "b0", "b1", "b2"] and len(ids) == 6

    async def sessions() -> None:  # the session layer alone, many requests interleaved
        signer = Ed25519Signer.generate()
        async with c4.client(signer) as s1, c4.client(signer) as s2:
            ops = [s.request(e2e.list_op("*"), timeout=60) for s in (s1, s2) for _ in range(4)]
            replies = await asyncio.gather(*ops)
            assert all(r.status == pb.REPLY_OK for r in replies)

    run(sessions(), 100)


@pytest.mark.timeout(120)
def test_a_resent_send_executes_once_and_an_evicted_one_has_an_unknown_fate(c4: Cluster) -> None:
    """Issue 12 item 14, the outbox's resend: the exact signed request of a send that executed is
    answered from the client table (same message, not delivered twice); once its session is
    evicted (the table holds 4), the same bytes are refused as stale, which says nothing about
    whether it executed, so the fate is unknown, not failed."""
    alice, bob = generate_user_key(), generate_user_key()

    async def scenario() -> None:
        async with ChatClient(c4.config, alice) as a, ChatClient(c4.config, bob) as b:
            await a.register("rs-alice")
            await b.register("rs-bob")
            kept: list[tuple[bytes, int, int]] = []
            first = await a.send("rs-bob", "once", on_signed=lambda raw, s, t, _: kept.append((raw, s, t)))
            again = await a.resend(*kept[-1], "rs-bob")
            assert (again.id, again.seq, again.ref) == (first.id, first.seq, first.ref)
            assert [m.text for m in await b.inbox()] == ["once"]
            for _ in range(5):  # five more sessions: the send's session is evicted
                async with c4.client(Ed25519Signer.generate()) as s:
                    await s.request(e2e.list_op("*"), timeout=60)
            with pytest.raises(FateUnknown, match="forgot its session"):
                await a.resend(*kept[-1], "rs-bob")
            assert [m.text for m in await b.inbox()] == ["once"]

    run(scenario(), 100)


@pytest.mark.timeout(120)
def test_a_send_whose_session_is_evicted_before_its_reply_is_not_signed_again(c4: Cluster) -> None:
    """A send executes, its replies are lost, other sessions evict its session; the resend is then
    refused as below the eviction floor. Re-signing it (as for a read) would deliver it twice: the
    client reports an unknown fate instead, and bob has the message once."""
    alice, bob = generate_user_key(), generate_user_key()

    async def scenario() -> None:
        async with ChatClient(c4.config, alice) as a, ChatClient(c4.config, bob) as b:
            await a.register("ev-alice")
            await b.register("ev-bob")
            known = await a.lookup("ev-bob")
            executed = asyncio.Event()
            inner = a.session.on_reply
            lose = True

            def on_reply(replica: int, data: bytes) -> None:
                if lose:
                    executed.set()  # a replica executed the send; its reply is lost
                    return
                inner(replica, data)

            a.session.on_reply = on_reply  # type: ignore[method-assign]
            sending = asyncio.ensure_future(a.send("ev-bob", "only once", known=known))
            await asyncio.wait_for(executed.wait(), 30)
            for _ in range(5):  # five more sessions: the send's session is evicted
                async with c4.client(Ed25519Signer.generate()) as s:
                    await s.request(e2e.list_op("*"), timeout=60)
            lose = False  # the retransmission's answers get through: "stale", agreed
            with pytest.raises(FateUnknown, match="may or may not"):
                await sending
            assert [m.text for m in await b.inbox()] == ["only once"]

    run(scenario(), 100)


@pytest.mark.timeout(120)
def test_a_clock_that_went_back_is_recovered_from(c4: Cluster) -> None:
    """The same session id again with a clock far behind (a restarted process that reuses it): the
    replicas refuse its timestamps as stale, naming the smallest they take; the session re-signs."""
    signer = Ed25519Signer.generate()
    session = int.from_bytes(os.urandom(6), "big")

    async def scenario() -> tuple[int, int, list[int]]:
        async with ChatUser(c4, "clock", signer) as u:
            await u.register()
        back = c4.client(signer, session=session, clock=lambda: 1_000)
        first = c4.client(signer, session=session)
        async with first:
            await first.request(e2e.ack_op("clock", 0), timeout=60)
            ahead = first._timestamp
        stale: list[int] = []
        inner = back.on_error

        def on_error(replica: int, err: spb.RequestError) -> None:
            if err.min_timestamp:
                stale.append(replica)
            inner(replica, err)

        back.on_error = on_error  # type: ignore[method-assign]
        async with back:
            reply = await back.request(e2e.ack_op("clock", 0), timeout=60)
            assert reply.status == pb.REPLY_OK
            assert e2e.parse_result(reply.result).WhichOneof("result") == "acked"
            return ahead, back._timestamp, stale

    ahead, now, stale = run(scenario(), 100)  # type: ignore[misc]
    assert now > ahead, "re-signed above the session's last executed timestamp"
    assert len(set(stale)) >= 2, "f+1 replicas said stale"


@pytest.mark.timeout(120)
def test_a_new_session_below_the_eviction_floor_is_recovered_from(c4: Cluster) -> None:
    """The client table holds 4 sessions: after 5 more, the floor is a recent clock value, and a
    new session whose clock is far behind gets the agreed REPLY_STALE_TIMESTAMP, then re-signs (the
    operation is idempotent; see the test above for one that is not)."""

    async def scenario() -> tuple[int, int]:
        signer = Ed25519Signer.generate()
        for _ in range(5):
            async with c4.client(signer) as s:
                await s.request(e2e.list_op("*"), timeout=60)
        back = c4.client(signer, clock=lambda: 1_000)
        statuses: list[int] = []
        inner = back._move_past

        def move_past(smallest: int, tries: int) -> None:
            statuses.append(smallest)
            inner(smallest, tries)

        back._move_past = move_past  # type: ignore[method-assign]
        async with back:
            reply = await back.request(e2e.list_op("*"), timeout=60, idempotent=True)  # a read
            assert reply.status == pb.REPLY_OK
            return statuses[0], back._timestamp

    floor, now = run(scenario(), 100)  # type: ignore[misc]
    assert floor > 1_000 and now >= floor


@pytest.mark.timeout(240)
def test_a_silent_primary_is_routed_around_and_the_next_request_goes_to_the_new_one(
    c4: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = c4.wait_agree(timeout=30)
    honest = [i for i in range(c4.n) if i != old.primary]

    async def scenario() -> None:
        async with ChatUser(c4, "vc") as u:
            await u.register()
            assert u.client.primary == old.primary
            fault(c4, old.primary, "silent")
            try:
                await u.op(e2e.ack_op("vc", 0), timeout=90)  # to the primary, then to all after 1 s
                new_view = u.client.view
                assert new_view > old.view and u.client.primary != old.primary
                assert all(c4.status(i).view >= new_view for i in honest)  # type: ignore[union-attr]
                # The next request goes to the new primary alone (unless the still silent old
                # primary is one of its designated repliers: then a stand-in gets it too).
                monkeypatch.setattr(session_module, "RESEND_AFTER", 20.0)
                pin_next_timestamp(u.client, lambda d: old.primary not in d)
                before = requests_seen(c4)
                await u.op(e2e.ack_op("vc", 0), timeout=60)
                after = requests_seen(c4)
                grew = {i for i in range(c4.n) if after[i] != before[i]}
                assert grew == {u.client.primary}, (before, after)
                # A new session (a new CLI process) learns the view from the claim answers and
                # sends its very first request to the new primary alone.
                async with ChatUser(c4, "vc2") as fresh:
                    await claimed_everywhere(fresh.client)
                    assert fresh.client.view == new_view and fresh.client.primary == u.client.primary
                    pin_next_timestamp(fresh.client, lambda d: old.primary not in d)
                    before = requests_seen(c4)
                    await fresh.register()
                    after = requests_seen(c4)
                    grew = {i for i in range(c4.n) if after[i] != before[i]}
                    assert grew == {u.client.primary}, (before, after)
            finally:
                fault(c4, old.primary, "heal")

    run(scenario(), 200)
    c4.wait_agree(timeout=60)


# ---- a broken stream ------------------------------------------------------------------------------


def test_a_stream_that_breaks_in_read_and_write_at_once_leaves_no_unretrieved_error() -> None:
    """CI once printed "Task exception was never retrieved" plus a traceback from ``bftchat list``
    with the cluster down. The stream's write failed; the session then cancelled its reader, and
    grpc's ``read`` turns that cancellation into the stream's error, which nobody retrieved. Here a
    stream whose first read gives the nonce (so a claim is written) and which then fails so."""

    def broken() -> grpc.aio.AioRpcError:
        none = grpc.aio.Metadata()
        return grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, none, none, "gone")

    class BrokenCall:
        reads = 0

        async def read(self) -> bytes:
            self.reads += 1
            if self.reads == 1:
                return spb.ServerFrame(nonce=NONCE).SerializeToString()
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                raise broken() from None  # as grpc's read does when cancelled on a failed stream
            return b""

        async def write(self, frame: bytes) -> None:
            await asyncio.sleep(0.01)
            raise broken()

        def cancel(self) -> None:
            pass

    class BrokenChannel:
        def stream_stream(self, method: str) -> Callable[[], BrokenCall]:
            return BrokenCall

    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        complaints: list[str] = []
        # Only complaints about our own tasks count: grpc's poller, whose real channels the session
        # opens, may complain about its own completion queue when tests run several event loops.
        loop.set_exception_handler(
            lambda _loop, ctx: (
                complaints.append(str(ctx.get("message")))
                if "never retrieved" in str(ctx.get("message"))
                else None
            )
        )
        info = ClusterInfo(tuple(Ed25519Signer.generate().public_key for _ in range(4)), CID)
        session = ClusterSession(info, ["127.0.0.1:1"] * 4, Ed25519Signer.generate())
        conn = session.conns[0]
        conn.channel = BrokenChannel()  # type: ignore[assignment]
        for _ in range(20):
            with pytest.raises(grpc.aio.AioRpcError):
                await conn._session()
            conn.up = False
        await asyncio.sleep(0.05)
        gc.collect()
        await asyncio.sleep(0)
        return complaints

    assert asyncio.run(main()) == []
