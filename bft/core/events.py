"""Typed outputs of the core, and the records it asks the driver to persist.

The driver carries outputs out in order. A ``Persist`` must be durable (synced) before any later
output that leaves the process (``Send``, ``ToClient``): that ordering is how the core keeps its
promise never to sign two different things for one slot and never to lose an acknowledged commit.
Consecutive ``Persist`` outputs may share one sync (group commit).
"""

from __future__ import annotations

from dataclasses import dataclass

from bft.pb.bftchat.v1 import protocol_pb2 as pb


@dataclass(frozen=True, slots=True)
class Send:
    """A serialised PeerMessage for replica ``to``, or for every other replica when ``to`` is None."""

    to: int | None
    data: bytes


@dataclass(frozen=True, slots=True)
class ToClient:
    """A serialised ClientReply for the client session (key, session)."""

    client_key: bytes
    session: int
    timestamp: int
    data: bytes


@dataclass(frozen=True, slots=True)
class SetTimer:
    name: str
    at: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    name: str


@dataclass(frozen=True, slots=True)
class Evidence:
    """Two validly signed, conflicting messages from one replica: checkable with public keys alone."""

    replica: int
    what: str
    first: pb.Envelope
    second: pb.Envelope


@dataclass(frozen=True, slots=True)
class Committed:
    """Notice: batch ``seq`` executed (for metrics, logs and the simulator's checkers)."""

    seq: int
    view: int
    digest: bytes
    executed: tuple[tuple[bytes, int, int], ...]  # (client key, session, timestamp) run by the app
    state_digest: bytes | None  # set at checkpoints
    app_events: tuple[object, ...]


@dataclass(frozen=True, slots=True)
class ViewEntered:
    view: int


@dataclass(frozen=True, slots=True)
class StateInstalled:
    """Notice: state transfer installed the checkpoint at ``seq``."""

    seq: int


# ---- persisted records ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ViewRecord:
    """Moving to ``view``: written before the VIEW-CHANGE for it is sent."""

    view: int


@dataclass(frozen=True, slots=True)
class NewViewRecord:
    """Entered ``view`` on this NEW-VIEW (serialised Envelope): written before PREPAREs for it."""

    view: int
    new_view: bytes


@dataclass(frozen=True, slots=True)
class PrePrepareRecord:
    """A PRE-PREPARE sent (primary) or accepted (backup): written before it or its PREPARE is sent."""

    view: int
    seq: int
    digest: bytes
    envelope: bytes
    batch: bytes


@dataclass(frozen=True, slots=True)
class PreparedRecord:
    """A prepared certificate (serialised PreparedProof): written before the COMMIT is sent."""

    view: int
    seq: int
    digest: bytes
    proof: bytes


@dataclass(frozen=True, slots=True)
class CommitRecord:
    """An executed batch with its commit certificate (serialised CommitProof): before any reply."""

    seq: int
    view: int
    digest: bytes
    proof: bytes


@dataclass(frozen=True, slots=True)
class CheckpointRecord:
    """A stable checkpoint: its state and its 2f+1 CHECKPOINT proof. ``snapshot`` is the serialised
    ``StatePages`` (``paged``), or in logs written before checkpoint pages a ``StateSnapshot``.
    With ``delta_of`` set it holds only the pages changed since the checkpoint at that seq, whose
    record is the previous CheckpointRecord of the log (``records.compact`` keeps the chain).

    Everything about sequence numbers at or below ``seq`` may be discarded once this is durable.
    """

    seq: int
    state_digest: bytes
    snapshot: bytes
    proof: tuple[bytes, ...]
    paged: bool = True
    delta_of: int = 0


Record = ViewRecord | NewViewRecord | PrePrepareRecord | PreparedRecord | CommitRecord | CheckpointRecord


def payload_bytes(record: Record) -> int:
    """About what ``record`` adds to the log: its large fields (what decides when to log in full)."""
    if isinstance(record, PrePrepareRecord):
        return len(record.envelope) + len(record.batch)
    if isinstance(record, (PreparedRecord, CommitRecord)):
        return len(record.proof)
    if isinstance(record, CheckpointRecord):
        return len(record.snapshot)
    return 0


@dataclass(frozen=True, slots=True)
class Persist:
    """Append ``record`` to the log. Every ``Send`` waits until all records before it are durable;
    a ``ToClient`` waits only for those that are not ``lazy``. The execution record is lazy: the
    batch is committed (2f+1 COMMITs, each sent only once its sender's prepared certificate was
    durable), so a replica that loses it re-learns the batch from its peers and re-executes it to
    the same result (docs/PROTOCOL.md, "What is durable before a reply")."""

    record: Record
    lazy: bool = False


@dataclass(frozen=True, slots=True)
class RecoveryStarted:
    """The replica met its own signature on something its log cannot have produced (the log was
    rolled back) and now recovers as if wiped. The driver makes this durable before any later
    output (the storage's RECOVERING marker), so a restart does not trust the old log again."""

    reason: str


Output = (
    Send
    | ToClient
    | SetTimer
    | CancelTimer
    | Evidence
    | Committed
    | ViewEntered
    | StateInstalled
    | Persist
    | RecoveryStarted
)
