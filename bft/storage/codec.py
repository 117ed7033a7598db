"""Record <-> bytes, in one place: the core's persisted records as ``LogRecord`` protobufs.

Every opaque field (envelopes, batches, proofs, snapshots) is carried as the exact bytes the core
produced, so a record read back is equal to the one written and signatures inside still verify.
Decoding never raises anything but ``CodecError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

from google.protobuf.message import DecodeError

from bft.core.events import (
    CheckpointRecord,
    CommitRecord,
    NewViewRecord,
    PreparedRecord,
    PrePrepareRecord,
    Record,
    ViewRecord,
)
from bft.pb.bftchat.v1 import storage_pb2 as spb
from bft.wire import varint

HASH_LEN = 32


class CodecError(ValueError):
    """Bytes that are not a well-formed LogRecord / LogFrame."""


KIND_NAMES: dict[type, str] = {
    ViewRecord: "view",
    NewViewRecord: "new-view",
    PrePrepareRecord: "pre-prepare",
    PreparedRecord: "prepared",
    CommitRecord: "commit",
    CheckpointRecord: "checkpoint",
}
"""Short names for reports (verify-log output, error messages)."""


def kind_name(record: Record) -> str:
    return KIND_NAMES[type(record)]


def to_pb(record: Record) -> spb.LogRecord:
    """The entry part of a LogRecord (chain fields left for the log to fill in)."""
    msg = spb.LogRecord()
    if isinstance(record, ViewRecord):
        msg.view.view = record.view
    elif isinstance(record, NewViewRecord):
        msg.new_view.view = record.view
        msg.new_view.new_view = record.new_view
    elif isinstance(record, PrePrepareRecord):
        e = msg.preprepare
        e.view, e.seq, e.digest, e.envelope, e.batch = (
            record.view,
            record.seq,
            record.digest,
            record.envelope,
            record.batch,
        )
    elif isinstance(record, PreparedRecord):
        p = msg.prepared
        p.view, p.seq, p.digest, p.proof = record.view, record.seq, record.digest, record.proof
    elif isinstance(record, CommitRecord):
        c = msg.commit
        c.seq, c.view, c.digest, c.proof = record.seq, record.view, record.digest, record.proof
    elif isinstance(record, CheckpointRecord):
        k = msg.checkpoint
        k.seq, k.state_digest, k.delta_of = record.seq, record.state_digest, record.delta_of
        if record.paged:
            k.pages = record.snapshot
        else:
            k.snapshot = record.snapshot
        k.proof.extend(record.proof)
    else:  # pragma: no cover - the Record union is closed
        raise TypeError(f"not a persisted record: {type(record).__name__}")
    return msg


def from_pb(msg: spb.LogRecord) -> Record:
    """The core's record inside a LogRecord; CodecError if it carries none."""
    which = msg.WhichOneof("entry")
    if which == "view":
        return ViewRecord(msg.view.view)
    if which == "new_view":
        return NewViewRecord(msg.new_view.view, msg.new_view.new_view)
    if which == "preprepare":
        e = msg.preprepare
        return PrePrepareRecord(e.view, e.seq, e.digest, e.envelope, e.batch)
    if which == "prepared":
        p = msg.prepared
        return PreparedRecord(p.view, p.seq, p.digest, p.proof)
    if which == "commit":
        c = msg.commit
        return CommitRecord(c.seq, c.view, c.digest, c.proof)
    if which == "checkpoint":
        k = msg.checkpoint
        paged = bool(k.pages)  # a StatePages is never empty (at least one page)
        snapshot = k.pages if paged else k.snapshot
        return CheckpointRecord(k.seq, k.state_digest, snapshot, tuple(k.proof), paged, k.delta_of)
    raise CodecError("log record carries no entry")


def encode_entry(record: Record) -> bytes:
    """The record's entry alone: serialised once, when the record is appended."""
    return to_pb(record).SerializeToString()


def chain_fields(replica: int, index: int, prev_hash: bytes) -> bytes:
    """The LogRecord's chain fields. ``entry + chain_fields(...)`` is a complete LogRecord (protobuf
    merges concatenated messages), so the log never re-serialises a large entry to chain it."""
    if len(prev_hash) != HASH_LEN:
        raise ValueError("prev_hash must be 32 bytes")
    return spb.LogRecord(replica=replica, index=index, prev_hash=prev_hash).SerializeToString()


def encode_record(record: Record, replica: int, index: int, prev_hash: bytes) -> bytes:
    """The exact LogRecord bytes that are hashed into the chain."""
    return encode_entry(record) + chain_fields(replica, index, prev_hash)


def frame_body_parts(record_parts: list[bytes], seal: bytes) -> list[bytes]:
    """A serialised LogFrame(record=b"".join(record_parts), seal=seal), as pieces to write with
    writev: a multi-megabyte snapshot is never copied to be framed."""
    size = sum(len(p) for p in record_parts)
    parts = [b"\x0a" + varint(size), *record_parts]  # field 1, length-delimited
    if seal:
        parts.append(b"\x12" + varint(len(seal)) + seal)  # field 2, length-delimited
    return parts


@dataclass(frozen=True, slots=True)
class Decoded:
    """A LogRecord read back: its chain fields and the core's record."""

    replica: int
    index: int
    prev_hash: bytes
    record: Record


def decode_record(data: bytes | memoryview) -> Decoded:
    msg = spb.LogRecord()
    try:
        msg.ParseFromString(cast(bytes, data))  # upb parses any buffer; the stub says bytes
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise CodecError(f"malformed log record: {exc}") from None
    if len(msg.prev_hash) != HASH_LEN:
        raise CodecError("log record has no 32-byte prev_hash")
    return Decoded(msg.replica, msg.index, msg.prev_hash, from_pb(msg))


def encode_frame_body(record_bytes: bytes, seal: bytes = b"") -> bytes:
    return spb.LogFrame(record=record_bytes, seal=seal).SerializeToString()


def decode_frame_body(data: bytes | memoryview) -> tuple[bytes, bytes]:
    """(LogRecord bytes, seal or b"")."""
    msg = spb.LogFrame()
    try:
        msg.ParseFromString(cast(bytes, data))  # upb parses any buffer; the stub says bytes
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise CodecError(f"malformed log frame: {exc}") from None
    if not msg.record:
        raise CodecError("log frame carries no record")
    return msg.record, msg.seal


def record_bytes(record: Record) -> bytes:
    """A record alone (no chain fields), e.g. for tests and other stores."""
    return encode_record(record, 0, 0, bytes(HASH_LEN))


def record_from_bytes(data: bytes) -> Record:
    return decode_record(data).record
