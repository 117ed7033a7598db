"""State transfer and answers to STATUS/FETCH, on real replica cores over a tiny timed network.

The network models a slow link (each state chunk occupies it for a while), junk senders and
floods; everything is virtual time, so nothing here depends on the machine's speed.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

import pytest

from bft import merkle
from bft.app.base import AppFactory
from bft.app.kv import KVApp
from bft.core.config import ClusterInfo, Params
from bft.core.events import CheckpointRecord, Persist, Record, Send, SetTimer, StateInstalled
from bft.core.pages import PageTree, Snapshot, encode_page, page_hash
from bft.core.replica import Replica
from bft.core.transfer import Transfer
from bft.crypto import HashSigner, HashVerifier, Kind, cluster_id_from
from bft.pb.bftchat.v1 import protocol_pb2 as pb
from bft.wire import make_request, seal

CID = cluster_id_from(b"transfer test")
LAGGER = 3

# (src, dst, PeerMessage) -> extra messages to deliver to dst right after it (a Byzantine helper)
Tamper = Callable[[int, int, pb.PeerMessage], list[bytes]]


class Net:
    """Four replicas, 1 ms links, status timers; state chunks to the lagging replica share one
    slow link (``chunk_time`` each), and replica LAGGER is cut off until ``join``."""

    def __init__(
        self,
        params: Params,
        chunk_time: float = 0.0,
        tamper: Tamper | None = None,
        app: AppFactory = KVApp,
    ) -> None:
        self.hv = HashVerifier()
        self.signers = [HashSigner(b"r%d" % i, self.hv) for i in range(4)]
        self.info = ClusterInfo(tuple(s.public_key for s in self.signers), CID, params)
        self.reps = [Replica(self.info, i, self.signers[i], self.hv, app) for i in range(4)]
        self.heap: list[tuple[float, int, tuple[object, ...]]] = []
        self.count = 0
        self.now = 0.0
        self.cut = True
        self.chunk_time = chunk_time
        self.link_free = 0.0
        self.tamper = tamper
        self.installed: list[int] = []
        self.sources: list[int] = []  # the lagger's transfer source after each of its status ticks
        self.sent_to: dict[int, int] = {}  # bytes sent to each replica
        self.persisted: dict[int, list[Record]] = {i: [] for i in range(4)}
        for i, r in enumerate(self.reps):
            r.start(0.0)
            self._take(i)

    def _push(self, at: float, ev: tuple[object, ...]) -> None:
        self.count += 1
        heapq.heappush(self.heap, (at, self.count, ev))

    def _take(self, i: int) -> None:
        for out in self.reps[i].take_outputs():
            if isinstance(out, SetTimer):
                self._push(out.at, ("timer", i, out.name))
            elif isinstance(out, StateInstalled):
                self.installed.append(out.seq)
            elif isinstance(out, Persist):
                self.persisted[i].append(out.record)
            elif isinstance(out, Send):
                for j in [out.to] if out.to is not None else [k for k in range(4) if k != i]:
                    self._send(i, j, out.data)

    def _send(self, i: int, j: int, data: bytes) -> None:
        if self.cut and LAGGER in (i, j):
            return
        self.sent_to[j] = self.sent_to.get(j, 0) + len(data)
        msg = pb.PeerMessage.FromString(data)
        at = self.now + 0.001
        if j == LAGGER and msg.HasField("state_chunk") and self.chunk_time:
            self.link_free = max(self.link_free, self.now) + self.chunk_time
            at = self.link_free
        self._push(at, ("msg", j, data))
        if self.tamper is not None:
            for extra in self.tamper(i, j, msg):
                self._push(at, ("msg", j, extra))

    def request(self, client: HashSigner, ts: int, op: bytes) -> None:
        raw = make_request(client, CID, 1, ts, op)
        for i in range(4):
            if not (self.cut and i == LAGGER):
                self.reps[i].on_request(raw, self.now)
                self._take(i)

    def run(self, until: float, stop: Callable[[], bool] = lambda: False, max_events: int = 200_000) -> None:
        while self.heap and self.heap[0][0] <= until and not stop() and max_events > 0:
            max_events -= 1
            at, _, ev = heapq.heappop(self.heap)
            self.now = at
            i = ev[1]
            assert isinstance(i, int)
            if ev[0] == "timer":
                self.reps[i].on_timer(str(ev[2]), at)
                t = self.reps[i].transfer
                if i == LAGGER and t is not None:
                    self.sources.append(t.source)
            else:
                self.reps[i].on_message(ev[2], at)  # type: ignore[arg-type]
            self._take(i)
        self.now = max(self.now, until)


def _params(**kw: object) -> Params:
    base: dict[str, object] = dict(
        checkpoint_interval=2, watermark_window=8, state_chunk_bytes=64, status_interval=0.2, state_pages=16
    )
    base.update(kw)
    return Params(**base)  # type: ignore[arg-type]


def _lagging_cluster(params: Params, **kw: object) -> Net:
    """Replicas 0-2 build a stable checkpoint with a snapshot of many chunks while 3 is cut off."""
    net = _busy_cluster(params, **kw)
    assert all(r.last_executed == 10 and r.h == 10 for r in net.reps[:3])
    snap = net.reps[0].stable_snapshot
    assert snap is not None and len(snap.chunks(0, 0, 1 << 20)) > 30  # needs many chunks
    net.cut = False
    return net


def _busy_cluster(params: Params, **kw: object) -> Net:
    net = Net(params, **kw)  # type: ignore[arg-type]
    client = HashSigner(b"client", net.hv)
    for ts in range(1, 11):
        net.request(client, ts, b"set key%d %s" % (ts, b"v" * 200))
        net.run(net.now + 0.05)
    return net


def _caught_up(net: Net) -> bool:
    lag, ref = net.reps[LAGGER], net.reps[0]
    return lag.transfer is None and lag.last_executed == ref.last_executed and lag.h == ref.h


def test_slow_transfer_keeps_its_progress_and_source_across_ticks() -> None:
    """Chunks trickle in (the whole snapshot takes ~20 status ticks): the transfer keeps what it
    has and stays with its source, which is making progress, and completes."""
    net = _lagging_cluster(_params(), chunk_time=0.1)
    net.run(30.0, lambda: _caught_up(net))
    assert _caught_up(net), (net.reps[LAGGER].last_executed, net.reps[LAGGER].h)
    assert net.installed == [10]
    assert net.reps[LAGGER].state_digest() == net.reps[0].state_digest()
    assert len(net.sources) > 10 and len(set(net.sources)) == 1


def test_silent_source_is_replaced_after_the_timeout_only() -> None:
    """The first source never answers: it is kept for state_transfer_timeout, then replaced."""
    net = _lagging_cluster(_params(state_transfer_timeout=1.0))
    silent = 0  # the lagger asks the first signer of the stable proof: replica 0
    orig_send = net._send

    def send(i: int, j: int, data: bytes) -> None:
        if i == silent and j == LAGGER and pb.PeerMessage.FromString(data).HasField("state_chunk"):
            return
        orig_send(i, j, data)

    net._send = send  # type: ignore[method-assign]
    net.run(30.0, lambda: _caught_up(net))
    assert _caught_up(net)
    first_other = next(k for k, s in enumerate(net.sources) if s != silent)
    assert net.sources[0] == silent and first_other >= 4  # >= 1 s of 0.2 s ticks on the silent one


def test_junk_chunks_from_a_byzantine_replica_are_dropped() -> None:
    """After every real chunk, replica 2 sends a junk one with the same seq, index and total (and
    a copy of the honest manifest): each is checked on its own and dropped, the transfer completes."""

    def junk(i: int, j: int, msg: pb.PeerMessage) -> list[bytes]:
        if j != LAGGER or not msg.HasField("state_chunk"):
            return []
        bad = pb.StateChunk()
        bad.CopyFrom(msg.state_chunk)
        bad.data = bytes(b ^ 0x55 for b in bad.data)
        pages = [bytes(b ^ 0x55 for b in p) for p in bad.pages] or [b""]
        del bad.pages[:]
        bad.pages.extend([*pages[:-1], pages[-1] + b"x"])
        return [pb.PeerMessage(state_chunk=bad).SerializeToString()]

    net = _lagging_cluster(_params(), tamper=junk)
    net.run(30.0, lambda: _caught_up(net))
    assert _caught_up(net)
    assert net.reps[LAGGER].state_digest() == net.reps[0].state_digest()


def _pages_of_every_kind() -> list[bytes]:
    """16 pages: empty ones, small ones that share chunks, and ones of several parts (chunk 64)."""
    sizes = [0, 10, 0, 0, 200, 64, 65, 3, 0, 0, 0, 0, 1, 2, 130, 0]
    return [bytes((i * 7 + k) % 251 for k in range(size)) for i, size in enumerate(sizes)]


def test_a_chunk_is_bound_to_its_place() -> None:
    """Every chunk of a snapshot verifies where it belongs, and nowhere else: a run of pages moved
    to another aligned index (path padded to fit), a part moved to another part or page, or a part
    of a page claimed to be a different length, is refused; the genuine chunks assemble the pages."""
    pages = _pages_of_every_kind()
    snap = Snapshot.of_pages(8, b"s" * 32, pages, 64)
    t = Transfer(8, snap.digest, [], 0, 64, 1 << 20, len(pages))
    chunks = snap.chunks(0, 0, 1000)
    assert {c.level for c in chunks if not c.parts} > {0} and any(c.parts for c in chunks)
    for c in chunks:
        forged = []
        if c.parts:
            for change in (
                {"part": (c.part + 1) % c.parts},
                {"index": (c.index + 1) % 16},
                {"page_bytes": c.page_bytes + 64},
            ):
                bad = pb.StateChunk()
                bad.CopyFrom(c)
                for key, value in change.items():
                    setattr(bad, key, value)
                if key == "page_bytes":
                    bad.parts = -(-bad.page_bytes // 64)
                forged.append(bad)
        else:
            bad = pb.StateChunk()
            bad.CopyFrom(c)
            bad.index = (c.index + (1 << c.level)) % 16
            forged.append(bad)
            if c.level:
                lower = pb.StateChunk()
                lower.CopyFrom(c)
                lower.level -= 1
                del lower.pages[len(lower.pages) // 2 :]
                lower.path.insert(0, b"\0" * 32)
                forged.append(lower)
        for bad in forged:
            assert not t.offer(bad), bad
        assert t.offer(c)
    assert t.complete and t.assemble() == pages and t.rejected >= len(chunks)
    assert snap.tree.root == merkle.levels([page_hash(p, 64) for p in pages])[-1][0]


def test_the_page_tree_is_updated_along_changed_pages_only() -> None:
    """An updated tree equals one built from scratch, and the tree it came from is untouched (an
    older snapshot still serves its own)."""
    pages = _pages_of_every_kind()
    tree = PageTree.build([page_hash(p, 64) for p in pages])
    old_root = tree.root
    changed = {0: b"new", 5: b"", 15: b"x" * 300}
    after = list(pages)
    for i, p in changed.items():
        after[i] = p
    updated = tree.updated({i: page_hash(p, 64) for i, p in changed.items()})
    assert updated.root == PageTree.build([page_hash(p, 64) for p in after]).root
    assert tree.root == old_root and updated.root != old_root
    empty = PageTree.uniform(16, page_hash(b"", 64))
    assert empty.root == PageTree.build([page_hash(b"", 64)] * 16).root


def test_fetch_gets_a_bounded_number_of_chunks() -> None:
    net = _lagging_cluster(_params(state_chunks_per_fetch=3))
    server = net.reps[0]
    snap = server.stable_snapshot
    assert snap is not None
    fetch = pb.Fetch(state=pb.FetchState(seq=snap.seq, digest=snap.digest, first=0, count=10_000))
    env = seal(net.signers[LAGGER], LAGGER, Kind.FETCH, CID, fetch)
    server.on_message(pb.PeerMessage(envelope=env).SerializeToString(), net.now)
    chunks = [o for o in server.take_outputs() if isinstance(o, Send)]
    assert len(chunks) == 3 and all(o.to == LAGGER for o in chunks)


def _status(net: Net, sender: int, **fields: object) -> bytes:
    env = seal(net.signers[sender], sender, Kind.STATUS, CID, pb.Status(**fields))  # type: ignore[arg-type]
    return pb.PeerMessage(envelope=env).SerializeToString()


def _answer_bytes(rep: Replica, sender: int) -> int:
    return sum(len(o.data) for o in rep.take_outputs() if isinstance(o, Send) and o.to == sender)


def test_repeated_status_gets_no_repeated_answer() -> None:
    """A STATUS that says "I am at seq 0" sent 100 times in 0.5 s: the answer (the stable proof)
    goes out once, not 100 times."""
    net = _lagging_cluster(_params())
    rep = net.reps[0]
    rep.take_outputs()
    once = 0
    for k in range(100):
        rep.on_message(_status(net, LAGGER, view=0, last_executed=0, stable_seq=0), net.now + k * 0.005)
        got = _answer_bytes(rep, LAGGER)
        if k == 0:
            once = got
        else:
            assert got == 0, k
    assert once > 0


def test_status_flood_answers_are_bounded_per_peer_in_bytes() -> None:
    """Distinct STATUS questions (each asking for different commit proofs) from one peer: the bytes
    answered stay within the peer's budget (burst + rate x time + one message), not 16 proofs each."""
    budget = 20_000
    params = _params(
        answer_bytes_per_s=budget,
        answer_burst_bytes=budget,
        answer_repeat_interval=0.0,
        checkpoint_interval=64,
        watermark_window=128,
    )
    net = _busy_cluster(params)
    rep = net.reps[0]
    assert rep.last_executed == 10 and rep.h == 0  # commit proofs are still held: catch-up answers
    rep.take_outputs()
    total = 0
    for k in range(200):
        rep.on_message(_status(net, LAGGER, view=0, last_executed=k % 9), net.now + k * 0.001)
        total += _answer_bytes(rep, LAGGER)
    largest = max(len(pb.PeerMessage(commit_proof=p).SerializeToString()) for p in rep.commit_proofs.values())
    assert total > budget / 2  # the budget was used, not refused outright
    assert total <= budget + budget * 0.2 + largest
    assert rep.answers.dropped > 0


def test_the_largest_fetch_fits_its_size_cap() -> None:
    """A FETCH for chunks at the largest seq and index is within the cap that refuses padded bodies
    (caught when the cap predated FetchState: every honest FETCH was dropped)."""
    from bft.crypto import TAG_LEN

    info = ClusterInfo(tuple(HashSigner(b"r%d" % i, HashVerifier()).public_key for i in range(4)), CID)
    top = pb.FetchState(seq=2**64 - 1, digest=b"\xff" * 32, first=2**32 - 1, count=2**32 - 1, part=2**32 - 1)
    fetch = pb.Fetch(state=top)
    assert TAG_LEN + len(fetch.SerializeToString()) <= info.caps.body[Kind.FETCH]


# ---- a recovering (wiped) replica and lying STATUS views --------------------------------------


def _recovering(net: Net, claims: dict[int, int]) -> Replica:
    """A wiped replica 3 that hears STATUS(view=claims[i]) from each peer i."""
    rep = Replica(net.info, LAGGER, net.signers[LAGGER], net.hv, KVApp, recovering=True)
    rep.start(0.0)
    for i, view in claims.items():
        rep.on_message(_status(net, i, view=view, last_executed=0), 0.1)
    rep.take_outputs()
    return rep


def test_one_liar_cannot_park_a_recovering_replica() -> None:
    """Two honest peers in view 2, one claiming view 10**9: the replica will vote in view 2 or
    later, not 10**9 (the (f+1)-th highest view, not the maximum), and starts no view change of its
    own (alone it would do nothing; it waits for a NEW-VIEW)."""
    net = Net(_params())
    rep = _recovering(net, {0: 10**9, 1: 2, 2: 2})
    assert rep.recovering and rep.recovery_view == 2 and rep.view == 0 and not rep.view_changing
    assert rep.recovery_target == 2 * net.info.params.watermark_window


def test_a_view_of_2_64_minus_1_does_not_break_recovery() -> None:
    net = Net(_params())
    rep = _recovering(net, {0: 2**64 - 1, 1: 0, 2: 1})
    assert rep.recovering and rep.recovery_view == 0 and rep.view == 0


def test_requests_a_transfer_installed_leave_no_timer_to_suspect_the_primary() -> None:
    """The lagging replica holds a client's request (its timer armed) when it joins; the state
    transfer installs that request's execution. Nothing waits any more, so it must not suspect
    the primary: before the fix its timer fired anyway and it view-changed alone, stranded out of
    the cluster's view and not voting (simulator seed 20261692)."""
    net = _lagging_cluster(_params(view_change_timeout=1.0))
    lag = net.reps[LAGGER]
    # The last request the others executed reaches the lagger only now (a client's resend).
    raw = make_request(HashSigner(b"client", net.hv), CID, 1, 10, b"set key10 " + b"v" * 200)
    lag.on_request(raw, net.now)
    net._take(LAGGER)
    assert lag.request_timer_on
    net.run(net.now + 6.0)
    assert _caught_up(net)
    assert lag.view == 0 and not lag.view_changing and not lag.request_timer_on
    assert [r.view for r in net.reps] == [0, 0, 0, 0]


def test_a_superseded_target_gives_way_to_the_newer_checkpoint_and_keeps_its_pages() -> None:
    """The lagger fetched the page hashes and one chunk of checkpoint 10 from replica 0, which then
    goes silent (a Byzantine source trickling an old target); meanwhile the cluster certifies 12 and
    14, so replicas 1 and 2 no longer hold 10. The lagger moves to 14 as soon as it learns of it,
    without waiting out the silent source (simulator seed 20266959 spent 12 s per stale target
    before), and takes the pages it already has wherever 14's page hashes match."""
    net = _lagging_cluster(_params(state_transfer_timeout=1.0))
    lag = net.reps[LAGGER]
    orig_send = net._send
    sent_by_0 = [0]

    def send(i: int, j: int, data: bytes) -> None:
        msg = pb.PeerMessage.FromString(data)
        if i == 0 and j == LAGGER and msg.HasField("state_chunk") and not msg.state_chunk.page_hashes:
            sent_by_0[0] += 1
            if sent_by_0[0] > 1:
                return
        orig_send(i, j, data)

    net._send = send  # type: ignore[method-assign]
    while net.now < 2.0 and not (lag.transfer is not None and lag.transfer.pages and sent_by_0[0]):
        net.run(net.now + 0.01)
    t = lag.transfer
    assert t is not None and t.seq == 10 and t.source == 0 and len(t.leaves) == 16
    stalled_at = net.now
    client = HashSigner(b"client", net.hv)
    for ts in range(11, 15):
        net.request(client, ts, b"set key%d %s" % (ts, b"v" * 200))
        net.run(net.now + 0.05)
    assert all(r.h == 14 and 10 not in r.served for r in net.reps[:3])
    done: list[float] = []
    net.run(stalled_at + 2.0, lambda: _caught_up(net) and not done.append(net.now))
    assert done, (lag.last_executed, lag.transfer and lag.transfer.seq, net.sources[-5:])
    assert net.installed and 10 not in net.installed and done[0] - stalled_at < 1.0  # < one timeout
    assert lag.state_digest() == net.reps[0].state_digest()


def test_a_replica_behind_fetches_only_the_pages_that_changed() -> None:
    """A replica that missed a few writes compares the target's page hashes with its own pages and
    fetches only those that differ: far fewer bytes than the whole state."""
    params = _params(state_pages=64, state_chunk_bytes=4096, checkpoint_interval=2, watermark_window=8)
    net = Net(params)
    client = HashSigner(b"client", net.hv)
    net.cut = False
    for ts in range(1, 41):  # 40 keys of 2 KiB on every replica
        net.request(client, ts, b"set key%d %s" % (ts, b"v" * 2048))
        net.run(net.now + 0.05)
    lag = net.reps[LAGGER]
    assert lag.last_executed == 40 and lag.h == 40
    whole = net.reps[0].stable_snapshot.size  # type: ignore[union-attr]
    net.cut = True
    for ts in range(41, 51):  # the lagger misses 10 writes and the checkpoints past them
        net.request(client, ts, b"set key%d %s" % (ts % 3 + 1, b"w" * 2048))
        net.run(net.now + 0.05)
    assert net.reps[0].h == 50
    chunks: list[pb.StateChunk] = []

    def watch(i: int, j: int, msg: pb.PeerMessage) -> list[bytes]:
        if j == LAGGER and msg.HasField("state_chunk"):
            chunks.append(msg.state_chunk)
        return []

    net.tamper = watch
    net.cut = False
    net.run(net.now + 10.0, lambda: _caught_up(net))
    assert _caught_up(net) and net.installed == [50]
    assert lag.state_digest() == net.reps[0].state_digest()
    pages = sum(len(p) for c in chunks for p in c.pages) + sum(len(c.data) for c in chunks)
    assert any(c.page_hashes for c in chunks) and lag.transfer is None
    assert pages < whole / 4, (pages, whole, len(chunks))


def test_state_pages_are_the_protobuf_serialisation() -> None:
    """A checkpoint page is joined by hand around the client table's and the app's bytes; it must
    stay exactly the deterministic StatePage serialisation (replicas agree on digests)."""
    from bft.app.chat import ChatApp

    busy = _busy_cluster(_params())
    idle = Net(_params())
    chat = Replica(idle.info, 0, idle.signers[0], idle.hv, ChatApp)
    for r in [*busy.reps, idle.reps[0], chat]:
        for seq in (0, 1, 10, 300, 2**40, 2**64 - 1):
            for index in range(r.p.state_pages):
                head = dict(seq=seq, last_timestamp_us=r.last_ts) if index == 0 else {}
                ref = pb.StatePage(clients=r.clients.page(index), app=r.app.page(index), **head)
                assert r._page(index, seq) == ref.SerializeToString(deterministic=True)
                assert r._page(index, seq) == encode_page(
                    index, seq, r.last_ts, r.clients.page(index), r.app.page(index)
                )
    assert busy.reps[0].last_ts and any(busy.reps[0].clients.page(i) for i in range(16))


def test_a_checkpoint_rehashes_only_the_pages_that_changed() -> None:
    """After a write to one key, the next checkpoint re-encodes the page of that key, the client
    session's page and page 0, shares every other page with the previous snapshot, and has the
    digest a snapshot built from scratch has."""
    net = _busy_cluster(_params(state_pages=256, checkpoint_interval=2, watermark_window=8))
    rep = net.reps[0]
    before = rep.my_checkpoints[max(rep.my_checkpoints)]
    client = HashSigner(b"client", net.hv)
    net.request(client, 11, b"set key1 changed")
    net.request(client, 12, b"set key1 again")
    net.run(net.now + 0.1)
    after = rep.my_checkpoints[max(rep.my_checkpoints)]
    assert after.seq == before.seq + 2
    fresh = [i for i in range(256) if after.pages[i] is not before.pages[i]]
    assert 0 in fresh and 2 <= len(fresh) <= 3, fresh
    rebuilt = Snapshot.of_pages(after.seq, after.manifest.state_digest, list(after.pages), 64)
    assert rebuilt.digest == after.digest


@pytest.mark.slow
def test_a_snapshot_of_200_mib_is_transferred_and_installed_under_load() -> None:
    """Hundreds of MiB are transferable while the cluster keeps committing: a lagging replica fetches
    a 200 MiB state (200 runs of pages of 1 MiB) at its sources' answer budgets (8 MiB/s each; one
    source at a time, the next one for each new target), while a client writes every 50 ms and
    checkpoints (every 64 batches) supersede its target several times. Each new target is taken at
    once and keeps the pages fetched so far wherever its page hashes match, so the transfer
    converges and installs: measured 16 s of virtual time, ~100 s of wall time on a loaded machine,
    3.0 GiB peak RSS (four replicas of 200 MiB in one process)."""
    mib = 200
    params = _params(
        checkpoint_interval=64, watermark_window=256, state_chunk_bytes=1 << 20, state_pages=16384
    )
    net = Net(params, app=lambda: KVApp.preloaded(mib << 20))
    client = HashSigner(b"client", net.hv)
    ts = 0
    while net.reps[0].h < 128:
        ts += 1
        net.request(client, ts, b"set k%d v" % ts)
        net.run(net.now + 0.01)
    net.run(net.now + 1.0)
    snap = net.reps[0].stable_snapshot
    assert snap is not None and snap.size > mib << 20
    net.cut = False
    start = net.now
    lag, ref = net.reps[LAGGER], net.reps[0]
    while net.now < start + 120.0 and not (net.installed and lag.transfer is None):
        ts += 1
        net.request(client, ts, b"set k%d w" % (ts % 500))
        net.run(net.now + 0.05, max_events=5_000_000)
    done = net.now
    assert net.installed and lag.transfer is None, (lag.last_executed, lag.transfer and lag.transfer.seq)
    targets = {c for c in range(128, ref.h + 1, 64)}
    assert len(targets) >= 4  # the cluster moved on by several checkpoints meanwhile
    # Each source answers within its budget; a superseding target is asked of the next source, so
    # at most the n - 1 = 3 peers' budgets together.
    assert done - start >= (mib << 20) / (3 * params.answer_bytes_per_s) * 0.9
    for _ in range(40):  # it keeps up from there
        ts += 1
        net.request(client, ts, b"set k%d x" % (ts % 500))
        net.run(net.now + 0.05)
    net.run(net.now + 2.0)
    assert lag.last_executed == ref.last_executed and lag.state_digest() == ref.state_digest()


def test_a_checkpoint_record_written_before_pages_still_restores() -> None:
    """An upgraded replica restarts on a log whose CheckpointRecord holds a whole StateSnapshot under
    the old digest: it checks it the old way, restores it, and holds the same pages a replica that
    never stopped has; a record whose snapshot does not match its digest is refused."""
    from bft.core.pages import legacy_digest

    net = _busy_cluster(_params())
    rep = net.reps[0]
    assert rep.h == rep.last_executed == 10
    snap = pb.StateSnapshot(seq=10, last_timestamp_us=rep.last_ts, app=rep.app.snapshot())
    snap.clients.CopyFrom(rep.clients.snapshot())
    data = snap.SerializeToString(deterministic=True)
    digest = legacy_digest(10, rep.state_digest(), data, rep.p.state_chunk_bytes)
    envs = tuple(e.SerializeToString() for e in rep.stable_proof)
    record = CheckpointRecord(10, digest, data, envs, paged=False)
    again = Replica(net.info, 0, net.signers[0], net.hv, KVApp, records=[record])
    assert again.last_executed == again.h == 10 and again.state_digest() == rep.state_digest()
    assert again.stable_snapshot is not None
    assert again.stable_snapshot.digest == rep.my_checkpoints[10].digest  # the same pages
    with pytest.raises(ValueError, match="does not match"):
        Replica(
            net.info,
            0,
            net.signers[0],
            net.hv,
            KVApp,
            records=[CheckpointRecord(10, b"x" * 32, data, envs, paged=False)],
        )


def test_stable_checkpoints_are_logged_as_the_pages_they_changed() -> None:
    """After a full first CheckpointRecord, each stable checkpoint is logged as the few pages changed
    since the previous one (page 0, the written key's, the client session's), chained by seq; the
    chain replays to the same state, and a chain with a link missing is refused. Once the log has
    grown by the state's size (full_checkpoint_log_bytes=0 here), checkpoints are logged in full."""
    net = _busy_cluster(_params(state_pages=256))
    rep = net.reps[0]
    recs = [r for r in net.persisted[0] if isinstance(r, CheckpointRecord)]
    assert len(recs) >= 4 and not recs[0].delta_of
    assert all(r.delta_of == prev.seq for prev, r in itertools.pairwise(recs))
    full = len(pb.StatePages.FromString(recs[0].snapshot).pages)
    changed = [pb.StatePages.FromString(r.snapshot) for r in recs[1:]]
    assert full == 256 and all(1 <= len(d.pages) == len(d.indexes) <= 5 for d in changed)
    again = Replica(net.info, 0, net.signers[0], net.hv, KVApp, records=net.persisted[0])
    assert again.h == rep.h and again.state_digest() == rep.state_digest()
    assert again.stable_snapshot is not None and again.stable_snapshot.digest == rep.stable_digest
    gap = [r for r in net.persisted[0] if r is not recs[2]]
    with pytest.raises(ValueError, match="does not follow"):
        Replica(net.info, 0, net.signers[0], net.hv, KVApp, records=gap)
    compacting = _busy_cluster(_params(state_pages=256, full_checkpoint_log_bytes=0))
    recs = [r for r in compacting.persisted[0] if isinstance(r, CheckpointRecord)]
    assert sum(1 for r in recs if not r.delta_of) >= 2


@pytest.mark.parametrize("chunk_bytes", [32, 4096, 1024 * 1024])
def test_every_state_chunk_fits_the_peer_message_cap(chunk_bytes: int) -> None:
    """Chunks of whole pages, of one part of a large page, and of page hashes stay within
    ``SizeCaps.state_chunk`` (the simulator's size check found the cap missing once batches were
    capped at 64 KiB and a 1 MiB chunk became the largest message)."""
    signers = [HashSigner(b"c%d" % i, HashVerifier()) for i in range(4)]
    params = Params(state_chunk_bytes=chunk_bytes, state_pages=1 << 10)
    info = ClusterInfo(tuple(s.public_key for s in signers), cluster_id_from(b"chunks"), params)
    sizes = [0, 1, 7, chunk_bytes - 6, chunk_bytes, 3 * chunk_bytes + 5] * 171
    pages = [bytes([i % 251]) * size for i, size in enumerate(sizes[: 1 << 10])]
    snap = Snapshot.of_pages(2**64 - 1, b"s" * 32, pages, chunk_bytes)
    largest = 0
    for hashes in (False, True):
        first, part = 0, 0
        while first < len(pages):
            chunks = snap.chunks(first, part, 64, hashes=hashes)
            for c in chunks:
                largest = max(largest, c.ByteSize())
                assert len(pb.PeerMessage(state_chunk=c).SerializeToString()) <= info.caps.peer_message()
            last = chunks[-1]
            if last.parts and last.part + 1 < last.parts:
                first, part = last.index, last.part + 1
            else:
                step = 1 << last.level if not last.parts else 1
                first, part = last.index + step, 0
    assert largest <= info.caps.state_chunk, (largest, info.caps.state_chunk)
    assert largest > chunk_bytes - 64  # the test did build full chunks
