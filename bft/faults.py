"""Byzantine behaviours, written once, as wrappers around a replica core and its outputs.

The simulator assigns them to up to f replicas; the fault-injection tool switches them on in real
replica processes. A behaviour signs its lies with the replica's own valid key where the lie needs
it (equivocation, wrong digests, false checkpoints), and with nobody's key where the lie is a
forgery. Link-level faults (drop to a peer, slowness) are a ``LinkPolicy`` that both the
simulator's network and the runtime's transport consult.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from bft import merkle
from bft.core.events import Output, Send, ToClient
from bft.core.replica import Replica, leaf_bytes
from bft.core.viewchange import ValidViewChange, check_view_change, plan_new_view
from bft.crypto import TAG_LEN, Kind, sha256
from bft.pb.bftchat.v1 import protocol_pb2 as pb
from bft.wire import WireError, parse, peek_kind, seal, varint

_MESSAGES: dict[Kind, type] = {
    Kind.PREPREPARE: pb.PrePrepare,
    Kind.PREPARE: pb.Prepare,
    Kind.COMMIT: pb.Commit,
    Kind.CHECKPOINT: pb.Checkpoint,
    Kind.NEW_VIEW: pb.NewView,
    Kind.VIEW_CHANGE: pb.ViewChange,
}


@dataclass
class LinkPolicy:
    """Transport-level faults of one replica's outgoing links."""

    drop_to: set[int] = field(default_factory=set)
    delay: float = 0.0  # seconds added to every outgoing message

    def allows(self, to: int) -> bool:
        return to not in self.drop_to


class Behaviour:
    """Transforms one replica's outputs. ``name`` is the command-line name of the behaviour."""

    name = "honest"

    def transform(self, node: ByzantineReplica, out: Output) -> list[Output]:
        return [out]

    def release(self, node: ByzantineReplica) -> list[Output]:
        """Outputs held back earlier that are due now (``node.now``): a behaviour that delays."""
        return []

    def observe(self, node: ByzantineReplica, raw: bytes) -> None:
        """A message the replica received (before its core sees it): a behaviour that collects."""


def _decode(out: Output, cluster_id: bytes) -> tuple[pb.PeerMessage, Kind, object] | None:
    """An outgoing message with its kind and parsed payload (our own bytes: no need to verify)."""
    if not isinstance(out, Send):
        return None
    try:
        msg = parse(pb.PeerMessage, out.data)
    except WireError:
        return None
    if not msg.HasField("envelope"):
        return None
    kind = peek_kind(msg.envelope, cluster_id)
    if kind not in _MESSAGES:
        return None
    body = _MESSAGES[kind]()
    body.ParseFromString(msg.envelope.body[TAG_LEN:])
    return msg, kind, body


class Silent(Behaviour):
    """Sends nothing at all, to replicas or clients."""

    name = "silent"

    def transform(self, node: ByzantineReplica, out: Output) -> list[Output]:
        return [] if isinstance(out, (Send, ToClient)) else [out]


class MuteToClients(Behaviour):
    """Takes part in the protocol but never answers a client: the designated replier that says
    nothing (docs/PROTOCOL.md, *Designated repliers*), so no view change comes to the rescue."""

    name = "mute-to-clients"

    def transform(self, node: ByzantineReplica, out: Output) -> list[Output]:
        return [] if isinstance(out, ToClient) else [out]


class Equivocate(Behaviour):
    """As primary, sends one PRE-PREPARE to half the backups and a different one to the rest."""

    name = "equivocate"

    def transform(self, node: ByzantineReplica, out: Output) -> list[Output]:
        dec = _decode(out, node.cid)
        if dec is None or dec[1] != Kind.PREPREPARE or not isinstance(out, Send) or out.to is not None:
            return [out]
        msg, _, pp = dec
        assert isinstance(pp, pb.PrePrepare)
        batch = pb.Batch()
        batch.ParseFromString(msg.batch)
        batch.timestamp_us += 1
        if len(batch.requests) > 1:
            batch.requests.pop()
        alt = batch.SerializeToString()
        other = node.reseal(Kind.PREPREPARE, pb.PrePrepare(view=pp.view, seq=pp.seq, digest=sha256(alt)))
        peers = node.peers()
        node.rng.shuffle(peers)
        half = len(peers) // 2
        outs: list[Output] = [Send(r, out.data) for r in peers[:half]]
        outs += [Send(r, pb.PeerMessage(envelope=other, batch=alt).SerializeToString()) for r in peers[half:]]
        return outs


class WrongDigest(Behaviour):
    """PREPAREs and COMMITs for a batch nobody proposed (validly signed)."""

    name = "wrong-digest"

    def transform(self, node: ByzantineReplica, out: Output) -> list[Output]:
        dec = _decode(out, node.cid)
        if dec is None or dec[1] not in (Kind.PREPARE, Kind.COMMIT) or not isinstance(out, Send):
            return [out]
        _, kind, vote = dec
        assert isinstance(vote, (pb.Prepare, pb.Commit))
        vote.digest = sha256(vote.digest)
        return [Send(out.to, pb.PeerMessage(envelope=node.reseal(kind, vote)).SerializeToString())]


class Forge(Behaviour):
    """Messages that claim other senders or carry bad signatures.

    Besides garbling its own signatures, it forges, for each honest target separately, a whole
    commit certificate for a different batch at the next sequence number: only signature checks
    stop a target from executing it (the ``skip-signature-check`` mutation shows that they must).
    """

    name = "forge"

    def transform(self, node: ByzantineReplica, out: Output) -> list[Output]:
        dec = _decode(out, node.cid)
        if dec is None or not isinstance(out, Send):
            return [out]
        msg, kind, body = dec
        outs: list[Output] = []
        # Our own message, attributed to another replica (signature cannot verify).
        env = pb.Envelope()
        env.CopyFrom(msg.envelope)
        env.signer = node.rng.randrange(node.cluster_n)
        outs.append(Send(out.to, pb.PeerMessage(envelope=env, batch=msg.batch).SerializeToString()))
        # A garbled signature on a true message.
        env2 = pb.Envelope()
        env2.CopyFrom(msg.envelope)
        env2.signature = bytes(64)
        outs.append(Send(out.to, pb.PeerMessage(envelope=env2).SerializeToString()))
        if kind in (Kind.PREPREPARE, Kind.PREPARE) and isinstance(body, (pb.PrePrepare, pb.Prepare)):
            outs += self._forged_certificates(node, body.view, body.seq)
        return outs

    def _forged_certificates(self, node: ByzantineReplica, view: int, seq: int) -> list[Output]:
        outs: list[Output] = []
        primary = view % node.cluster_n
        for target in node.peers():
            batch = pb.Batch(timestamp_us=1_000_003 * (target + 1) + seq).SerializeToString()
            digest = sha256(batch)
            pp = node.forge_as(primary, Kind.PREPREPARE, pb.PrePrepare(view=view, seq=seq, digest=digest))
            commits = [
                node.forge_as(r, Kind.COMMIT, pb.Commit(view=view, seq=seq, digest=digest))
                for r in range(node.cluster_n)
            ]
            proof = pb.CommitProof(preprepare=pp, batch=batch, commits=commits)
            outs.append(Send(target, pb.PeerMessage(commit_proof=proof).SerializeToString()))
        return outs


class LieToClients(Behaviour):
    """Replies with a wrong result, signed with the replica's own key (a consistent lie)."""

    name = "lie-to-clients"

    def transform(self, node: ByzantineReplica, out: Output) -> list[Output]:
        if not isinstance(out, ToClient):
            return [out]
        try:
            reply = parse(pb.ClientReply, out.data)
            root = parse(pb.ReplyRoot, reply.root.body[TAG_LEN:])
        except WireError:
            return [out]
        lie = reply.result + b" (a lie)"
        leaf = merkle.leaf_hash(
            leaf_bytes(reply.client_key, reply.session, reply.timestamp, reply.status, lie)
        )
        signed = node.reseal(Kind.REPLY, pb.ReplyRoot(view=root.view, seq=root.seq, root=leaf))
        forged = pb.ClientReply(
            root=signed,
            session=reply.session,
            timestamp=reply.timestamp,
            result=lie,
            index=0,
            client_key=reply.client_key,
            status=reply.status,
        )
        return [ToClient(out.client_key, out.session, out.timestamp, forged.SerializeToString())]


class BadCheckpoint(Behaviour):
    """CHECKPOINTs with a false state digest (validly signed)."""

    name = "bad-checkpoint"

    def transform(self, node: ByzantineReplica, out: Output) -> list[Output]:
        dec = _decode(out, node.cid)
        if dec is None or dec[1] != Kind.CHECKPOINT or not isinstance(out, Send):
            return [out]
        ck = dec[2]
        assert isinstance(ck, pb.Checkpoint)
        ck.state_digest = sha256(b"false" + ck.state_digest)
        return [Send(out.to, pb.PeerMessage(envelope=node.reseal(Kind.CHECKPOINT, ck)).SerializeToString())]


class BadNewView(Behaviour):
    """As a new primary, a NEW-VIEW whose re-proposals differ from what its VIEW-CHANGEs prove."""

    name = "bad-new-view"

    def transform(self, node: ByzantineReplica, out: Output) -> list[Output]:
        dec = _decode(out, node.cid)
        if dec is None or dec[1] != Kind.NEW_VIEW or not isinstance(out, Send):
            return [out]
        nv = dec[2]
        assert isinstance(nv, pb.NewView)
        if nv.preprepares:
            del nv.preprepares[-1]  # forget a re-proposal (possibly of a committed batch)
        else:
            bogus = pb.Batch(timestamp_us=7).SerializeToString()
            pp = pb.PrePrepare(view=nv.view, seq=1, digest=sha256(bogus))
            nv.preprepares.append(node.reseal(Kind.PREPREPARE, pp))
        return [Send(out.to, pb.PeerMessage(envelope=node.reseal(Kind.NEW_VIEW, nv)).SerializeToString())]


class Replay(Behaviour):
    """Re-sends old messages (of earlier slots and views) to random replicas."""

    name = "replay"

    def __init__(self) -> None:
        self.history: deque[bytes] = deque(maxlen=256)

    def transform(self, node: ByzantineReplica, out: Output) -> list[Output]:
        if not isinstance(out, Send):
            return [out]
        outs: list[Output] = [out]
        if self.history and node.rng.random() < 0.3:
            old = self.history[node.rng.randrange(len(self.history))]
            outs.append(Send(node.rng.choice(node.peers()), old))
        self.history.append(out.data)
        return outs


class Mutate(Behaviour):
    """Small-scope mutations (ByzzFuzz): view or seq ±1, another digest, a subset of recipients."""

    name = "mutate"

    def transform(self, node: ByzantineReplica, out: Output) -> list[Output]:
        dec = _decode(out, node.cid)
        if dec is None or not isinstance(out, Send) or node.rng.random() < 0.5:
            return [out]
        msg, kind, body = dec
        choice = node.rng.randrange(4)
        if choice == 3 and out.to is None:
            peers = node.peers()
            return [Send(r, out.data) for r in node.rng.sample(peers, node.rng.randrange(1, len(peers) + 1))]
        if isinstance(body, (pb.PrePrepare, pb.Prepare, pb.Commit)):
            if choice == 0:
                body.view = max(0, body.view + node.rng.choice((-1, 1)))
            elif choice == 1:
                body.seq = max(1, body.seq + node.rng.choice((-1, 1)))
            else:
                body.digest = sha256(body.digest)
        elif isinstance(body, pb.Checkpoint):
            body.seq += node.rng.choice((-1, 1)) * 1
        elif isinstance(body, pb.ViewChange):
            body.new_view += 1
        else:
            return [out]
        return [
            Send(
                out.to, pb.PeerMessage(envelope=node.reseal(kind, body), batch=msg.batch).SerializeToString()
            )
        ]


class Flood(Behaviour):
    """Garbage bytes and oversized junk next to its normal traffic (bounded per output)."""

    name = "flood"

    def transform(self, node: ByzantineReplica, out: Output) -> list[Output]:
        if not isinstance(out, Send):
            return [out]
        junk = node.rng.randbytes(node.rng.randrange(1, 200))
        big = pb.PeerMessage(batch=bytes(64 * 1024)).SerializeToString()
        return [out, Send(out.to, junk), Send(out.to, big)]


class Targeted(Behaviour):
    """Votes for the victim only, so the victim alone may see a quorum form; then, in the view
    change, denies having prepared anything (its VIEW-CHANGEs carry no prepared certificates)."""

    name = "targeted"

    def __init__(self, victim: int) -> None:
        self.victim = victim

    def transform(self, node: ByzantineReplica, out: Output) -> list[Output]:
        dec = _decode(out, node.cid)
        if dec is None or not isinstance(out, Send):
            return [out]
        _, kind, body = dec
        if kind in (Kind.PREPARE, Kind.COMMIT):
            return [Send(self.victim, out.data)] if out.to in (None, self.victim) else []
        if kind == Kind.VIEW_CHANGE and isinstance(body, pb.ViewChange):
            del body.prepared[:]
            return [Send(out.to, pb.PeerMessage(envelope=node.reseal(kind, body)).SerializeToString())]
        return [out]


PAD_BYTES = 4 * 1024  # unknown-field padding per padded envelope wrapper


def _pad_field(size: int) -> bytes:
    """An unknown length-delimited field (number 15): what protobuf keeps and re-sends verbatim."""
    return b"\x7a" + varint(size) + b"\x00" * size


class Pad(Behaviour):
    """Pads every message kind with unknown protobuf fields: inside the signed body (validly
    signed, a few bytes, within the kind's size cap) and around it, in the unsigned envelope, the
    CommitProof and the PeerMessage (kilobytes). Honest replicas that kept them would copy them
    into every certificate (VIEW-CHANGE, NEW-VIEW, CommitProof) and into their tables."""

    name = "pad"

    def transform(self, node: ByzantineReplica, out: Output) -> list[Output]:
        if not isinstance(out, Send):
            return [out]
        try:
            msg = parse(pb.PeerMessage, out.data)
        except WireError:
            return [out]
        if msg.HasField("envelope"):
            kind = peek_kind(msg.envelope, node.cid)
            if kind in _MESSAGES:
                body = msg.envelope.body + _pad_field(4)
                msg.envelope.body = body
                msg.envelope.signature = node.inner.signer.sign(body)
            msg.envelope.ParseFromString(msg.envelope.SerializeToString() + _pad_field(PAD_BYTES))
        if msg.HasField("commit_proof"):
            proof = msg.commit_proof
            for env in [proof.preprepare, *proof.commits]:
                env.ParseFromString(env.SerializeToString() + _pad_field(PAD_BYTES))
        return [Send(out.to, msg.SerializeToString() + _pad_field(64))]


class CheckpointFlood(Behaviour):
    """Next to each of its CHECKPOINTs, validly signed CHECKPOINTs with ever-new digests at its
    seq, at in-window seqs above it and at far-future seqs (bounded per output)."""

    name = "checkpoint-flood"

    def __init__(self) -> None:
        self.count = 0

    def transform(self, node: ByzantineReplica, out: Output) -> list[Output]:
        dec = _decode(out, node.cid)
        if dec is None or dec[1] != Kind.CHECKPOINT or not isinstance(out, Send):
            return [out]
        ck = dec[2]
        assert isinstance(ck, pb.Checkpoint)
        k = node.inner.p.checkpoint_interval
        outs: list[Output] = [out]
        for i in range(6):
            self.count += 1
            seq = ck.seq + k * (i % 4) + (10**6 * k if i % 3 == 0 else 0)
            fake = pb.Checkpoint(seq=seq, state_digest=sha256(b"flood %d" % self.count))
            msg = pb.PeerMessage(envelope=node.reseal(Kind.CHECKPOINT, fake))
            outs.append(Send(out.to, msg.SerializeToString()))
        return outs


class ReplyLie(Behaviour):
    """Replies with the honest result but a signed root claiming an absurd view and seq: a client
    that believed the highest seq would wait for ever on its next read."""

    name = "reply-lie"

    def transform(self, node: ByzantineReplica, out: Output) -> list[Output]:
        if not isinstance(out, ToClient):
            return [out]
        try:
            reply = parse(pb.ClientReply, out.data)
        except WireError:
            return [out]
        leaf = merkle.leaf_hash(
            leaf_bytes(reply.client_key, reply.session, reply.timestamp, reply.status, reply.result)
        )
        signed = node.reseal(Kind.REPLY, pb.ReplyRoot(view=2**40 + node.inner.view, seq=2**62, root=leaf))
        lie = pb.ClientReply(
            root=signed,
            session=reply.session,
            timestamp=reply.timestamp,
            result=reply.result,
            index=0,
            client_key=reply.client_key,
            status=reply.status,
        )
        return [ToClient(out.client_key, out.session, out.timestamp, lie.SerializeToString())]


def _status_broadcast(out: Output, cluster_id: bytes) -> pb.Status | None:
    """Our periodic STATUS (sent once per status tick), parsed; None for any other output."""
    if not isinstance(out, Send) or out.to is not None:
        return None
    try:
        msg = parse(pb.PeerMessage, out.data)
    except WireError:
        return None
    if not msg.HasField("envelope") or peek_kind(msg.envelope, cluster_id) != Kind.STATUS:
        return None
    return parse(pb.Status, msg.envelope.body[TAG_LEN:])


def _state_chunk(out: Output) -> pb.PeerMessage | None:
    if not isinstance(out, Send):
        return None
    try:
        msg = parse(pb.PeerMessage, out.data)
    except WireError:
        return None
    return msg if msg.HasField("state_chunk") else None


def _junk(node: ByzantineReplica, size: int) -> bytes:
    return bytes([node.rng.randrange(256)]) * size  # cheap to make: chunks may be megabytes


def _spoil(node: ByzantineReplica, chunk: pb.StateChunk) -> None:
    """Junk in place of a chunk's content, same sizes (an empty run of pages gains one byte)."""
    if chunk.page_hashes:
        hashes = [_junk(node, len(h)) for h in chunk.page_hashes]
        del chunk.page_hashes[:]
        chunk.page_hashes.extend(hashes)
        return
    if chunk.parts:
        chunk.data = _junk(node, len(chunk.data))
        return
    pages = [_junk(node, len(p)) for p in chunk.pages]
    if not any(pages):
        pages[0] = _junk(node, 1)
    del chunk.pages[:]
    chunk.pages.extend(pages)


class JunkChunks(Behaviour):
    """State transfer junk: every chunk it serves has its data replaced (manifest, index and path
    kept, so only a per-chunk check catches it); at each status tick it also pushes a junk chunk
    of its stable checkpoint to everyone, and a FETCH for an absurd window."""

    name = "junk-chunks"

    def transform(self, node: ByzantineReplica, out: Output) -> list[Output]:
        msg = _state_chunk(out)
        if msg is not None and isinstance(out, Send):
            _spoil(node, msg.state_chunk)
            return [Send(out.to, msg.SerializeToString())]
        if _status_broadcast(out, node.cid) is None:
            return [out]
        outs: list[Output] = [out]
        snap = node.inner.stable_snapshot
        if snap is None:
            return outs
        chunk = snap.chunks(node.rng.randrange(len(snap.pages)), 0, 1)[0]
        _spoil(node, chunk)
        outs.append(Send(None, pb.PeerMessage(state_chunk=chunk).SerializeToString()))
        want = pb.FetchState(seq=snap.seq, digest=snap.digest, first=0, count=2**32 - 1)
        fetch = node.reseal(Kind.FETCH, pb.Fetch(state=want))
        outs.append(Send(None, pb.PeerMessage(envelope=fetch).SerializeToString()))
        return outs


class SlowTransfer(Behaviour):
    """A source that stalls: of the chunks asked from it, it sends only the first of each answer,
    and only every other time (progress slow enough to hurt, sometimes none at all)."""

    name = "slow-transfer"

    def __init__(self) -> None:
        self.turn = 0

    def transform(self, node: ByzantineReplica, out: Output) -> list[Output]:
        msg = _state_chunk(out)
        if msg is None:
            return [out]
        self.turn += 1
        keep = msg.state_chunk.index % node.inner.p.state_chunks_per_fetch == 0 and self.turn % 2 == 0
        return [out] if keep else []


class StatusFlood(Behaviour):
    """Amplification requests: next to each STATUS, ten more claiming to be far behind or still
    changing view (each asks for commit proofs, a NEW-VIEW or a checkpoint proof), and now and
    then a FETCH for the whole of everybody's snapshot."""

    name = "status-flood"

    def transform(self, node: ByzantineReplica, out: Output) -> list[Output]:
        st = _status_broadcast(out, node.cid)
        if st is None:
            return [out]
        outs: list[Output] = [out]
        for _ in range(10):
            lie = pb.Status(
                view=node.rng.randrange(st.view + 1),
                view_changing=node.rng.random() < 0.5,
                last_executed=node.rng.randrange(st.last_executed + 1),
                stable_seq=0,
            )
            env = node.reseal(Kind.STATUS, lie)
            outs.append(Send(None, pb.PeerMessage(envelope=env).SerializeToString()))
        snap = node.inner.stable_snapshot
        if snap is not None and node.rng.random() < 0.1:
            want = pb.FetchState(seq=snap.seq, digest=snap.digest, first=0, count=len(snap.pages))
            env = node.reseal(Kind.FETCH, pb.Fetch(state=want))
            outs.append(Send(node.rng.choice(node.peers()), pb.PeerMessage(envelope=env).SerializeToString()))
        return outs


class AbsurdView(Behaviour):
    """STATUS claiming views no quorum ever reached (10**9, or 2**64 - 1): a recovering replica
    that believed one peer would park itself there."""

    name = "absurd-view"

    def transform(self, node: ByzantineReplica, out: Output) -> list[Output]:
        st = _status_broadcast(out, node.cid)
        if st is None:
            return [out]
        st.view = node.rng.choice((10**9, 2**64 - 1))
        env = node.reseal(Kind.STATUS, st)
        return [Send(None, pb.PeerMessage(envelope=env).SerializeToString())]


class SlowPrimary(Behaviour):
    """As primary, holds each PRE-PREPARE back for most of the backups' request timer (a share
    ``HOLD`` of the current view-change timeout), so that every batch still commits just before any
    backup would suspect it: the slowest pace the request timer lets a primary keep (Aardvark's
    "pre-prepare delay" attack). Everything else is honest."""

    name = "slow-primary"
    HOLD = 0.8

    def __init__(self) -> None:
        self.held: deque[tuple[float, Output]] = deque()
        self.seen: set[bytes] = set()

    def transform(self, node: ByzantineReplica, out: Output) -> list[Output]:
        dec = _decode(out, node.cid)
        if dec is None or dec[1] != Kind.PREPREPARE:
            return [out]
        assert isinstance(out, Send)
        key = dec[0].envelope.body
        if key in self.seen:  # a resend of one still held (or long released): the first copy decides
            return [] if any(isinstance(o, Send) and o.data == out.data for _, o in self.held) else [out]
        if len(self.seen) > 4096:
            self.seen.clear()
        self.seen.add(key)
        self.held.append((node.now + self.HOLD * node.inner._timeout(), out))
        return []

    def release(self, node: ByzantineReplica) -> list[Output]:
        due: list[Output] = []
        while self.held and self.held[0][0] <= node.now:
            due.append(self.held.popleft()[1])
        return due


class NoRelay(Behaviour):
    """As primary, takes part honestly but never relays the backups' votes to one another
    (``Params.vote_relay``), or relays them to one half of the backups only: every slot then waits
    for the backups' all-to-all resend at a status tick. Bounded by the backups' back-off (a backup
    whose relayed vote did not arrive votes directly for the next ``vote_relay_backoff`` sequence
    numbers, twice as many after each such slot in the view)."""

    name = "no-relay"

    def transform(self, node: ByzantineReplica, out: Output) -> list[Output]:
        dec = _decode(out, node.cid)
        if (
            dec is None
            or dec[1] not in (Kind.PREPARE, Kind.COMMIT)
            or dec[0].envelope.signer == node.inner.id
        ):
            return [out]
        assert isinstance(out, Send)
        if out.to is not None and out.to % 2 == node.rng.randrange(2):
            return [out]  # a relay to some backups only, changing from vote to vote
        return []


class RecoveryLie(Behaviour):
    """Every STATUS claims a pending recovery with an absurd target (2**64-1, or far past the
    window), often with an absurd view too: the primary must not order empty batches beyond 2W past
    its stable checkpoint nor faster than recovery_null_batches per tick, and a replica that really
    recovers must neither park in that view nor wait for the claimed target."""

    name = "recovery-lie"

    def transform(self, node: ByzantineReplica, out: Output) -> list[Output]:
        st = _status_broadcast(out, node.cid)
        if st is None:
            return [out]
        st.recovering = True
        st.recovery_target = node.rng.choice((2**64 - 1, st.stable_seq + 10**6, st.stable_seq + 1))
        if node.rng.random() < 0.5:
            st.view = node.rng.choice((10**9, 2**64 - 1))
        env = node.reseal(Kind.STATUS, st)
        return [Send(None, pb.PeerMessage(envelope=env).SerializeToString())]


class StaleViewChanges(Behaviour):
    """Keeps every valid VIEW-CHANGE it sees (alone or inside NEW-VIEWs), the lowest-epoch one per
    sender and view. At each status tick, for a view above its own whose primary it is, it replays
    them to every peer (so that they join that view) and, once it holds 2f of other senders, sends
    a NEW-VIEW built on them (lowest epochs first: a replica wiped since it signed one forgot what
    it had prepared) plus its own lying VIEW-CHANGE without prepared certificates, enters that
    view itself and re-proposes empty batches over every seq above the NEW-VIEW's, committed or
    not. Honest replicas must refuse a VIEW-CHANGE whose epoch is below the signer's executed one
    (docs/PROTOCOL.md, Epochs); the ``ignore-epochs`` mutation shows what happens if they do not."""

    name = "stale-view-changes"
    KEEP = 64  # VIEW-CHANGEs kept (bounded like any table of ours)

    def __init__(self) -> None:
        self.kept: dict[tuple[int, int], ValidViewChange] = {}  # (view, sender) -> lowest epoch
        self.done: set[int] = set()  # views whose NEW-VIEW we sent

    def observe(self, node: ByzantineReplica, raw: bytes) -> None:
        try:
            msg = parse(pb.PeerMessage, raw)
        except WireError:
            return
        if not msg.HasField("envelope"):
            return
        kind = peek_kind(msg.envelope, node.cid)
        envs: list[pb.Envelope] = []
        if kind == Kind.VIEW_CHANGE:
            envs = [msg.envelope]
        elif kind == Kind.NEW_VIEW:
            try:
                nv = parse(pb.NewView, msg.envelope.body[TAG_LEN:])
            except WireError:
                return
            envs = list(nv.view_changes)
        inner = node.inner
        for env in envs:
            if env.signer == inner.id:
                continue
            try:
                vc = check_view_change(inner.cluster, inner.verifier, env)
            except WireError:
                continue
            if inner.cluster.primary(vc.new_view) != inner.id:
                continue
            old = self.kept.get((vc.new_view, vc.sender))
            if old is None or vc.epoch < old.epoch:
                self.kept[(vc.new_view, vc.sender)] = vc
        while len(self.kept) > self.KEEP:
            del self.kept[min(self.kept)]

    def transform(self, node: ByzantineReplica, out: Output) -> list[Output]:
        if _status_broadcast(out, node.cid) is None:
            return [out]
        return [out, *self._attack(node)]

    def _attack(self, node: ByzantineReplica) -> list[Output]:
        inner = node.inner
        outs: list[Output] = []
        views = sorted({v for v, _ in self.kept if v > inner.view and v not in self.done})
        for view in views:
            mine = sorted((vc for (v, _), vc in self.kept.items() if v == view), key=lambda vc: vc.epoch)
            for vc in mine:
                outs.append(Send(None, pb.PeerMessage(envelope=vc.envelope).SerializeToString()))
            if len(mine) < inner.q.view_change - 1:
                continue
            lie = pb.ViewChange(
                new_view=view,
                stable_seq=inner.h,
                stable_digest=inner.stable_digest if inner.h else b"",
                epoch=inner.clients.epoch(inner.id),
            )
            if inner.h:
                lie.checkpoint_proof.extend(inner.stable_proof)
            own = check_view_change(inner.cluster, inner.verifier, node.reseal(Kind.VIEW_CHANGE, lie))
            chosen = [own, *mine[: inner.q.view_change - 1]]
            plan = plan_new_view(chosen)
            nv = pb.NewView(view=view, view_changes=[vc.envelope for vc in chosen])
            for seq, digest in plan.proposals:
                pp = pb.PrePrepare(view=view, seq=seq, digest=digest)
                nv.preprepares.append(node.reseal(Kind.PREPREPARE, pp))
            env = node.reseal(Kind.NEW_VIEW, nv)
            outs.append(Send(None, pb.PeerMessage(envelope=env).SerializeToString()))
            self.done.add(view)
            # Enter it ourselves and fill every seq above the re-proposals with an empty batch.
            inner.view = view
            inner._enter_view(env, nv, plan.min_s, plan.stable_digest, list(plan.stable_proof), node.now)
            top = max([plan.min_s, *(seq for seq, _ in plan.proposals)])
            inner.next_seq = top + 1
            while inner.next_seq <= min(inner.last_executed + 1, inner.h + inner.p.watermark_window):
                inner._propose(pb.Batch(), node.now)
            outs.extend(inner.take_outputs())
            break
        return outs


BEHAVIOURS: dict[str, Callable[[], Behaviour]] = {
    "silent": Silent,
    "equivocate": Equivocate,
    "wrong-digest": WrongDigest,
    "forge": Forge,
    "lie-to-clients": LieToClients,
    "mute-to-clients": MuteToClients,
    "bad-checkpoint": BadCheckpoint,
    "bad-new-view": BadNewView,
    "replay": Replay,
    "mutate": Mutate,
    "flood": Flood,
    "pad": Pad,
    "checkpoint-flood": CheckpointFlood,
    "reply-lie": ReplyLie,
    "junk-chunks": JunkChunks,
    "slow-transfer": SlowTransfer,
    "status-flood": StatusFlood,
    "absurd-view": AbsurdView,
    "slow-primary": SlowPrimary,
    "no-relay": NoRelay,
    "recovery-lie": RecoveryLie,
    "stale-view-changes": StaleViewChanges,
}


class ByzantineReplica:
    """A replica core whose outputs pass through Byzantine behaviours. Same driver interface."""

    def __init__(self, inner: Replica, behaviours: list[Behaviour], rng: random.Random) -> None:
        self.inner = inner
        self.behaviours = behaviours
        self.rng = rng
        self.cid = inner.cid
        self.cluster_n = inner.cluster.n
        self.now = 0.0  # the latest input's time: when delaying behaviours release what they hold

    # driver interface ---------------------------------------------------------------------
    def start(self, now: float) -> None:
        self.now = now
        self.inner.start(now)

    def on_message(self, raw: bytes, now: float) -> None:
        self.now = now
        for b in self.behaviours:
            b.observe(self, raw)
        self.inner.on_message(raw, now)

    def on_request(self, raw: bytes, now: float, forwarded: bool = False) -> str | None:
        self.now = now
        return self.inner.on_request(raw, now, forwarded)

    def on_timer(self, name: str, now: float) -> None:
        self.now = now
        self.inner.on_timer(name, now)

    def take_outputs(self) -> list[Output]:
        outs = self.inner.take_outputs()
        for b in self.behaviours:
            nxt: list[Output] = []
            for o in outs:
                nxt.extend(b.transform(self, o))
            outs = nxt
        for b in self.behaviours:  # due now; the status timer's ticks make sure there is a "now"
            outs.extend(b.release(self))
        return outs

    # helpers for behaviours ---------------------------------------------------------------
    def peers(self) -> list[int]:
        return [r for r in range(self.cluster_n) if r != self.inner.id]

    def reseal(self, kind: Kind, message: object) -> pb.Envelope:
        """Sign a (lying) message with this replica's own valid key."""
        return seal(self.inner.signer, self.inner.id, kind, self.cid, message)  # type: ignore[arg-type]

    def forge_as(self, replica: int, kind: Kind, message: object) -> pb.Envelope:
        """A message that claims ``replica`` as its signer; the signature is ours, so it cannot verify."""
        env = self.reseal(kind, message)
        env.signer = replica
        if replica == self.inner.id:
            env.signature = bytes(64)
        return env
