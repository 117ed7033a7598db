"""Votes relayed through the primary (``Params.vote_relay``, docs/PROTOCOL.md *Votes through the
primary*): backups send PREPAREs and COMMITs to the primary alone, the primary passes each valid one
on, and a primary that withholds relays costs a slot one status tick's resend, then the backups
vote directly for a back-off that doubles."""

from __future__ import annotations

from collections.abc import Callable

from bft.app.kv import KVApp
from bft.core.config import ClusterInfo, Params
from bft.core.events import Send
from bft.core.replica import STATUS_TIMER, Replica
from bft.crypto import TAG_LEN, HashSigner, HashVerifier, Kind
from bft.pb.bftchat.v1 import protocol_pb2 as pb
from bft.wire import make_request, peek_kind

CID = b"relay-test-cid-0"
N = 4

Filter = Callable[[int, Send], bool]


class Net:
    """Four replicas on a lossless network; ``drop(sender, out)`` loses an output; ``sent`` holds
    every vote as (sender, signer, kind, to)."""

    def __init__(self, **params: int | bool) -> None:
        hv = HashVerifier()
        signers = [HashSigner(b"r%d" % i, hv) for i in range(N)]
        self.info = ClusterInfo(tuple(s.public_key for s in signers), CID, Params(**params))  # type: ignore[arg-type]
        self.reps = [Replica(self.info, i, signers[i], hv, KVApp) for i in range(N)]
        self.client = HashSigner(b"client", hv)
        self.now = 0.0
        self.drop: Filter = lambda sender, out: False
        self.sent: list[tuple[int, int, Kind, int | None]] = []
        self.ts = 0
        for r in self.reps:
            r.start(0.0)
        self._run([(i, o) for i, r in enumerate(self.reps) for o in r.take_outputs()])

    def _run(self, queue: list[tuple[int, object]]) -> None:
        while queue:
            i, out = queue.pop(0)
            if not isinstance(out, Send):
                continue
            msg = pb.PeerMessage.FromString(out.data)
            if msg.HasField("envelope"):
                kind = peek_kind(msg.envelope, CID)
                if kind in (Kind.PREPARE, Kind.COMMIT):
                    self.sent.append((i, msg.envelope.signer, kind, out.to))
            if self.drop(i, out):
                continue
            for j in [out.to] if out.to is not None else [k for k in range(N) if k != i]:
                self.reps[j].on_message(out.data, self.now)
                queue += [(j, o) for o in self.reps[j].take_outputs()]

    def request(self) -> None:
        self.ts += 1
        raw = make_request(self.client, CID, 1, self.ts, b"add x 1")
        self.reps[0].on_request(raw, self.now)
        self._run([(0, o) for o in self.reps[0].take_outputs()])

    def tick(self) -> None:
        self.now += self.info.params.status_interval
        for i, r in enumerate(self.reps):
            r.on_timer(STATUS_TIMER, self.now)
            self._run([(i, o) for o in r.take_outputs()])


def _relayed(sender: int, out: Send) -> bool:
    """An output of the primary (0) carrying a backup's vote: a relay."""
    if sender != 0:
        return False
    msg = pb.PeerMessage.FromString(out.data)
    kind = peek_kind(msg.envelope, CID) if msg.HasField("envelope") else None
    return kind in (Kind.PREPARE, Kind.COMMIT) and msg.envelope.signer != 0


def test_backups_vote_to_the_primary_which_relays_and_the_batch_commits() -> None:
    net = Net()
    net.request()
    assert all(r.last_executed == 1 for r in net.reps)
    own = [(signer, kind, to) for sender, signer, kind, to in net.sent if sender == signer]
    # Every backup's PREPARE and COMMIT went to the primary alone; the primary's COMMIT to all.
    assert {(s, k, t) for s, k, t in own if s != 0} == {
        (s, k, 0) for s in (1, 2, 3) for k in (Kind.PREPARE, Kind.COMMIT)
    }
    assert (0, Kind.COMMIT, None) in own
    # The primary passed each backup's vote it counted on to the other backups (later ones, whose
    # bytes match a counted vote's, it drops unread: its quorum reached every backup already).
    relays = [(signer, kind, to) for sender, signer, kind, to in net.sent if sender == 0 and signer != 0]
    assert relays and all(to not in (0, signer) for signer, _, to in relays)
    for signer, kind in {(s, k) for s, k, _ in relays}:
        assert sorted(t for s, k, t in relays if (s, k) == (signer, kind)) == [
            t for t in (1, 2, 3) if t != signer
        ]
    assert len({s for s, k, _ in relays if k == Kind.PREPARE}) >= 2  # 2f PREPAREs reach every backup


def test_without_relay_votes_go_to_everyone() -> None:
    net = Net(vote_relay=False)
    net.request()
    assert all(r.last_executed == 1 for r in net.reps)
    assert {to for sender, signer, kind, to in net.sent if sender == signer} == {None}
    assert not [1 for sender, signer, *_ in net.sent if sender != signer]


def test_a_primary_that_withholds_relays_delays_one_slot_then_backups_vote_directly() -> None:
    net = Net(vote_relay_backoff=4)
    net.drop = _relayed  # primary 0 proposes and votes, but never relays
    net.request()
    # Without relays no backup has 2f PREPAREs: the slot waits.
    assert all(r.last_executed == 0 for r in net.reps[1:])
    net.tick()
    assert all(r.last_executed == 0 for r in net.reps[1:])  # a slot is resent from its second tick
    net.tick()
    net.tick()
    assert all(r.last_executed == 1 for r in net.reps)
    # The backups whose slot waited now vote directly for the next vote_relay_backoff (4) sequence
    # numbers: seqs 2-4 commit at once, with no tick.
    backed_off = [r for r in net.reps[1:] if r._relay_from == 1 + 4]
    assert len(backed_off) >= 2  # at least 2f backups, enough for the others' quorums
    for seq in (2, 3, 4):
        net.request()
        assert all(r.last_executed == seq for r in net.reps), seq
    # From seq 5 on they try the primary again; it still withholds: one more slow slot, and the
    # back-off doubles (8 more sequence numbers voted directly).
    net.request()
    for _ in range(3):
        net.tick()
    assert all(r.last_executed == 5 for r in net.reps)
    assert sum(r._relay_from == 5 + 8 and r._relay_backoff == 16 for r in net.reps[1:]) >= 2


def test_relayed_votes_are_checked_like_direct_ones() -> None:
    """A primary cannot pass off a vote a backup did not sign: a relayed PREPARE whose body was
    altered fails the signature check and is not counted."""
    net = Net()
    tampered: list[bytes] = []

    def alter(sender: int, out: Send) -> bool:
        if not _relayed(sender, out):
            return False
        msg = pb.PeerMessage.FromString(out.data)
        body = (
            pb.Prepare.FromString(msg.envelope.body[TAG_LEN:])
            if peek_kind(msg.envelope, CID) == Kind.PREPARE
            else None
        )
        if body is None or out.to is None:
            return False
        body.digest = b"\x00" * 32
        msg.envelope.body = msg.envelope.body[:TAG_LEN] + body.SerializeToString()
        tampered.append(msg.SerializeToString())
        net.reps[out.to].on_message(tampered[-1], net.now)
        return True

    net.drop = alter
    before = [r.rejected_inputs for r in net.reps]
    net.request()
    assert tampered
    assert sum(r.rejected_inputs for r in net.reps) - sum(before) >= len(tampered)
    # The real votes arrive by the tick's direct resend, and the slot commits everywhere.
    for _ in range(3):
        net.tick()
    assert all(r.last_executed == 1 for r in net.reps)
