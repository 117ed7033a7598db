"""The core against Byzantine clients and replicas (issue 11): each test drives real replica cores
with validly signed hostile input and checks the bound or refusal that stops it."""

from __future__ import annotations

import random
import struct
import tracemalloc

import pytest
from core_helpers import deliver

from bft.app.kv import KVApp
from bft.core.clients import MAX_U64, ClientTable
from bft.core.config import ClusterInfo, Params
from bft.core.events import Send, ToClient
from bft.core.replica import Replica
from bft.core.viewchange import check_prepared_proof, check_view_change, open_replica
from bft.crypto import TAG_LEN, CachingVerifier, HashSigner, HashVerifier, Kind, cluster_id_from, sha256, tag
from bft.faults import ByzantineReplica, SlowPrimary
from bft.pb.bftchat.v1 import protocol_pb2 as pb
from bft.replies import CheckedReply
from bft.wire import MAX_MESSAGE_BYTES, MAX_REQUEST_BYTES, WireError, make_request, seal
from client.session import ReadCursor

CID = cluster_id_from(b"adversary")


def cluster(n: int = 4, **params: int) -> tuple[ClusterInfo, list[HashSigner], HashVerifier]:
    hv = HashVerifier()
    signers = [HashSigner(b"r%d" % i, hv) for i in range(n)]
    p = Params(**{"checkpoint_interval": 2, "watermark_window": 8, **params})
    return ClusterInfo(tuple(s.public_key for s in signers), CID, p), signers, hv


def replicas(info: ClusterInfo, signers: list[HashSigner], hv: HashVerifier) -> list[Replica]:
    reps = [Replica(info, i, signers[i], hv, KVApp) for i in range(info.n)]
    for r in reps:
        r.start(0.0)
        r.take_outputs()
    return reps


def drive(reps: list[Replica], now: float, first: int = 0) -> list[ToClient]:
    """Deliver every Send until quiet (a lossless network); return the client replies."""
    return deliver(reps, {first: reps[first].take_outputs()}, now)


def statuses(replies: list[ToClient], key: bytes) -> set[int]:
    return {pb.ClientReply.FromString(r.data).status for r in replies if r.client_key == key}


# ---- item 1: request timestamps are bounded at execution, counters saturate -----------------


def test_a_timestamp_near_2_64_is_refused_at_execution_and_cannot_lift_the_floor() -> None:
    """The attack: a request with timestamp 2^64 - 1, then enough new sessions to evict it, lifted
    the eviction floor to 2^64 - 1 and the next new session made every replica raise mid-batch."""
    info, signers, hv = cluster(client_table_capacity=2)
    reps = replicas(info, signers, hv)
    attacker = HashSigner(b"attacker", hv)
    raw = make_request(attacker, CID, 1, MAX_U64, b"set a b")
    # At the door a replica refuses it by its own clock ...
    error = reps[0].on_request(raw, 1.0)
    assert error is not None and "ahead" in error
    # ... but a faulty backup can forward it and a faulty primary order it: execution refuses it
    # by the batch's agreed time, alike on every replica.
    reps[0].on_request(raw, 1.0, forwarded=True)
    replies = drive(reps, 1.0)
    assert statuses(replies, attacker.public_key) == {pb.REPLY_INVALID_REQUEST}
    assert all(r.clients.get((attacker.public_key, 1)) is None for r in reps)
    # Session churn evicts sessions; the floor stays an honest timestamp; new sessions still run.
    for s in range(2, 7):
        reps[0].on_request(make_request(attacker, CID, s, 1_000_000 + s, b"add n 1"), 2.0)
        assert statuses(drive(reps, 2.0), attacker.public_key) == {pb.REPLY_OK}
    assert all(r.clients.floor < 2_000_000 for r in reps)
    honest = HashSigner(b"honest", hv)
    reps[0].on_request(make_request(honest, CID, 9, 3_000_000, b"set k v"), 3.0)
    assert statuses(drive(reps, 3.0), honest.public_key) == {pb.REPLY_OK}
    assert len({(r.last_executed, r.state_digest()) for r in reps}) == 1


def test_the_client_table_floor_saturates_instead_of_overflowing() -> None:
    t = ClientTable(capacity=1)
    t.record((b"a", 1), MAX_U64, 1, 0, b"r")
    t.record((b"b", 1), 5, 2, 0, b"r")
    t.evict_overflow()
    assert t.floor == MAX_U64
    assert t.min_timestamp((b"new", 1)) == MAX_U64
    struct.pack(">Q", t.min_timestamp((b"new", 1)))  # what a stale reply carries: must encode


# ---- item 2: signed bodies are canonical and capped ------------------------------------------


def _resign(signer: HashSigner, replica: int, kind: Kind, payload: bytes) -> pb.Envelope:
    body = tag(kind, CID) + payload
    return pb.Envelope(body=body, signer=replica, signature=signer.sign(body))


def test_padded_signed_bodies_and_envelopes_are_dropped() -> None:
    """A faulty primary pads its PRE-PREPARE with an unknown field (validly signed), or pads the
    unsigned envelope around it: backups drop both and send no PREPARE; the plain one is prepared."""
    info, signers, hv = cluster()
    reps = replicas(info, signers, hv)
    client = HashSigner(b"client", hv)
    reps[0].on_request(make_request(client, CID, 1, 1, b"set a b"), 0.5)
    honest = next(o for o in reps[0].take_outputs() if isinstance(o, Send))
    msg = pb.PeerMessage.FromString(honest.data)
    payload = msg.envelope.body[TAG_LEN:]
    unknown = b"\x7a\x08" + b"x" * 8  # field 15, length-delimited: unknown to PrePrepare
    overlong = b"\x08\x80\x00" + payload[2:]  # view = 0 as a two-byte varint
    for bad in (payload + unknown, overlong):
        env = _resign(signers[0], 0, Kind.PREPREPARE, bad)
        with pytest.raises(WireError):
            open_replica(env, Kind.PREPREPARE, info, hv)
        reps[1].on_message(pb.PeerMessage(envelope=env, batch=msg.batch).SerializeToString(), 0.5)
        assert not reps[1].take_outputs() and reps[1].rejected_inputs
    wrapped = msg.envelope.SerializeToString() + unknown
    padded = pb.PeerMessage(envelope=pb.Envelope.FromString(wrapped), batch=msg.batch)
    reps[1].on_message(padded.SerializeToString(), 0.5)
    assert not reps[1].take_outputs()
    reps[1].on_message(honest.data, 0.5)
    assert any(isinstance(o, Send) for o in reps[1].take_outputs())  # the canonical one: PREPARE


def test_padded_client_requests_are_refused() -> None:
    info, signers, hv = cluster()
    reps = replicas(info, signers, hv)
    client = HashSigner(b"client", hv)
    raw = make_request(client, CID, 1, 1, b"set a b")
    assert reps[1].on_request(raw + b"\x7a\x04pppp", 0.5) is not None  # unknown field in the envelope
    env = pb.Envelope.FromString(raw)
    body = env.body + b"\x7a\x04pppp"  # unknown field in the signed body
    padded = pb.Envelope(body=body, signature=client.sign(body)).SerializeToString()
    assert reps[1].on_request(padded, 0.5) is not None
    assert reps[1].on_request(raw, 0.5) is None


def test_every_envelope_of_a_prepared_proof_is_verified() -> None:
    """An envelope claiming the primary among the PREPAREs was skipped unverified: now the proof
    must carry exactly 2f PREPAREs from distinct backups, each verified."""
    info, signers, hv = cluster()
    pp = pb.PrePrepare(view=0, seq=1, digest=sha256(b"batch"))
    prepare = pb.Prepare(view=0, seq=1, digest=pp.digest)
    good = [seal(signers[i], i, Kind.PREPARE, CID, prepare) for i in (1, 2)]
    proof = pb.PreparedProof(preprepare=seal(signers[0], 0, Kind.PREPREPARE, CID, pp), prepares=good)
    assert check_prepared_proof(info, hv, proof).seq == 1
    junk = pb.Envelope(body=b"\0" * 1_000, signer=0, signature=bytes(64))
    for extra in (junk, good[0]):
        padded = pb.PreparedProof()
        padded.CopyFrom(proof)
        padded.prepares.append(extra)
        with pytest.raises(WireError):
            check_prepared_proof(info, hv, padded)


def _worst_view_change(info: ClusterInfo, signers: list[HashSigner], sender: int) -> pb.Envelope:
    """The largest VIEW-CHANGE an honest replica can send: n checkpoint signatures, a prepared
    certificate for every seq of the window, every number at its widest encoding."""
    p = info.params
    window, q = p.watermark_window, info.quorums
    stable = (MAX_U64 - window - 1) // p.checkpoint_interval * p.checkpoint_interval
    digest = sha256(b"state")
    ck = pb.Checkpoint(seq=stable, state_digest=digest)
    vc = pb.ViewChange(
        new_view=MAX_U64,
        stable_seq=stable,
        stable_digest=digest,
        checkpoint_proof=[seal(signers[i], i, Kind.CHECKPOINT, CID, ck) for i in range(info.n)],
        epoch=MAX_U64,
    )
    view = MAX_U64 - 1
    primary = info.primary(view)
    backups = [i for i in range(info.n) if i != primary][: q.prepare]
    for seq in range(stable + 1, stable + window + 1):
        d = sha256(b"%d" % seq)
        proof = vc.prepared.add()
        proof.preprepare.CopyFrom(
            seal(signers[primary], primary, Kind.PREPREPARE, CID, pb.PrePrepare(view=view, seq=seq, digest=d))
        )
        for b in backups:
            proof.prepares.append(
                seal(signers[b], b, Kind.PREPARE, CID, pb.Prepare(view=view, seq=seq, digest=d))
            )
    return seal(signers[sender], sender, Kind.VIEW_CHANGE, CID, vc)


@pytest.mark.parametrize("n", [4, 7, 10])
def test_the_largest_view_change_new_view_and_commit_proof_fit_their_caps(n: int) -> None:
    """At the default limits (window 256, batches of 64 KiB), built for real and checked: the sizes
    are stated in docs/PROTOCOL.md."""
    hv = HashVerifier()
    signers = [HashSigner(b"w%d" % i, hv) for i in range(n)]
    info = ClusterInfo(tuple(s.public_key for s in signers), CID, Params())
    caps = info.caps
    q = info.quorums
    new_primary = info.primary(MAX_U64)
    senders = [new_primary, *[i for i in range(n) if i != new_primary][: q.view_change - 1]]
    vcs = [_worst_view_change(info, signers, s) for s in senders]
    assert check_view_change(info, hv, vcs[0]).new_view == MAX_U64
    vc_size = max(len(e.body) for e in vcs)
    assert vc_size <= caps.body[Kind.VIEW_CHANGE]
    window = info.params.watermark_window
    nv = pb.NewView(view=MAX_U64, view_changes=vcs)
    stable = pb.ViewChange.FromString(vcs[0].body[TAG_LEN:]).stable_seq
    for seq in range(stable + 1, stable + window + 1):
        pp = pb.PrePrepare(view=MAX_U64, seq=seq, digest=sha256(b"%d" % seq))
        nv.preprepares.append(seal(signers[new_primary], new_primary, Kind.PREPREPARE, CID, pp))
    nv_env = seal(signers[new_primary], new_primary, Kind.NEW_VIEW, CID, nv)
    assert len(nv_env.body) <= caps.body[Kind.NEW_VIEW]
    assert open_replica(nv_env, Kind.NEW_VIEW, info, hv)
    nv_msg = pb.PeerMessage(envelope=nv_env).SerializeToString()
    assert len(nv_msg) <= caps.peer_message() <= MAX_MESSAGE_BYTES
    # A full batch: requests of the largest size while they fit batch_max_bytes, and at least one.
    client = HashSigner(b"c", hv)
    big = make_request(client, CID, 1, 1, b"set k " + bytes(MAX_REQUEST_BYTES - 300))
    assert len(big) <= MAX_REQUEST_BYTES
    count = max(1, info.params.batch_max_bytes // len(big))
    batch = pb.Batch(timestamp_us=MAX_U64, requests=[big] * count).SerializeToString()
    assert len(batch) <= caps.batch
    pp = pb.PrePrepare(view=MAX_U64, seq=MAX_U64, digest=sha256(batch))
    commit = pb.Commit(view=MAX_U64, seq=MAX_U64, digest=pp.digest)
    cp = pb.CommitProof(
        preprepare=seal(signers[0], 0, Kind.PREPREPARE, CID, pp),
        batch=batch,
        commits=[seal(signers[i], i, Kind.COMMIT, CID, commit) for i in range(n)],
    )
    assert len(cp.SerializeToString()) <= caps.commit_proof
    assert len(pb.PeerMessage(commit_proof=cp).SerializeToString()) <= MAX_MESSAGE_BYTES
    print(f"n={n}: VIEW-CHANGE {vc_size}, NEW-VIEW {len(nv_msg)}, CommitProof {cp.ByteSize()} bytes")


def test_one_view_change_is_kept_per_sender() -> None:
    info, signers, hv = cluster()
    reps = replicas(info, signers, hv)
    for v in (3, 2, 3, 5):
        vc = seal(signers[2], 2, Kind.VIEW_CHANGE, CID, pb.ViewChange(new_view=v))
        reps[1].on_message(pb.PeerMessage(envelope=vc).SerializeToString(), 1.0)
    assert reps[1].vc_latest[2].new_view == 5
    assert set(reps[1].vc_latest) <= {1, 2}


# ---- item 6: CHECKPOINT floods --------------------------------------------------------------


def test_a_checkpoint_flood_with_ever_new_digests_stays_bounded() -> None:
    """One far-future seq with ever-new digests grew the vote table without bound (the limit
    counted seqs, not digests). Now: one vote per sender and seq, L/K + 1 seqs per sender."""
    info, signers, hv = cluster()
    reps = replicas(info, signers, hv)
    victim = reps[1]
    p = info.params
    for i in range(300):
        for seq in (p.checkpoint_interval, 1_000_000 * p.checkpoint_interval):
            ck = pb.Checkpoint(seq=seq, state_digest=sha256(b"%d" % i))
            env = seal(signers[3], 3, Kind.CHECKPOINT, CID, ck)
            victim.on_message(pb.PeerMessage(envelope=env).SerializeToString(), 1.0)
    votes = sum(len(v) for by in victim.ckpt_votes.values() for v in by.values())
    assert votes <= p.watermark_window // p.checkpoint_interval + 1
    assert votes == 2


def test_a_lagging_replica_still_learns_a_stable_checkpoint_beyond_its_window() -> None:
    info, signers, hv = cluster()
    reps = replicas(info, signers, hv)
    far = 1000 * info.params.checkpoint_interval
    ck = pb.Checkpoint(seq=far, state_digest=sha256(b"state"))
    for i in (0, 2, 3):
        env = seal(signers[i], i, Kind.CHECKPOINT, CID, ck)
        reps[1].on_message(pb.PeerMessage(envelope=env).SerializeToString(), 1.0)
    assert reps[1].transfer is not None and reps[1].transfer.seq == far


# ---- item 4: admission before storage, bounded in entries and bytes ------------------------


def test_refused_requests_leave_nothing_behind() -> None:
    """Requests were cached before the limits were checked, and the signature cache kept the full
    bytes: ~360 KiB retained per refused 120 KiB request. Now a refused request costs a 32-byte
    verifier entry. (60 KiB here: a longer operation than the application takes is refused at
    the door before any of this.)"""
    info, signers, hv = cluster(max_pending_per_client=2)
    backup = Replica(info, 1, signers[1], CachingVerifier(hv), KVApp)
    flood = HashSigner(b"flood", hv)
    body = b"set k " + bytes(60 * 1024)
    for ts in (1, 2):
        assert backup.on_request(make_request(flood, CID, 1, ts, body), 0.5) is None
    held = backup.pending_bytes
    refused = [make_request(flood, CID, 1, ts, body) for ts in range(3, 43)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for raw in refused:
        assert backup.on_request(raw, 0.5) is not None
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert grown < 64 * 1024, grown  # 40 refused requests of 60 KiB: next to nothing kept
    assert backup.pending_bytes == held and len(backup.pending) == 2


def test_the_pending_table_is_bounded_in_bytes_and_the_largest_sender_pays() -> None:
    info, signers, hv = cluster(max_pending_bytes=2 * 1024 * 1024, max_pending_per_client=64)
    backup = Replica(info, 1, signers[1], hv, KVApp)
    flood = HashSigner(b"flood", hv)
    body = b"set k " + bytes(60 * 1024)
    for ts in range(1, 40):
        backup.on_request(make_request(flood, CID, 1, ts, body), 0.5)
        assert backup.pending_bytes <= info.params.max_pending_bytes
    assert backup.on_request(make_request(flood, CID, 1, 99, body), 0.5) is not None  # full: refused
    honest = HashSigner(b"honest", hv)
    assert backup.on_request(make_request(honest, CID, 1, 1, b"set a b"), 0.5) is None
    assert (honest.public_key, 1, 1) in backup.pending  # admitted: the flood lost its newest
    assert backup.pending_bytes <= info.params.max_pending_bytes


def test_one_round_reads_are_not_cached() -> None:
    info, signers, hv = cluster()
    reps = replicas(info, signers, hv)
    client = HashSigner(b"reader", hv)
    for ts in range(1, 101):
        reps[1].on_request(make_request(client, CID, 1, ts, b"get k", read_only=True), 0.5)
    assert not reps[1]._opened and not reps[1].pending_reads


# ---- item 8: one-round reads ------------------------------------------------------------------


def _reply(replica: int, seq: int, result: bytes) -> CheckedReply:
    return CheckedReply(replica, 0, seq, pb.REPLY_OK, result)


def test_a_faulty_replicas_seq_is_never_trusted_beyond_the_f_plus_1_th_highest() -> None:
    """One replica echoes the honest result with seq 2^62: the session's later reads (min_seq)
    would wait for ever. The accepted seq is the f+1-th highest of the matching replies."""
    info, _, _ = cluster(n=7)
    cursor = ReadCursor(info.quorums)
    ordered = cursor.collector(read_only=False)
    assert ordered.add(_reply(0, 2**62, b"ok")) is None
    assert ordered.add(_reply(1, 5, b"ok")) is None
    accepted = ordered.add(_reply(2, 5, b"ok"))
    assert accepted is not None and accepted.seq == 5
    assert cursor.accept(accepted) is None and cursor.last_seq == 5
    read = cursor.collector(read_only=True)
    for r, seq in ((0, 2**62), (1, 2**61), (2, 7), (3, 6), (4, 6)):
        got = read.add(_reply(r, seq, b"v"))
    assert got is not None and got.seq == 7  # two liars above; the f+1-th highest is honest


def test_parked_reads_are_deduplicated_capped_expire_and_absurd_ones_are_refused() -> None:
    info, signers, hv = cluster(max_pending_reads=8, max_pending_reads_per_client=3)
    r = Replica(info, 1, signers[1], hv, KVApp)
    far = make_request(HashSigner(b"a", hv), CID, 1, 1, b"get k", read_only=True, min_seq=10**12)
    assert r.on_request(far, 0.5) is not None  # beyond anything provable: refused at the door
    flood = HashSigner(b"flood", hv)
    soon = make_request(flood, CID, 1, 1, b"get k", read_only=True, min_seq=1)
    for _ in range(5):
        r.on_request(soon, 0.5)
    assert len(r.pending_reads) == 1  # de-duplicated
    for ts in range(2, 50):
        r.on_request(make_request(flood, CID, 1, ts, b"get k", read_only=True, min_seq=1), 0.5)
    assert len(r.pending_reads) == 3  # per client key
    for i in range(20):
        key = HashSigner(b"k%d" % i, hv)
        r.on_request(make_request(key, CID, 1, 1, b"get k", read_only=True, min_seq=1), 0.6)
    assert len(r.pending_reads) == 8  # in total
    assert r.pending_read_bytes <= info.params.max_pending_read_bytes
    r.start(0.0)
    r.on_timer("status", 0.6 + info.params.read_wait_timeout + 1)
    assert not r.pending_reads and not r.pending_read_bytes  # expired


# ---- item 7: a client cannot force view changes ---------------------------------------------


def test_a_client_that_filled_its_quota_at_the_primary_cannot_force_a_view_change() -> None:
    """Aardvark's attack: quota full at the primary, one more request to the backups only. They
    forward it; the primary used to refuse it silently and the backups' timers fired."""
    info, signers, hv = cluster(max_pending_per_client=2)
    reps = replicas(info, signers, hv)
    attacker = HashSigner(b"quota", hv)
    for ts in (1, 2):
        assert reps[0].on_request(make_request(attacker, CID, 1, ts, b"add q 1"), 0.1) is None
    reps[0].take_outputs()  # the first batch is in flight (its messages are lost)
    extra = make_request(attacker, CID, 1, 3, b"add q 1")
    assert reps[0].on_request(extra, 0.1) is not None  # sent directly: over its quota
    for b in reps[1:]:
        assert b.on_request(extra, 0.1) is None
        for out in b.take_outputs():
            if isinstance(out, Send) and out.to == 0:
                reps[0].on_message(out.data, 0.1)
    assert (attacker.public_key, 1, 3) in reps[0].pending  # forwarded copies do not count


def test_a_backup_forwards_again_before_it_suspects_the_primary() -> None:
    info, signers, hv = cluster()
    reps = replicas(info, signers, hv)
    backup = reps[1]
    raw = make_request(HashSigner(b"c", hv), CID, 1, 1, b"set a b")
    backup.on_request(raw, 0.0)
    backup.take_outputs()
    half = info.params.view_change_timeout / 2
    backup.on_timer("view", half)
    outs = [pb.PeerMessage.FromString(o.data) for o in backup.take_outputs() if isinstance(o, Send)]
    assert [m.request for m in outs] == [raw] and not backup.view_changing
    backup.on_timer("view", 2 * half)
    assert backup.view_changing and backup.view == 1


def test_the_primary_serves_client_keys_round_robin() -> None:
    info, signers, hv = cluster(batch_max_requests=3, max_pending_per_client=64)
    reps = replicas(info, signers, hv)
    first = HashSigner(b"first", hv)
    reps[0].on_request(make_request(first, CID, 1, 1, b"set x 1"), 0.1)
    held = reps[0].take_outputs()  # batch 1 in flight
    heavy, b, c = (HashSigner(k, hv) for k in (b"heavy", b"b", b"c"))
    for ts in range(1, 7):
        reps[0].on_request(make_request(heavy, CID, 1, ts, b"add h 1"), 0.1)
    reps[0].on_request(make_request(b, CID, 1, 1, b"add b 1"), 0.1)
    reps[0].on_request(make_request(c, CID, 1, 1, b"add c 1"), 0.1)
    reps[0]._out = held + reps[0].take_outputs()
    replies = drive(reps, 0.2)
    seq_of = {}
    for r in replies:
        reply = pb.ClientReply.FromString(r.data)
        root = pb.ReplyRoot.FromString(reply.root.body[TAG_LEN:])
        seq_of[(reply.client_key, reply.timestamp)] = root.seq
    # Batch 2 holds one request of each waiting key, not three of the heavy one.
    assert seq_of[(b.public_key, 1)] == seq_of[(c.public_key, 1)] == seq_of[(heavy.public_key, 1)] == 2


def _batch_seqs(replies: list[ToClient]) -> dict[tuple[bytes, int], int]:
    seq_of = {}
    for r in replies:
        reply = pb.ClientReply.FromString(r.data)
        seq_of[(reply.client_key, reply.timestamp)] = pb.ReplyRoot.FromString(reply.root.body[TAG_LEN:]).seq
    return seq_of


def test_a_small_request_is_not_held_behind_large_ones_queued_before_it() -> None:
    """The inbox flood (issue 12): batches capped at 64 KiB, large requests queued first from
    throwaway keys; a small request arriving after them goes in the very next batch, not after
    every large one (arrival order by key, as before, held it behind all of them)."""
    info, signers, hv = cluster(batch_max_bytes=64 * 1024)
    reps = replicas(info, signers, hv)
    first = HashSigner(b"first", hv)
    reps[0].on_request(make_request(first, CID, 1, 1, b"set x 1"), 0.1)
    held = reps[0].take_outputs()  # batch 1 in flight
    big = b"set big " + b"v" * (60 * 1024)
    flood = [HashSigner(b"flood%d" % i, hv) for i in range(6)]
    for s in flood:
        reps[0].on_request(make_request(s, CID, 1, 1, big), 0.1)
    honest = HashSigner(b"honest", hv)
    reps[0].on_request(make_request(honest, CID, 1, 1, b"set h 1"), 0.1)
    reps[0]._out = held + reps[0].take_outputs()
    seq_of = _batch_seqs(drive(reps, 0.2))
    assert seq_of[(honest.public_key, 1)] == 2
    # The large ones still go, one per 64 KiB batch, in their order of arrival.
    assert [seq_of[(s.public_key, 1)] for s in flood] == [2, 3, 4, 5, 6, 7]


def test_a_key_that_loses_its_newest_request_for_room_does_not_move_newcomers_behind_its_queue() -> None:
    """The virtual time moves only with the primary's own proposals: when the pending table is full
    and the flood's newest request is dropped for an honest newcomer, the newcomer still goes in
    the next batch (had the drop moved the virtual time to the dropped tag, it would wait behind
    every request the flood key still has queued)."""
    info, signers, hv = cluster(
        batch_max_bytes=64 * 1024,
        max_pending_per_client=64,
        max_pending_bytes=2 * 1024 * 1024,
        watermark_window=32,
    )
    reps = replicas(info, signers, hv)
    reps[0].on_request(make_request(HashSigner(b"first", hv), CID, 1, 1, b"set x 1"), 0.1)
    held = reps[0].take_outputs()  # batch 1 in flight
    flood = HashSigner(b"flood", hv)
    refused = [
        reps[0].on_request(make_request(flood, CID, 1, ts, b"set f " + bytes(60 * 1024)), 0.1)
        for ts in range(1, 30)
    ]
    assert any(refused) and len(reps[0].pending) > 5  # the table is full of the flood's requests
    # An honest request just too big for the room left: the flood's newest goes to make room.
    room = info.params.max_pending_bytes - reps[0].pending_bytes
    honest = HashSigner(b"honest", hv)
    queued = len(reps[0].pending)
    assert reps[0].on_request(make_request(honest, CID, 1, 1, b"set h " + bytes(room // 3)), 0.1) is None
    assert len(reps[0].pending) == queued  # one of the flood's dropped, the honest one in
    reps[0]._out = held + reps[0].take_outputs()
    seq_of = _batch_seqs(drive(reps, 0.2))
    assert seq_of[(honest.public_key, 1)] <= 3  # beside the flood's first two, not after its queue


def test_a_small_request_still_goes_in_the_next_batch_when_the_flood_ahead_of_it_has_aged() -> None:
    """The steady state of the inbox flood: 60 KiB requests queued long enough to have aged (they
    now go first, oldest first). A batch takes one of them and then whatever smaller still fits,
    so an honest send arriving now goes in the next batch, not after the aged backlog."""
    info, signers, hv = cluster(batch_max_bytes=64 * 1024, watermark_window=64, checkpoint_interval=8)
    reps = replicas(info, signers, hv)
    reps[0].on_request(make_request(HashSigner(b"first", hv), CID, 1, 1, b"set x 1"), 0.1)
    queue: list[tuple[int, object]] = [(0, o) for o in reps[0].take_outputs()]
    for i in range(14):
        reps[0].on_request(
            make_request(HashSigner(b"old%d" % i, hv), CID, 1, 1, b"set f " + bytes(60 * 1024)), 0.1
        )
    for _ in range(6):  # six batches of one flood request each: the rest have aged
        queue = _until_next_batch(reps, queue, 0.2)
    honest = make_request(HashSigner(b"honest", hv), CID, 1, 1, b"set h 1")
    reps[0].on_request(honest, 0.3)
    queue += [(0, o) for o in reps[0].take_outputs()]
    batches = []
    for _ in range(2):
        queue = _until_next_batch(reps, queue, 0.3)
        head = queue[0][1]
        assert isinstance(head, Send)
        batches.append(list(pb.Batch.FromString(pb.PeerMessage.FromString(head.data).batch).requests))
    assert honest in batches[0] + batches[1], [len(b) for b in batches]  # the one in flight, or the next
    assert all(len(b) <= 2 for b in batches)


class _SmallOpsApp(KVApp):
    max_op_bytes = 100


def test_an_operation_the_application_would_refuse_for_its_size_is_refused_at_the_door() -> None:
    """A 60 KiB op where the application takes 100 bytes: refused before it is queued, forwarded
    or proposed (a flood of such requests would otherwise be ordered, at full cost, only to be
    refused at execution)."""
    info, signers, hv = cluster()
    reps = [Replica(info, i, signers[i], hv, _SmallOpsApp) for i in range(info.n)]
    for r in reps:
        r.start(0.0)
        r.take_outputs()
    attacker = HashSigner(b"big-op", hv)
    for r in (reps[0], reps[1]):  # the primary, and a backup that would forward it
        error = r.on_request(make_request(attacker, CID, 1, 1, b"set k " + b"v" * 60_000), 0.1)
        assert error == "operation exceeds 100 bytes"
        assert r.rejected_inputs == 1 and not r.pending
        assert not [o for o in r.take_outputs() if isinstance(o, Send)]
    ok = make_request(attacker, CID, 1, 2, b"set k v")
    reps[0].on_request(ok, 0.2)
    assert statuses(drive(reps, 0.2), attacker.public_key) == {0}


def _until_next_batch(
    reps: list[Replica], queue: list[tuple[int, object]], now: float
) -> list[tuple[int, object]]:
    """Deliver ``queue`` (headed by a PRE-PREPARE) until the primary proposes again; return the
    undelivered rest, headed by that next PRE-PREPARE."""
    first = True
    while queue:
        i, out = queue[0]
        if not isinstance(out, Send):
            queue.pop(0)
            continue
        if i == 0 and pb.PeerMessage.FromString(out.data).batch and not first:
            return queue
        first = False
        queue.pop(0)
        for j in [out.to] if out.to is not None else [k for k in range(len(reps)) if k != i]:
            reps[j].on_message(out.data, now)
            queue += [(j, o) for o in reps[j].take_outputs()]
    return queue


@pytest.mark.parametrize("per_batch", [6, 12, 24])
def test_a_large_request_is_not_starved_by_a_stream_of_small_ones(per_batch: int) -> None:
    """Small requests from ``per_batch`` fresh keys arrive per batch of 4, faster than batches take
    them; a 3 KiB request that came before them still goes within a few batches. Smallest first
    would never take it. Fair order alone took it late and later the faster the flood (the virtual
    time climbs one small request's worth per level, each level holding what came while the last
    drained: batch 39 at 12 per batch, not within 40 at 24, the review's finding); ageing bounds
    the wait (``FAIR_AGE_BATCHES``)."""
    info, signers, hv = cluster(batch_max_bytes=4 * 1024, batch_max_requests=4, watermark_window=64)
    reps = replicas(info, signers, hv)
    big = make_request(HashSigner(b"big", hv), CID, 1, 1, b"set big " + b"v" * 3000)
    reps[0].on_request(make_request(HashSigner(b"first", hv), CID, 1, 1, b"set x 1"), 0.1)
    queue: list[tuple[int, object]] = [(0, o) for o in reps[0].take_outputs()]  # batch 1 in flight
    reps[0].on_request(big, 0.1)
    batches: list[list[bytes]] = []
    for wave in range(40):
        for i in range(per_batch):
            reps[0].on_request(
                make_request(HashSigner(b"s%d.%d" % (wave, i), hv), CID, 1, 1, b"set s 1"), 0.1
            )
        queue += [(0, o) for o in reps[0].take_outputs()]
        queue = _until_next_batch(reps, queue, 0.2)
        head = queue[0][1]
        assert isinstance(head, Send)
        batches.append(list(pb.Batch.FromString(pb.PeerMessage.FromString(head.data).batch).requests))
        if big in batches[-1]:
            break
    assert big in batches[-1] and len(batches) <= 9, len(batches)
    assert all(len(b) == 4 for b in batches[:-1])  # the flood's batches were full meanwhile


# ---- a slow primary (Aardvark's pre-prepare delay) --------------------------------------------


def _run_timed(nodes: list[Replica | ByzantineReplica], start: float, end: float, step: float = 0.05) -> None:
    """Fire due timers every ``step`` seconds and deliver everything at once (lossless, instant)."""
    t = start
    while t <= end:
        for i, node in enumerate(nodes):
            core = node.inner if isinstance(node, ByzantineReplica) else node
            for name, at in sorted(core.timers.items(), key=lambda kv: kv[1]):
                if at <= t:
                    node.on_timer(name, t)
            outs = node.take_outputs()
            queue = [(i, o) for o in outs]
            while queue:
                j, out = queue.pop(0)
                if not isinstance(out, Send):
                    continue
                for k in [out.to] if out.to is not None else [x for x in range(len(nodes)) if x != j]:
                    nodes[k].on_message(out.data, t)
                    queue += [(k, o) for o in nodes[k].take_outputs()]
        t = round(t + step, 6)


def test_a_primary_that_proposes_just_under_the_request_timer_is_replaced() -> None:
    """Measured on a real n = 4 cluster: a primary that holds each PRE-PREPARE for 80 % of the
    request timer cut 50 clients from 528 to 17 sends/s with no view change. With nothing in flight
    and requests waiting, backups now expect a PRE-PREPARE within ``propose_timeout``: one
    re-forward, then a view change, long before the held PRE-PREPARE would have gone out."""
    info, signers, hv = cluster(propose_timeout=0.3)
    reps = replicas(info, signers, hv)
    nodes: list[Replica | ByzantineReplica] = [ByzantineReplica(reps[0], [SlowPrimary()], random.Random(1))]
    nodes += reps[1:]
    client = HashSigner(b"slowed", hv)
    raw = make_request(client, CID, 1, 1, b"set a b")
    for node in nodes:  # the client's resend to all (backups watch the primary)
        node.on_request(raw, 0.05)
    held_until = 0.05 + SlowPrimary.HOLD * info.params.view_change_timeout
    _run_timed(nodes, 0.05, held_until - 0.1)
    assert all(r.view == 1 for r in reps[1:]), [(r.view, r.view_changing) for r in reps[1:]]
    _run_timed(nodes, held_until - 0.1, held_until + 2.0)
    assert all(r.clients.get((client.public_key, 1)) is not None for r in reps[1:])  # executed in view 1
    assert {r.last_executed for r in reps[1:]} == {1}


def test_an_honest_primary_under_steady_load_is_not_suspected() -> None:
    """The deadline only runs while nothing is in flight: requests arriving at every tick, an
    honest primary, and 5 s later still view 0 with every request executed."""
    info, signers, hv = cluster(propose_timeout=0.3)
    reps = replicas(info, signers, hv)
    client = HashSigner(b"steady", hv)
    t = 0.0
    for ts in range(1, 51):
        raw = make_request(client, CID, 1, ts, b"add n 1")
        for r in reps:
            r.on_request(raw, t)
        _run_timed(list(reps), t, t + 0.1)
        t = round(t + 0.1, 6)
    assert all(r.view == 0 and not r.view_changing for r in reps)
    assert {r.last_executed for r in reps} == {reps[0].last_executed} and reps[0].last_executed >= 25


# ---- review of the fair order (46c1c11..a8ef596) ---------------------------------------------


class _Dead:
    """A crashed replica: takes nothing, says nothing."""

    def on_message(self, raw: bytes, now: float) -> None:
        pass

    def take_outputs(self) -> list[object]:
        return []


def _pipelined_history(
    reps: list[Replica], hv: HashVerifier, rounds: int, now: float
) -> tuple[HashSigner, bytes]:
    """An honest key with two sessions, one request outstanding per session, each sent to the
    primary and to backup 1 (a stand-in, or a resend to all): while the primary orders them, backup 1
    always holds the key's newest request when the next comes. Returns the key and its last request,
    still pending everywhere (the primary then crashes with it in flight)."""
    h = HashSigner(b"busy-honest", hv)
    body = b"set h " + bytes(8 * 1024)
    raw = make_request(h, CID, 0, 1, body)
    reps[0].on_request(raw, now)
    queue: list[tuple[int, object]] = [(0, o) for o in reps[0].take_outputs()]
    reps[1].on_request(raw, now)
    queue += [(1, o) for o in reps[1].take_outputs()]
    for k in range(2, rounds + 1):
        raw = make_request(h, CID, k % 2, k, body)
        for i in (0, 1):
            reps[i].on_request(raw, now)
            queue += [(i, o) for o in reps[i].take_outputs()]
        queue = _until_next_batch(reps, queue, now)  # request k-1 executes, k is proposed
    return h, raw


@pytest.mark.parametrize("rounds", [10, 80])
def test_a_busy_key_is_not_held_behind_a_flood_after_a_view_change(rounds: int) -> None:
    """A backup's virtual time never moves (it proposes nothing), but a key that always has a request
    pending there chains its tags on: after ``rounds`` requests of 8 KiB the key's tag at backup 1 is
    ~rounds x 9 KiB above its virtual time. The primary crashes, backup 1 becomes primary: each of
    a flood of 60 KiB requests from fresh keys (tag: virtual time + 61 KiB) goes before the busy
    key's request that was there before all of them, and the wait grows with the key's history."""
    info, signers, hv = cluster(batch_max_bytes=64 * 1024, watermark_window=32, checkpoint_interval=4)
    reps = replicas(info, signers, hv)
    h, _last = _pipelined_history(reps, hv, rounds, 0.1)
    last_key = (h.public_key, rounds % 2, rounds)
    assert last_key in reps[1].pending
    # The flood reaches the backups (sent to all: the primary is gone).
    nodes: list = [_Dead(), *reps[1:]]
    flood = [HashSigner(b"vc-flood%d" % i, hv) for i in range(12)]
    for s in flood:
        raw = make_request(s, CID, 1, 1, b"set f " + bytes(60 * 1024))
        for r in reps[1:]:
            r.on_request(raw, 0.2)
            r.take_outputs()
    # The primary's crash is noticed: view 1, primary backup 1.
    outs: dict[int, list[object]] = {}
    for i in (1, 2, 3):
        reps[i]._start_view_change(1, 0.3)
        outs[i] = reps[i].take_outputs()
    replies = deliver(nodes, outs, 0.3)
    assert all(r.view == 1 and not r.view_changing for r in reps[1:])
    seq_of = _batch_seqs(replies)
    flood_seqs = sorted(seq_of[(s.public_key, 1)] for s in flood)
    mine = seq_of[(h.public_key, rounds)]
    # Before the change (keys in order of their oldest waiting request) it went first; fair in bytes
    # with an up-to-date virtual time it goes in the first batch or two of the new view.
    assert mine <= flood_seqs[1], (mine, flood_seqs)


def test_a_session_whose_newest_request_was_dropped_for_room_keeps_its_order() -> None:
    """``_drop_pending`` forgets the key's last tag when the dropped request holds it, even though
    older requests of the key (here of the same session) still wait: the session's next request is
    tagged from the virtual time, below its older ones, goes first, and the older one is then stale
    at execution (skipped with no reply). The docstring promises "a key's own requests keep their
    order"; the old round-robin kept them in arrival order."""
    info, signers, hv = cluster(batch_max_bytes=64 * 1024, max_pending_bytes=450 * 1024)
    reps = replicas(info, signers, hv)
    reps[0].on_request(make_request(HashSigner(b"first", hv), CID, 1, 1, b"set x 1"), 0.1)
    held = reps[0].take_outputs()  # batch 1 in flight
    k = HashSigner(b"pipeliner", hv)
    big = b"set k " + bytes(60 * 1024)
    assert reps[0].on_request(make_request(k, CID, 1, 1, big), 0.1) is None
    assert reps[0].on_request(make_request(k, CID, 1, 2, big), 0.1) is None
    honest = HashSigner(b"newcomer", hv)
    assert reps[0].on_request(make_request(honest, CID, 1, 1, b"set h " + bytes(40 * 1024)), 0.1) is None
    assert (k.public_key, 1, 2) not in reps[0].pending  # the session's newest went for room
    assert reps[0].on_request(make_request(k, CID, 1, 3, b"set k small"), 0.1) is None
    reps[0]._out = held + reps[0].take_outputs()
    replies = drive(reps, 0.2)
    seq_of = _batch_seqs(replies)
    assert (k.public_key, 1) in seq_of, "timestamp 1 never executed: overtaken by timestamp 3"
    assert seq_of[(k.public_key, 1)] <= seq_of[(k.public_key, 3)]
