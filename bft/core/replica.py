"""The PBFT replica as a deterministic state machine.

Entry points: ``on_message`` (a serialised PeerMessage from another replica), ``on_request`` (a
serialised signed client request), ``on_timer`` and ``start``. Each call appends outputs that the
driver collects with ``take_outputs`` and carries out in order (see ``bft.core.events``). Nothing
here performs I/O or reads a clock: ``now`` (seconds) is an argument.

Reading guide: normal case (pre-prepare → prepare → commit → execute), then checkpoints, view
change, state transfer, retransmission and restart. docs/PROTOCOL.md walks through the same.
"""

from __future__ import annotations

import heapq
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from itertools import compress
from operator import is_not

from bft import merkle
from bft.app.base import AppFactory, Application, ExecContext
from bft.core.answers import AnswerLimiter
from bft.core.bounded import LargestFirst
from bft.core.clients import MAX_U64, ClientId, ClientTable
from bft.core.config import ClusterInfo
from bft.core.events import (
    CancelTimer,
    CheckpointRecord,
    CommitRecord,
    Committed,
    Evidence,
    NewViewRecord,
    Output,
    Persist,
    PreparedRecord,
    PrePrepareRecord,
    Record,
    RecoveryStarted,
    Send,
    SetTimer,
    StateInstalled,
    ToClient,
    ViewEntered,
    ViewRecord,
    payload_bytes,
)
from bft.core.pages import PageTree, Snapshot, encode_page, encode_pages, legacy_digest, page_hash
from bft.core.transfer import Transfer
from bft.core.viewchange import (
    NULL_DIGEST,
    PreparedCert,
    ValidViewChange,
    check_view_change,
    open_replica,
    plan_new_view,
)
from bft.crypto import TAG_LEN, AcceptAllVerifier, Kind, Signer, Verifier, sha256
from bft.pb.bftchat.v1 import protocol_pb2 as pb
from bft.quorums import Quorums
from bft.wire import (
    MAX_MESSAGE_BYTES,
    OpenedRequest,
    WireError,
    drop_if_unknown_fields,
    envelope_size,
    make_request,
    open_request,
    parse,
    parse_canonical,
    peek_kind,
    seal,
)

_TRUSTED = AcceptAllVerifier()

STATUS_TIMER = "status"
VIEW_TIMER = "view"

ReqKey = tuple[bytes, int, int]  # (client key, session, timestamp)

# What a request costs in the primary's fair order beyond its bytes (``Replica._fair_order``): the
# work every replica does per request whatever its size (a signature check, a reply), in bytes of
# request it is worth, so a flood of tiny requests is charged for their number too.
FAIR_REQUEST_COST = 1024
# A request that has waited while this many batches' worth (``batch_max_bytes``) of work was
# proposed goes before any fair-order one (``Replica._fair_order``): its wait is bounded whatever
# arrives after it.
FAIR_AGE_BATCHES = 4

AHEAD_REFUSAL = b"request timestamp too far ahead of the batch time (max_request_ahead_us)"
"""The agreed result of a request whose timestamp is beyond its batch's time + max_request_ahead_us."""

EPOCH_OP = b"\x00bftchat replica epoch\x00"
"""The operation of an epoch request (docs/PROTOCOL.md, Epochs): a request signed with a replica's
own key that sets its epoch to the request's timestamp. The core takes it before the application
(which never sees it); no application operation starts with a NUL byte."""
EPOCH_REFUSAL = b"a replica key signs only its epoch request, and only a replica key signs one"


def leaf_bytes(key: bytes, session: int, timestamp: int, status: int, result: bytes) -> bytes:
    """What a reply leaf commits to; clients recompute it from the ClientReply."""
    return key + struct.pack(">QQI", session, timestamp, status) + result


def state_digest(seq: int, app_digest: bytes, clients_digest: bytes, last_ts: int) -> bytes:
    """Application state, client table and the clock clamp at ``seq``. A checkpoint digest is
    this plus the root of the page tree (``bft.core.pages.Manifest``)."""
    return sha256(b"bftchat state\0" + struct.pack(">QQ", seq, last_ts) + app_digest + clients_digest)


@dataclass
class Slot:
    """Votes for one sequence number in the current view."""

    seq: int
    view: int
    pp: pb.PrePrepare | None = None
    pp_env: pb.Envelope | None = None
    batch: bytes | None = None
    prepares: dict[bytes, dict[int, pb.Envelope]] = field(default_factory=dict)
    commits: dict[bytes, dict[int, pb.Envelope]] = field(default_factory=dict)
    my_prepare: pb.Envelope | None = None
    my_commit: pb.Envelope | None = None
    prepared: bool = False
    committed: bool = False
    asked_pp_from: set[int] = field(default_factory=set)
    age: int = 0  # status ticks spent undecided: retransmit when > 0
    relayed: bool = False  # our vote went to the primary alone (``Replica._vote_target``)


class Replica:
    """One PBFT replica. ``records`` are the persisted records of a previous run, in write order."""

    transfer_class: type[Transfer] = Transfer  # the simulator's mutations swap it
    check_epochs: bool = True  # False = the simulator's ``ignore-epochs`` mutation (unsafe on purpose)
    check_op_size: bool = True  # False = the simulator's ``no-op-door`` mutation

    def __init__(
        self,
        cluster: ClusterInfo,
        replica_id: int,
        signer: Signer,
        verifier: Verifier,
        app_factory: AppFactory,
        records: list[Record] | None = None,
        quorums: Quorums | None = None,
        recovering: bool = False,
    ) -> None:
        if not 0 <= replica_id < cluster.n:
            raise ValueError(f"replica id {replica_id} not in 0..{cluster.n - 1}")
        if signer.public_key != cluster.public_keys[replica_id]:
            raise ValueError("signing key does not match the cluster's public key for this replica")
        self.cluster = cluster
        self.id = replica_id
        self.signer = signer
        self.verifier = verifier
        self.q = quorums or cluster.quorums
        self.p = cluster.params
        self.cid = cluster.cluster_id
        self._replica_of = {key: i for i, key in enumerate(cluster.public_keys)}
        self._app_factory = app_factory
        self.app: Application = app_factory()
        self.app.set_page_count(self.p.state_pages)
        self.clients = ClientTable(self.p.client_table_capacity, self.p.state_pages)
        # The pages and page tree of the last checkpoint taken: a checkpoint re-encodes only the pages
        # the app and the client table report changed since (bft/core/pages.py).
        self._pages: list[bytes] = [b""] * self.p.state_pages
        self._tree = PageTree.uniform(self.p.state_pages, page_hash(b"", self.p.state_chunk_bytes))
        # The last CheckpointRecord of our log (seq, its pages), and the bytes persisted since the
        # last full one: a stable checkpoint is logged as the pages changed since, until that many
        # bytes add up to the state's size (then in full, and the log compacts).
        self._logged: tuple[int, list[bytes]] | None = None
        self._since_full = 0
        self._out: list[Output] = []

        # Ordering state.
        self.view = 0
        self.view_changing = False
        # Votes relayed through the primary (Params.vote_relay): from this sequence number on this
        # backup sends its votes to the primary alone again, and how far the next failure pushes it.
        self._relay_from = 0
        self._relay_backoff = self.p.vote_relay_backoff
        self.h = 0  # low watermark = last stable checkpoint
        self.stable_digest = b""
        self.stable_proof: list[pb.Envelope] = []
        self.stable_snapshot: Snapshot | None = None
        self.served: dict[int, Snapshot] = {}  # the last snapshots_kept stable snapshots, by seq
        self.last_executed = 0
        self.last_ts = 0  # timestamp clamp of the last executed batch (replicated state)
        self.slots: dict[int, Slot] = {}
        self.prepared_certs: dict[int, PreparedCert] = {}
        self.commit_proofs: dict[int, pb.CommitProof] = {}  # committed, seq > h
        self.batches: dict[bytes, bytes] = {NULL_DIGEST: b""}
        self.wanted_batches: set[bytes] = set()
        self.next_seq = 1
        self.last_proposed_ts = 0
        self._decided: dict[bytes, int] = {}  # vote bodies already counted into a quorum -> seq

        # Requests. Admission (size, per-client, total) comes before anything is stored; every
        # table is bounded in entries and bytes (OpenedRequest.retained_bytes).
        self.pending: OrderedDict[ReqKey, OpenedRequest] = OrderedDict()
        self.pending_by_client: dict[ClientId, dict[ReqKey, None]] = {}  # in arrival order
        self.pending_bytes = 0
        self._pending_owners: LargestFirst[ClientId] = LargestFirst()  # bytes per client session
        self.proposed: set[ReqKey] = set()
        # Self-clocked fair queueing in bytes between client keys (``_fair_order``): each pending
        # request's finish tag, each key's last one (while it has one pending), and the virtual time:
        # the largest tag this replica proposed, in its own fair order. Not moved by what executes
        # (a faulty primary orders as it likes) nor by what is dropped for room (a key that got its
        # own newest request dropped would move every newcomer behind its whole queue). Bounded
        # with ``pending``.
        self._fair_tag: dict[ReqKey, int] = {}
        self._key_finish: dict[bytes, int] = {}
        self._vtime = 0
        # Work proposed by this replica (bytes + FAIR_REQUEST_COST per request), and its value when
        # each pending request came: what ages a request (FAIR_AGE_BATCHES).
        self._work = 0
        self._arrived_work: dict[ReqKey, int] = {}
        # Pending requests the client sent to this replica itself (not learnt from a PRE-PREPARE
        # or a forward): a backup only sees those when the client went to all, so it answers them
        # at execution even if it is not one of the request's designated repliers. A subset of
        # ``pending``, bounded with it.
        self.asked: set[ReqKey] = set()
        # Parked one-round reads (min_seq not executed yet, or a view change): by request, with
        # their deadline; per client key and in total, in entries and bytes.
        self.pending_reads: OrderedDict[ReqKey, tuple[OpenedRequest, float]] = OrderedDict()
        self._reads_by_key: dict[bytes, dict[ReqKey, None]] = {}
        self._read_owners: LargestFirst[bytes] = LargestFirst()  # parked reads per client key
        self.pending_read_bytes = 0
        # One-round read replies answered since the last ``take_outputs`` (one driver step): signed
        # there under one ReplyRoot per view, each reply with its path (``_flush_reads``), and
        # placed where the latest of them was answered (``_read_mark``, an index into ``_out``).
        # Bounded by one step's inputs: a burst of requests, or the parked reads served at once.
        self._read_replies: list[tuple[int, bytes, int, int, bytes]] = []  # view, key, session, ts, result
        self._read_mark = 0
        # Verified requests met again in a PRE-PREPARE and at execution: by digest, bounded.
        self._opened: OrderedDict[bytes, OpenedRequest] = OrderedDict()
        self._opened_bytes = 0

        # Checkpoints.
        self.my_checkpoints: dict[int, Snapshot] = {}  # our own checkpoints at seq >= h
        self.ckpt_ticks: dict[int, int] = {}  # our checkpoints above h: status ticks spent unstable
        self.ckpt_votes: dict[int, dict[bytes, dict[int, pb.Envelope]]] = {}
        self.ckpt_by_sender: dict[int, dict[int, bytes]] = {}  # sender -> seq -> the digest it voted
        self.pending_stable: tuple[int, bytes, list[pb.Envelope]] | None = None

        # View change.
        self.vc_latest: dict[int, ValidViewChange] = {}  # sender -> its highest valid VIEW-CHANGE
        self.my_vc: pb.Envelope | None = None
        self.new_view_env: pb.Envelope | None = None
        self.vc_timeouts = 0  # consecutive view changes without progress
        self.vc_timer_view = -1  # the view whose NEW-VIEW timer is running
        self.request_timer_on = False
        self.reforwarded = False  # the request timer's first half ended in a re-forward
        # Proposal deadline (Aardvark's answer to a slow primary): since when this backup has had
        # requests waiting while nothing of the current view was in flight, and whether that wait
        # already ended in a re-forward (the next expiry is a view change). See _check_idle.
        self.idle_since: float | None = None
        self.idle_reforwarded = False
        self.timers: dict[str, float] = {}

        self.transfer: Transfer | None = None
        self.rejected_inputs = 0  # inputs dropped as malformed, oversized, badly signed or refused
        self.chunks_rejected = 0  # state chunks that failed their check (metric)
        self.answers = AnswerLimiter(cluster.n, self.p)
        self.evidence: list[Evidence] = []
        self._evidence_keys: set[tuple[int, str, bytes, bytes]] = set()
        self.restoring = False

        # Amnesia guard (PBFT-PR's recovery, docs/PROTOCOL.md "Amnesia"): a replica whose records
        # were lost may have signed votes it no longer remembers, for seqs up to its old window's
        # top. It signs no vote, PRE-PREPARE or VIEW-CHANGE while recovering; it learns a bound H
        # above that top from verified checkpoint proofs (``_recovery_progress``), follows the
        # cluster passively, and votes again once it holds a stable checkpoint at or above H.
        self.recovering = recovering and not records
        self.recovery_views: dict[int, int] = {}  # peer -> highest view it reported
        self.recovery_stable: dict[int, int] = {}  # peer -> highest stable seq it reported
        self.recovery_flagged: set[int] = set()  # peers whose latest STATUS says they recover too
        self.recovery_proven = 0  # c: the highest stable checkpoint we verified a proof for
        self.recovery_target: int | None = None  # H, once 2f+1 peers' reports are covered by c
        self.recovery_view = 0  # the (f+1)-th highest view reported: we vote in no view below it
        self.rollbacks = 0  # times we saw our own signature on something our log cannot have made
        # Peers whose latest STATUS reports a pending recovery -> its target, capped at our h + 2W.
        # While one is above our stable checkpoint the primary orders empty batches when idle, each
        # charged to every such peer's credit of 2W + K per recovery_rearm_interval: however often
        # and whatever it claims, one peer costs at most that many per interval.
        self.peer_recovery: dict[int, int] = {}
        self.null_credit: dict[int, tuple[float, int]] = {}  # peer -> (refilled at, credit left)
        self.null_budget = 0  # empty batches left for this status tick
        # Seqs of the empty batches above that we proposed in this view and have not executed: they
        # do not count against max_in_flight, so a client batch never waits behind them.
        self.null_in_flight: set[int] = set()
        # Our epoch request while recovering (docs/PROTOCOL.md, Epochs): signed with our key, sent
        # to every replica each status tick until our executed state shows it applied, at
        # ``epoch_seq``; recovery ends only at a stable checkpoint at or above that seq.
        self.epoch_request: bytes | None = None
        self.epoch_ts = 0
        self.epoch_seq: int | None = None

        if records:
            self._restore(records)

    # ------------------------------------------------------------------ driver interface

    def take_outputs(self) -> list[Output]:
        """The outputs of the step since the last call. The end of a step is where the one-round
        read replies it produced are signed, all under one root (``_flush_reads``)."""
        if self._read_replies:
            self._flush_reads()
        out, self._out = self._out, []
        return out

    @property
    def primary(self) -> int:
        return self.cluster.primary(self.view)

    @property
    def is_primary(self) -> bool:
        return self.primary == self.id

    def state_digest(self) -> bytes:
        """Digest of the replicated state at ``last_executed`` (cheap; a CHECKPOINT there would
        carry it combined with the page root)."""
        return self._current_state_digest(self.last_executed)

    def start(self, now: float) -> None:
        """Arm timers after construction or restart; announce where we are."""
        self._set_timer(STATUS_TIMER, now + self.p.status_interval)
        if self.view_changing and self.my_vc is not None:
            self._send(None, pb.PeerMessage(envelope=self.my_vc))
        self._broadcast_status()

    def on_timer(self, name: str, now: float) -> None:
        at = self.timers.get(name)
        if at is None or at > now:
            return
        del self.timers[name]
        if name == STATUS_TIMER:
            self._expire_pending_reads(now)
            self._on_status_tick(now)
            self._set_timer(STATUS_TIMER, now + self.p.status_interval)
        elif name == VIEW_TIMER:
            if self.request_timer_on and not self.pending:
                # Every request it guarded left the table without an execution restarting it (a
                # state transfer installed them): nothing waits, nothing to suspect. Suspecting
                # anyway stranded an honest replica alone in a view (simulator seed 20261692).
                self.request_timer_on = False
                return
            if self.request_timer_on and not self.view_changing and not self.reforwarded:
                # Half the timeout passed with requests still unordered: forward them to the primary
                # again before suspecting it (the first copy may have been lost, or refused).
                self.reforwarded = True
                self._reforward()
                self._set_timer(VIEW_TIMER, now + self._timeout() / 2)
                return
            self.request_timer_on = False
            self.vc_timer_view = -1
            self.vc_timeouts += 1
            self._start_view_change(self.view + 1, now)

    def on_message(self, raw: bytes, now: float) -> None:
        """A serialised PeerMessage from another replica. Never raises on bad input."""
        if len(raw) > MAX_MESSAGE_BYTES:
            self.rejected_inputs += 1
            return
        try:
            msg = parse(pb.PeerMessage, raw)
            drop_if_unknown_fields(msg)
        except WireError:
            self.rejected_inputs += 1
            return
        try:
            self._dispatch(msg, now)
        except WireError:
            self.rejected_inputs += 1
            return

    def on_request(self, raw: bytes, now: float, forwarded: bool = False) -> str | None:
        """A serialised signed client request. Returns an error text for the client, or None."""
        try:
            opened = self._open_request(raw)
        except WireError as exc:
            self.rejected_inputs += 1
            return str(exc)
        req = opened.request
        if len(req.op) > self.app.max_op_bytes and self.check_op_size:
            # No honest client sends it (execution would refuse it): refused before it costs any
            # other replica anything, and never proposed by us.
            self.rejected_inputs += 1
            return f"operation exceeds {self.app.max_op_bytes} bytes"
        replica = self._replica_of.get(req.client_key)
        if (replica is not None or req.op == EPOCH_OP) and (
            replica is None or req.op != EPOCH_OP or opened.read_only
        ):
            self.rejected_inputs += 1
            return EPOCH_REFUSAL.decode()
        if self.recovering:
            return "replica is recovering its state"
        if not forwarded and req.timestamp > int(now * 1_000_000) + self.p.max_request_ahead_us:
            # Admission only (this replica's clock): execution applies the agreed bound.
            return "request timestamp too far ahead of this replica's clock"
        if opened.read_only:
            if forwarded:
                return None
            return self._on_read(opened, now)
        cid = (req.client_key, req.session)
        if replica is not None:
            # An epoch request: the epoch table, not the client table, says whether it is spent
            # (so no eviction or floor can stall a recovery), and nobody awaits a reply.
            if req.timestamp <= self.clients.epoch(replica):
                return None
        else:
            entry = self.clients.get(cid)
            if entry is not None and req.timestamp <= entry.last_timestamp:
                if req.timestamp == entry.last_timestamp:
                    self._reply_cached(req.client_key, req.session, req.timestamp, entry.status, entry.result)
                return None
        key = (req.client_key, req.session, req.timestamp)
        again = key in self.pending
        if not again:
            refusal = self._admit(key, opened, forwarded)
            if refusal is not None:
                self.rejected_inputs += 1
                return refusal
        if not forwarded and (again or not self.is_primary):
            # From the client itself: to a backup only when it sent to all; to the primary the
            # first copy is the normal path, a second one is the client resending to all.
            self.asked.add(key)
        if self.view_changing:
            return None
        if self.is_primary:
            self._try_propose(now)
        else:
            if not forwarded:
                self._send(self.primary, pb.PeerMessage(request=raw))
            self._arm_request_timer(now)
        return None

    # ------------------------------------------------------------------ small helpers

    def _open_request(self, raw: bytes) -> OpenedRequest:
        """Verify and parse a client request, or take it from the cache of requests already
        admitted or accepted in a batch (it is seen again in the PRE-PREPARE and at execution).
        WireError if invalid. Nothing is stored here: storing is for ``_remember_opened``."""
        opened = self._opened.get(sha256(raw))
        if opened is None:
            # Replaying our own log: its chain, seals and commit certificates were verified when
            # it was loaded, and every request in it was verified before it was first executed.
            verifier = _TRUSTED if self.restoring else self.verifier
            opened = open_request(raw, self.cid, verifier)
        return opened

    def _remember_opened(self, opened: OpenedRequest) -> None:
        """Cache a verified request that was admitted or is in an accepted batch; the oldest go
        first past 2 x max_pending_total entries or max_pending_bytes."""
        digest = sha256(opened.raw)
        if digest in self._opened:
            return
        self._opened[digest] = opened
        self._opened_bytes += opened.retained_bytes
        while self._opened and (
            len(self._opened) > 2 * self.p.max_pending_total or self._opened_bytes > self.p.max_pending_bytes
        ):
            _, old = self._opened.popitem(last=False)
            self._opened_bytes -= old.retained_bytes

    def _forget_opened(self, raw: bytes) -> None:
        old = self._opened.pop(sha256(raw), None)
        if old is not None:
            self._opened_bytes -= old.retained_bytes

    def _admit(self, key: ReqKey, opened: OpenedRequest, forwarded: bool = False) -> str | None:
        """Queue a verified request, or say why not. Per client session at most
        max_pending_per_client, not counting copies forwarded by backups (else a client that filled
        its quota here could send one more request to the backups only: they forward it, we refuse
        it silently, their timers fire and the client has forced a view change at will); in total
        max_pending_total and max_pending_bytes. When the total is
        full, the client session holding the most bytes loses its newest unproposed request, unless
        the newcomer would then hold as much (deterministic: ties go to the smallest key, session),
        so one key's flood costs the others nothing but its own share."""
        cid = (key[0], key[1])
        mine = self.pending_by_client.get(cid)
        if not forwarded and mine is not None and len(mine) >= self.p.max_pending_per_client:
            return "too many pending requests for this client session"
        size = opened.retained_bytes
        owners = self._pending_owners
        while len(self.pending) >= self.p.max_pending_total or (
            self.pending_bytes + size > self.p.max_pending_bytes
        ):
            victim = owners.largest()
            if victim is None or owners.held[victim] <= owners.held.get(cid, 0) + size:
                return "replica overloaded: too many pending requests"
            drop = next((k for k in reversed(self.pending_by_client[victim]) if k not in self.proposed), None)
            if drop is None:
                return "replica overloaded: too many pending requests"
            self._drop_pending(drop)
        self.pending[key] = opened
        # After the session's own last pending request even if the key's last tag was forgotten (its
        # holder, another of the key's requests, left first): a session's requests keep their order.
        mine = self.pending_by_client.setdefault(cid, {})
        last = self._fair_tag[next(reversed(mine))] if mine else 0
        self._tag(key, opened, max(self._vtime, last))
        mine[key] = None
        self.pending_bytes += size
        owners.add(cid, size)
        self._remember_opened(opened)
        return None

    def _emit(self, out: Output) -> None:
        if not self.restoring:
            self._out.append(out)

    def _persist(self, record: Record, lazy: bool = False) -> None:
        if not self.recovering:
            self._since_full += payload_bytes(record)
            self._emit(Persist(record, lazy))

    def _persist_checkpoint(
        self, seq: int, digest: bytes, proof: list[pb.Envelope], snapshot: Snapshot
    ) -> None:
        """Log a stable checkpoint: the pages changed since the log's last CheckpointRecord, or every
        page once the log has grown by the state's size (at least ``full_checkpoint_log_bytes``)
        since the last full one. So the log holds at most about twice the state plus a window, and
        writing it costs what changed, plus the state's size once per that much growth."""
        if self.recovering:
            return  # nothing is persisted while recovering (_persist_recovered_state does it after)
        envs = tuple(e.SerializeToString() for e in proof)
        pages, logged = snapshot.pages, self._logged
        self._logged = (seq, pages)
        if logged is not None and logged[0] < seq:
            # Pages are shared between snapshots unless changed: an identity scan, in C (131,072
            # pages in ~2 ms; the Python loop took ~13).
            assert len(pages) == len(logged[1])
            changed = list(compress(range(len(pages)), map(is_not, pages, logged[1])))
            delta = sum(len(pages[i]) for i in changed)
            if self._since_full + delta < max(snapshot.size, self.p.full_checkpoint_log_bytes):
                data = encode_pages([pages[i] for i in changed], changed)
                self._persist(CheckpointRecord(seq, digest, data, envs, delta_of=logged[0]))
                return
        self._persist(CheckpointRecord(seq, digest, encode_pages(pages), envs))
        self._since_full = 0

    def _send(self, to: int | None, msg: pb.PeerMessage) -> None:
        if to == self.id:
            return
        self._emit(Send(to, msg.SerializeToString()))

    def _seal(self, kind: Kind, message: object) -> pb.Envelope:
        return seal(self.signer, self.id, kind, self.cid, message)  # type: ignore[arg-type]

    def _set_timer(self, name: str, at: float) -> None:
        self.timers[name] = at
        self._emit(SetTimer(name, at))

    def _cancel_timer(self, name: str) -> None:
        if self.timers.pop(name, None) is not None:
            self._emit(CancelTimer(name))

    def _timeout(self) -> float:
        return min(
            self.p.view_change_timeout * (2 ** min(self.vc_timeouts, 16)), self.p.max_view_change_timeout
        )

    def _open(self, env: pb.Envelope, kind: Kind) -> bytes | None:
        try:
            return open_replica(env, kind, self.cluster, self.verifier)
        except WireError:
            self.rejected_inputs += 1
            return None

    def _in_window(self, seq: int) -> bool:
        return self.h < seq <= self.h + self.p.watermark_window

    def _record_evidence(self, replica: int, what: str, a: pb.Envelope, b: pb.Envelope) -> None:
        key = (replica, what, a.body, b.body)
        if key in self._evidence_keys or len(self.evidence) >= 256:
            return
        self._evidence_keys.add(key)
        ev = Evidence(replica, what, a, b)
        self.evidence.append(ev)
        self._emit(ev)

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self, msg: pb.PeerMessage, now: float) -> None:
        if msg.request:
            self.on_request(msg.request, now, forwarded=True)
        if msg.HasField("batch_reply"):
            self._on_batch_reply(msg.batch_reply.batch, now)
        if msg.HasField("state_chunk"):
            self._on_state_chunk(msg.state_chunk, now)
        if msg.HasField("commit_proof"):
            self._on_commit_proof(msg.commit_proof, now)
        if not msg.HasField("envelope"):
            return
        env = msg.envelope
        if env.signer >= self.cluster.n:
            return
        kind = peek_kind(env, self.cid)
        if kind is None:
            return
        if self.recovering and kind == Kind.VIEW_CHANGE:
            # A recovering replica signs no VIEW-CHANGE and moves only on a verified NEW-VIEW.
            return
        if env.signer == self.id and kind != Kind.CHECKPOINT:
            # Our own CHECKPOINTs come back inside peers' stable proofs: a replica that lost its
            # disk must count its old vote like any other, or a proof of 2f+1 that includes it
            # leaves it one vote short of the checkpoint it has to fetch, for ever.
            if kind == Kind.VIEW_CHANGE and not self.recovering:
                self._check_own_view_change(env, now)
            return
        if kind in (Kind.PREPARE, Kind.COMMIT) and env.body in self._decided:
            # A vote whose exact bytes were already counted into a quorum is dropped unverified:
            # the slot is decided, so verifying it could change nothing.
            return
        if kind == Kind.PREPREPARE:
            self._on_preprepare(env, msg.batch, now)
        elif kind == Kind.PREPARE:
            self._on_prepare(env, now)
        elif kind == Kind.COMMIT:
            self._on_commit(env, now)
        elif kind == Kind.CHECKPOINT:
            self._on_checkpoint(env, now)
        elif kind == Kind.VIEW_CHANGE:
            self._on_view_change(env, now)
        elif kind == Kind.NEW_VIEW:
            self._on_new_view(env, now)
        elif kind == Kind.STATUS:
            self._on_status(env, now)
        elif kind == Kind.FETCH:
            self._on_fetch(env, now)

    # ------------------------------------------------------------------ normal case: primary

    def _try_propose(self, now: float) -> None:
        if not self.is_primary or self.view_changing or self.transfer is not None or self.recovering:
            return
        while self.pending and self._client_batches_in_flight() < self.p.max_in_flight:
            if self.next_seq > self.h + self.p.watermark_window:
                return
            batch = pb.Batch()
            size = 0
            held: set[ClientId] = set()  # sessions with a request that did not fit: none of theirs after it
            for key, opened in self._fair_order():
                if len(batch.requests) >= self.p.batch_max_requests:
                    break
                cid = (key[0], key[1])
                if cid in held:
                    continue
                if size + len(opened.raw) > self.p.batch_max_bytes and batch.requests:
                    held.add(cid)  # smaller requests of others may still fit
                    continue
                batch.requests.append(opened.raw)
                size += len(opened.raw)
                self.proposed.add(key)
                self._vtime = max(self._vtime, self._fair_tag[key])
                self._work += len(opened.raw) + FAIR_REQUEST_COST
            if not batch.requests:
                return
            self._propose(batch, now)
        if self.pending or not self.peer_recovery:
            return
        # Idle, and a peer recovers: empty batches move the checkpoints to its target H (it votes
        # again only at a stable checkpoint >= H), at most recovery_null_batches per status tick.
        # Not held to max_in_flight (which paces client batches): the budget is the pace.
        while self.null_budget > 0:
            owed = [r for r, t in self.peer_recovery.items() if t > self.h and self._credit(r, now) > 0]
            if not owed:
                return
            top = max(self.peer_recovery[r] for r in owed)
            top = -(-top // self.p.checkpoint_interval) * self.p.checkpoint_interval
            if self.next_seq > min(top, self.h + self.p.watermark_window):
                return
            self.null_budget -= 1
            for r in owed:
                at, left = self.null_credit[r]
                self.null_credit[r] = (at, left - 1)
            self.null_in_flight.add(self.next_seq)
            self._propose(pb.Batch(), now)

    def _client_batches_in_flight(self) -> int:
        """Batches proposed and not executed, less our empty batches for a peer's recovery: what
        max_in_flight paces. Those empty batches go out whenever no request is queued, so with
        closed-loop clients (each waits for its reply) they went out between any two requests, and
        counting them held each request behind a round of them: one more PRE-PREPARE round trip
        per request, twice the latency under a slow primary (simulator seed 20268473: a primary
        that holds each PRE-PREPARE for 0.8 s and a replica lying that it recovers kept a client
        at 1.8 s per request, 80 requests past the 90 s bound). A request must never wait for
        work a peer's claim caused; the per-tick budget and the credit pace the empty batches."""
        if self.null_in_flight:
            self.null_in_flight = {s for s in self.null_in_flight if s > self.last_executed}
        return self.next_seq - 1 - self.last_executed - len(self.null_in_flight)

    def _credit(self, peer: int, now: float) -> int:
        """Empty batches the peer's recovery may still cost in this interval (refilled to 2W + K)."""
        at, left = self.null_credit.get(peer, (-1.0, 0))
        if at < 0 or now - at >= self.p.recovery_rearm_interval:
            at, left = now, 2 * self.p.watermark_window + self.p.checkpoint_interval
            self.null_credit[peer] = (at, left)
        return left

    def _propose(self, batch: pb.Batch, now: float) -> None:
        """Sign and send a PRE-PREPARE for the next seq (an empty batch is a null request)."""
        ts = min(max(int(now * 1_000_000), self.last_proposed_ts + 1, self.last_ts + 1), MAX_U64)
        batch.timestamp_us = ts
        self.last_proposed_ts = ts
        data = batch.SerializeToString()
        digest = sha256(data)
        seq = self.next_seq
        self.next_seq += 1
        pp = pb.PrePrepare(view=self.view, seq=seq, digest=digest)
        env = self._seal(Kind.PREPREPARE, pp)
        slot = self._slot(seq)
        slot.pp, slot.pp_env, slot.batch = pp, env, data
        self.batches[digest] = data
        self._persist(PrePrepareRecord(self.view, seq, digest, env.SerializeToString(), data))
        self._send(None, pb.PeerMessage(envelope=env, batch=data))
        self._check_prepared(slot, now)

    def _tag(self, key: ReqKey, opened: OpenedRequest, floor: int) -> None:
        tag = max(floor, self._key_finish.get(key[0], 0)) + len(opened.raw) + FAIR_REQUEST_COST
        self._fair_tag[key] = self._key_finish[key[0]] = tag
        self._arrived_work[key] = self._work

    def _retag(self) -> None:
        """Tags afresh from the virtual time, in arrival order, as if every pending request had just
        come: as a backup this replica proposed nothing, so its virtual time stood still while a key
        that always had a request pending chained its tags on, far past it (and past every newcomer's)."""
        self._key_finish = {}
        for key, opened in self.pending.items():
            self._tag(key, opened, self._vtime)

    def _fair_order(self) -> list[tuple[ReqKey, OpenedRequest]]:
        """Unproposed requests in the order batches take them: first those that have waited while
        ``FAIR_AGE_BATCHES`` batches' worth of work was proposed, oldest first; then the rest by
        finish tag, self-clocked fair queueing in bytes between client keys (Golestani, 1994). A
        request's tag is its key's (and its session's) previous tag, or the virtual time if later,
        plus its size and ``FAIR_REQUEST_COST``. So a key with a thousand queued requests waits
        its turn like one with a single request (Aardvark's fair primary); a small request is not
        held behind large ones that arrived just before it (a flood of 60 KiB sends: an honest
        1 KiB send still goes in the next batch); and ageing bounds any request's wait, which fair
        order alone does not when small requests from ever new keys arrive faster than batches
        take them (the virtual time then climbs one small request per level, and each level holds
        all that came while the last one drained). Each session's requests keep their order."""
        limit = 2 * self.p.batch_max_requests
        due = self._work - FAIR_AGE_BATCHES * self.p.batch_max_bytes
        aged: list[tuple[ReqKey, OpenedRequest]] = []
        rows: list[tuple[int, int, ReqKey, OpenedRequest]] = []
        for arrival, (key, opened) in enumerate(self.pending.items()):
            if key in self.proposed:
                continue
            if self._arrived_work[key] <= due:
                if len(aged) < limit:
                    aged.append((key, opened))
            else:
                rows.append((self._fair_tag[key], arrival, key, opened))
        first = heapq.nsmallest(limit - len(aged), rows, key=lambda row: (row[0], row[1]))
        return aged + [(key, opened) for _, _, key, opened in first]

    def _slot(self, seq: int) -> Slot:
        slot = self.slots.get(seq)
        if slot is None:
            slot = self.slots[seq] = Slot(seq, self.view)
        return slot

    # ------------------------------------------------------------------ normal case: backups

    def _validate_batch(self, data: bytes, now: float, seq: int, check_clock: bool) -> bool:
        """Canonical and within its size cap; every request validly signed; the timestamp after the
        previous batch's and near our clock."""
        if len(data) > self.cluster.caps.batch:
            return False
        try:
            batch = parse_canonical(pb.Batch, data)
        except WireError:
            return False
        if check_clock:
            vouched = self.slots.get(seq)
            others = set(vouched.prepares.get(sha256(data), {})) - {self.id} if vouched else set()
            # A PRE-PREPARE retransmitted after clock_skew (we were down or cut off, or the primary
            # restarted from its log) is still accepted once f+1 replicas PREPAREd it: one of them
            # is honest and found it fresh. An empty batch from the past is accepted anyway: with
            # no request to refuse by its time, an old timestamp only holds the clamp back (the
            # primary could as well propose nothing). Else an idle cluster could never finish the
            # slot (empty batches for a recovering peer) without a view change.
            ts, us = batch.timestamp_us, int(now * 1_000_000)
            skewed = ts > us + self.p.clock_skew_us or (ts < us - self.p.clock_skew_us and batch.requests)
            if skewed and len(others) < self.q.join:
                return False
            prev = self.slots.get(seq - 1)
            if prev is not None and prev.batch is not None and prev.batch:
                prev_ts = parse(pb.Batch, prev.batch).timestamp_us
                if batch.timestamp_us <= prev_ts:
                    return False
        if len(batch.requests) > self.p.batch_max_requests:
            return False
        opened_all = []
        for raw in batch.requests:
            try:
                opened = self._open_request(raw)
            except WireError:
                return False
            if opened.read_only:
                return False
            opened_all.append(opened)
        for opened in opened_all:
            self._remember_opened(opened)  # executed soon: verified once
        return True

    def _on_preprepare(self, env: pb.Envelope, batch: bytes, now: float) -> None:
        payload = self._open(env, Kind.PREPREPARE)
        if payload is None:
            return
        pp = parse(pb.PrePrepare, payload)
        if env.signer != self.cluster.primary(pp.view):
            return
        slot = self.slots.get(pp.seq)
        if slot is not None and slot.view == pp.view and slot.pp is not None:
            if slot.pp.digest != pp.digest:
                assert slot.pp_env is not None
                self._record_evidence(env.signer, "pre-prepare equivocation", slot.pp_env, env)
                if pp.view == self.view and not self.view_changing:
                    self._start_view_change(self.view + 1, now)
            elif slot.batch is None and batch and sha256(batch) == pp.digest:
                slot.batch = batch
                self.batches[pp.digest] = batch
                self._try_execute(now)
            return
        if pp.view != self.view or self.view_changing or not self._in_window(pp.seq):
            return
        if self.is_primary:
            return
        if sha256(batch) != pp.digest:
            return
        if not self._validate_batch(batch, now, pp.seq, check_clock=True):
            return
        slot = self._slot(pp.seq)
        slot.pp, slot.pp_env, slot.batch = pp, env, batch
        self.batches[pp.digest] = batch
        self._persist(PrePrepareRecord(pp.view, pp.seq, pp.digest, env.SerializeToString(), batch))
        self.idle_since, self.idle_reforwarded = None, False  # the primary proposed
        if not self.recovering:
            self._send_prepare(slot)
        self._check_prepared(slot, now)

    def _send_prepare(self, slot: Slot) -> None:
        assert slot.pp is not None
        env = self._seal(Kind.PREPARE, pb.Prepare(view=slot.view, seq=slot.seq, digest=slot.pp.digest))
        slot.my_prepare = env
        slot.prepares.setdefault(slot.pp.digest, {})[self.id] = env
        self._send(self._vote_target(slot), pb.PeerMessage(envelope=env))

    def _vote_target(self, slot: Slot) -> int | None:
        """Where this backup's vote for ``slot`` goes: the primary alone, which relays it
        (``Params.vote_relay``; the slot is then marked ``relayed``, for the status tick's back-off),
        or everyone (None): the primary's own votes, votes of a view change, and votes within the
        back-off after a relay that did not arrive."""
        if not self.p.vote_relay or self.view_changing or self.recovering:
            return None
        primary = self.cluster.primary(slot.view)
        if primary == self.id or slot.view != self.view or slot.seq < self._relay_from:
            return None
        slot.relayed = True
        return primary

    def _relay_vote(self, env: pb.Envelope) -> None:
        """As primary, pass a backup's vote that counted into our own quorum on to the other
        backups: called for the whole quorum at once (``_check_prepared``, ``_check_committed``),
        so the driver sends it in one frame per peer. The vote is the signer's own envelope, so
        relaying adds no trust; a primary that withholds relays only slows the slot down to the
        next status tick's all-to-all resend (``_on_status_tick``)."""
        if not self.p.vote_relay:
            return
        data = pb.PeerMessage(envelope=env).SerializeToString()  # once, for every backup
        for r in range(self.cluster.n):
            if r != self.id and r != env.signer:
                self._emit(Send(r, data))

    def _on_prepare(self, env: pb.Envelope, now: float) -> None:
        payload = self._open(env, Kind.PREPARE)
        if payload is None:
            return
        p = parse(pb.Prepare, payload)
        if p.view != self.view or self.view_changing or not self._in_window(p.seq):
            return
        if env.signer == self.cluster.primary(p.view):
            return
        slot = self._slot(p.seq)
        for digest, votes in slot.prepares.items():
            other = votes.get(env.signer)
            if other is not None and digest != p.digest:
                self._record_evidence(env.signer, "conflicting prepares", other, env)
                return
        slot.prepares.setdefault(p.digest, {})[env.signer] = env
        if slot.pp is not None and p.digest != slot.pp.digest and env.signer not in slot.asked_pp_from:
            # The sender accepted another PRE-PREPARE for this slot: fetch it to prove equivocation.
            slot.asked_pp_from.add(env.signer)
            fetch = pb.Fetch(preprepare=pb.FetchPrePrepare(view=p.view, seq=p.seq))
            self._send(env.signer, pb.PeerMessage(envelope=self._seal(Kind.FETCH, fetch)))
        self._check_prepared(slot, now)

    def _check_prepared(self, slot: Slot, now: float) -> None:
        if slot.prepared or slot.pp is None or slot.pp_env is None:
            return
        digest = slot.pp.digest
        primary = self.cluster.primary(slot.view)
        votes = {r: e for r, e in slot.prepares.get(digest, {}).items() if r != primary}
        if len(votes) < self.q.prepare:
            return
        slot.prepared = True
        chosen = [votes[r] for r in sorted(votes)][: self.q.prepare]
        for e in chosen:
            self._decided[e.body] = slot.seq
        if self.is_primary and slot.view == self.view:
            for e in chosen:
                self._relay_vote(e)
        proof = pb.PreparedProof(preprepare=slot.pp_env, prepares=chosen)
        cert = PreparedCert(slot.view, slot.seq, digest, proof)
        old = self.prepared_certs.get(slot.seq)
        if old is None or old.view <= slot.view:
            self.prepared_certs[slot.seq] = cert
        self._persist(PreparedRecord(slot.view, slot.seq, digest, proof.SerializeToString()))
        if self.recovering:
            # Passive: it counts others' COMMITs (2f+1 of them commit the slot) but signs none.
            self._check_committed(slot, now)
            return
        env = self._seal(Kind.COMMIT, pb.Commit(view=slot.view, seq=slot.seq, digest=digest))
        slot.my_commit = env
        slot.commits.setdefault(digest, {})[self.id] = env
        self._send(self._vote_target(slot), pb.PeerMessage(envelope=env))
        self._check_committed(slot, now)

    def _on_commit(self, env: pb.Envelope, now: float) -> None:
        payload = self._open(env, Kind.COMMIT)
        if payload is None:
            return
        c = parse(pb.Commit, payload)
        if c.view != self.view or self.view_changing or not self._in_window(c.seq):
            return
        slot = self._slot(c.seq)
        for digest, votes in slot.commits.items():
            other = votes.get(env.signer)
            if other is not None and digest != c.digest:
                self._record_evidence(env.signer, "conflicting commits", other, env)
                return
        slot.commits.setdefault(c.digest, {})[env.signer] = env
        self._check_committed(slot, now)

    def _check_committed(self, slot: Slot, now: float) -> None:
        if slot.committed or not slot.prepared or slot.pp is None or slot.pp_env is None:
            return
        digest = slot.pp.digest
        votes = slot.commits.get(digest, {})
        if len(votes) < self.q.commit:
            return
        slot.committed = True
        chosen = [votes[r] for r in sorted(votes)][: self.q.commit]
        for e in chosen:
            self._decided[e.body] = slot.seq
        if self.is_primary and slot.view == self.view:
            for e in chosen:
                if e.signer != self.id:
                    self._relay_vote(e)
        if slot.seq > self.last_executed and slot.seq not in self.commit_proofs:
            self.commit_proofs[slot.seq] = pb.CommitProof(
                preprepare=slot.pp_env, batch=slot.batch or b"", commits=chosen
            )
        self._try_execute(now)

    def _on_commit_proof(self, proof: pb.CommitProof, now: float) -> None:
        """A committed batch retransmitted by a peer: trusted only through its 2f+1 signed COMMITs."""
        payload = self._open(proof.preprepare, Kind.PREPREPARE)
        if payload is None:
            return
        pp = parse(pb.PrePrepare, payload)
        if proof.preprepare.signer != self.cluster.primary(pp.view):
            return
        if pp.seq <= self.last_executed or pp.seq in self.commit_proofs or not self._in_window(pp.seq):
            return
        if sha256(proof.batch) != pp.digest:
            return
        if len(proof.commits) > self.cluster.n:
            return
        signers: set[int] = set()
        for env in proof.commits:
            body = self._open(env, Kind.COMMIT)
            if body is None or env.signer in signers:
                return
            c = parse(pb.Commit, body)
            if (c.view, c.seq, c.digest) != (pp.view, pp.seq, pp.digest):
                return
            signers.add(env.signer)
        if len(signers) < self.q.commit:
            return
        self.batches[pp.digest] = proof.batch
        self.commit_proofs[pp.seq] = proof
        self._try_execute(now)

    # ------------------------------------------------------------------ execution

    def _try_execute(self, now: float) -> None:
        progressed = False
        while self.transfer is None:
            seq = self.last_executed + 1
            proof = self.commit_proofs.get(seq)
            if proof is None:
                break
            pp = self._pp_from_env(proof.preprepare)
            batch = proof.batch if sha256(proof.batch) == pp.digest else self.batches.get(pp.digest)
            if batch is None:
                self._want_batch(pp.digest)
                break
            if not proof.batch and batch:
                proof.batch = batch
            self._execute(seq, pp.view, pp.digest, batch, proof)
            progressed = True
        if progressed:
            self.vc_timeouts = 0
            self._serve_pending_reads()
            self._refresh_request_timer(now)
            self._note_idle(now)
            self._try_propose(now)

    def _execute(self, seq: int, view: int, digest: bytes, data: bytes, proof: pb.CommitProof) -> None:
        batch = parse(pb.Batch, data) if data else pb.Batch()
        ts = max(batch.timestamp_us, self.last_ts)
        targets: list[tuple[bytes, int, int, int, bytes, bool]] = []
        executed: list[tuple[bytes, int, int]] = []
        events: list[object] = []
        for index, raw in enumerate(batch.requests):
            try:
                opened = self._open_request(raw)
            except WireError:
                continue  # cannot happen for a batch honest replicas prepared; deterministic anyway
            self._forget_opened(raw)
            req = opened.request
            cid = (req.client_key, req.session)
            key = (req.client_key, req.session, req.timestamp)
            # Designated repliers answer; the others only a client that asked them itself.
            send = key in self.asked or self.id in self.q.repliers(*key)
            self._drop_pending(key)
            replica = self._replica_of.get(req.client_key)
            if replica is not None or req.op == EPOCH_OP:
                status, result = self._execute_epoch(replica, req.op, req.timestamp, ts, seq)
                targets.append((*key, status, result, False))  # no client waits for it
                continue
            entry = self.clients.get(cid)
            if entry is not None and req.timestamp <= entry.last_timestamp:
                if req.timestamp == entry.last_timestamp:
                    targets.append((*key, entry.status, entry.result, send))
                continue  # duplicate: executed once already
            if entry is None and req.timestamp <= self.clients.floor:
                status, result = pb.REPLY_STALE_TIMESTAMP, struct.pack(">Q", self.clients.min_timestamp(cid))
                targets.append((*key, status, result, send))
                continue
            if req.timestamp > ts + self.p.max_request_ahead_us:
                # Bounded by the agreed batch time, not by anyone's clock: every replica refuses alike,
                # and a timestamp near 2^64 can never reach the table (nor, by eviction, its floor).
                targets.append((*key, pb.REPLY_INVALID_REQUEST, AHEAD_REFUSAL, send))
                continue
            res = self.app.execute(req, ExecContext(seq, index, ts))
            self.clients.record(cid, req.timestamp, seq, pb.REPLY_OK, res.result)
            targets.append((*key, pb.REPLY_OK, res.result, send))
            executed.append(key)
            events.extend(res.events)
        self.clients.evict_overflow()
        self.last_ts = ts
        self.last_executed = seq
        self.commit_proofs.setdefault(seq, proof)
        # Lazy: replies need not wait for it (Persist); our CHECKPOINT and every other Send do.
        self._persist(CommitRecord(seq, view, digest, proof.SerializeToString()), lazy=True)
        if targets and not self.restoring:
            self._send_replies(view, seq, targets)
        ckpt_digest = None
        if seq % self.p.checkpoint_interval == 0:
            ckpt_digest = self._take_checkpoint(seq)
        self._emit(Committed(seq, view, digest, tuple(executed), ckpt_digest, tuple(events)))

    def _execute_epoch(
        self, replica: int | None, op: bytes, timestamp: int, ts: int, seq: int
    ) -> tuple[int, bytes]:
        """A request signed with a replica key, or carrying the epoch operation: the epoch request
        of that replica sets its epoch to the request's timestamp if that is higher (so replays
        are refused and a wiped replica need not know its old epoch); anything else is an agreed
        refusal. Deterministic: the table is replicated state, in the checkpoint digest."""
        if replica is None or op != EPOCH_OP:
            return pb.REPLY_INVALID_REQUEST, EPOCH_REFUSAL
        if timestamp > ts + self.p.max_request_ahead_us:
            return pb.REPLY_INVALID_REQUEST, AHEAD_REFUSAL
        old = self.clients.epoch(replica)
        if timestamp <= old:
            if replica == self.id and timestamp == self.epoch_ts:
                self.epoch_request = None  # an older incarnation's epoch is higher: sign a new one
            return pb.REPLY_STALE_TIMESTAMP, struct.pack(">Q", min(old + 1, MAX_U64))
        self.clients.set_epoch(replica, timestamp)
        if replica == self.id and timestamp == self.epoch_ts and self.epoch_seq is None:
            self.epoch_seq = seq
        held = self.vc_latest.get(replica)
        if held is not None and held.epoch < timestamp and replica != self.id:
            del self.vc_latest[replica]  # signed by an incarnation that no longer counts
        return pb.REPLY_OK, struct.pack(">Q", timestamp)

    def _stale_epoch(self, vc: ValidViewChange) -> bool:
        """A VIEW-CHANGE signed before its signer's last recovery (our executed state holds a higher
        epoch for it): a vote of a replica that forgot what it signed, never counted."""
        return self.check_epochs and vc.epoch < self.clients.epoch(vc.sender)

    def _send_epoch_request(self, now: float) -> None:
        """While recovering and until our epoch request is applied in our executed state: (sign it
        and) send it to every replica, which hold it as a forwarded client request (request timer:
        a primary that does not order it is replaced). Its timestamp is our clock, and above the
        epoch our state shows, so it raises our epoch past anything an earlier incarnation signed."""
        if not self.recovering or self.epoch_seq is not None:
            return
        if self.epoch_request is None:
            ts = min(max(int(now * 1_000_000), self.clients.epoch(self.id) + 1, self.epoch_ts + 1), MAX_U64)
            self.epoch_ts = ts
            self.epoch_request = make_request(self.signer, self.cid, 0, ts, EPOCH_OP)
        self._send(None, pb.PeerMessage(request=self.epoch_request))

    def _send_replies(
        self, view: int, seq: int, targets: list[tuple[bytes, int, int, int, bytes, bool]]
    ) -> None:
        """Reply to the targets marked to send. The hash tree covers every request of the batch,
        sent or not, so that every replica signs the same root (receipts need f+1 signatures over
        one root); a replica that sends nothing for the batch signs nothing."""
        if not any(t[5] for t in targets):
            return
        leaves = [merkle.leaf_hash(leaf_bytes(k, s, t, st, r)) for k, s, t, st, r, _ in targets]
        root, paths = merkle.build(leaves)
        root_env = self._seal(Kind.REPLY, pb.ReplyRoot(view=view, seq=seq, root=root))
        for i, (k, s, t, st, r, send) in enumerate(targets):
            if not send:
                continue
            reply = pb.ClientReply(
                root=root_env,
                session=s,
                timestamp=t,
                result=r,
                index=i,
                path=paths[i],
                client_key=k,
                status=st,
            )
            self._emit(ToClient(k, s, t, reply.SerializeToString()))

    def _reply_cached(self, key: bytes, session: int, timestamp: int, status: int, result: bytes) -> None:
        self._send_replies(self.view, self.last_executed, [(key, session, timestamp, status, result, True)])

    def _drop_pending(self, key: ReqKey) -> None:
        opened = self.pending.pop(key, None)
        if opened is not None:
            cid = (key[0], key[1])
            mine = self.pending_by_client.get(cid, {})
            mine.pop(key, None)
            if not mine:
                self.pending_by_client.pop(cid, None)
            self.pending_bytes -= opened.retained_bytes
            self._pending_owners.add(cid, -opened.retained_bytes)
            tag = self._fair_tag.pop(key)
            del self._arrived_work[key]
            if self._key_finish.get(key[0]) == tag:
                del self._key_finish[key[0]]
        self.proposed.discard(key)
        self.asked.discard(key)

    # ------------------------------------------------------------------ reads

    def _on_read(self, opened: OpenedRequest, now: float) -> str | None:
        """Answer a one-round read now, or park it until ``min_seq`` is executed (or the view
        change ends). Parked reads are de-duplicated, expire after ``read_wait_timeout``, and are
        bounded per client key and in total (entries and bytes). A ``min_seq`` beyond anything a
        client can have seen (past our window above the last executed) is refused at once."""
        if opened.min_seq > self.last_executed + self.p.watermark_window:
            self.rejected_inputs += 1
            return "read min_seq beyond any executed sequence number"
        if not self.view_changing and self.last_executed >= opened.min_seq:
            self._answer_read(opened)
            return None
        req = opened.request
        key = (req.client_key, req.session, req.timestamp)
        if key in self.pending_reads:
            return None
        mine = self._reads_by_key.get(req.client_key, {})
        if len(mine) >= self.p.max_pending_reads_per_client:
            self._drop_read(next(iter(mine)))  # the client's oldest parked read makes room
        size = opened.retained_bytes
        owners = self._read_owners
        while len(self.pending_reads) >= self.p.max_pending_reads or (
            self.pending_read_bytes + size > self.p.max_pending_read_bytes
        ):
            victim = owners.largest()
            if victim is None or owners.held[victim] <= owners.held.get(req.client_key, 0) + size:
                self.rejected_inputs += 1
                return "replica overloaded: too many waiting reads"
            self._drop_read(next(iter(self._reads_by_key[victim])))
        self.pending_reads[key] = (opened, now + self.p.read_wait_timeout)
        self._reads_by_key.setdefault(req.client_key, {})[key] = None
        self.pending_read_bytes += size
        owners.add(req.client_key, size)
        return None

    def _drop_read(self, key: ReqKey) -> None:
        item = self.pending_reads.pop(key, None)
        if item is None:
            return
        self.pending_read_bytes -= item[0].retained_bytes
        self._read_owners.add(key[0], -item[0].retained_bytes)
        mine = self._reads_by_key.get(key[0], {})
        mine.pop(key, None)
        if not mine:
            self._reads_by_key.pop(key[0], None)

    def _answer_read(self, opened: OpenedRequest) -> None:
        """Run the read now; its reply is signed with the step's other reads (``_flush_reads``)."""
        if self.restoring:
            return
        req = opened.request
        result = self.app.query(req)
        self._read_replies.append((self.view, req.client_key, req.session, req.timestamp, result))
        self._read_mark = len(self._out)

    def _flush_reads(self) -> None:
        """Sign the step's read replies: one ``ReplyRoot(view, 0, root)`` over all of them (per view,
        should the view have moved within the step), each reply carrying its path, as ordered replies
        do for a batch. Why: a read flood made every replica sign one reply per read, and the
        signature was a share of what a one-round read costs (docs/SECURITY.md). The replies go
        where the latest read was answered: after every output emitted before it (the records the
        read's state depends on), as each one's own reply went before, and before the rest."""
        reads, self._read_replies = self._read_replies, []
        by_view: dict[int, list[tuple[bytes, int, int, int, bytes, bool]]] = {}
        for view, key, session, ts, result in reads:
            by_view.setdefault(view, []).append((key, session, ts, pb.REPLY_OK, result, True))
        tail, self._out = self._out[self._read_mark :], self._out[: self._read_mark]
        for view, targets in by_view.items():
            self._send_replies(view, 0, targets)
        self._out.extend(tail)

    def _serve_pending_reads(self) -> None:
        if not self.pending_reads or self.view_changing:
            return
        for key, (opened, _) in list(self.pending_reads.items()):
            if self.last_executed >= opened.min_seq:
                self._drop_read(key)
                self._answer_read(opened)

    def _expire_pending_reads(self, now: float) -> None:
        """Drop parked reads past their deadline (arrival order = deadline order)."""
        while self.pending_reads:
            key, (_, deadline) = next(iter(self.pending_reads.items()))
            if deadline > now:
                return
            self._drop_read(key)

    # ------------------------------------------------------------------ checkpoints

    def _page(self, index: int, seq: int) -> bytes:
        return encode_page(index, seq, self.last_ts, self.clients.page(index), self.app.page(index))

    def _checkpoint_pages(self, seq: int) -> Snapshot:
        """The snapshot at ``seq``: the changed pages re-encoded and rehashed, the rest shared."""
        dirty = self.app.take_dirty_pages() | self.clients.take_dirty_pages()
        dirty.add(0)  # the sequence number
        pages = list(self._pages)
        changed = {}
        for index in dirty:
            data = pages[index] = self._page(index, seq)
            changed[index] = page_hash(data, self.p.state_chunk_bytes)
        self._pages, self._tree = pages, self._tree.updated(changed)
        return Snapshot(seq, self._current_state_digest(seq), pages, self._tree, self.p.state_chunk_bytes)

    def _adopt_pages(self, snapshot: Snapshot) -> None:
        """The state was just rebuilt from ``snapshot``'s pages: they are the base of the next one."""
        self.app.take_dirty_pages()
        self.clients.take_dirty_pages()
        self._pages, self._tree = snapshot.pages, snapshot.tree

    def _state_from_pages(self, seq: int, pages: list[bytes]) -> tuple[Application, ClientTable, int]:
        """App, client table and clock clamp built from a checkpoint's pages; ValueError (or
        WireError) if they are not such pages."""
        if len(pages) != self.p.state_pages:
            raise ValueError(f"{len(pages)} state pages, not {self.p.state_pages}")
        parsed = [parse(pb.StatePage, p) for p in pages]
        head = parsed[0]
        if head.seq != seq or any(p.seq or p.last_timestamp_us for p in parsed[1:]):
            raise ValueError("state pages of another sequence number")
        app = self._app_factory()
        app.set_page_count(self.p.state_pages)
        app.restore_pages([p.app for p in parsed])
        clients = ClientTable.restore_pages(
            [p.clients for p in parsed], self.p.client_table_capacity, self.p.state_pages
        )
        return app, clients, head.last_timestamp_us

    def _current_state_digest(self, seq: int) -> bytes:
        return state_digest(seq, self.app.digest(), self.clients.digest(), self.last_ts)

    def _take_checkpoint(self, seq: int) -> bytes:
        snapshot = self._checkpoint_pages(seq)
        digest = snapshot.digest
        self.my_checkpoints[seq] = snapshot
        if self.restoring:
            return digest
        env = self._seal(Kind.CHECKPOINT, pb.Checkpoint(seq=seq, state_digest=digest))
        self.ckpt_votes.setdefault(seq, {}).setdefault(digest, {})[self.id] = env
        self._send(None, pb.PeerMessage(envelope=env))
        self._check_stable(seq)
        if self.pending_stable is not None and self.pending_stable[0] == seq:
            target = self.pending_stable
            self.pending_stable = None
            self._make_stable(*target)
        return digest

    def _on_checkpoint(self, env: pb.Envelope, now: float) -> None:
        """One vote per sender and seq (the first stands). Seqs inside the window (h, h+L] are L/K at
        most; beyond it only the sender's highest is kept: that is how a lagging replica learns a
        stable checkpoint it must fetch. So a sender holds at most L/K + 1 votes, whatever it signs,
        and a stability check looks at one seq's votes only.

        One exception: a vote these rules do not keep as the sender's own (a second digest for one
        seq, or beyond the window a seq below the sender's highest) also counts for a (seq, digest)
        another sender's own vote holds (``_second_checkpoint_vote``). Otherwise a faulty replica
        that sent us junk first could keep us from ever counting a certificate that includes its
        honest-looking vote, and a replica behind everyone's stable checkpoint (whose batches are
        gone) could never fetch it (simulator seeds 86 and 20263159). A certificate is 2f+1
        distinct signers of one (seq, digest) whatever else they signed. It creates no new
        candidate, so a seq in the window holds at most n digests with at most n votes each, and
        beyond it at most n candidates (one per sender's own vote) with at most n votes each."""
        payload = self._open(env, Kind.CHECKPOINT)
        if payload is None:
            return
        ck = parse(pb.Checkpoint, payload)
        if env.signer == self.id and ck.seq > self.last_executed and not self.recovering:
            # We signed it, so we executed ck.seq once; our log does not go that far: it was
            # rolled back (or lost) under us. Whatever else it forgot we may have signed.
            self._enter_recovery(f"own CHECKPOINT at seq {ck.seq} above last executed {self.last_executed}")
        if ck.seq <= self.h or ck.seq % self.p.checkpoint_interval:
            return
        mine = self.ckpt_by_sender.setdefault(env.signer, {})
        top = self.h + self.p.watermark_window
        if ck.seq in mine:
            if mine[ck.seq] != ck.state_digest:
                self._second_checkpoint_vote(env, ck)
            return
        if ck.seq > top:
            far = [s for s in mine if s > top]
            if any(s > ck.seq for s in far):
                self._second_checkpoint_vote(env, ck)
                return
            for s in far:
                self._forget_checkpoint_vote(env.signer, s)
        mine[ck.seq] = ck.state_digest
        self.ckpt_votes.setdefault(ck.seq, {}).setdefault(ck.state_digest, {})[env.signer] = env
        self._check_stable(ck.seq)

    def _second_checkpoint_vote(self, env: pb.Envelope, ck: pb.Checkpoint) -> None:
        """A vote the one-per-sender rule does not keep as the sender's own (a second digest for a
        seq, or a far seq below the sender's highest far one) still counts for a (seq, digest)
        another sender's own vote already holds: it adds no candidate, only a signature to one.
        Without it a faulty replica decides which of its votes we count: with a far vote at a junk
        seq it kept its real vote inside honest peers' stable proof from counting, and a lagging
        replica, which needs 2f+1 signers other than itself while only 2f others are honest,
        never saw a certificate (simulator seeds 86 in the window, 20263159 beyond it)."""
        votes = self.ckpt_votes.get(ck.seq, {}).get(ck.state_digest)
        if votes and env.signer not in votes:
            votes[env.signer] = env
            self._check_stable(ck.seq)

    def _forget_checkpoint_vote(self, sender: int, seq: int) -> None:
        """Drop a sender's far vote (it voted a higher far seq). A candidate that no sender's own vote
        holds any more goes with the second votes it gathered, so those stay bounded too."""
        digest = self.ckpt_by_sender.get(sender, {}).pop(seq, None)
        if digest is None:
            return
        by_digest = self.ckpt_votes.get(seq, {})
        votes = by_digest.get(digest, {})
        votes.pop(sender, None)
        if not any(self.ckpt_by_sender.get(r, {}).get(seq) == digest for r in votes):
            by_digest.pop(digest, None)
        if not by_digest:
            self.ckpt_votes.pop(seq, None)

    def _check_stable(self, seq: int) -> None:
        for digest, votes in self.ckpt_votes.get(seq, {}).items():
            if len(votes) >= self.q.checkpoint and seq > self.h:
                proof = [votes[r] for r in sorted(votes)][: self.q.checkpoint]
                self._make_stable(seq, digest, proof)
                return

    def _make_stable(self, seq: int, digest: bytes, proof: list[pb.Envelope]) -> None:
        """A checkpoint certified by 2f+1: move the window, or fetch state if we lag or diverged."""
        if self.recovering and seq > self.recovery_proven:
            self.recovery_proven = seq  # every caller verified the proof (2f+1 CHECKPOINT signatures)
        if seq <= self.h:
            return
        mine = self.my_checkpoints.get(seq)
        if mine is not None and mine.digest == digest and seq <= self.last_executed:
            self._install_stable(seq, digest, proof, mine)
            return
        if seq <= self.last_executed or mine is not None:
            # Our state at seq differs from the certified one: we diverged. Fetch state, do not vote.
            self._begin_transfer(seq, digest, proof)
            return
        # We are behind. If the slots up to seq are committed here with their batches, execution
        # gets there by itself. A batch we lack may be gone everywhere (peers forget batches at or
        # below their stable checkpoint, and this one is stable): then only state transfer helps.
        if all(self._executable(s) for s in range(self.last_executed + 1, seq + 1)):
            if self.pending_stable is None or self.pending_stable[0] < seq:
                self.pending_stable = (seq, digest, proof)
            return
        self._begin_transfer(seq, digest, proof)

    def _executable(self, seq: int) -> bool:
        """Committed here, and its batch is in the proof or held."""
        proof = self.commit_proofs.get(seq)
        if proof is None:
            return False
        digest = self._pp_from_env(proof.preprepare).digest
        return digest in self.batches or (bool(proof.batch) and sha256(proof.batch) == digest)

    def _install_stable(self, seq: int, digest: bytes, proof: list[pb.Envelope], snapshot: Snapshot) -> None:
        self.h = seq
        self.stable_digest = digest
        self.stable_proof = proof
        self.stable_snapshot = snapshot
        self.served[seq] = snapshot
        for old in sorted(self.served)[: -self.p.snapshots_kept]:
            del self.served[old]
        self._persist_checkpoint(seq, digest, proof, snapshot)
        self._garbage_collect()
        if self.recovering:
            self._recovery_progress()

    def _garbage_collect(self) -> None:
        h = self.h
        self.slots = {s: v for s, v in self.slots.items() if s > h}
        self.prepared_certs = {s: v for s, v in self.prepared_certs.items() if s > h}
        self.commit_proofs = {s: v for s, v in self.commit_proofs.items() if s > h}
        for s in [s for s in self.my_checkpoints if s < h]:
            del self.my_checkpoints[s]
        for s in [s for s in self.ckpt_votes if s <= h]:
            del self.ckpt_votes[s]
        for votes in self.ckpt_by_sender.values():
            for s in [s for s in votes if s <= h]:
                del votes[s]
        self._decided = {k: s for k, s in self._decided.items() if s > h}
        keep = {NULL_DIGEST}
        for slot in self.slots.values():
            if slot.pp is not None:
                keep.add(slot.pp.digest)
        for cert in self.prepared_certs.values():
            keep.add(cert.digest)
        self.batches = {d: b for d, b in self.batches.items() if d in keep}
        self.wanted_batches &= keep
        if self.pending_stable is not None and self.pending_stable[0] <= h:
            self.pending_stable = None

    # ------------------------------------------------------------------ view change

    def _arm_request_timer(self, now: float) -> None:
        """Half the timeout, a re-forward, the other half, then a view change (``on_timer``)."""
        if self.request_timer_on or self.view_changing or not self.pending or self.is_primary:
            return
        if self.recovering:
            return
        self.request_timer_on = True
        self.reforwarded = False
        self._set_timer(VIEW_TIMER, now + self._timeout() / 2)

    def _reforward(self) -> None:
        """The oldest waiting requests, at most a batch's worth, to the primary once more."""
        size = 0
        for count, opened in enumerate(self.pending.values()):
            if count >= self.p.batch_max_requests or size > self.p.batch_max_bytes:
                break
            size += len(opened.raw)
            self._send(self.primary, pb.PeerMessage(request=opened.raw))

    def _refresh_request_timer(self, now: float) -> None:
        """Progress was made: restart the timer if requests still wait, else stop it."""
        if self.view_changing:
            return
        if self.request_timer_on:
            self.request_timer_on = False
            self._cancel_timer(VIEW_TIMER)
        self._arm_request_timer(now)

    def _start_view_change(self, new_view: int, now: float) -> None:
        if self.recovering:
            return  # it may have signed a VIEW-CHANGE for this view before it lost its state
        if new_view <= self.view and (self.view_changing or new_view < self.view):
            return
        self.view = new_view
        self.view_changing = True
        self.request_timer_on = False
        self.vc_timer_view = -1
        self._cancel_timer(VIEW_TIMER)
        self.slots = {}
        self.proposed.clear()
        self.null_in_flight.clear()
        self._persist(ViewRecord(new_view))
        self.my_vc = self._build_view_change(new_view)
        vc = check_view_change(self.cluster, self.verifier, self.my_vc)
        self.vc_latest[self.id] = vc
        self._send(None, pb.PeerMessage(envelope=self.my_vc))
        self._after_view_change_input(now)

    def _build_view_change(self, new_view: int) -> pb.Envelope:
        vc = pb.ViewChange(
            new_view=new_view,
            stable_seq=self.h,
            stable_digest=self.stable_digest if self.h else b"",
            checkpoint_proof=self.stable_proof if self.h else [],
            epoch=self.clients.epoch(self.id),
        )
        for seq in sorted(self.prepared_certs):
            if self._in_window(seq):
                vc.prepared.append(self.prepared_certs[seq].proof)
        return self._seal(Kind.VIEW_CHANGE, vc)

    def _on_view_change(self, env: pb.Envelope, now: float) -> None:
        try:
            vc = check_view_change(self.cluster, self.verifier, env)
        except WireError:
            return
        if self._stale_epoch(vc):
            self.rejected_inputs += 1
            return
        if vc.new_view < self.view or (vc.new_view == self.view and not self.view_changing):
            if (
                vc.new_view <= self.view
                and not self.view_changing
                and self.new_view_env is not None
                and self.is_primary
            ):
                msg = pb.PeerMessage(envelope=self.new_view_env)
                self._answer(env.signer, msg, now, "new-view", self.view)
            return
        prev = self.vc_latest.get(env.signer)
        if prev is not None and prev.new_view >= vc.new_view:
            return
        self.vc_latest[env.signer] = vc
        self._after_view_change_input(now)

    def _after_view_change_input(self, now: float) -> None:
        # Join: f+1 replicas ask for views above ours -> ask for the smallest of them.
        higher = sorted(
            v.new_view for r, v in self.vc_latest.items() if r != self.id and v.new_view > self.view
        )
        if len(higher) >= self.q.join:
            target = higher[-self.q.join]  # the smallest view that f+1 senders have all reached
            self._start_view_change(target, now)
            return
        if not self.view_changing:
            return
        votes = [v for v in self.vc_latest.values() if v.new_view == self.view]
        # The timer for this view runs once 2f+1 replicas have left the old one (VIEW-CHANGEs for
        # this view or later): counting only exact matches deadlocks when a replica that helped
        # form the quorum crashed and another has already timed out to the next view.
        leaving = sum(1 for v in self.vc_latest.values() if v.new_view >= self.view)
        if leaving >= self.q.view_change and self.vc_timer_view != self.view:
            self.vc_timer_view = self.view
            self._set_timer(VIEW_TIMER, now + self._timeout())
        if self.is_primary and len(votes) >= self.q.view_change:
            self._send_new_view(votes, now)

    def _send_new_view(self, votes: list[ValidViewChange], now: float) -> None:
        mine = self.vc_latest[self.id]
        others = sorted((v for v in votes if v.sender != self.id), key=lambda v: v.sender)
        chosen = [mine, *others][: self.q.view_change]
        plan = plan_new_view(chosen)
        nv = pb.NewView(view=self.view, view_changes=[v.envelope for v in chosen])
        for seq, digest in plan.proposals:
            nv.preprepares.append(
                self._seal(Kind.PREPREPARE, pb.PrePrepare(view=self.view, seq=seq, digest=digest))
            )
        env = self._seal(Kind.NEW_VIEW, nv)
        self._persist(NewViewRecord(self.view, env.SerializeToString()))
        self._send(None, pb.PeerMessage(envelope=env))
        self._enter_view(env, nv, plan.min_s, plan.stable_digest, list(plan.stable_proof), now)

    def _on_new_view(self, env: pb.Envelope, now: float) -> None:
        payload = self._open(env, Kind.NEW_VIEW)
        if payload is None:
            return
        nv = parse(pb.NewView, payload)
        if env.signer != self.cluster.primary(nv.view):
            return
        if nv.view < self.view or (nv.view == self.view and not self.view_changing):
            return
        plan = self._check_new_view(nv)
        if plan is None:
            # A wrong NEW-VIEW is proof that its primary is faulty: move on to the next view.
            if nv.view == self.view and self.view_changing:
                self._start_view_change(self.view + 1, now)
            return
        self.view = nv.view
        self._persist(NewViewRecord(nv.view, env.SerializeToString()))
        self._enter_view(env, nv, plan[0], plan[1], plan[2], now)

    def _check_new_view(self, nv: pb.NewView) -> tuple[int, bytes, list[pb.Envelope]] | None:
        vcs: list[ValidViewChange] = []
        seen: set[int] = set()
        for e in nv.view_changes:
            try:
                vc = check_view_change(self.cluster, self.verifier, e)
            except WireError:
                return None
            if vc.new_view != nv.view or vc.sender in seen:
                return None
            if vc.sender == self.id and vc.new_view > self.view and not self.recovering:
                # Our VIEW-CHANGE for a view our log never promised to move to: rolled back.
                self._enter_recovery(f"own VIEW-CHANGE in a NEW-VIEW for view {vc.new_view} > {self.view}")
            if self._stale_epoch(vc):
                return None
            seen.add(vc.sender)
            vcs.append(vc)
        if len(vcs) != self.q.view_change:  # exactly what an honest primary sends: bounded size
            return None
        plan = plan_new_view(vcs)
        if len(nv.preprepares) != len(plan.proposals):
            return None
        primary = self.cluster.primary(nv.view)
        for e, (seq, digest) in zip(nv.preprepares, plan.proposals, strict=True):
            if e.signer != primary:
                return None
            body = self._open(e, Kind.PREPREPARE)
            if body is None:
                return None
            pp = parse(pb.PrePrepare, body)
            if (pp.view, pp.seq, pp.digest) != (nv.view, seq, digest):
                return None
        return plan.min_s, plan.stable_digest, list(plan.stable_proof)

    def _enter_view(
        self,
        env: pb.Envelope,
        nv: pb.NewView,
        min_s: int,
        stable_digest: bytes,
        stable_proof: list[pb.Envelope],
        now: float,
    ) -> None:
        self.view = nv.view
        self.view_changing = False
        self.new_view_env = env
        self.vc_timer_view = -1
        self._cancel_timer(VIEW_TIMER)
        self.request_timer_on = False
        self.idle_since, self.idle_reforwarded = None, False  # a new primary gets its full deadline
        self._relay_from, self._relay_backoff = 0, self.p.vote_relay_backoff  # a new primary to relay
        self.slots = {}
        self.proposed.clear()
        self.null_in_flight.clear()
        self.vc_latest = {r: v for r, v in self.vc_latest.items() if v.new_view > self.view}
        self._emit(ViewEntered(self.view))
        if min_s > self.h:
            self._make_stable(min_s, stable_digest, stable_proof)
        max_s = min_s
        for e in nv.preprepares:
            pp = self._pp_from_env(e)
            max_s = max(max_s, pp.seq)
            if not self._in_window(pp.seq):
                continue
            slot = self._slot(pp.seq)
            slot.pp, slot.pp_env = pp, e
            slot.batch = self.batches.get(pp.digest)
            if slot.batch is None and pp.seq > self.last_executed:
                self._want_batch(pp.digest)
            if not self.is_primary and not self.recovering:
                self._send_prepare(slot)
        self.next_seq = max(max_s, self.last_executed) + 1
        if self.is_primary:
            self._retag()
        for slot in list(self.slots.values()):
            self._check_prepared(slot, now)
        self._arm_request_timer(now)
        self._try_propose(now)
        if self.recovering:
            self._recovery_progress()

    def _pp_from_env(self, env: pb.Envelope) -> pb.PrePrepare:
        """The PRE-PREPARE inside an envelope this replica verified earlier (or signed itself)."""
        return parse(pb.PrePrepare, env.body[TAG_LEN:])

    # ------------------------------------------------------------------ fetching batches and state

    def _want_batch(self, digest: bytes) -> None:
        if digest in self.batches or digest in self.wanted_batches:
            return
        self.wanted_batches.add(digest)
        self._send(None, pb.PeerMessage(envelope=self._seal(Kind.FETCH, pb.Fetch(batch_digest=digest))))

    def _on_batch_reply(self, batch: bytes, now: float) -> None:
        digest = sha256(batch)
        if digest not in self.wanted_batches:
            return
        self.wanted_batches.discard(digest)
        self.batches[digest] = batch
        for slot in self.slots.values():
            if slot.pp is not None and slot.pp.digest == digest and slot.batch is None:
                slot.batch = batch
        self._try_execute(now)

    def _answer(self, to: int, msg: pb.PeerMessage, now: float, what: str = "", key: object = None) -> bool:
        """Send an answer to a peer's question within its byte budget (``bft.core.answers``);
        with ``what``, the same answer (``key``) is not repeated within the repeat interval."""
        if to == self.id:
            return False
        data = msg.SerializeToString()
        if not self.answers.allow(to, len(data), now, what, key):
            return False
        self._emit(Send(to, data))
        return True

    def _on_fetch(self, env: pb.Envelope, now: float) -> None:
        payload = self._open(env, Kind.FETCH)
        if payload is None:
            return
        fetch = parse(pb.Fetch, payload)
        which = fetch.WhichOneof("what")
        if which == "batch_digest":
            batch = self.batches.get(fetch.batch_digest)
            if batch is None:
                for proof in self.commit_proofs.values():
                    if sha256(proof.batch) == fetch.batch_digest:
                        batch = proof.batch
                        break
            if batch is not None:
                self._answer(env.signer, pb.PeerMessage(batch_reply=pb.BatchReply(batch=batch)), now)
        elif which == "preprepare":
            slot = self.slots.get(fetch.preprepare.seq)
            if slot is not None and slot.view == fetch.preprepare.view and slot.pp_env is not None:
                msg = pb.PeerMessage(envelope=slot.pp_env, batch=slot.batch or b"")
                self._answer(env.signer, msg, now)
        elif which == "state":
            self._serve_state(env.signer, fetch.state, now)

    def _serve_state(self, to: int, want: pb.FetchState, now: float) -> None:
        """At most ``state_chunks_per_fetch`` chunks of a checkpoint we hold with that digest; for
        a checkpoint older than all we keep, our stable proof (the peer then fetches that one)."""
        snap = self.served.get(want.seq) or self.my_checkpoints.get(want.seq)
        if snap is None or snap.digest != want.digest:
            if self.h > want.seq:
                self._send_stable_proof(to, now)
            return
        count = min(want.count, self.p.state_chunks_per_fetch)
        for chunk in snap.chunks(want.first, want.part, count, want.hashes, want.end):
            if not self._answer(to, pb.PeerMessage(state_chunk=chunk), now):
                return

    def _send_stable_proof(self, to: int, now: float) -> None:
        """Our stable checkpoint's 2f+1 CHECKPOINTs: a peer behind it in execution fetches it, one past
        it moves its window (at most once per peer and checkpoint per repeat interval)."""
        if self.h == 0 or not self.answers.allow(to, 0, now, "stable-proof", self.h):
            return
        for e in self.stable_proof:
            self._answer(to, pb.PeerMessage(envelope=e), now)

    def _begin_transfer(self, seq: int, digest: bytes, proof: list[pb.Envelope]) -> None:
        """Fetch the certified checkpoint (seq, digest) from the proof's lowest signer other than
        us, or, superseding a target, from the signer after its source. Pages we hold with the
        target's hashes are not fetched: our last checkpoint's, and the superseded target's."""
        t = self.transfer
        if t is not None and t.seq >= seq:
            return
        # A later certified checkpoint replaces the target at once: the pages fetched so far are
        # kept for it wherever its page hashes match (most, under load), and the old target may
        # soon be served by no one (replicas keep their last snapshots_kept). Before page hashes,
        # a superseded target kept its progress and was pinned there by a Byzantine source that
        # trickled it (simulator seed 20266959). The next source is asked, so a source that stalls
        # costs each target at most one timeout and never two in a row.
        sources = sorted({e.signer for e in proof} - {self.id}) or [
            r for r in range(self.cluster.n) if r != self.id
        ]
        first = sources[0] if t is None else next((s for s in sources if s > t.source), sources[0])
        self.transfer = self.transfer_class(
            seq, digest, proof, first, self.p.state_chunk_bytes, self.p.max_snapshot_bytes, self.p.state_pages
        )
        self.transfer.candidates.append((dict(enumerate(self._pages)), dict(enumerate(self._tree.levels[0]))))
        if t is not None and t.pages:
            self.transfer.candidates.append((t.pages, t.hashes))
        self._request_state()

    def _request_state(self) -> None:
        """Ask the current source for the next window of missing chunks."""
        t = self.transfer
        assert t is not None
        first, part, hashes, end = t.window()
        t.asked, t.arrived, t.answered = self.p.state_chunks_per_fetch, 0, False
        want = pb.FetchState(
            seq=t.seq, digest=t.digest, first=first, count=t.asked, part=part, hashes=hashes, end=end
        )
        fetch = pb.Fetch(state=want)
        self._send(t.source, pb.PeerMessage(envelope=self._seal(Kind.FETCH, fetch)))

    def _transfer_tick(self, now: float) -> None:
        """Once per status tick: re-ask after a lost answer; change source only on a real timeout
        (no new verified chunk for ``state_transfer_timeout``); chunks already held are kept."""
        t = self.transfer
        assert t is not None
        if t.seq > self.last_executed and all(
            self._executable(s) for s in range(self.last_executed + 1, t.seq + 1)
        ):
            # We are behind (not diverged) and the committed slots up to the target arrived
            # meanwhile: execute them. The target may no longer be served by anyone.
            self.transfer = None
            if self.pending_stable is None or self.pending_stable[0] < t.seq:
                self.pending_stable = (t.seq, t.digest, t.proof)
            self._try_execute(now)
            return
        if t.last_progress is None or t.accepted != t.progress_mark:
            t.progress_mark = t.accepted
            if t.last_progress is None:
                t.last_progress = now
            return
        if now - t.last_progress < self.p.state_transfer_timeout:
            self._request_state()  # no progress in a tick: the request or its answer was lost
            return
        t.last_progress = now
        t.source = (t.source + 1) % self.cluster.n
        if t.source == self.id:
            t.source = (t.source + 1) % self.cluster.n
        self._request_state()

    def _on_state_chunk(self, chunk: pb.StateChunk, now: float) -> None:
        t = self.transfer
        if t is None:
            return
        rejected = t.rejected
        accepted = t.offer(chunk)
        self.chunks_rejected += t.rejected - rejected
        if not accepted:
            return
        t.last_progress = now
        if t.complete:
            if not self._install_snapshot(t, now):
                # Certified bytes that do not restore: start over (cannot happen between honest
                # replicas running the same code).
                self.transfer = None
                self._begin_transfer(t.seq, t.digest, t.proof)
        elif t.window_done():
            self._request_state()

    def _install_snapshot(self, t: Transfer, now: float) -> bool:
        assert t.manifest is not None
        seq, digest, proof = t.seq, t.digest, t.proof
        pages = t.assemble()
        try:
            app, clients, last_ts = self._state_from_pages(seq, pages)
        except (WireError, ValueError):
            return False
        if state_digest(seq, app.digest(), clients.digest(), last_ts) != t.manifest.state_digest:
            return False
        self.app, self.clients = app, clients
        self.last_ts = last_ts
        self.last_executed = seq
        self.transfer = None
        if len(t.hashes) == len(pages):
            tree = PageTree.build([t.hashes[i] for i in range(len(pages))])
            snapshot = Snapshot(seq, t.manifest.state_digest, pages, tree, self.p.state_chunk_bytes)
        else:  # the unauthenticated-chunks mutation keeps no hashes
            snapshot = Snapshot.of_pages(seq, t.manifest.state_digest, pages, self.p.state_chunk_bytes)
        self._adopt_pages(snapshot)
        self.my_checkpoints = {seq: snapshot}
        self.commit_proofs = {s: p for s, p in self.commit_proofs.items() if s > seq}
        for key in [
            k for k in self.pending if (e := self.clients.get((k[0], k[1]))) and k[2] <= e.last_timestamp
        ]:
            self._drop_pending(key)
        for key in [k for k in self.pending if k[0] in self._replica_of]:
            if key[2] <= self.clients.epoch(self._replica_of[key[0]]):
                self._drop_pending(key)
        if self.recovering and self.epoch_ts and self.epoch_seq is None:
            mine = self.clients.epoch(self.id)
            if mine == self.epoch_ts:
                self.epoch_seq = seq  # applied at or below this certified seq
            elif mine > self.epoch_ts:
                self.epoch_request = None  # an older incarnation's epoch is higher: sign a new one
        self._install_stable(seq, digest, proof, snapshot)
        self._emit(StateInstalled(seq))
        self.next_seq = max(self.next_seq, seq + 1)
        self._try_execute(now)
        self._refresh_request_timer(now)  # progress, and the requests it covered no longer wait
        return True

    # ------------------------------------------------------------------ recovery (amnesia)

    def _note_recovery_report(self, peer: int, st: pb.Status, now: float) -> None:
        """A peer's STATUS while we recover: its view, stable checkpoint and own recovery."""
        # No honest replica reaches 2**63 views; a bigger claim is a lie (and 2**64-1 + 1 does not
        # fit the wire).
        view = st.view if st.view < 2**63 else 0
        self.recovery_views[peer] = max(view, self.recovery_views.get(peer, 0))
        # The highest a peer ever claimed: a STATUS delayed from before our wipe cannot lower it.
        self.recovery_stable[peer] = max(st.stable_seq, self.recovery_stable.get(peer, 0))
        if st.recovering:
            self.recovery_flagged.add(peer)
        else:
            self.recovery_flagged.discard(peer)
        if len(self.recovery_flagged) >= self.q.join and len(self.recovery_views) >= self.q.view_change:
            # At least one other honest replica recovers too: more than f replicas count as
            # faulty (or the whole cluster starts from empty data dirs). No bound can be
            # completed then; fall back to voting after a view change past the (f+1)-th highest
            # view reported, as before PBFT-PR recovery was built (docs/PROTOCOL.md).
            views = sorted(self.recovery_views.values(), reverse=True)
            self._persist_recovered_state()
            self._reset_recovery()
            self._start_view_change(views[self.q.f] + 1, now)
            return
        self._recovery_progress()

    def _recovery_progress(self) -> None:
        """Fix the bound H once 2f+1 peers' reported stable checkpoints are covered by a proof we
        verified; end recovery at a stable checkpoint >= H in a view >= the (f+1)-th highest
        reported, entered through a verified NEW-VIEW (or view 0)."""
        if not self.recovering:
            return
        if self.recovery_target is None:
            covered = sum(1 for s in self.recovery_stable.values() if s <= self.recovery_proven)
            if covered < self.q.view_change:
                return
            # Before losing its state this replica signed only for seqs <= h_old + W, and at least
            # one honest signer of h_old's proof is among these 2f+1 reporters: its stable
            # checkpoint, which it claimed and c covers, is >= h_old - W. So c + 2W >= h_old + W.
            self.recovery_target = self.recovery_proven + 2 * self.p.watermark_window
            views = sorted(self.recovery_views.values(), reverse=True)
            self.recovery_view = views[self.q.f]
        if self.epoch_seq is None or self.h < self.epoch_seq:
            return  # our epoch request is not in a stable checkpoint yet (docs/PROTOCOL.md, Epochs)
        if self.h >= self.recovery_target and self.view >= self.recovery_view and not self.view_changing:
            self._persist_recovered_state()
            self._persist(ViewRecord(self.view))
            if self.new_view_env is not None and self.view > 0:
                self._persist(NewViewRecord(self.view, self.new_view_env.SerializeToString()))
            self._reset_recovery()
            self.next_seq = max(self.next_seq, self.last_executed + 1)

    def _persist_recovered_state(self) -> None:
        """Nothing was persisted while recovering: the stable checkpoint and the commits above it."""
        self.recovering = False
        if self.h and self.stable_snapshot is not None:
            self._logged = None  # in full
            self._persist_checkpoint(self.h, self.stable_digest, self.stable_proof, self.stable_snapshot)
        for seq in range(self.h + 1, self.last_executed + 1):
            proof = self.commit_proofs.get(seq)
            if proof is not None:
                pp = self._pp_from_env(proof.preprepare)
                self._persist(CommitRecord(seq, pp.view, pp.digest, proof.SerializeToString()))

    def _reset_recovery(self) -> None:
        self.recovering = False
        self.recovery_views.clear()
        self.recovery_stable.clear()
        self.recovery_flagged.clear()
        self.recovery_proven = 0
        self.recovery_target = None
        self.recovery_view = 0
        self.epoch_request = None
        self.epoch_ts = 0
        self.epoch_seq = None

    def _enter_recovery(self, reason: str) -> None:
        """We met our own signature on something our log cannot have produced: the log was rolled
        back (a restored backup, a disk that acknowledged writes it lost). What else we signed and
        forgot is unknown, so behave as a wiped replica from here: sign nothing at or below a new
        bound H. The state itself is fine (it was certified when we executed it)."""
        self.rollbacks += 1
        self._emit(RecoveryStarted(reason))
        self._reset_recovery()
        self.recovering = True
        self.recovery_proven = self.h
        self.request_timer_on = False
        self.vc_timer_view = -1
        self._cancel_timer(VIEW_TIMER)
        self.peer_recovery.clear()

    def _check_own_view_change(self, env: pb.Envelope, now: float) -> None:
        """Our own VIEW-CHANGE came back: fine unless it is for a view above ours (the ViewRecord
        is durable before a VIEW-CHANGE leaves, so our log forgot it)."""
        payload = self._open(env, Kind.VIEW_CHANGE)
        if payload is None:
            return
        vc = parse(pb.ViewChange, payload)
        if vc.new_view > self.view:
            self._enter_recovery(f"own VIEW-CHANGE for view {vc.new_view}, above view {self.view}")

    # ------------------------------------------------------------------ status and retransmission

    def _broadcast_status(self) -> None:
        st = pb.Status(
            view=self.view,
            view_changing=self.view_changing,
            last_executed=self.last_executed,
            stable_seq=self.h,
            recovering=self.recovering,
            # H, or the seq where our epoch request executed if higher: where we vote again.
            recovery_target=max(self.recovery_target, self.epoch_seq or 0)
            if self.recovering and self.recovery_target is not None
            else 0,
        )
        self._send(None, pb.PeerMessage(envelope=self._seal(Kind.STATUS, st)))

    def _resend_checkpoints(self) -> None:
        """Our CHECKPOINT votes above the stable checkpoint, again once two ticks passed without it
        becoming stable. Votes get lost, and a replica that re-executed its log after a restart
        never sent them: after a crash of every replica with the window full, nobody voted and no
        batch could be proposed again, for ever (simulator, regression ``crash-all-window-full``).
        At most watermark_window / checkpoint_interval small messages per tick."""
        self.ckpt_ticks = {s: t for s, t in self.ckpt_ticks.items() if s > self.h}
        for seq in sorted(s for s in self.my_checkpoints if s > self.h):
            ticks = self.ckpt_ticks[seq] = self.ckpt_ticks.get(seq, 0) + 1
            if ticks < 2:
                continue
            snap = self.my_checkpoints[seq]
            env = self._seal(Kind.CHECKPOINT, pb.Checkpoint(seq=seq, state_digest=snap.digest))
            self.ckpt_votes.setdefault(seq, {}).setdefault(snap.digest, {})[self.id] = env
            self._send(None, pb.PeerMessage(envelope=env))
            self._check_stable(seq)

    def _on_status_tick(self, now: float) -> None:
        self._broadcast_status()
        self._send_epoch_request(now)
        self._resend_checkpoints()
        self._check_idle(now)
        self.null_budget = self.p.recovery_null_batches
        if self.view_changing and self.my_vc is not None and not self.recovering:
            self._send(None, pb.PeerMessage(envelope=self.my_vc))
        if self.transfer is not None:
            self._transfer_tick(now)
        for digest in list(self.wanted_batches):
            self.wanted_batches.discard(digest)
            self._want_batch(digest)
        if not self.view_changing:
            # Our own votes for slots still undecided after a tick: resend, since messages get lost.
            for slot in self.slots.values():
                if slot.committed or slot.seq <= self.last_executed:
                    continue
                slot.age += 1
                if slot.age < 2:
                    continue
                if self.is_primary and slot.pp_env is not None:
                    self._send(None, pb.PeerMessage(envelope=slot.pp_env, batch=slot.batch or b""))
                if slot.relayed:
                    # Our vote went through the primary and the slot is still undecided: vote
                    # directly for a while, twice as long after each such slot in this view.
                    slot.relayed = False
                    self._relay_from = max(self._relay_from, slot.seq + self._relay_backoff)
                    self._relay_backoff = min(self._relay_backoff * 2, 1 << 30)
                if slot.my_prepare is not None:
                    self._send(None, pb.PeerMessage(envelope=slot.my_prepare))
                if slot.my_commit is not None:
                    self._send(None, pb.PeerMessage(envelope=slot.my_commit))
        if self.is_primary:
            self._try_propose(now)

    def _idle(self) -> bool:
        """A backup with requests waiting, room in the window and no PRE-PREPARE of the current
        view above what it executed: an honest primary would be proposing now."""
        if self.is_primary or self.view_changing or self.recovering or self.transfer is not None:
            return False
        if not self.pending or self.last_executed + 1 > self.h + self.p.watermark_window:
            return False
        return not any(s.pp is not None and s.seq > self.last_executed for s in self.slots.values())

    def _note_idle(self, now: float) -> None:
        if self._idle():
            if self.idle_since is None:
                self.idle_since = now
        else:
            self.idle_since = None
            self.idle_reforwarded = False

    def _check_idle(self, now: float) -> None:
        """The proposal deadline, checked at each status tick. The request timer alone lets a
        primary that commits one batch just before it expires keep the cluster at a batch per
        ``view_change_timeout`` (measured: 3 % of the healthy throughput, docs/SECURITY.md); with
        nothing in flight an honest primary proposes within milliseconds, so a backup that waited
        ``propose_timeout`` re-forwards its oldest requests (the first copy may have been lost),
        and after another ``propose_timeout`` suspects the primary."""
        self._note_idle(now)
        if self.idle_since is None or now - self.idle_since < self.p.propose_timeout:
            return
        if not self.idle_reforwarded:
            self.idle_reforwarded = True
            self.idle_since = now
            self._reforward()
            return
        self.idle_since = None
        self.idle_reforwarded = False
        self.vc_timeouts += 1
        self._start_view_change(self.view + 1, now)

    def _on_status(self, env: pb.Envelope, now: float) -> None:
        payload = self._open(env, Kind.STATUS)
        if payload is None:
            return
        st = parse(pb.Status, payload)
        peer = env.signer
        if self.recovering:
            self._note_recovery_report(peer, st, now)
        else:
            if st.recovering and st.recovery_target > 0:
                # Never beyond 2W above our stable checkpoint (an honest H is 2W above a certified
                # checkpoint), so 2**64-1 costs what an honest H does; the credit bounds the rest.
                cap = self.h + 2 * self.p.watermark_window
                self.peer_recovery[peer] = min(st.recovery_target, cap)
            else:
                self.peer_recovery.pop(peer, None)
            if st.recovering and peer == self.primary and not self.view_changing:
                # Our primary lost its state: it proposes nothing (it may have signed other
                # PRE-PREPAREs in this view), so replace it, as PBFT-PR does when a primary recovers.
                self._start_view_change(self.view + 1, now)
        # Answers below are much larger than a STATUS: budgeted per peer, and the same answer to
        # the same question is not repeated within answer_repeat_interval (bft/core/answers.py).
        if self.view_changing:
            if self.my_vc is not None and st.view <= self.view:
                self._answer(peer, pb.PeerMessage(envelope=self.my_vc), now, "view-change", self.view)
        elif (
            st.view <= self.view
            and (st.view < self.view or st.view_changing)
            and self.new_view_env is not None
        ):
            self._answer(peer, pb.PeerMessage(envelope=self.new_view_env), now, "new-view", self.view)
        if st.stable_seq < self.h and self.h > 0:
            # The peer's stable checkpoint is behind ours: show it our proof. Behind it in execution,
            # it fetches state; past it, the proof moves its window, without which it drops commit
            # proofs above its old h + L and never catches up (simulator seed 20265896: a replica
            # that was down while its peers' CHECKPOINTs flew by executed to its window's top).
            self._send_stable_proof(peer, now)
        if self.h <= st.last_executed < self.last_executed:
            hi = min(self.last_executed, st.last_executed + self.p.catchup_slots_per_status)
            if not self.answers.allow(peer, 0, now, "catch-up", (st.last_executed, hi)):
                return
            for seq in range(st.last_executed + 1, hi + 1):
                proof = self.commit_proofs.get(seq)
                if proof is not None and not self._answer(peer, pb.PeerMessage(commit_proof=proof), now):
                    break

    # ------------------------------------------------------------------ bounded tables

    def retained(self) -> dict[str, int]:
        """Bytes held now in each table the network feeds (recounted, not the running totals): what
        the simulator checks against ``retained_bound``. Batches are bounded by the window and the
        batch cap (docs/SECURITY.md) and not counted here."""

        def envs(items: object) -> int:
            return sum(e.ByteSize() for e in items)  # type: ignore[attr-defined]

        return {
            "pending": sum(o.retained_bytes for o in self.pending.values()),
            "reads": sum(o.retained_bytes for o, _ in self.pending_reads.values()),
            "opened": sum(o.retained_bytes for o in self._opened.values()),
            "checkpoints": sum(envs(v.values()) for by in self.ckpt_votes.values() for v in by.values()),
            "view-changes": sum(v.envelope.ByteSize() for v in self.vc_latest.values()),
            "slots": sum(
                (slot.pp_env.ByteSize() if slot.pp_env is not None else 0)
                + sum(envs(v.values()) for v in slot.prepares.values())
                + sum(envs(v.values()) for v in slot.commits.values())
                for slot in self.slots.values()
            ),
            "commit-proofs": sum(p.ByteSize() for p in self.commit_proofs.values()),
            "evidence": sum(e.first.ByteSize() + e.second.ByteSize() for e in self.evidence),
        }

    def retained_bound(self) -> dict[str, int]:
        """The most each ``retained`` table may hold at these parameters, whatever peers and clients
        send (docs/SECURITY.md states the same bounds)."""
        p, n, caps = self.p, self.cluster.n, self.cluster.caps
        vote = envelope_size(caps.body[Kind.PREPARE])
        return {
            "pending": p.max_pending_bytes,
            "reads": p.max_pending_read_bytes,
            "opened": p.max_pending_bytes,
            "checkpoints": (n * n * (p.watermark_window // p.checkpoint_interval + 1) + 1)
            * envelope_size(caps.body[Kind.CHECKPOINT]),
            "view-changes": n * envelope_size(caps.body[Kind.VIEW_CHANGE]),
            "slots": p.watermark_window * (2 * n + 1) * vote,
            "commit-proofs": p.watermark_window * caps.commit_proof,
            "evidence": 256 * 2 * vote,
        }

    # ------------------------------------------------------------------ restart

    def _restore(self, records: list[Record]) -> None:
        """Rebuild from persisted records: last snapshot, then committed batches, then votes."""
        self.restoring = True
        try:
            self._replay(records)
        finally:
            self.restoring = False

    def _restore_legacy(self, rec: CheckpointRecord) -> tuple[Snapshot, bytes]:
        """A CheckpointRecord written before checkpoint pages: restore its ``StateSnapshot`` and
        check it against its certificate the old way. The snapshot kept is the same state as pages
        (digest of the new kind: it is served from the next stable checkpoint on, as a cluster
        upgraded all at once certifies only new ones)."""
        snap = parse(pb.StateSnapshot, rec.snapshot)
        app = self._app_factory()
        app.restore(snap.app)
        app.set_page_count(self.p.state_pages)
        self.app = app
        self.clients = ClientTable.restore(snap.clients, self.p.client_table_capacity, self.p.state_pages)
        self.last_ts = snap.last_timestamp_us
        state = self._current_state_digest(rec.seq)
        return self._checkpoint_pages(rec.seq), legacy_digest(
            rec.seq, state, rec.snapshot, self.p.state_chunk_bytes
        )

    def _checkpoint_chain(self, records: list[Record]) -> tuple[CheckpointRecord, list[bytes] | None]:
        """The log's latest checkpoint and its pages: the last full CheckpointRecord with the delta
        ones after it applied in order (None for a full one of the kind before pages)."""
        chain: list[CheckpointRecord] = []
        for r in records:
            if isinstance(r, CheckpointRecord):
                if not r.delta_of:
                    chain = [r]
                elif not chain or r.delta_of != chain[-1].seq or not chain[0].paged:
                    raise ValueError(f"checkpoint record at seq {r.seq} does not follow its predecessor")
                else:
                    chain.append(r)
        if not chain[0].paged:
            return chain[0], None
        pages = list(parse(pb.StatePages, chain[0].snapshot).pages)
        for r in chain[1:]:
            delta = parse(pb.StatePages, r.snapshot)
            if len(delta.indexes) != len(delta.pages) or any(i >= len(pages) for i in delta.indexes):
                raise ValueError(f"checkpoint record at seq {r.seq}: malformed changed pages")
            for i, page in zip(delta.indexes, delta.pages, strict=True):
                pages[i] = page
        self._since_full = sum(payload_bytes(r) for r in chain[1:])
        return chain[-1], pages

    def _replay(self, records: list[Record]) -> None:
        snap_rec: CheckpointRecord | None = None
        if any(isinstance(r, CheckpointRecord) for r in records):
            snap_rec, pages = self._checkpoint_chain(records)
        if snap_rec is not None:
            if pages is not None:
                self.app, self.clients, self.last_ts = self._state_from_pages(snap_rec.seq, pages)
                snapshot = Snapshot.of_pages(
                    snap_rec.seq, self._current_state_digest(snap_rec.seq), pages, self.p.state_chunk_bytes
                )
                self._adopt_pages(snapshot)
                self._logged = (snap_rec.seq, snapshot.pages)
                digest = snapshot.digest
            else:
                snapshot, digest = self._restore_legacy(snap_rec)
            self.last_executed = self.h = snap_rec.seq
            self.stable_digest = snap_rec.state_digest
            self.stable_proof = [parse(pb.Envelope, e) for e in snap_rec.proof]
            self.stable_snapshot = self.served[snap_rec.seq] = snapshot
            self.my_checkpoints[snap_rec.seq] = snapshot
            if digest != snap_rec.state_digest:
                raise ValueError(
                    f"checkpoint snapshot at seq {snap_rec.seq} does not match its certified digest"
                )
        commits = sorted(
            (r for r in records if isinstance(r, CommitRecord) and r.seq > self.h), key=lambda r: r.seq
        )
        for c in commits:
            if c.seq != self.last_executed + 1:
                continue
            proof = parse(pb.CommitProof, c.proof)
            self._execute(c.seq, c.view, c.digest, proof.batch, proof)
        view = 0
        nv_rec: NewViewRecord | None = None
        for r in records:
            if isinstance(r, ViewRecord) and r.view > view:
                view, nv_rec = r.view, None
            elif isinstance(r, NewViewRecord) and r.view >= view:
                view, nv_rec = r.view, r
        self.view = view
        self.view_changing = view > 0 and nv_rec is None
        for r in records:
            if isinstance(r, PreparedRecord) and r.seq > self.h:
                old = self.prepared_certs.get(r.seq)
                if old is None or old.view <= r.view:
                    pproof = parse(pb.PreparedProof, r.proof)
                    self.prepared_certs[r.seq] = PreparedCert(r.view, r.seq, r.digest, pproof)
        for r in records:
            # Batches of any view: a NEW-VIEW may re-propose them by digest.
            if isinstance(r, PrePrepareRecord) and r.seq > self.h:
                self.batches[r.digest] = r.batch
        if self.view_changing:
            self.my_vc = self._build_view_change(self.view)
            self.vc_latest[self.id] = check_view_change(self.cluster, self.verifier, self.my_vc)
            return
        max_seq = self.last_executed
        if nv_rec is not None:
            env = parse(pb.Envelope, nv_rec.new_view)
            nv = parse(pb.NewView, env.body[TAG_LEN:])
            self.new_view_env = env
            for e in nv.preprepares:
                pp = self._pp_from_env(e)
                max_seq = max(max_seq, pp.seq)
                if self._in_window(pp.seq):
                    slot = self._slot(pp.seq)
                    slot.pp, slot.pp_env, slot.batch = pp, e, self.batches.get(pp.digest)
        for r in records:
            if isinstance(r, PrePrepareRecord) and r.view == self.view and self._in_window(r.seq):
                env = parse(pb.Envelope, r.envelope)
                slot = self._slot(r.seq)
                slot.pp, slot.pp_env, slot.batch = self._pp_from_env(env), env, r.batch
                self.batches[r.digest] = r.batch
                max_seq = max(max_seq, r.seq)
        for seq, slot in self.slots.items():
            if slot.pp is None or seq <= self.last_executed:
                continue
            if self.primary != self.id:
                slot.my_prepare = self._seal(
                    Kind.PREPARE, pb.Prepare(view=self.view, seq=seq, digest=slot.pp.digest)
                )
                slot.prepares.setdefault(slot.pp.digest, {})[self.id] = slot.my_prepare
            cert = self.prepared_certs.get(seq)
            if cert is not None and cert.view == self.view and cert.digest == slot.pp.digest:
                slot.prepared = True
                slot.my_commit = self._seal(
                    Kind.COMMIT, pb.Commit(view=self.view, seq=seq, digest=cert.digest)
                )
                slot.commits.setdefault(cert.digest, {})[self.id] = slot.my_commit
        self.next_seq = max_seq + 1
