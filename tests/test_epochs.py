"""Epochs: a VIEW-CHANGE a replica signed before its wipe is refused once it recovered (issue 11,
item 5, docs/PROTOCOL.md "Amnesia" and "Epochs"). Real replica cores driven directly on a network
whose losses the test chooses, virtual time."""

from __future__ import annotations

from collections.abc import Callable

from bft.app.kv import KVApp
from bft.core.config import ClusterInfo, Params
from bft.core.events import Committed, Output, Send
from bft.core.replica import Replica
from bft.core.viewchange import check_view_change, plan_new_view
from bft.crypto import TAG_LEN, HashSigner, HashVerifier, Kind, cluster_id_from, sha256
from bft.pb.bftchat.v1 import protocol_pb2 as pb
from bft.wire import make_request, peek_kind, seal

CID = cluster_id_from(b"epochs")
TICK = 0.2

Drop = Callable[[int, int, bytes], bool]


class Net:
    """n replicas; ``drop(sender, receiver, data)`` loses a message; replicas in ``byz`` are
    silenced (the test speaks for them with their keys). Records what each replica executed."""

    def __init__(self, n: int = 4, ignore_epochs: bool = False, **params: int | bool) -> None:
        self.ignore_epochs = ignore_epochs  # the simulator's ``ignore-epochs`` mutation
        self.hv = HashVerifier()
        self.signers = [HashSigner(b"r%d" % i, self.hv) for i in range(n)]
        # Votes all-to-all: the scripted attacks below decide who hears whose vote, and a relaying
        # primary would carry votes past the drops they set up.
        p = {"checkpoint_interval": 2, "watermark_window": 8, "status_interval": TICK, "vote_relay": False}
        p.update(params)
        self.info = ClusterInfo(tuple(s.public_key for s in self.signers), CID, Params(**p))  # type: ignore[arg-type]
        self.reps = [Replica(self.info, i, self.signers[i], self.hv, KVApp) for i in range(n)]
        for r in self.reps:
            r.check_epochs = not ignore_epochs
        self.now = 1.0
        self.drop: Drop = lambda s, r, d: False
        self.byz: set[int] = set()
        self.executed: dict[int, dict[int, bytes]] = {i: {} for i in range(n)}  # replica -> seq -> digest
        self.client = HashSigner(b"client", self.hv)
        self.ts = 0
        for i, r in enumerate(self.reps):
            r.start(self.now)
            self.run(i)

    def run(self, i: int, outs: list[Output] | None = None) -> None:
        """Carry out replica i's outputs (and everything they cause) until quiet."""
        outs = self.reps[i].take_outputs() if outs is None else outs
        queue: list[tuple[int, Output]] = [(i, o) for o in outs]
        while queue:
            sender, out = queue.pop(0)
            if sender in self.byz:
                continue
            if isinstance(out, Committed):
                self.executed[sender][out.seq] = out.digest
            if not isinstance(out, Send):
                continue
            to = [out.to] if out.to is not None else [k for k in range(len(self.reps)) if k != sender]
            for j in to:
                if j in self.byz or self.drop(sender, j, out.data):
                    continue
                self.reps[j].on_message(out.data, self.now)
                queue += [(j, o) for o in self.reps[j].take_outputs()]

    def send_as(self, sender: int, to: list[int], msg: pb.PeerMessage) -> None:
        """A message of (Byzantine) replica ``sender``, to the chosen replicas only."""
        data = msg.SerializeToString()
        for j in to:
            self.reps[j].on_message(data, self.now)
            self.run(j)

    def tick(self, count: int = 1) -> None:
        for _ in range(count):
            self.now = round(self.now + TICK, 6)
            for i, r in enumerate(self.reps):
                if i in self.byz:
                    continue
                for name, at in sorted(r.timers.items(), key=lambda x: x[1]):
                    if at <= self.now:
                        r.on_timer(name, self.now)
                self.run(i)

    def request(self, op: bytes = b"add n 1", to: list[int] | None = None) -> bytes:
        self.ts += 1
        raw = make_request(self.client, CID, 1, int(self.now * 1_000_000) + self.ts, op)
        for i in range(len(self.reps)) if to is None else to:
            if i not in self.byz:
                self.reps[i].on_request(raw, self.now)
                self.run(i)
        return raw

    def wipe(self, i: int) -> Replica:
        rep = Replica(self.info, i, self.signers[i], self.hv, KVApp, recovering=True)
        rep.check_epochs = not self.ignore_epochs
        self.reps[i] = rep
        rep.start(self.now)
        self.run(i)
        return rep


def _is(data: bytes, kind: Kind) -> bool:
    msg = pb.PeerMessage.FromString(data)
    return msg.HasField("envelope") and peek_kind(msg.envelope, CID) == kind


def _pre_wipe_view_change(net: Net, i: int) -> pb.Envelope:
    """Replica i times out alone (its VIEW-CHANGE for view + 1 is lost on the way) and keeps it."""
    rep = net.reps[i]
    rep._start_view_change(rep.view + 1, net.now)
    for out in rep.take_outputs():
        if isinstance(out, Send) and _is(out.data, Kind.VIEW_CHANGE):
            return pb.PeerMessage.FromString(out.data).envelope
    raise AssertionError("no VIEW-CHANGE sent")


def _recover(net: Net, i: int, ticks: int = 80) -> None:
    for _ in range(ticks):
        net.tick()
        if not net.reps[i].recovering:
            return
    raise AssertionError(f"replica {i} still recovering after {ticks} ticks")


def _stale_new_view_attack(ignore_epochs: bool) -> tuple[Net, int, bytes]:
    """The attack of the test below; returns the net, the seq s and the batch committed there."""
    net = Net(ignore_epochs=ignore_epochs)
    for _ in range(6):
        net.request()
    net.tick(2)
    assert net.reps[0].h >= 4
    old_vc = _pre_wipe_view_change(net, 3)
    assert not pb.ViewChange.FromString(old_vc.body[TAG_LEN:]).prepared  # nothing in flight
    net.wipe(3)
    _recover(net, 3)
    assert all(r.view == 0 and not r.view_changing for r in net.reps)
    net.tick(2)
    s = net.reps[0].last_executed + 1
    assert all(r.last_executed == s - 1 for r in net.reps)

    # Seq s commits in view 0 without replica 2 (lagging: it hears nothing of it).
    net.drop = lambda sender, to, data: to == 2
    net.request(b"set k committed", to=[0])
    assert net.executed[0].get(s) is not None and net.reps[2].last_executed == s - 1
    committed = net.executed[0][s]
    net.drop = lambda sender, to, data: False

    # Replica 1 turns Byzantine: primary of view 1.
    net.byz = {1}
    r1 = net.reps[1]
    lying = pb.ViewChange(new_view=1, stable_seq=r1.h, stable_digest=r1.stable_digest)
    lying.checkpoint_proof.extend(r1.stable_proof)
    lie = seal(net.signers[1], 1, Kind.VIEW_CHANGE, CID, lying)
    net.send_as(1, [2, 3], pb.PeerMessage(envelope=lie))
    net.send_as(1, [2], pb.PeerMessage(envelope=old_vc))  # 3's pre-wipe VIEW-CHANGE, to 2 only
    honest2 = net.reps[2].my_vc if net.reps[2].view_changing else None
    vcs = [lie, old_vc] + ([honest2] if honest2 is not None else [])
    if len(vcs) == 3:
        plan = plan_new_view([check_view_change(net.info, net.hv, e) for e in vcs])
        nv = pb.NewView(view=1, view_changes=vcs)
        for seq, digest in plan.proposals:
            pp = pb.PrePrepare(view=1, seq=seq, digest=digest)
            nv.preprepares.append(seal(net.signers[1], 1, Kind.PREPREPARE, CID, pp))
        net.send_as(1, [0, 2, 3], pb.PeerMessage(envelope=seal(net.signers[1], 1, Kind.NEW_VIEW, CID, nv)))
        other = make_request(net.client, CID, 2, int(net.now * 1_000_000), b"set k forked")
        batch = pb.Batch(timestamp_us=int(net.now * 1_000_000) + 10_000, requests=[other]).SerializeToString()
        pp = pb.PrePrepare(view=1, seq=s, digest=sha256(batch))
        ppe = seal(net.signers[1], 1, Kind.PREPREPARE, CID, pp)
        net.send_as(1, [0, 2, 3], pb.PeerMessage(envelope=ppe, batch=batch))
        commit = seal(net.signers[1], 1, Kind.COMMIT, CID, pb.Commit(view=1, seq=s, digest=pp.digest))
        net.send_as(1, [0, 2, 3], pb.PeerMessage(envelope=commit))
    return net, s, committed


def test_a_new_view_built_on_a_pre_wipe_view_change_cannot_undo_a_committed_batch() -> None:
    """n = 4, replica 1 Byzantine. Replica 3 signs VIEW-CHANGE(1) with no prepared certificate,
    is wiped and recovers in view 0; then seq s commits in view 0 with the votes of 0, 1 and 3
    while replica 2 lags (never prepared s), and 0 executes it. Replica 1, primary of view 1, shows
    2 its own lying VIEW-CHANGE(1) and 3's pre-wipe one: 2 joins view 1, and so does 3 (it sees
    1's and 2's); 1 then builds its NEW-VIEW from {its lie, 3's old VIEW-CHANGE, 2's honest one},
    none of which carries s, and proposes another batch at s. Before epochs, 2 and 3 took that
    NEW-VIEW (3 saw its own VIEW-CHANGE for the view it was in: no sign of a rollback), prepared
    and committed the other batch, and 2 executed at s something else than 0 had. Now 3's
    recovery bumped its epoch by an ordered request that 2 executed too, so 2 refuses 3's old
    VIEW-CHANGE (alone and inside the NEW-VIEW) and nothing diverges."""
    net, s, committed = _stale_new_view_attack(ignore_epochs=False)
    for i in (0, 2, 3):
        got = net.executed[i].get(s)
        assert got is None or got == committed, f"replica {i} executed another batch at seq {s}"
    assert net.reps[2].view == 0 and net.reps[3].view == 0  # nobody followed replica 1


def test_the_ignore_epochs_mutation_lets_the_attack_through() -> None:
    """The simulator's ``ignore-epochs`` mutation (honest replicas skip the epoch check) is unsafe:
    the same attack makes replica 2 execute another batch than replica 0 at a committed seq."""
    net, s, committed = _stale_new_view_attack(ignore_epochs=True)
    assert net.executed[0][s] == committed
    assert net.executed[2].get(s) not in (None, committed)


def test_recovery_bumps_the_epoch_by_an_ordered_request_and_votes_only_above_it() -> None:
    """The wiped replica's epoch request is ordered like a client request and executed by every
    replica alike (the epoch table is replicated state, in the checkpoint digest); the replica
    votes again only at a stable checkpoint at or above the seq where it executed, and from then
    on signs VIEW-CHANGEs carrying that epoch."""
    net = Net()
    for _ in range(4):
        net.request()
    net.tick(2)
    rep = net.wipe(3)
    net.tick()
    assert rep.epoch_request is not None and rep.epoch_ts > 0
    ts = rep.epoch_ts
    # One tick: the request reached every replica, was ordered at once and executed everywhere.
    assert rep.recovering and rep.epoch_seq is not None and rep.epoch_seq > 4
    executed_at = rep.epoch_seq
    assert rep.h < (rep.recovery_target or 0)
    _recover(net, 3)
    assert rep.h >= executed_at  # at a stable checkpoint at or above it
    assert all(r.clients.epoch(3) == ts for r in net.reps)
    assert all(r.clients.epoch(i) == 0 for r in net.reps for i in (0, 1, 2))
    assert len({(r.last_executed, r.state_digest()) for r in net.reps}) == 1
    vc = _pre_wipe_view_change(net, 3)
    assert pb.ViewChange.FromString(vc.body[TAG_LEN:]).epoch == ts


def test_the_epoch_table_is_in_the_snapshot_and_the_digest_and_old_snapshots_still_load() -> None:
    from bft.core.clients import ClientTable

    table = ClientTable(10)
    table.record((b"k" * 32, 1), 5, 1, 0, b"r")
    before = table.digest()
    snap_without = table.snapshot()
    assert not snap_without.epochs
    table.set_epoch(2, 1234)
    assert table.digest() != before  # the checkpoint digest covers the epochs
    snap = table.snapshot()
    again = ClientTable.restore(pb.ClientTableSnapshot.FromString(snap.SerializeToString()), 10)
    assert again.epoch(2) == 1234 and again.digest() == table.digest()
    # A snapshot written before epochs existed (no field 3) loads with every epoch 0, same digest.
    old = ClientTable.restore(pb.ClientTableSnapshot.FromString(snap_without.SerializeToString()), 10)
    assert old.epochs == {} and old.digest() == before


def _as_primary_orders(net: Net, raw: bytes) -> None:
    """The primary (replica 0) puts ``raw`` in a batch whatever it is (as a faulty primary could)."""
    p = net.reps[0]
    batch = pb.Batch(requests=[raw])
    p._propose(batch, net.now)
    net.run(0)


def test_a_replica_key_signs_only_its_own_epoch_and_nothing_else_is_accepted() -> None:
    """A request signed by a replica key with any other operation, or the epoch operation signed by
    a client key, is refused at the door, and executed (if a faulty primary orders it) as an agreed
    refusal that changes nothing; a replay of an applied epoch request changes nothing either."""
    net = Net()
    net.request()
    ts = int(net.now * 1_000_000)
    bad = [
        make_request(net.signers[2], CID, 0, ts + 1, b"set k x"),  # a replica key, a chat/kv op
        make_request(net.client, CID, 7, ts + 2, b"\x00bftchat replica epoch\x00"),  # marker, client key
        make_request(net.signers[2], CID, 0, ts + 3, b"\x00bftchat replica epoch\x00", read_only=True),
    ]
    for raw in bad:
        assert net.reps[0].on_request(raw, net.now) is not None
        assert not net.reps[0].pending
    digests = [r.state_digest() for r in net.reps]
    for raw in bad[:2]:
        _as_primary_orders(net, raw)
    assert all(r.clients.epoch(2) == 0 for r in net.reps)
    assert all(r.clients.get((net.signers[2].public_key, 0)) is None for r in net.reps)
    assert len({(r.last_executed, r.state_digest()) for r in net.reps}) == 1
    assert net.reps[0].state_digest() != digests[0]  # (the clock clamp moved; nothing else did)
    # Replica 2 (say Byzantine) bumps its own epoch: allowed, and a replay of it does nothing.
    bump = make_request(net.signers[2], CID, 0, ts + 10, b"\x00bftchat replica epoch\x00")
    assert net.reps[0].on_request(bump, net.now, forwarded=True) is None
    net.run(0)
    assert all(r.clients.epoch(2) == ts + 10 for r in net.reps)
    _as_primary_orders(net, bump)
    older = make_request(net.signers[2], CID, 0, ts + 5, b"\x00bftchat replica epoch\x00")
    _as_primary_orders(net, older)
    assert all(r.clients.epoch(2) == ts + 10 for r in net.reps)
    # Its VIEW-CHANGEs signed with a lower epoch are refused from now on; with the epoch, taken.
    low = seal(net.signers[2], 2, Kind.VIEW_CHANGE, CID, pb.ViewChange(new_view=1, epoch=ts))
    net.reps[1].on_message(pb.PeerMessage(envelope=low).SerializeToString(), net.now)
    assert 2 not in net.reps[1].vc_latest
    ok = seal(net.signers[2], 2, Kind.VIEW_CHANGE, CID, pb.ViewChange(new_view=1, epoch=ts + 10))
    net.reps[1].on_message(pb.PeerMessage(envelope=ok).SerializeToString(), net.now)
    assert 2 in net.reps[1].vc_latest


def test_a_rolled_back_replica_bumps_its_epoch_again() -> None:
    """A replica that detects a rolled-back log recovers as if wiped, with a new epoch request
    whose timestamp is above the epoch its state already shows."""
    net = Net()
    net.request()
    net.tick()
    rep = net.wipe(3)
    _recover(net, 3)
    first = rep.clients.epoch(3)
    assert first > 0
    net.tick(3)
    vc = seal(net.signers[3], 3, Kind.VIEW_CHANGE, CID, pb.ViewChange(new_view=5))
    rep.on_message(pb.PeerMessage(envelope=vc).SerializeToString(), net.now)
    assert rep.recovering and rep.rollbacks == 1
    _recover(net, 3, 250)  # (the first recovery spent the empty-batch credit of this 30 s interval)
    assert all(r.clients.epoch(3) > first for r in net.reps)


def test_recovery_waits_for_the_epoch_request_even_past_H() -> None:
    """While its epoch request is lost on the way, the wiped replica reaches H but keeps counting
    against f; once the request gets through (it re-sends it every status tick) it is ordered and
    the replica votes again at the next stable checkpoint."""

    def lost(sender: int, to: int, data: bytes) -> bool:
        return sender == 3 and bool(pb.PeerMessage.FromString(data).request)

    net = Net()
    for _ in range(4):
        net.request()
    net.tick(2)
    net.drop = lost
    rep = net.wipe(3)
    for _ in range(60):
        net.tick()
    assert rep.recovery_target is not None and rep.h >= rep.recovery_target
    assert rep.recovering and rep.epoch_seq is None
    assert all(r.clients.epoch(3) == 0 for r in net.reps)
    net.drop = lambda s, r, d: False
    _recover(net, 3, 40)
    assert all(r.clients.epoch(3) == rep.clients.epoch(3) > 0 for r in net.reps)


def test_the_client_table_floor_cannot_refuse_an_epoch_request() -> None:
    """The client table's floor (the highest timestamp ever evicted) may be far above a recovering
    replica's clock: a client that used a timestamp minutes ahead was evicted. The epoch request is
    judged by the epoch table, not as an unknown client session, so the recovery still completes."""
    net = Net(client_table_capacity=1)
    ahead = make_request(net.client, CID, 5, int(net.now * 1_000_000) + 500_000_000, b"add a 1")
    net.reps[0].on_request(ahead, net.now)
    net.run(0)
    for _ in range(3):
        net.request()  # another session: the one ahead is evicted, the floor rises to its timestamp
    net.tick(2)
    assert all(r.clients.floor > int(net.now * 1_000_000) + 400_000_000 for r in net.reps)
    rep = net.wipe(3)
    _recover(net, 3)
    assert rep.clients.epoch(3) > 0 and all(r.clients.epoch(3) == rep.clients.epoch(3) for r in net.reps)
    assert rep.clients.epoch(3) < net.reps[0].clients.floor
