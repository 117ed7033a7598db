"""A wiped (or rolled-back) replica recovers as in PBFT-PR (issue 11 item 5): real replica cores
on a lossless network with status ticks (tests/core_helpers.py), virtual time.

The wiped replica signs no vote at or below its bound H, starts no view change of its own, and
votes again within a bounded number of status ticks even when no client sends anything: the
primary orders empty batches until the checkpoints reach H (docs/PROTOCOL.md, Amnesia)."""

from __future__ import annotations

from core_helpers import deliver

from bft.app.kv import KVApp
from bft.core.config import ClusterInfo, Params
from bft.core.events import Persist, Record, RecoveryStarted, Send
from bft.core.replica import Replica
from bft.crypto import TAG_LEN, HashSigner, HashVerifier, Kind, cluster_id_from, sha256
from bft.pb.bftchat.v1 import protocol_pb2 as pb
from bft.wire import make_request, peek_kind, seal

CID = cluster_id_from(b"recovery")
TICK = 0.2
VOTES = (Kind.PREPREPARE, Kind.PREPARE, Kind.COMMIT)


class Net:
    """n replicas on a lossless network; ``tick`` fires every due timer, delivers until quiet and
    records every signed envelope each replica sends, with what each persisted."""

    def __init__(self, n: int = 4, **params: int) -> None:
        self.hv = HashVerifier()
        self.signers = [HashSigner(b"r%d" % i, self.hv) for i in range(n)]
        p = {"checkpoint_interval": 2, "watermark_window": 8, "status_interval": TICK, **params}
        self.info = ClusterInfo(tuple(s.public_key for s in self.signers), CID, Params(**p))  # type: ignore[arg-type]
        self.reps = [Replica(self.info, i, self.signers[i], self.hv, KVApp) for i in range(n)]
        self.now = 0.0
        self.sent: list[tuple[int, Kind, bytes]] = []  # (sender, kind, signed body) of each envelope
        self.records: dict[int, list[Record]] = {i: [] for i in range(n)}
        self.down: set[int] = set()
        self.started: list[tuple[int, str]] = []  # RecoveryStarted outputs: (replica, reason)
        self.client = HashSigner(b"client", self.hv)
        self.ts = 0
        for i, r in enumerate(self.reps):
            r.start(0.0)
            self._run({i: r.take_outputs()})

    def _run(self, outputs: dict[int, list[object]]) -> None:
        for i, outs in outputs.items():
            self._note(i, outs)
        taps = [_Tap(r, i, self) for i, r in enumerate(self.reps)]
        deliver(taps, outputs, self.now)  # type: ignore[arg-type]

    def _note(self, i: int, outs: list[object]) -> None:
        for o in outs:
            if isinstance(o, Persist):
                self.records[i].append(o.record)
            elif isinstance(o, RecoveryStarted):
                self.started.append((i, o.reason))
            elif isinstance(o, Send):
                msg = pb.PeerMessage.FromString(o.data)
                if msg.HasField("envelope") and msg.envelope.signer == i:
                    kind = peek_kind(msg.envelope, CID)
                    assert kind is not None
                    self.sent.append((i, kind, msg.envelope.body[TAG_LEN:]))

    def tick(self, count: int = 1) -> None:
        for _ in range(count):
            self.now = round(self.now + TICK, 6)
            for i, r in enumerate(self.reps):
                if i in self.down:
                    continue
                for name, at in sorted(r.timers.items(), key=lambda x: x[1]):
                    if at <= self.now:
                        r.on_timer(name, self.now)
                self._run({i: r.take_outputs()})

    def request(self, op: bytes = b"add n 1") -> None:
        """A client request to every running replica (backups forward it to the primary)."""
        self.ts += 1
        raw = make_request(self.client, CID, 1, int(self.now * 1_000_000) + self.ts, op)
        for i, r in enumerate(self.reps):
            if i not in self.down:
                r.on_request(raw, self.now)
                self._run({i: r.take_outputs()})

    def wipe(self, i: int) -> Replica:
        """Replica i loses its disk and restarts recovering (signed things from before remain)."""
        rep = Replica(self.info, i, self.signers[i], self.hv, KVApp, recovering=True)
        self.reps[i] = rep
        self.records[i] = []
        rep.start(self.now)
        self._run({i: rep.take_outputs()})
        return rep

    def signed(self, i: int, kinds: tuple[Kind, ...] = VOTES, since: int = 0) -> list[tuple[Kind, int]]:
        """(kind, seq or view) of what replica i signed, in order, from ``sent[since]`` on."""
        out = []
        for sender, kind, body in self.sent[since:]:
            if sender != i or kind not in kinds:
                continue
            if kind == Kind.VIEW_CHANGE:
                out.append((kind, pb.ViewChange.FromString(body).new_view))
            else:
                out.append((kind, pb.Prepare.FromString(body).seq))  # same fields for all three votes
        return out


class _Tap:
    """A replica as deliver() sees it: its outputs are recorded on the way out."""

    def __init__(self, rep: Replica, i: int, net: Net) -> None:
        self.rep, self.i, self.net = rep, i, net

    def on_message(self, data: bytes, now: float) -> None:
        if self.i not in self.net.down:
            self.rep.on_message(data, now)

    def take_outputs(self) -> list[object]:
        outs = self.rep.take_outputs()
        self.net._note(self.i, outs)
        return outs


def _busy(net: Net, count: int) -> None:
    for _ in range(count):
        net.request()
    net.tick(2)


def _recover(net: Net, i: int, ticks: int) -> int:
    """Tick until replica i stops recovering; return the ticks it took (fails after ``ticks``)."""
    for t in range(1, ticks + 1):
        net.tick()
        if not net.reps[i].recovering:
            return t
    r = net.reps[i]
    raise AssertionError(f"replica {i} still recovering after {ticks} ticks: h {r.h}, H {r.recovery_target}")


def test_a_wiped_replica_in_an_idle_cluster_votes_again_without_a_view_change() -> None:
    """The cluster has run past several checkpoints; replica 3 is wiped and restarted, and no
    client sends anything. Within a bounded number of status ticks it holds a stable checkpoint
    >= H and votes again (its PREPARE and COMMIT for the next request appear), while every replica
    stays in view 0. Before: it sent a VIEW-CHANGE nobody joined and voted only after the
    cluster's next view change, i.e. never in an idle cluster."""
    net = Net()
    _busy(net, 10)
    assert net.reps[0].h >= 8
    rep = net.wipe(3)
    since = len(net.sent)
    net.tick(2)
    assert rep.recovering and rep.recovery_target is not None
    target = rep.recovery_target
    assert target >= net.reps[0].h + net.info.params.watermark_window  # above its old window
    ticks = _recover(net, 3, 40)
    assert rep.h >= target and rep.view == 0 and not rep.view_changing
    assert all(r.view == 0 and not r.view_changing for r in net.reps)
    assert not net.signed(3, (Kind.VIEW_CHANGE,), since)
    assert all(seq > target for _, seq in net.signed(3, since=since))
    assert ticks <= 20
    before = len(net.sent)
    net.request()
    net.tick()
    assert {k for s, k, _ in net.sent[before:] if s == 3} >= {Kind.PREPARE, Kind.COMMIT}
    assert len({(r.last_executed, r.state_digest()) for r in net.reps}) == 1
    # It persisted its state when recovery ended: a restart from its own log is no longer a wipe.
    restarted = Replica(net.info, 3, net.signers[3], net.hv, KVApp, records=net.records[3])
    assert not restarted.recovering and restarted.h >= target


def test_a_recovering_replica_signs_no_vote_at_or_below_H_while_the_cluster_is_busy() -> None:
    net = Net()
    _busy(net, 6)
    rep = net.wipe(3)
    since = len(net.sent)
    seen_target = 0
    for _ in range(60):
        net.request()
        net.tick()
        if rep.recovery_target is not None:
            seen_target = rep.recovery_target
        if not rep.recovering:
            break
    assert not rep.recovering and seen_target > 0
    votes = net.signed(3, since=since)
    assert all(seq > seen_target for _, seq in votes), (seen_target, votes)
    assert not net.signed(3, (Kind.VIEW_CHANGE,), since)
    _busy(net, 2)
    assert any(seq > seen_target for _, seq in net.signed(3, since=since))  # and it votes again


def test_a_wiped_primary_is_replaced_and_recovers() -> None:
    """Replica 0, primary of view 0, is wiped: it cannot propose (it may have signed other
    PRE-PREPAREs in view 0), so the backups move to view 1 when its STATUS says it recovers; it
    follows through the NEW-VIEW and votes again in view 1."""
    net = Net()
    _busy(net, 6)
    net.wipe(0)
    since = len(net.sent)
    _recover(net, 0, 60)
    assert all(r.view == 1 for r in net.reps)
    assert not net.signed(0, (Kind.VIEW_CHANGE,), since)
    before = len(net.sent)
    net.request()
    net.tick()
    assert any(s == 0 and k in (Kind.PREPARE, Kind.COMMIT) for s, k, _ in net.sent[before:])


def _lie(net: Net, sender: int, **fields: int) -> None:
    env = seal(net.signers[sender], sender, Kind.STATUS, CID, pb.Status(**fields))  # type: ignore[arg-type]
    data = pb.PeerMessage(envelope=env).SerializeToString()
    for i, r in enumerate(net.reps):
        if i != sender:
            r.on_message(data, net.now)
            net._run({i: r.take_outputs()})


def test_lying_statuses_neither_park_the_recovering_replica_nor_run_the_primary_away() -> None:
    """Replica 2 claims views 10**9 and 2**64-1 and a recovery target of 2**64-1 at every tick.
    The wiped replica 3 still recovers in view 0; the primary orders at most
    recovery_null_batches empty batches per tick, and for the liar at most 2W + K per
    recovery_rearm_interval however often it claims."""
    budget = 3
    net = Net(recovery_null_batches=budget)
    _busy(net, 4)
    start = net.reps[0].last_executed
    rep = net.wipe(3)
    p = net.info.params
    for _ in range(80):
        executed = net.reps[0].last_executed
        for view in (10**9, 2**64 - 1):
            _lie(net, 2, view=view, stable_seq=0, recovering=True, recovery_target=2**64 - 1)
        net.tick()
        assert net.reps[0].last_executed - executed <= budget + 1  # + the epoch request's batch
        if not rep.recovering:
            break
    assert not rep.recovering and rep.view == 0 and all(r.view == 0 for r in net.reps)
    # The liar keeps claiming, for a whole minute: nothing more than its one capped target.
    for _ in range(int(p.recovery_rearm_interval / TICK) - 10):
        _lie(net, 2, view=0, stable_seq=0, recovering=True, recovery_target=2**64 - 1)
        net.tick()
    per_target = 2 * p.watermark_window + p.checkpoint_interval
    assert net.reps[0].last_executed - start <= 2 * per_target  # the liar's and the honest one's
    assert all(r.view == 0 for r in net.reps)  # and no view change either
    net.request()
    net.tick()
    assert len({(r.last_executed, r.state_digest()) for r in net.reps}) == 1


def _preprepares(outs: list[object]) -> list[pb.Batch]:
    """The batches of the PRE-PREPAREs among a replica's outputs."""
    return [
        pb.Batch.FromString(m.batch)
        for o in outs
        if isinstance(o, Send) and _is(o.data, Kind.PREPREPARE)
        for m in [pb.PeerMessage.FromString(o.data)]
    ]


def test_a_request_does_not_wait_behind_empty_batches_for_a_peer_recovery() -> None:
    """The primary of an idle cluster orders empty batches for a replica that says it recovers
    (replica 2 here lies); a client request that arrives while they are in flight is proposed at
    once, not after them: max_in_flight paces client batches only. Counting the empty batches cost
    each request of a closed-loop client another PRE-PREPARE round trip, twice its latency under
    a slow primary (simulator seed 20268473, regression scenario
    slow-primary-behind-recovery-empty-batches)."""
    budget = 3
    net = Net(recovery_null_batches=budget, max_in_flight=1)
    _busy(net, 2)
    _lie(net, 2, view=0, stable_seq=0, recovering=True, recovery_target=2**64 - 1)
    primary = net.reps[0]
    net.now = primary.timers["status"]
    primary.on_timer("status", net.now)
    held = primary.take_outputs()  # not delivered: the PRE-PREPAREs are still in flight
    empty = _preprepares(held)
    assert len(empty) == budget and not any(b.requests for b in empty)
    raw = make_request(net.client, CID, 1, int(net.now * 1_000_000) + 100, b"add n 1")
    primary.on_request(raw, net.now)
    proposed = _preprepares(primary.take_outputs())
    assert [list(b.requests) for b in proposed] == [[raw]]


def test_a_whole_cluster_of_empty_data_dirs_still_starts() -> None:
    """Every replica starts recovering (fresh data dirs look wiped): more than f recover at once,
    no bound can be met, and they fall back to a view change as before; then the cluster works."""
    net = Net()
    net.reps = [Replica(net.info, i, net.signers[i], net.hv, KVApp, recovering=True) for i in range(4)]
    for i, r in enumerate(net.reps):
        r.start(net.now)
        net._run({i: r.take_outputs()})
    net.tick(3)
    assert not any(r.recovering for r in net.reps)
    net.tick(30)
    _busy(net, 3)
    assert all(r.last_executed >= 3 for r in net.reps)


def _stable_proof_to(net: Net, to: int) -> None:
    """Replica 0 shows replica ``to`` its stable checkpoint proof, as it does for a STATUS behind it."""
    for e in net.reps[0].stable_proof:
        net.reps[to].on_message(pb.PeerMessage(envelope=e).SerializeToString(), net.now)
    net._run({to: net.reps[to].take_outputs()})


def test_a_rolled_back_log_is_detected_from_our_own_checkpoint() -> None:
    """Replica 1 restarts from an old copy of its log (a restored backup): it does not know what it
    signed after. Its own CHECKPOINT in a peer's stable proof, for a seq it never executed by its
    log, makes it recover as if wiped: it votes only above a new bound."""
    net = Net()
    _busy(net, 4)
    old = list(net.records[1])
    old_h = net.reps[1].h
    _busy(net, 8)
    assert net.reps[0].h > old_h + 2
    top_signed = max(seq for _, seq in net.signed(1))
    rolled = Replica(net.info, 1, net.signers[1], net.hv, KVApp, records=old)
    assert not rolled.recovering and rolled.last_executed < net.reps[0].h
    net.reps[1] = rolled
    rolled.start(net.now)
    net._run({1: rolled.take_outputs()})
    _stable_proof_to(net, 1)
    assert rolled.recovering and rolled.rollbacks == 1
    assert [i for i, _ in net.started] == [1]  # the driver makes it durable (RECOVERING marker)
    since = len(net.sent)
    target = 0
    for _ in range(60):
        net.tick()
        target = rolled.recovery_target or target
        if not rolled.recovering:
            break
    assert not rolled.recovering and target >= top_signed
    assert all(seq > target for _, seq in net.signed(1, since=since))
    _busy(net, 2)
    assert any(seq > target for _, seq in net.signed(1, since=since))


def test_our_own_view_change_for_a_view_above_ours_means_a_rolled_back_log() -> None:
    net = Net()
    _busy(net, 2)
    rep = net.reps[2]
    vc = seal(net.signers[2], 2, Kind.VIEW_CHANGE, CID, pb.ViewChange(new_view=5))
    rep.on_message(pb.PeerMessage(envelope=vc).SerializeToString(), net.now)
    assert rep.recovering and rep.rollbacks == 1
    # One for a view it did promise (ours) is no sign of anything.
    other = net.reps[1]
    mine = seal(net.signers[1], 1, Kind.VIEW_CHANGE, CID, pb.ViewChange(new_view=0))
    other.on_message(pb.PeerMessage(envelope=mine).SerializeToString(), net.now)
    assert not other.recovering


def test_a_silent_primary_no_longer_delays_a_recovery() -> None:
    """n = 7: the primary is silent (one fault) and replica 6 is wiped (the second). Backups do
    not time the primary out for a peer's recovery claim (their targets differ from the primary's,
    a lone timer would strand one of them in a view of its own), but the wiped replica's epoch
    request is a request they hold (docs/PROTOCOL.md, Epochs): their request timers replace the
    primary that does not order it, and the next primary orders the empty batches, with no client
    in sight. Before epochs the recovery waited for the first client request."""
    net = Net(n=7)
    _busy(net, 6)
    net.down.add(0)
    rep = net.wipe(6)
    _recover(net, 6, 150)
    assert rep.view >= 1 and all(r.view == rep.view for i, r in enumerate(net.reps) if i != 0)
    assert rep.clients.epoch(6) > 0 and all(r.clients.epoch(6) == rep.clients.epoch(6) for r in net.reps[1:])


def test_a_pre_prepare_retransmitted_after_the_clock_skew_is_accepted_once_f_plus_1_prepared_it() -> None:
    """Replica 3 was cut off when slot 1 was proposed; the primary's retransmission reaches it
    10 s later, beyond clock_skew. Alone that is refused (the clock check), but with PREPAREs from
    f+1 replicas (one honest found it fresh) it is accepted and 3 prepares it: else an idle cluster
    that needs 3's vote (a peer recovering, another down) could never finish the slot."""
    net = Net(clock_skew_us=1_000_000)
    net.down.add(3)
    net.request()
    slot = net.reps[0].slots[1]
    assert slot.pp_env is not None and slot.batch is not None
    prepares = [net.reps[i].slots[1].my_prepare for i in (1, 2)]
    rep = net.reps[3]
    late = net.now + 10.0

    def prepared() -> bool:
        return any(_is(o.data, Kind.PREPARE) for o in rep.take_outputs() if isinstance(o, Send))

    pp = pb.PeerMessage(envelope=slot.pp_env, batch=slot.batch).SerializeToString()
    rep.on_message(pp, late)
    assert not prepared()
    for e in prepares:
        assert e is not None
        rep.on_message(pb.PeerMessage(envelope=e).SerializeToString(), late)
    rep.on_message(pp, late)
    assert prepared()


def _is(data: bytes, kind: Kind) -> bool:
    msg = pb.PeerMessage.FromString(data)
    return msg.HasField("envelope") and peek_kind(msg.envelope, CID) == kind


def test_an_empty_batch_from_the_past_is_accepted_but_not_one_from_the_future() -> None:
    """An empty batch has no request its time could refuse: one retransmitted long after it was
    proposed (the primary restarted from its log, or we were down) is prepared, so an idle cluster
    can finish the empty batches a recovering peer waits for. One from the future still is not
    (it would move the agreed clock forward)."""
    net = Net(clock_skew_us=1_000_000)
    rep = net.reps[3]
    for seq, ts, ok in ((1, 1_000, True), (2, 10**13, False)):
        data = pb.Batch(timestamp_us=ts).SerializeToString()
        pp = pb.PrePrepare(view=0, seq=seq, digest=sha256(data))
        env = seal(net.signers[0], 0, Kind.PREPREPARE, CID, pp)
        rep.on_message(pb.PeerMessage(envelope=env, batch=data).SerializeToString(), 100.0)
        sent = [o for o in rep.take_outputs() if isinstance(o, Send) and _is(o.data, Kind.PREPARE)]
        assert bool(sent) == ok, (seq, ts)
