"""Unit tests of the protocol's building blocks and of the core's handling of bad input."""

from __future__ import annotations

import pytest
from core_helpers import deliver
from hypothesis import given, settings
from hypothesis import strategies as st

from bft import merkle
from bft.app.kv import KVApp
from bft.core.clients import ClientTable
from bft.core.config import ClusterInfo, Params
from bft.core.events import Send, ToClient
from bft.core.replica import Replica
from bft.crypto import (
    CachingVerifier,
    Ed25519Signer,
    Ed25519Verifier,
    HashSigner,
    HashVerifier,
    Kind,
    cluster_id_from,
)
from bft.lthash import LtHash
from bft.pb.bftchat.v1 import protocol_pb2 as pb
from bft.quorums import Quorums
from bft.replies import ReplyCollector, check_reply
from bft.wire import MAX_REQUEST_BYTES, WireError, make_request, open_envelope, open_request, seal

CID = cluster_id_from(b"test")


def test_quorum_thresholds() -> None:
    for n, f in ((4, 1), (7, 2), (10, 3)):
        q = Quorums.for_n(n)
        assert (q.f, q.prepare, q.commit, q.checkpoint, q.view_change, q.join, q.reply, q.read) == (
            f,
            2 * f,
            2 * f + 1,
            2 * f + 1,
            2 * f + 1,
            f + 1,
            f + 1,
            2 * f + 1,
        )
    for bad in (1, 3, 5, 6, 8):
        with pytest.raises(ValueError):
            Quorums.for_n(bad)


def test_signatures_are_domain_separated() -> None:
    signer = Ed25519Signer.generate()
    v = Ed25519Verifier()
    env = seal(signer, 0, Kind.PREPARE, CID, pb.Prepare(view=1, seq=2, digest=b"d" * 32))
    assert open_envelope(env, Kind.PREPARE, CID, signer.public_key, v)
    with pytest.raises(WireError):  # the same bytes cannot count as a COMMIT
        open_envelope(env, Kind.COMMIT, CID, signer.public_key, v)
    with pytest.raises(WireError):  # nor in another cluster
        open_envelope(env, Kind.PREPARE, cluster_id_from(b"other"), signer.public_key, v)
    with pytest.raises(WireError):  # nor under another key
        open_envelope(env, Kind.PREPARE, CID, Ed25519Signer.generate().public_key, v)


def test_client_requests_verify_and_reject_tampering() -> None:
    signer = Ed25519Signer.generate()
    raw = make_request(signer, CID, 7, 42, b"set a b")
    opened = open_request(raw, CID, Ed25519Verifier())
    assert (opened.request.client_key, opened.request.session, opened.request.timestamp) == (
        signer.public_key,
        7,
        42,
    )
    tampered = bytearray(raw)
    tampered[-70] ^= 1
    with pytest.raises(WireError):
        open_request(bytes(tampered), CID, Ed25519Verifier())
    with pytest.raises(WireError):
        open_request(b"\xff" * 50, CID, Ed25519Verifier())
    with pytest.raises(WireError):
        open_request(make_request(signer, CID, 1, 1, bytes(MAX_REQUEST_BYTES)), CID, Ed25519Verifier())


def test_caching_verifier_never_vouches_for_other_bytes() -> None:
    signer = Ed25519Signer.generate()
    cv = CachingVerifier(Ed25519Verifier())
    sig = signer.sign(b"hello")
    assert cv.verify(signer.public_key, b"hello", sig)
    assert cv.verify(signer.public_key, b"hello", sig)
    assert cv.stats.verified == 1 and cv.stats.cache_hits == 1
    assert not cv.verify(signer.public_key, b"hellO", sig)


@given(st.lists(st.binary(max_size=20), min_size=1, max_size=40))
def test_merkle_paths_prove_membership(items: list[bytes]) -> None:
    leaves = [merkle.leaf_hash(i) for i in items]
    root, paths = merkle.build(leaves)
    for i, leaf in enumerate(leaves):
        assert merkle.root_from_path(leaf, i, paths[i]) == root
        assert merkle.root_from_path(merkle.leaf_hash(b"x" + items[i]), i, paths[i]) != root


@given(st.lists(st.binary(max_size=8), max_size=12), st.randoms())
def test_lthash_is_order_independent(items: list[bytes], rnd) -> None:  # type: ignore[no-untyped-def]
    a, b = LtHash(), LtHash()
    for i in items:
        a.add(i)
    shuffled = list(items)
    rnd.shuffle(shuffled)
    for i in shuffled:
        b.add(i)
    b.add(b"extra")
    b.remove(b"extra")
    assert a.digest() == b.digest()


def test_client_table_eviction_keeps_exactly_once() -> None:
    t = ClientTable(capacity=2)
    t.record((b"a", 1), 10, 1, 0, b"r")
    t.record((b"b", 1), 20, 2, 0, b"r")
    t.record((b"c", 1), 30, 3, 0, b"r")
    t.evict_overflow()
    assert t.get((b"a", 1)) is None and len(t) == 2
    # An evicted session's old requests can never run again: the floor is above them.
    assert t.min_timestamp((b"a", 1)) == 11
    d1 = t.digest()
    t2 = ClientTable.restore(t.snapshot(), 2)
    assert t2.digest() == d1


def test_client_table_pages_follow_every_change_and_restore() -> None:
    """Records, evictions (which move the floor, on page 0) and epochs: the pages rebuilt from the
    reported changes only equal the table's pages, and restore to the same table; a session filed
    under another page is refused."""
    t = ClientTable(capacity=5, page_count=8)
    mirror = [b""] * 8

    def check() -> None:
        for i in t.take_dirty_pages():
            mirror[i] = t.page(i)
        assert mirror == [t.page(i) for i in range(8)]

    for k in range(40):
        t.record((bytes([k % 7]) * 32, k % 3), 100 + k, k, 0, b"r%d" % k)
        t.evict_overflow()
        if k == 20:
            t.set_epoch(2, 5)
        check()
    assert t.floor > 0 and t.epochs
    again = ClientTable.restore_pages(mirror, 5, 8)
    assert again.digest() == t.digest() and [again.page(i) for i in range(8)] == mirror
    assert not again.take_dirty_pages()
    moved = [b""] * 8
    donor = next(i for i in range(1, 8) if mirror[i])
    moved[0], moved[(donor % 7) + 1] = mirror[0], mirror[donor]
    with pytest.raises(ValueError, match="another page"):
        ClientTable.restore_pages(moved, 5, 8)


# ---- the replica core under bad input ------------------------------------------------------


def _cluster(n: int = 4) -> tuple[ClusterInfo, list[HashSigner], HashVerifier]:
    hv = HashVerifier()
    signers = [HashSigner(b"r%d" % i, hv) for i in range(n)]
    info = ClusterInfo(
        tuple(s.public_key for s in signers), CID, Params(checkpoint_interval=2, watermark_window=8)
    )
    return info, signers, hv


def _drive(replicas: list[Replica], outputs: dict[int, list[object]], now: float) -> list[ToClient]:
    """Deliver every Send until quiet; return client replies. A tiny lossless network."""
    return deliver(replicas, outputs, now)


def test_requests_commit_and_clients_accept_f_plus_one_matching_replies() -> None:
    info, signers, hv = _cluster()
    reps = [Replica(info, i, signers[i], hv, KVApp) for i in range(4)]
    client = HashSigner(b"client", hv)
    outs = {}
    for i, r in enumerate(reps):
        r.start(0.0)
        outs[i] = r.take_outputs()
    _drive(reps, outs, 0.0)
    raw = make_request(client, CID, 1, 1, b"add x 5")
    reps[0].on_request(raw, 0.1)
    replies = _drive(reps, {0: reps[0].take_outputs()}, 0.1)
    collector = ReplyCollector.for_request(info.quorums, read_only=False)
    accepted = None
    for rep in replies:
        accepted = collector.add(check_reply(rep.data, info, hv, client.public_key, 1, 1)) or accepted
    assert accepted is not None and accepted.result == b"5"
    # Only the request's f+1 designated repliers answered its first execution, once each.
    signers_ = sorted(pb.ClientReply.FromString(x.data).root.signer for x in replies)
    assert signers_ == sorted(info.quorums.repliers(client.public_key, 1, 1))
    # A retransmission is answered from the reply cache, not executed again, by any replica.
    silent = next(i for i in range(4) if i not in signers_)
    reps[silent].on_request(raw, 0.2)
    again = [o for o in reps[silent].take_outputs() if isinstance(o, ToClient)]
    assert again and check_reply(again[0].data, info, hv, client.public_key, 1, 1).result == b"5"
    assert all(r.last_executed == 1 for r in reps)
    assert len({r.state_digest() for r in reps}) == 1


def _first_reply_signers(
    info: ClusterInfo, hv: HashVerifier, reps: list[Replica], raw: bytes, to: list[int], now: float
) -> list[int]:
    outs = {}
    for i in to:
        reps[i].on_request(raw, now)
        outs[i] = reps[i].take_outputs()
    return sorted(pb.ClientReply.FromString(x.data).root.signer for x in _drive(reps, outs, now))


def test_designated_repliers_rotate_and_only_they_answer_a_first_execution() -> None:
    """Each ordered request is answered on first execution by exactly its f+1 designated
    repliers, and the designated sets differ between requests (the load spreads)."""
    info, signers, hv = _cluster()
    reps = [Replica(info, i, signers[i], hv, KVApp) for i in range(4)]
    for r in reps:
        r.start(0.0)
        r.take_outputs()
    client = HashSigner(b"client", hv)
    seen: set[tuple[int, ...]] = set()
    for ts in range(1, 13):
        raw = make_request(client, CID, 1, ts, b"add x 1")
        got = _first_reply_signers(info, hv, reps, raw, [0], 0.1 * ts)
        want = info.quorums.repliers(client.public_key, 1, ts)
        assert got == sorted(want) and len(got) == info.quorums.f + 1
        seen.add(tuple(sorted(want)))
    assert len(seen) > 1
    assert Quorums.for_n(7).repliers(b"k", 1, 2) == Quorums.for_n(7).repliers(b"k", 1, 2)
    assert len(set(Quorums.for_n(7).repliers(b"k", 1, 2))) == 3


def test_a_request_sent_to_all_before_execution_is_answered_by_every_replica() -> None:
    """The client resent to all before the request executed: every replica it reached answers at
    execution, designated or not (a silent designated replier cannot stall it)."""
    info, signers, hv = _cluster()
    reps = [Replica(info, i, signers[i], hv, KVApp) for i in range(4)]
    for r in reps:
        r.start(0.0)
        r.take_outputs()
    client = HashSigner(b"client", hv)
    raw = make_request(client, CID, 1, 1, b"add x 5")
    # First copy to the primary, which proposes it at once; the resend to all reaches every
    # replica (the primary a second time) before the batch commits.
    reps[0].on_request(raw, 0.1)
    first = {0: reps[0].take_outputs()}
    outs: dict[int, list[object]] = {}
    for i in range(4):
        reps[i].on_request(raw, 0.2)
        outs[i] = reps[i].take_outputs()
    for i, o in first.items():
        outs[i] = o + outs[i]
    signers_ = sorted(pb.ClientReply.FromString(x.data).root.signer for x in _drive(reps, outs, 0.2))
    assert signers_ == [0, 1, 2, 3]
    # Requests a backup learnt from the PRE-PREPARE only, or a forward, are not "asked".
    raw2 = make_request(client, CID, 1, 2, b"add x 1")
    want = sorted(info.quorums.repliers(client.public_key, 1, 2))
    assert _first_reply_signers(info, hv, reps, raw2, [0], 0.3) == want
    assert all(not r.asked for r in reps)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=400))
def test_garbage_from_the_network_never_crashes_a_replica(data: bytes) -> None:
    info, signers, hv = _cluster()
    r = Replica(info, 1, signers[1], hv, KVApp)
    r.on_message(data, 1.0)
    assert r.on_request(data, 1.0) is not None  # a clear error, never an exception
    r.take_outputs()


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2000), st.integers(0, 255))
def test_bit_flipped_protocol_messages_are_dropped_not_fatal(pos: int, xor: int) -> None:
    info, signers, hv = _cluster()
    reps = [Replica(info, i, signers[i], hv, KVApp) for i in range(4)]
    raw = make_request(HashSigner(b"c", hv), CID, 1, 1, b"set k v")
    reps[0].on_request(raw, 0.0)
    msgs = [o.data for o in reps[0].take_outputs() if isinstance(o, Send)]
    assert msgs
    data = bytearray(msgs[0])
    data[pos % len(data)] ^= xor or 1
    reps[1].on_message(bytes(data), 0.0)
    outs = reps[1].take_outputs()
    if bytes(data) != msgs[0]:
        # A corrupted PRE-PREPARE must not be prepared.
        assert not any(
            isinstance(o, Send) and pb.PeerMessage.FromString(o.data).envelope.body[5:6] == b"\x03"
            for o in outs
        )


def test_receipts_verify_from_the_designated_repliers_alone() -> None:
    """A batch of several requests: each client gets replies from its own f+1 repliers only, and
    those make a receipt that verifies (every replica signs the root over the whole batch, sent
    or not, so f+1 signatures agree on one root)."""
    from client import receipts

    info, signers, hv = _cluster()
    reps = [Replica(info, i, signers[i], hv, KVApp) for i in range(4)]
    for r in reps:
        r.start(0.0)
        r.take_outputs()
    clients = [HashSigner(b"client%d" % k, hv) for k in range(4)]
    outs: dict[int, list[object]] = {0: []}
    for k, c in enumerate(clients):  # the first is proposed alone, the others wait for one batch
        reps[0].on_request(make_request(c, CID, 1, 10 + k, b"add x %d" % k), 0.1)
        outs[0] += reps[0].take_outputs()
    replies = _drive(reps, outs, 0.1)
    batched = 0
    for k, c in enumerate(clients):
        mine = [x for x in replies if x.client_key == c.public_key]
        assert sorted(pb.ClientReply.FromString(x.data).root.signer for x in mine) == sorted(
            info.quorums.repliers(c.public_key, 1, 10 + k)
        )
        collector = ReplyCollector.for_request(info.quorums, read_only=False)
        accepted = None
        for x in mine:
            accepted = collector.add(check_reply(x.data, info, hv, c.public_key, 1, 10 + k)) or accepted
        assert accepted is not None
        v = receipts.verify(receipts.make(CID, accepted), info, hv)
        assert v.seq == accepted.seq and len(v.signers) == info.quorums.f + 1
        batched += pb.ClientReply.FromString(mine[0].data).index > 0
    assert batched, "some replies came from a batch of several requests"
