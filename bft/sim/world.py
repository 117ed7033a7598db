"""One simulation run: replicas, clients and a faulty network in virtual time, with checkers.

Determinism: all randomness comes from ``random.Random`` seeded by the scenario; events with equal
times are ordered by insertion. No real clock is read and nothing sleeps.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from bft import wire
from bft.app.base import Application
from bft.app.kv import KVApp
from bft.core.clients import MAX_U64
from bft.core.config import ClusterInfo, Params
from bft.core.events import (
    CancelTimer,
    Committed,
    Evidence,
    Output,
    Persist,
    RecoveryStarted,
    Send,
    SetTimer,
    StateInstalled,
    ToClient,
    ViewEntered,
)
from bft.core.replica import Replica
from bft.core.transfer import UncheckedTransfer
from bft.crypto import (
    KEY_LEN,
    TAG_LEN,
    AcceptAllVerifier,
    CachingVerifier,
    Ed25519Signer,
    Ed25519Verifier,
    HashSigner,
    HashVerifier,
    Kind,
    Signer,
    Verifier,
    cluster_id_from,
    sha256,
)
from bft.faults import BEHAVIOURS, Behaviour, ByzantineReplica, Targeted
from bft.pb.bftchat.v1 import protocol_pb2 as pb
from bft.quorums import Quorums, WeakCommitQuorums
from bft.replies import CheckedReply, ReplyCollector, check_reply
from bft.sim.scenario import Scenario
from bft.sim.storage import SimStorage
from bft.wire import WireError, make_request, parse, peek_kind
from client.session import ReadCursor, Repliers

SETTLE = 3.0  # virtual seconds after the last client finishes, for stragglers to converge
LIVENESS_BOUND = 90.0  # after GST, every honest client's requests must complete within this
CLIENT_TIMEOUT = 0.8
CATCHUP_BOUND = 20.0  # after the clients finish (and GST), every honest replica reaches the others
RECOVERY_BOUND = 30.0  # after the clients finish (and GST), a wiped honest replica votes again
VOTE_KINDS = (Kind.PREPREPARE, Kind.PREPARE, Kind.COMMIT)

Core = Replica | ByzantineReplica


@dataclass
class Stats:
    events: int = 0
    messages: int = 0
    view_changes: int = 0
    state_transfers: int = 0
    committed: int = 0
    end_time: float = 0.0
    latency_sum: float = 0.0  # honest clients' ordered requests: issue to accepted result (sim seconds)
    latency_count: int = 0
    latency_max: float = 0.0

    def latency(self, seconds: float) -> None:
        self.latency_sum += seconds
        self.latency_count += 1
        self.latency_max = max(self.latency_max, seconds)


@dataclass
class Result:
    scenario: Scenario
    violations: list[str]
    stats: Stats


def app_factory(name: str, preload_bytes: int = 0) -> Callable[[], Application]:
    if name == "kv":
        if preload_bytes:
            return lambda: KVApp.preloaded(preload_bytes)
        return KVApp
    if name == "chat":
        from bft.app.chat import ChatApp

        return ChatApp
    raise ValueError(f"unknown app {name!r}")


@dataclass
class Instance:
    core: Core
    storage: SimStorage
    timers: dict[str, float] = field(default_factory=dict)


@dataclass
class Node:
    id: int
    honest: bool
    instances: list[Instance]
    alive: bool = True
    wiped: bool = False
    link: Callable[[int, int], bool] | None = None
    # Every vote this replica ever signed, across crashes and wipes: (kind, view, seq) -> digest.
    votes: dict[tuple[int, int, int], bytes] = field(default_factory=dict)


class SimClient:
    """An honest client: sequential requests, f+1 matching replies (2f+1 for reads)."""

    def __init__(self, world: World, index: int, signer: Signer, ops: list[tuple[bytes, bool]]) -> None:
        self.world = world
        self.index = index
        self.signer = signer
        self.key = signer.public_key
        self.session = 1000 + index
        self.ops = ops
        self.next_op = 0
        self.timestamp = 0
        self.raw = b""
        self.read_only = False
        self.collector: ReplyCollector | None = None
        self.attempt = 0
        self.view = 0
        self.cursor = ReadCursor(world.cluster.quorums)
        self.repliers = Repliers(world.cluster.quorums)  # the client library's own rule
        self.designated: tuple[int, ...] = ()
        self.last_accepted: tuple[int, CheckedReply] | None = None
        self.done = False
        self.token = 0
        self.accepted: list[tuple[tuple[bytes, int, int], int, bytes, bool]] = []
        self.issued_at = 0.0

    def start(self, now: float) -> None:
        self._issue(now)

    def _issue(self, now: float, fallback: bool = False) -> None:
        if self.next_op >= len(self.ops):
            self.done = True
            return
        op, read_only = self.ops[self.next_op]
        read_only = read_only and not fallback
        self.timestamp += 1
        self.read_only = read_only
        self.raw = make_request(
            self.signer,
            self.world.cluster.cluster_id,
            self.session,
            self.timestamp,
            op,
            read_only=read_only,
            min_seq=self.cursor.min_seq(read_only),
        )
        self.collector = self.cursor.collector(read_only)
        q = self.world.cluster.quorums
        self.designated = () if read_only else q.repliers(self.key, self.session, self.timestamp)
        self.attempt = 0
        self.issued_at = now
        self._send(now)

    def _send(self, now: float) -> None:
        n = self.world.cluster.n
        first = None
        if self.attempt == 0 and not self.read_only:
            first = self.repliers.first_targets(self.designated, self.view % n, range(n), now)
        for r in range(n) if first is None else first:
            self.world.client_to_replica(r, self.raw)
        self.token += 1
        self.world.schedule(
            now + CLIENT_TIMEOUT * min(2**self.attempt, 8), ("ctimer", self.index, self.token)
        )

    def on_timer(self, token: int, now: float) -> None:
        if token != self.token or self.done:
            return
        if self.read_only and self.attempt >= 1:
            self._issue(now, fallback=True)  # one-round read failed: order it instead
            return
        if self.collector is not None and not self.read_only:
            self.repliers.on_resend(self.designated, self.collector, now)
        self.attempt += 1
        self._send(now)

    def on_reply(self, data: bytes, now: float) -> None:
        if self.last_accepted is not None and self.repliers.suspects:
            try:  # a suspect's late reply for the previous request clears it (the library's rule)
                ts, prev = self.last_accepted
                late = check_reply(data, self.world.cluster, self.world.verifier, self.key, self.session, ts)
                self.repliers.on_late(late, prev)
            except WireError:
                pass
        if self.done or self.collector is None:
            return
        try:
            reply = check_reply(
                data, self.world.cluster, self.world.verifier, self.key, self.session, self.timestamp
            )
        except WireError:
            return
        accepted = self.collector.add(reply)
        if accepted is None:
            return
        if not self.read_only:
            self.repliers.on_accepted(self.designated, self.collector, accepted, now)
            self.last_accepted = (self.timestamp, accepted)
            self.world.stats.latency(now - self.issued_at)
        self.view = max(self.view, accepted.view)
        key = (self.key, self.session, self.timestamp)
        self.accepted.append((key, accepted.status, accepted.result, self.read_only))
        min_seq = self.cursor.min_seq(self.read_only)
        smallest = self.cursor.accept(accepted)  # the client library's own rules
        self.world.checker.on_accept(self.index, key, accepted, self.read_only, min_seq, self.cursor.last_seq)
        if smallest is not None:
            self.timestamp = min(max(self.timestamp, smallest - 1), MAX_U64 - 1)
        else:
            self.next_op += 1
        self._issue(now)


class Checker:
    """Safety checks on every honest output as it happens; liveness at the end."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.violations: list[str] = []
        self.committed: dict[int, tuple[bytes, int]] = {}
        self.executed_at: dict[tuple[bytes, int, int], int] = {}
        self.checkpoints: dict[int, tuple[bytes, int]] = {}
        self.results: dict[tuple[bytes, int, int], tuple[int, bytes]] = {}
        self.read_answers: dict[tuple[bytes, int, int], set[tuple[int, bytes]]] = {}
        self.stale_answers: dict[tuple[bytes, int, int], set[tuple[int, bytes]]] = {}
        self.max_honest_seq = 0
        self.byzantine_batches: set[bytes] = set()  # digests of batches faulty replicas sent

    def fail(self, text: str) -> None:
        if len(self.violations) < 20:
            self.violations.append(f"t={self.world.now:.3f} {text}")

    def on_commit(self, replica: int, c: Committed) -> None:
        prev = self.committed.get(c.seq)
        if prev is None:
            self.committed[c.seq] = (c.digest, replica)
        elif prev[0] != c.digest:
            self.fail(
                f"agreement: seq {c.seq} committed as {prev[0].hex()[:8]} by r{prev[1]} "
                f"and {c.digest.hex()[:8]} by r{replica}"
            )
        for key in c.executed:
            at = self.executed_at.get(key)
            if at is None:
                self.executed_at[key] = c.seq
            elif at != c.seq:
                self.fail(f"exactly-once: request executed at seq {at} and again at seq {c.seq} (r{replica})")
        if c.state_digest is not None:
            prev_ck = self.checkpoints.get(c.seq)
            if prev_ck is None:
                self.checkpoints[c.seq] = (c.state_digest, replica)
            elif prev_ck[0] != c.state_digest:
                self.fail(f"state: digests differ at seq {c.seq} between r{prev_ck[1]} and r{replica}")

    def on_reply(self, replica: int, data: bytes) -> None:
        reply = parse(pb.ClientReply, data)
        root = parse(pb.ReplyRoot, reply.root.body[TAG_LEN:])
        key = (reply.client_key, reply.session, reply.timestamp)
        got = (reply.status, reply.result)
        if root.seq == 0:
            # One-round read: answered from the replica's executed state, which must have reached
            # the min_seq the client asked for. Remember what honest replicas answered.
            client = self.world.client_by_key.get((reply.client_key, reply.session))
            executed = self.world.honest_core(replica).last_executed
            if client is not None and client.timestamp == reply.timestamp and client.read_only:
                want = client.cursor.min_seq(True)
                if executed < want:
                    self.fail(f"read: r{replica} answered at seq {executed} a read with min_seq {want}")
            self.read_answers.setdefault(key, set()).add(got)
            return
        self.max_honest_seq = max(self.max_honest_seq, root.seq)
        if reply.status == pb.REPLY_STALE_TIMESTAMP:
            # Not an execution result: a session evicted from the client table (session churn) gets
            # it for a request that may have run before the eviction.
            self.stale_answers.setdefault(key, set()).add(got)
            return
        prev = self.results.get(key)
        if prev is None:
            self.results[key] = got
        elif prev != got:
            self.fail(f"results: honest replicas disagree on a reply (r{replica})")

    def on_accept(
        self,
        client: int,
        key: tuple[bytes, int, int],
        reply: CheckedReply,
        read: bool,
        min_seq: int,
        last_seq: int,
    ) -> None:
        status, result = reply.status, reply.result
        top = max(self.max_honest_seq, max(self.committed, default=0))
        if last_seq > top:
            self.fail(f"client {client} trusts seq {last_seq}, beyond anything committed ({top})")
        if read:
            if (status, result) not in self.read_answers.get(key, set()):
                self.fail(
                    f"client {client} accepted a read result no honest replica gave at seq >= {min_seq}: "
                    f"{result[:40]!r}"
                )
            return
        if status == pb.REPLY_STALE_TIMESTAMP:
            if (status, result) not in self.stale_answers.get(key, set()):
                self.fail(f"client {client} accepted a stale-timestamp answer no honest replica gave")
            return
        honest = self.results.get(key)
        if honest is None:
            self.fail(f"client {client} accepted a result no honest replica produced: {result[:40]!r}")
        elif honest != (status, result):
            self.fail(f"client {client} accepted {result[:40]!r}, honest execution gave {honest[1][:40]!r}")

    def on_send(self, replica: int, data: bytes) -> None:
        """Honest output is canonical and within its caps: no unknown fields anywhere (a replica
        that accepted padding re-sends it), no signed body above its kind's cap."""
        msg = parse(pb.PeerMessage, data)
        stripped = pb.PeerMessage()
        stripped.CopyFrom(msg)
        stripped.DiscardUnknownFields()
        if stripped.ByteSize() != msg.ByteSize():
            self.fail(f"padding: honest r{replica} sent unknown fields ({msg.ByteSize()} bytes)")
            return
        caps = self.world.cluster.caps
        if len(data) > caps.peer_message():
            self.fail(f"size: honest r{replica} sent {len(data)} bytes, cap {caps.peer_message()}")
        if (
            msg.batch
            and len(msg.batch) > self.world.max_op_bytes
            and sha256(msg.batch) not in self.byzantine_batches
        ):
            for raw in parse(pb.Batch, msg.batch).requests:
                if len(raw) > self.world.max_op_bytes:
                    op = parse(pb.RequestBody, parse(pb.Envelope, raw).body[TAG_LEN + KEY_LEN :]).op
                    if len(op) > self.world.max_op_bytes:
                        self.fail(f"door: honest r{replica} proposed an operation of {len(op)} bytes")
                        return
        if msg.HasField("envelope"):
            kind = peek_kind(msg.envelope, self.world.cluster.cluster_id)
            cap = caps.body.get(kind) if kind is not None else None
            if cap is not None and len(msg.envelope.body) > cap:
                size = len(msg.envelope.body)
                self.fail(f"size: honest r{replica} signed a {kind} of {size} bytes > {cap}")

    def on_byzantine_send(self, data: bytes) -> None:
        """Batches a faulty replica sent: honest replicas pass them on (a FETCH answer, a batch
        re-proposed in a NEW-VIEW), and the door check above is for batches they made."""
        try:
            batch = parse(pb.PeerMessage, data).batch
        except WireError:
            return
        if batch:
            self.byzantine_batches.add(sha256(batch))

    def on_executed(self, replica: int, c: Committed, batch_ts: int) -> None:
        """No request runs with a timestamp beyond its batch's agreed time + max_request_ahead_us."""
        bound = batch_ts + self.world.params.max_request_ahead_us
        for key in c.executed:
            if key[2] > bound:
                self.fail(f"timestamp: r{replica} executed timestamp {key[2]} at seq {c.seq} (bound {bound})")
                return

    def check_retained(self, replica: int) -> None:
        """Tables fed by the network stay within the bounds the core states."""
        core = self.world.honest_core(replica)
        bound = core.retained_bound()
        for table, size in core.retained().items():
            if size > bound[table]:
                self.fail(f"memory: r{replica} holds {size} bytes in {table}, bound {bound[table]}")
        if not core.asked <= core.pending.keys():
            self.fail(f"memory: r{replica} keeps 'asked' marks for requests no longer queued")

    def on_evidence(self, replica: int, ev: Evidence) -> None:
        if self.world.nodes[ev.replica].honest:
            self.fail(f"evidence against honest replica r{ev.replica} ({ev.what}), reported by r{replica}")


class World:
    def __init__(self, sc: Scenario) -> None:
        self.sc = sc
        self.rng = random.Random(sc.seed * 7919 + 17)
        self.now = 0.0
        self.heap: list[tuple[float, int, tuple[Any, ...]]] = []
        self.counter = 0
        self.stats = Stats()
        self.checker = Checker(self)
        n = sc.n
        hash_verifier = HashVerifier()
        self.hash_verifier = hash_verifier
        signers: list[Signer]
        if sc.real_crypto:
            signers = [Ed25519Signer(bytes([i + 1]) * 32) for i in range(n)]
            base: Verifier = Ed25519Verifier()
        else:
            signers = [HashSigner(f"replica-{i}-{sc.seed}".encode(), hash_verifier) for i in range(n)]
            base = hash_verifier
        self.verifier = base  # what clients and checkers use (always real checks)
        if sc.production:
            # Ordering and state-transfer parameters as deployed; timeouts as in other scenarios.
            # The answer budget is a quarter of the default: the simulator copies every byte.
            params = Params(
                view_change_timeout=1.0,
                max_view_change_timeout=8.0,
                clock_skew_us=2_000_000,
                answer_bytes_per_s=2 * 1024 * 1024,
                answer_burst_bytes=4 * 1024 * 1024,
                vote_relay=sc.vote_relay,
            )
        else:
            params = Params(
                vote_relay=sc.vote_relay,
                checkpoint_interval=sc.checkpoint_interval,
                watermark_window=4 * sc.checkpoint_interval,
                batch_max_requests=sc.batch_max_requests,
                max_in_flight=sc.max_in_flight,
                view_change_timeout=1.0,
                max_view_change_timeout=8.0,
                status_interval=0.3,
                clock_skew_us=2_000_000,
                state_chunk_bytes=sc.state_chunk_bytes or Params.state_chunk_bytes,
                # Few pages, so that small states still span runs of pages, parts and many chunks
                # (a function of the chunk size: no draw of its own, the seeds keep their scenarios).
                state_pages={64: 4, 256: 16, 4096: 64}.get(sc.state_chunk_bytes, 16),
                # Checkpoints logged in full as the log grows by the state's size, or (the default)
                # as changed pages for the first 4 MiB: both chains get crashed and replayed.
                full_checkpoint_log_bytes=0
                if sc.checkpoint_interval == 4
                else Params.full_checkpoint_log_bytes,
                # Small tables, so that Byzantine clients reach every bound within a scenario.
                max_pending_per_client=8,
                max_pending_total=64,
                max_pending_bytes=2 * 1024 * 1024,
                client_table_capacity=8,
                max_pending_reads=32,
                max_pending_reads_per_client=4,
                max_pending_read_bytes=1024 * 1024,
                read_wait_timeout=3.0,
            )
        self.params = params  # what the checkers hold the replicas to (mutations change the replicas')
        if sc.mutation == "unbounded-timestamps":
            params = replace(params, max_request_ahead_us=2**64)
        keys = tuple(s.public_key for s in signers)
        self.cluster = ClusterInfo(keys, cluster_id_from(b"sim %d" % sc.seed), params)
        self.signers = signers
        self.app = app_factory(sc.app, sc.preload_bytes)
        self.max_op_bytes = self.app().max_op_bytes
        quorums: Quorums | None = None
        if sc.mutation == "weak-commit-quorum":
            quorums = WeakCommitQuorums(n, sc.f)
        self.quorums = quorums
        replica_verifier: Verifier = AcceptAllVerifier() if sc.mutation == "skip-signature-check" else base
        self.replica_verifier = replica_verifier
        byz = {b.replica: b for b in sc.byzantine}
        self.byz = byz
        self.nodes: list[Node] = []
        for i in range(n):
            spec = byz.get(i)
            count = 2 if spec and "twin" in spec.behaviours else 1
            instances = [Instance(self._make_core(i, []), self._storage(i)) for _ in range(count)]
            self.nodes.append(Node(i, spec is None, instances))
        # Clients.
        self.clients: list[SimClient] = []
        for c in range(sc.clients):
            csigner: Signer
            if sc.real_crypto:
                csigner = Ed25519Signer(bytes([100 + c]) * 32)
            else:
                csigner = HashSigner(f"client-{c}-{sc.seed}".encode(), hash_verifier)
            ops: list[tuple[bytes, bool]] = []
            if sc.app == "chat":
                self.clients.append(SimClient(self, c, csigner, self._chat_ops(c)))
                continue
            for _ in range(sc.requests):
                k = b"k%d" % self.rng.randrange(3)
                roll = self.rng.random()
                if roll < sc.read_share:
                    ops.append((b"get " + k, True))
                elif roll < 0.6:
                    ops.append((b"add " + k + b" %d" % self.rng.randrange(1, 9), False))
                else:
                    ops.append((b"set " + k + b" v%d" % self.rng.randrange(100), False))
            self.clients.append(SimClient(self, c, csigner, ops))
        self.client_by_key = {(cl.key, cl.session): cl for cl in self.clients}
        self.byz_rounds: dict[int, int] = {}

    def _chat_ops(self, c: int) -> list[tuple[bytes, bool]]:
        """Register, then sends to the others, inbox reads, acks and listings (ciphertexts are
        opaque to replicas, so seeded random bytes stand in for Box output)."""
        from bft.pb.bftchat.v1 import chat_pb2 as cpb
        from client import e2e

        def box_key(i: int) -> bytes:
            return bytes([i + 1]) * 32

        me = f"user{c}"
        ops: list[tuple[bytes, bool]] = [(e2e.register_op(me, box_key(c)), False)]
        for _ in range(self.sc.requests):
            roll = self.rng.random()
            if roll < self.sc.read_share:
                op = e2e.fetch_op(me) if self.rng.random() < 0.5 else e2e.list_op("user*")
                ops.append((op, True))
            elif roll < 0.75:
                to = self.rng.randrange(self.sc.clients)
                send = cpb.ChatSend(
                    sender=me,
                    recipient=f"user{to}",
                    recipient_box_key=box_key(to),
                    sender_box_key=box_key(c),
                    ciphertext=self.rng.randbytes(self.rng.randrange(40, 200)),
                )
                ops.append((cpb.ChatOp(send=send).SerializeToString(), False))
            elif roll < 0.9:
                ops.append((e2e.ack_op(me, self.rng.randrange(1, 6)), False))
            else:
                ops.append((e2e.fetch_op(me), False))
        return ops

    def _storage(self, i: int) -> SimStorage:
        honest = i not in self.byz
        return SimStorage(fsync_works=not (honest and self.sc.mutation == "no-fsync"))

    def _make_core(self, i: int, records: list[object], recovering: bool = False) -> Core:
        spec = self.byz.get(i)
        honest = spec is None
        verifier: Verifier = CachingVerifier(self.replica_verifier if honest else self.verifier, 4096)
        core = Replica(
            self.cluster,
            i,
            self.signers[i],
            verifier,
            self.app,
            records=list(records),  # type: ignore[arg-type]
            quorums=self.quorums if honest else None,
            recovering=recovering,
        )
        if spec is None:
            if self.sc.mutation == "unauthenticated-chunks":
                core.transfer_class = UncheckedTransfer
            if self.sc.mutation == "ignore-epochs":
                core.check_epochs = False
            if self.sc.mutation == "no-op-door":
                core.check_op_size = False
            return core
        behaviours: list[Behaviour] = []
        for name in spec.behaviours:
            if name in BEHAVIOURS:
                behaviours.append(BEHAVIOURS[name]())
            elif name == "targeted":
                behaviours.append(Targeted(spec.victim))
        return ByzantineReplica(core, behaviours, random.Random(self.sc.seed * 31 + i))

    def honest_core(self, i: int) -> Replica:
        core = self.nodes[i].instances[0].core
        return core.inner if isinstance(core, ByzantineReplica) else core

    # ---------------------------------------------------------------- scheduling

    def schedule(self, at: float, event: tuple[Any, ...]) -> None:
        self.counter += 1
        heapq.heappush(self.heap, (at, self.counter, event))

    def _partitioned(self, a: int, b: int) -> bool:
        for p in self.sc.partitions:
            if p.start <= self.now < p.end and ((a in p.group) != (b in p.group)):
                return True
        return False

    def _targeted_drop(self, a: int, b: int, data: bytes) -> bool:
        """A network adversary helping a targeted attack (before ``cut_until``): the victim hears
        every vote but is heard by nobody, and the other honest replicas cannot exchange votes."""
        for spec in self.sc.byzantine:
            if "targeted" not in spec.behaviours or self.now >= min(spec.cut_until, self.sc.gst):
                continue
            if a == spec.victim:
                return True
            if b == spec.victim or not (self.nodes[a].honest and self.nodes[b].honest):
                continue
            try:
                msg = parse(pb.PeerMessage, data)
            except WireError:
                return False
            if msg.HasField("commit_proof"):
                return True
            kind = peek_kind(msg.envelope, self.cluster.cluster_id) if msg.HasField("envelope") else None
            if kind in (Kind.PREPARE, Kind.COMMIT):
                return True
        return False

    def _delay(self) -> float:
        if self.now < self.sc.gst:
            return self.rng.uniform(0.0005, self.sc.max_delay)
        return self.rng.uniform(0.0005, 0.005)

    def _net(self, src: int, dst: int, event: tuple[Any, ...]) -> None:
        """Carry one message across the faulty network (replica ids; clients use -1)."""
        self.stats.messages += 1
        if src >= 0 and dst >= 0:
            if self._partitioned(src, dst):
                return
            if event[0] == "msg" and self._targeted_drop(src, dst, event[2]):
                return
        before_gst = self.now < self.sc.gst
        if before_gst and self.rng.random() < self.sc.drop:
            return
        self.schedule(self.now + self._delay(), event)
        if before_gst and self.rng.random() < self.sc.dup:
            self.schedule(self.now + self._delay() * 3, event)

    def client_to_replica(self, r: int, raw: bytes) -> None:
        self._net(-1, r, ("request", r, raw))

    # ---------------------------------------------------------------- node I/O

    def _drain(self, node: Node, inst: Instance) -> None:
        for out in inst.core.take_outputs():
            self._carry(node, inst, out)

    def _carry(self, node: Node, inst: Instance, out: Output) -> None:
        if isinstance(out, Persist):
            inst.storage.append(out.record, out.lazy)
        elif isinstance(out, Send):
            if inst.storage.dirty:
                inst.storage.sync()
            if node.honest:
                self.checker.on_send(node.id, out.data)
                self._check_amnesia(node, out.data)
            else:
                self.checker.on_byzantine_send(out.data)
            targets = [out.to] if out.to is not None else [r for r in range(self.sc.n) if r != node.id]
            for t in targets:
                self._net(node.id, t, ("msg", t, out.data))
        elif isinstance(out, ToClient):
            if inst.storage.needed:  # lazy records (execution) may still be volatile: Persist
                inst.storage.sync()
            if node.honest:
                self.checker.on_reply(node.id, out.data)
            client = self.client_by_key.get((out.client_key, out.session))
            if client is not None:
                self._net(node.id, -1, ("reply", client.index, out.data))
        elif isinstance(out, SetTimer):
            inst.timers[out.name] = out.at
            self.schedule(out.at, ("timer", node.id, node.instances.index(inst), out.name, out.at))
        elif isinstance(out, CancelTimer):
            inst.timers.pop(out.name, None)
        elif isinstance(out, Committed):
            if node.honest:
                self.stats.committed += 1
                self.checker.on_commit(node.id, out)
                self.checker.on_executed(node.id, out, self.honest_core(node.id).last_ts)
                if out.state_digest is not None:
                    self.checker.check_retained(node.id)
        elif isinstance(out, Evidence):
            if node.honest:
                self.checker.on_evidence(node.id, out)
        elif isinstance(out, ViewEntered):
            self.stats.view_changes += 1
        elif isinstance(out, StateInstalled):
            self.stats.state_transfers += 1
        elif isinstance(out, RecoveryStarted):
            inst.storage.wipe()  # the RECOVERING marker: a restart discards the log and recovers
            node.wiped = True

    def _check_amnesia(self, node: Node, data: bytes) -> None:
        """An honest replica never signs two votes for one (kind, view, seq), not even after its
        disk was wiped (what PBFT-PR's bound H guarantees) or rolled back."""
        msg = pb.PeerMessage.FromString(data)
        if not msg.HasField("envelope") or msg.envelope.signer != node.id:
            return
        kind = peek_kind(msg.envelope, self.cluster.cluster_id)
        if kind not in VOTE_KINDS:
            return
        vote = pb.Prepare.FromString(msg.envelope.body[TAG_LEN:])  # PRE-PREPARE, PREPARE, COMMIT alike
        key = (int(kind), vote.view, vote.seq)
        before = node.votes.setdefault(key, vote.digest)
        if before != vote.digest:
            wiped = " (wiped before)" if node.wiped else ""
            self.checker.fail(f"amnesia: honest r{node.id}{wiped} signed two {kind.name}s for {key[1:]}")

    def _recovering(self) -> str | None:
        """A wiped honest replica, running, that does not vote yet: still recovering, or changing
        views alone, or in another view than most honest replicas (before PBFT-PR recovery it sat
        alone in a view past the cluster's until the cluster's next view change). Required only
        when the cluster can order the empty batches it needs: the primary of that view honest and
        running, with 2f+1 honest replicas voting in the view. Else (a faulty primary, another
        replica stranded in a view of its own) it waits for the next view change (PROTOCOL.md)."""
        cores = [(n.id, self.honest_core(n.id)) for n in self.nodes if n.honest and n.alive]
        views = [c.view for _, c in cores if not c.view_changing]
        common = max(set(views), key=views.count) if views else 0
        voters = {i for i, c in cores if c.view == common and not c.view_changing and not c.recovering}
        if self.cluster.primary(common) not in voters or len(voters) < 2 * self.sc.f + 1:
            return None
        for node in self.nodes:
            if node.honest and node.alive and node.wiped:
                core = self.honest_core(node.id)
                if core.recovering or core.view_changing or core.view != common:
                    at = f"view {core.view}{' changing' if core.view_changing else ''}, stable {core.h}"
                    return f"r{node.id} ({at}, bound {core.recovery_target}; cluster in view {common})"
        return None

    def _each_instance(self, node: Node, fn: Callable[[Core], object]) -> None:
        for inst in node.instances:
            fn(inst.core)
            self._drain(node, inst)

    def _crash(self, i: int, wipe: bool) -> None:
        node = self.nodes[i]
        if not node.alive:
            return
        node.alive = False
        for inst in node.instances:
            inst.storage.crash()
            if wipe:
                inst.storage.wipe()
                node.wiped = True
            inst.timers.clear()

    def _restart(self, i: int) -> None:
        node = self.nodes[i]
        if node.alive:
            return
        node.alive = True
        for inst in node.instances:
            recovering = node.wiped and not inst.storage.durable
            inst.core = self._make_core(i, list(inst.storage.durable), recovering)
            inst.core.start(self.now)
            self._drain(node, inst)

    # ---------------------------------------------------------------- run

    def run(self) -> Result:
        sc = self.sc
        for node in self.nodes:
            for inst in node.instances:
                inst.core.start(0.0)
                self._drain(node, inst)
        for c in self.clients:
            self.schedule(self.rng.uniform(0.0, 0.2), ("cstart", c.index))
        for spec in sc.byzantine:
            if "crash" in spec.behaviours:
                self.schedule(spec.crash_at, ("crash", spec.replica, False, -1.0))
        for cr in sc.crashes:
            targets = range(sc.n) if cr.replica < 0 else [cr.replica]
            for r in targets:
                self.schedule(cr.at, ("crash", r, cr.wipe, cr.at + cr.down_for))
        for b in range(sc.byz_clients):
            self.schedule(0.1 + b * 0.05, ("byzclient", b))
        deadline = sc.gst + LIVENESS_BOUND
        done_at: float | None = None
        # What the honest replicas must all reach: the top when the clients finished and settled.
        # The cluster may move on afterwards (empty batches for a late recovery): a replica still
        # catching up with that is in flight, not stuck (simulator seed 812 --app chat).
        catch_target: int | None = None
        while self.heap:
            at, _, ev = heapq.heappop(self.heap)
            if at > deadline:
                self.now = deadline
                break
            self.now = at
            self.stats.events += 1
            try:
                self._handle(ev)
            except Exception as exc:  # the core (or a client) must never raise: a violation
                self.checker.fail(f"exception on {ev[0]!r}: {type(exc).__name__}: {exc}")
                break
            if done_at is None and all(c.done for c in self.clients):
                done_at = max(self.now, sc.gst)
            if done_at is not None and self.now >= done_at + SETTLE and catch_target is None:
                catch_target = self._top()
            if (
                done_at is not None
                and self.now >= done_at + SETTLE
                and (self._lagging(catch_target) is None or self.now >= done_at + SETTLE + CATCHUP_BOUND)
                and (self._recovering() is None or self.now >= done_at + SETTLE + RECOVERY_BOUND)
            ):
                break
            if self.checker.violations and len(self.checker.violations) >= 5:
                break
        self.stats.end_time = self.now
        for node in self.nodes:
            if node.honest and node.alive:
                self.checker.check_retained(node.id)
        unfinished = [c.index for c in self.clients if not c.done]
        if unfinished and not self.checker.violations:
            self.checker.fail(f"liveness: clients {unfinished} unfinished {LIVENESS_BOUND:.0f}s after GST")
        lagging = self._lagging(catch_target)
        if done_at is not None and lagging is not None and not self.checker.violations:
            self.checker.fail(
                f"catch-up: honest {lagging} still behind {CATCHUP_BOUND:.0f}s after the clients finished"
            )
        recovering = self._recovering()
        if done_at is not None and recovering is not None and not self.checker.violations:
            self.checker.fail(
                f"recovery: honest {recovering} not voting {RECOVERY_BOUND:.0f}s after the clients finished"
            )
        return Result(sc, self.checker.violations, self.stats)

    def _top(self) -> int:
        return max(
            (
                inst.core.last_executed
                for node in self.nodes
                if node.honest and node.alive
                for inst in node.instances
                if isinstance(inst.core, Replica)
            ),
            default=0,
        )

    def _lagging(self, target: int | None = None) -> str | None:
        """An honest, running replica that has executed less than ``target`` (default: the most
        any of them executed): "rI at S of T"."""
        cores = [
            (node.id, inst.core)
            for node in self.nodes
            if node.honest and node.alive
            for inst in node.instances
            if isinstance(inst.core, Replica)
        ]
        if not cores:
            return None
        top = max(c.last_executed for _, c in cores) if target is None else target
        for i, c in cores:
            if c.last_executed < top:
                transfer = "" if c.transfer is None else f", transferring {len(c.transfer.pages)} pages"
                return f"r{i} at seq {c.last_executed} of {top} (stable {c.h}{transfer})"
        return None

    def _handle(self, ev: tuple[Any, ...]) -> None:
        kind = ev[0]
        now = self.now
        if kind == "msg":
            _, dst, data = ev
            node = self.nodes[dst]
            if node.alive:
                self._deliver(node, data)
        elif kind == "request":
            _, dst, raw = ev
            node = self.nodes[dst]
            if node.alive:
                self._each_instance(node, lambda c: c.on_request(raw, now))
        elif kind == "reply":
            _, ci, data = ev
            self.clients[ci].on_reply(data, now)
        elif kind == "timer":
            _, i, ii, name, at = ev
            node = self.nodes[i]
            inst = node.instances[ii]
            if node.alive and inst.timers.get(name) == at:
                del inst.timers[name]
                inst.core.on_timer(name, now)
                self._drain(node, inst)
        elif kind == "ctimer":
            _, ci, token = ev
            self.clients[ci].on_timer(token, now)
        elif kind == "cstart":
            self.clients[ev[1]].start(now)
        elif kind == "crash":
            _, i, wipe, restart_at = ev
            self._crash(i, bool(wipe))
            if restart_at >= 0:
                self.schedule(restart_at, ("restart", i))
        elif kind == "restart":
            self._restart(ev[1])
        elif kind == "byzclient":
            self._byzantine_client(ev[1])

    def _deliver(self, node: Node, data: bytes) -> None:
        if len(node.instances) == 1:
            node.instances[0].core.on_message(data, self.now)
            self._drain(node, node.instances[0])
            return
        # Twins: each message reaches one twin or both.
        pick = self.rng.randrange(3)
        for ii, inst in enumerate(node.instances):
            if pick == 2 or pick == ii:
                inst.core.on_message(data, self.now)
                self._drain(node, inst)

    def _byzantine_client(self, b: int) -> None:
        """One round of each of the scenario's client attacks (``CLIENT_ATTACKS``), every 0.8 s
        until GST. Bounded: at most two dozen requests per round, most to one replica."""
        rng = self.rng
        cid = self.cluster.cluster_id
        signer = HashSigner(b"byzclient-%d" % b, self.hash_verifier)
        n = self.sc.n
        self.byz_rounds[b] = rounds = self.byz_rounds.get(b, 0) + 1
        out: list[bytes] = []
        for attack in self.sc.client_attacks or ["garbage"]:
            if attack == "garbage":
                for count in range(1, 5):
                    roll = rng.randrange(4)
                    if roll == 0:
                        env = parse(pb.Envelope, make_request(signer, cid, 1, count, b"set x y"))
                        env.signature = bytes(64)
                        out.append(env.SerializeToString())
                    elif roll == 1:
                        out.append(rng.randbytes(rng.randrange(1, 300)))
                    elif roll == 2:
                        out.append(make_request(signer, cid, 1, count, b"set x " + bytes(200_000)))
                    else:
                        reqs = [c.raw for c in self.clients if c.raw]
                        if reqs:
                            out.append(rng.choice(reqs))
            elif attack == "extreme-timestamps":
                for ts in (MAX_U64, MAX_U64 - rng.randrange(1, 1 << 20), 2**63 + rounds):
                    out.append(make_request(signer, cid, 7 + rng.randrange(2), ts, b"add x 1"))
            elif attack == "session-churn":
                for k in range(4):
                    session = 1000 * rounds + k
                    out.append(make_request(signer, cid, session, 1 + rng.randrange(5), b"add churn 1"))
            elif attack == "read-flood":
                top = max(self.checker.committed, default=0)
                absurd = (2**62, 10**9, top + 1 + self.params.watermark_window)
                for k in range(5):
                    min_seq = rng.choice((*absurd, top + 1, top + 2))
                    ts = 100 * rounds + k
                    out.append(make_request(signer, cid, 3, ts, b"get k0", read_only=True, min_seq=min_seq))
            elif attack == "padded":
                raw = make_request(signer, cid, 5, rounds, b"set pad 1")
                env = parse(pb.Envelope, raw)
                body = env.body + b"\x7a\x02pp"
                out.append(pb.Envelope(body=body, signature=signer.sign(body)).SerializeToString())
                out.append(raw + b"\x7a\x80\x08" + bytes(1024))
            elif attack == "big-ops":
                # Fresh keys, so no per-key quota stops them: two that fill a batch each, two that
                # no honest replica may queue or propose (the checker's ``on_send``).
                cap = self.max_op_bytes
                for k in range(4):
                    size = cap - rng.randrange(64) if k < 2 else cap + 1 + rng.randrange(64)
                    op = b"set b%d " % k
                    fresh = HashSigner(b"big-%d-%d-%d" % (b, rounds, k), self.hash_verifier)
                    out.append(make_request(fresh, cid, 1, rounds, op + bytes(size - len(op))))
            elif attack == "quota":
                # Fill the session's quota at the primary, then one more request to the backups only.
                honest = [i for i, node in enumerate(self.nodes) if node.honest and node.alive]
                primary = max((self.honest_core(i).view for i in honest), default=0) % n
                quota = self.params.max_pending_per_client
                base = 10_000 * rounds
                for k in range(quota):
                    raw = make_request(signer, cid, 50, base + k, b"add quota 1")
                    self._net(-1, primary, ("request", primary, raw))
                extra = make_request(signer, cid, 50, base + quota, b"add quota 1")
                for r in range(n):
                    if r != primary:
                        self._net(-1, r, ("request", r, extra))
        for raw in out:
            for r in range(n) if rng.random() < 0.25 else [rng.randrange(n)]:
                self._net(-1, r, ("request", r, raw))
        if self.now < self.sc.gst:
            self.schedule(self.now + 0.8, ("byzclient", b))


def run_scenario(sc: Scenario) -> Result:
    wire.ACCEPT_UNKNOWN_FIELDS = sc.mutation == "accept-unknown-fields"
    try:
        return World(sc).run()
    finally:
        wire.ACCEPT_UNKNOWN_FIELDS = False
