"""The replica's own append-only, hash-chained, signed log of persisted records.

Layout of ``data_dir``::

    IDENTITY      cluster id, replica id, public key: a data dir never serves another replica
    RECOVERING    present while the replica's state was discarded and not yet rebuilt
    LOCK          flock'ed while a process has the log open
    log/000007.seg, log/000008.seg, ...   segments, oldest first

A segment is a sequence of frames ``u32 length | u32 crc32(body) | u32 crc32(first 8 bytes) | body``
with ``body`` a serialised ``LogFrame``: the ``LogRecord`` bytes and, on the last frame of each group
commit, a seal. Record ``i`` holds ``sha256(frame body i-1)`` (seals included); the seal is the
replica's signature over ``tag(LOG_RECORD, cluster id) || sha256(LogRecord bytes)``, so one seal
vouches for the whole chain before it. One ``sync()`` = one group = one write + one fsync + one
signature.

A full stable checkpoint starts a new segment that begins with the CheckpointRecord and holds what
``records.compact`` keeps; older segments are then deleted. A checkpoint logged as its changed
pages is appended like any record (the segments before it hold its chain). docs/STORAGE.md has
the full format, the durability contract and the recovery rules.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bft.core.config import ClusterInfo
from bft.core.events import (
    CheckpointRecord,
    CommitRecord,
    NewViewRecord,
    PreparedRecord,
    PrePrepareRecord,
    Record,
    ViewRecord,
)
from bft.core.viewchange import check_checkpoint_proof, check_prepared_proof, open_replica
from bft.crypto import SIG_LEN, CachingVerifier, Ed25519Verifier, Kind, Signer, Verifier, sha256, tag
from bft.pb.bftchat.v1 import protocol_pb2 as pb
from bft.storage import codec
from bft.storage.codec import CodecError
from bft.storage.records import compact
from bft.wire import WireError, parse

LOG_DIR = "log"
IDENTITY_FILE = "IDENTITY"
RECOVERING_FILE = "RECOVERING"
LOCK_FILE = "LOCK"
DIR_MODE = 0o700  # data dir and log dir; files in them are created 0600
SEGMENT_RE = re.compile(r"^(\d{6,})\.seg$")
IDENTITY_HEADER = "bftchat replica data directory v1"

HEADER = struct.Struct(">III")  # body length, crc32(body), crc32(the 8 bytes before)
HEADER_LEN = HEADER.size
MAX_BODY = (1 << 31) - 1  # protobuf messages are limited to 2 GiB
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
_SMALL = 64 * 1024  # pieces below this are joined before writev; larger ones are written in place
_IOV_MAX = 512


class LogError(Exception):
    """The log is corrupt, tampered with, or not this replica's: refuse to start on it.

    The message names the file, the byte offset, the record index and what is wrong.
    """

    def __init__(
        self, what: str, *, path: Path | None = None, offset: int | None = None, index: int | None = None
    ) -> None:
        self.what = what
        self.path = path
        self.offset = offset
        self.index = index
        where = []
        if path is not None:
            where.append(str(path))
        if offset is not None:
            where.append(f"offset {offset}")
        if index is not None:
            where.append(f"record {index}")
        super().__init__(f"{', '.join(where)}: {what}" if where else what)


class LogIOError(OSError):
    """A write or fsync failed. What is durable is unknown until the next ``load()``: the process
    must restart; the log refuses further appends (retrying an fsync can report success for data
    the kernel already dropped)."""


@dataclass
class LoadReport:
    """What ``load()`` found. ``recovering``: the state was wiped, start the core with
    ``recovering=True``. ``fresh``: this data dir was created by this call (no IDENTITY before): a
    replica that ever ran before and lost its whole data dir looks the same, so starting fresh dirs
    recovering too is the safe choice (it costs one view change when a whole cluster starts)."""

    records: int
    last_seq: int
    truncated_tail_bytes: int
    warnings: list[str]
    segments: int = 0
    bytes: int = 0
    recovering: bool = False
    fresh: bool = False


@dataclass
class VerifySummary:
    """What ``verify_log`` found; ``render()`` is the text ``bftchat-replica verify-log`` prints."""

    path: str
    replica_id: int | None = None
    segments: int = 0
    bytes: int = 0
    records: int = 0
    groups: int = 0
    first_index: int = 0
    last_index: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    checkpoint_seq: int | None = None
    last_seq: int = 0
    last_view: int = 0
    live_records: int = 0
    torn_tail_bytes: int = 0
    warnings: list[str] = field(default_factory=list)
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def render(self) -> str:
        lines = [f"log: {self.path}"]
        lines.append(f"replica: {'?' if self.replica_id is None else self.replica_id}")
        lines.append(f"segments: {self.segments} ({self.bytes} bytes)")
        span = f" (index {self.first_index}..{self.last_index})" if self.records else ""
        lines.append(f"records: {self.records}{span} in {self.groups} sealed groups")
        if self.kinds:
            lines.append("kinds: " + ", ".join(f"{k} {v}" for k, v in sorted(self.kinds.items())))
        ck = "none" if self.checkpoint_seq is None else f"seq {self.checkpoint_seq}"
        lines.append(f"checkpoint: {ck}")
        lines.append(f"last seq: {self.last_seq}")
        lines.append(f"last view: {self.last_view}")
        lines.append(f"live records (after compaction): {self.live_records}")
        lines.append(f"torn tail: {self.torn_tail_bytes} bytes")
        lines.extend(f"warning: {w}" for w in self.warnings)
        lines.append("result: OK" if self.ok else f"result: FAILED: {self.problem}")
        return "\n".join(lines)


# ---------------------------------------------------------------- small file-system helpers


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tighten(directory: Path) -> str | None:
    """Make a data dir (or its log dir) private to the replica's user: the log holds who talks to
    whom and when. A looser directory is tightened to 0700, with a warning saying so."""
    try:
        mode = directory.stat().st_mode & 0o777
    except FileNotFoundError:
        return None
    if not mode & 0o077:
        return None
    directory.chmod(mode & DIR_MODE)
    return f"{directory} was mode {mode:04o}: tightened to {mode & DIR_MODE:04o}"


def _write_atomic(path: Path, data: bytes) -> None:
    """Write a small file so that a crash leaves either the old or the new contents."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        _write_all(fd, [data])
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _write_all(fd: int, parts: list[bytes]) -> int:
    """writev until everything is written (writes may be partial); returns the byte count."""
    total = 0
    i = 0
    while i < len(parts):
        chunk = parts[i : i + _IOV_MAX]
        n = os.writev(fd, chunk)
        if n <= 0:
            raise OSError("writev wrote nothing")
        total += n
        # Skip the fully written pieces; keep the unwritten rest of a partially written one.
        while chunk and n >= len(chunk[0]):
            n -= len(chunk[0])
            chunk = chunk[1:]
            i += 1
        if n:
            parts[i] = parts[i][n:]
    return total


def segment_name(number: int) -> str:
    return f"{number:06d}.seg"


def _list_segments(log_dir: Path) -> list[tuple[int, Path]]:
    if not log_dir.is_dir():
        return []
    found = []
    for p in log_dir.iterdir():
        m = SEGMENT_RE.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    found.sort()
    return found


def genesis_hash(cluster_id: bytes, replica_id: int) -> bytes:
    """prev_hash of record 1: binds a log to its cluster and replica from the first record on."""
    return sha256(b"bftchat log genesis\0" + cluster_id + struct.pack(">I", replica_id))


def seal_payload(cluster_id: bytes, record_hash: bytes) -> bytes:
    return tag(Kind.LOG_RECORD, cluster_id) + record_hash


# ---------------------------------------------------------------- identity and recovery marker


@dataclass(frozen=True)
class Identity:
    cluster_id: bytes
    replica_id: int
    public_key: bytes

    def render(self) -> str:
        return (
            f"{IDENTITY_HEADER}\ncluster_id {self.cluster_id.hex()}\nreplica {self.replica_id}\n"
            f"public_key {self.public_key.hex()}\n"
        )

    @staticmethod
    def parse(text: str, path: Path) -> Identity:
        lines = text.splitlines()
        if not lines or lines[0] != IDENTITY_HEADER:
            raise LogError("not a bftchat IDENTITY file", path=path)
        fields: dict[str, str] = {}
        for line in lines[1:]:
            key, _, value = line.partition(" ")
            fields[key] = value
        try:
            cluster_id, public_key = bytes.fromhex(fields["cluster_id"]), bytes.fromhex(fields["public_key"])
            return Identity(cluster_id, int(fields["replica"]), public_key)
        except (KeyError, ValueError) as exc:
            raise LogError(f"malformed IDENTITY file ({exc})", path=path) from None


def read_identity(data_dir: Path) -> Identity | None:
    path = Path(data_dir) / IDENTITY_FILE
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    return Identity.parse(text, path)


def is_recovering(data_dir: Path) -> bool:
    """True while the data dir's state was discarded and the replica has not yet rebuilt it (it must
    then start with ``recovering=True``). Survives crashes until a ViewRecord is synced."""
    return (Path(data_dir) / RECOVERING_FILE).exists()


def wipe_state(data_dir: Path) -> None:
    """Discard this replica's persisted state (``--recover``); it then recovers by state transfer.

    The marker is made durable before anything is deleted, so a crash at any point leaves a data
    dir that is still known to be recovering. IDENTITY goes too (segments first, so a log never
    outlives it): the next ``load()`` writes a new one, which is how a replica's key is rotated.
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    _write_atomic(data_dir / RECOVERING_FILE, b"state discarded; recovering from peers by state transfer\n")
    log_dir = data_dir / LOG_DIR
    for _, p in _list_segments(log_dir):
        p.unlink()
    if log_dir.is_dir():
        _fsync_dir(log_dir)
    (data_dir / IDENTITY_FILE).unlink(missing_ok=True)
    _fsync_dir(data_dir)


# ---------------------------------------------------------------- reading and verifying


@dataclass
class _Frame:
    path: Path
    offset: int
    end: int
    index: int
    record: Record
    hash: bytes  # sha256 of the frame body: the next record's prev_hash
    seal: bytes
    signed_hash: bytes  # sha256 of the LogRecord bytes, what the seal signs (sealed frames only)


@dataclass
class _Segment:
    number: int
    path: Path
    size: int
    frames: list[_Frame] = field(default_factory=list)
    sealed_end: int = 0  # offset just after the last sealed frame
    torn: str | None = None  # why the bytes after sealed_end are a torn tail


class _Reader:
    """Verifies segments in order: frames, checksums, chain, seals. Raises LogError on corruption.

    ``all_seals`` checks every group's seal (verify-log, to locate a problem); otherwise only each
    segment's last seal is checked (load): the chain makes that one signature cover every record.
    """

    def __init__(
        self,
        cluster: ClusterInfo,
        replica_id: int | None,
        verifier: Verifier,
        all_seals: bool,
        allow_partial_start: bool = False,
    ) -> None:
        self.cluster = cluster
        self.replica_id = replica_id
        self.verifier = verifier
        self.all_seals = all_seals
        self.allow_partial_start = allow_partial_start
        self.segments: list[_Segment] = []
        self.prev_hash: bytes | None = None
        self.prev_index = 0
        self.warnings: list[str] = []

    @property
    def public_key(self) -> bytes:
        assert self.replica_id is not None
        return self.cluster.public_keys[self.replica_id]

    def frames(self) -> Iterator[_Frame]:
        for seg in self.segments:
            yield from seg.frames

    def read(self, segments: list[tuple[int, Path]]) -> None:
        for pos, (number, path) in enumerate(segments):
            if pos and number != segments[pos - 1][0] + 1:
                missing = segment_name(segments[pos - 1][0] + 1)
                raise LogError(f"segment {missing} is missing (the log jumps to {path.name})", path=path)
            data = path.read_bytes()
            self._read_segment(number, path, data, last=pos == len(segments) - 1)

    def _corrupt(self, what: str, path: Path, offset: int, index: int | None = None) -> LogError:
        return LogError(what, path=path, offset=offset, index=index)

    def _read_segment(self, number: int, path: Path, data: bytes, last: bool) -> None:
        seg = _Segment(number, path, len(data))
        self.segments.append(seg)
        view = memoryview(data)
        size = len(data)
        pos = 0
        after = f"after record {self.prev_index}"
        while pos < size:
            rem = size - pos
            if rem < HEADER_LEN:
                seg.torn = f"incomplete frame header ({rem} of {HEADER_LEN} bytes) {after}"
                break
            length, body_crc, head_crc = HEADER.unpack_from(data, pos)
            if zlib.crc32(view[pos : pos + 8]) != head_crc:
                if _zero(view[pos + HEADER_LEN :]):
                    seg.torn = f"unwritten frame header (only zero bytes follow) {after}"
                    break
                raise self._corrupt(f"bad frame header checksum {after}", path, pos)
            if length > MAX_BODY:
                raise self._corrupt(f"frame length {length} exceeds the limit {after}", path, pos)
            end = pos + HEADER_LEN + length
            if end > size:
                seg.torn = f"incomplete frame ({rem - HEADER_LEN} of {length} body bytes) {after}"
                break
            body = view[pos + HEADER_LEN : end]
            if zlib.crc32(body) != body_crc:
                if _zero(view[end:]):
                    seg.torn = f"bad checksum in the final frame {after}"
                    break
                raise self._corrupt(f"bad frame checksum {after} (data changed on disk)", path, pos)
            frame = self._decode(path, pos, end, body)
            seg.frames.append(frame)
            if frame.seal:
                seg.sealed_end = end
                if self.all_seals:
                    self._check_seal(frame)
            pos = end
            after = f"after record {frame.index}"
        if seg.torn is None and seg.sealed_end < size:
            unsealed = sum(1 for f in seg.frames if f.offset >= seg.sealed_end)
            seg.torn = f"incomplete group commit: {unsealed} record(s) without a seal {after}"
        if seg.torn is not None:
            if not last:
                raise self._corrupt(
                    f"{seg.torn}, but later segments exist", path, seg.sealed_end, self._index_at(seg)
                )
            # Torn tail: the records of the group that was being written when the process died.
            dropped = [f for f in seg.frames if f.offset >= seg.sealed_end]
            seg.frames = [f for f in seg.frames if f.offset < seg.sealed_end]
            if dropped:
                self.prev_index = dropped[0].index - 1
        if seg.frames and not self.all_seals:
            self._check_seal(seg.frames[-1])

    def _index_at(self, seg: _Segment) -> int | None:
        return seg.frames[-1].index if seg.frames else None

    def _decode(self, path: Path, pos: int, end: int, body: memoryview) -> _Frame:
        index_hint = self.prev_index + 1
        try:
            rec_bytes, seal = codec.decode_frame_body(body)
            dec = codec.decode_record(rec_bytes)
        except CodecError as exc:
            raise self._corrupt(f"{exc} (checksum ok: written corrupt)", path, pos, index_hint) from None
        if self.replica_id is None:
            if not 0 <= dec.replica < self.cluster.n:
                raise self._corrupt(f"record names unknown replica {dec.replica}", path, pos, dec.index)
            self.replica_id = dec.replica
        if dec.replica != self.replica_id:
            raise self._corrupt(
                f"record belongs to replica {dec.replica}, not {self.replica_id}", path, pos, dec.index
            )
        kind = codec.kind_name(dec.record)
        if self.prev_hash is None:
            # The first record of the retained log: the genesis record, or a checkpoint that begins
            # a compacted segment (what came before it was deleted on purpose).
            if dec.index == 1:
                if dec.prev_hash != genesis_hash(self.cluster.cluster_id, self.replica_id):
                    raise self._corrupt("record 1 does not start from this log's genesis", path, pos, 1)
            elif not isinstance(dec.record, CheckpointRecord):
                msg = (
                    f"the log starts at record {dec.index} with a {kind} record: earlier segments are missing"
                )
                if not self.allow_partial_start:
                    raise self._corrupt(msg, path, pos, dec.index)
                self.warnings.append(f"{msg} (only this file was given: chain checked from here)")
        else:
            if dec.index != self.prev_index + 1:
                raise self._corrupt(
                    f"record index {dec.index} follows {self.prev_index}: records missing or reordered",
                    path,
                    pos,
                    dec.index,
                )
            if dec.prev_hash != self.prev_hash:
                raise self._corrupt(
                    f"hash chain broken: prev_hash does not match record {self.prev_index}",
                    path,
                    pos,
                    dec.index,
                )
        if seal and len(seal) != SIG_LEN:
            raise self._corrupt(f"seal of {len(seal)} bytes", path, pos, dec.index)
        link = hashlib.sha256(body).digest()
        self.prev_hash = link
        self.prev_index = dec.index
        return _Frame(path, pos, end, dec.index, dec.record, link, seal, sha256(rec_bytes) if seal else b"")

    def _check_seal(self, frame: _Frame) -> None:
        if not frame.seal:
            raise self._corrupt(
                "segment does not end with a sealed record", frame.path, frame.offset, frame.index
            )
        payload = seal_payload(self.cluster.cluster_id, frame.signed_hash)
        if self.verifier.verify(self.public_key, payload, frame.seal):
            return
        if not self.all_seals:
            # Locate: the first group in this segment whose seal fails.
            for seg in self.segments:
                for f in seg.frames:
                    if f.seal and not self.verifier.verify(
                        self.public_key, seal_payload(self.cluster.cluster_id, f.signed_hash), f.seal
                    ):
                        frame = f
                        break
                else:
                    continue
                break
        raise self._corrupt(
            f"seal does not verify with replica {self.replica_id}'s key: this group (or a record "
            "before it) was not written by this replica",
            frame.path,
            frame.offset,
            frame.index,
        )

    def base(self) -> int:
        """Position in ``segments`` of the newest segment that begins with a full checkpoint (a
        finished compaction); the segments before it are superseded. 0 if none. A delta checkpoint
        that happens to open a segment (after a rotation) supersedes nothing: it needs its chain."""
        for pos in range(len(self.segments) - 1, 0, -1):
            frames = self.segments[pos].frames
            if frames and isinstance(first := frames[0].record, CheckpointRecord) and not first.delta_of:
                return pos
        return 0


def _zero(data: memoryview) -> bool:
    return not bytes(data).strip(b"\0")


def _live(frames: list[_Frame]) -> list[_Frame]:
    """``records.compact`` applied to frames (compact keeps the very objects it is given)."""
    by_id = {id(f.record): f for f in frames}
    return [by_id[id(r)] for r in compact([f.record for f in frames])]


def _check_certificates(cluster: ClusterInfo, verifier: Verifier, frames: list[_Frame]) -> None:
    """Every certificate of the live records: what a restarted replica acts on must be provable."""
    cached = CachingVerifier(verifier, 4096)
    for f in frames:
        try:
            _check_record(cluster, cached, f.record)
        except WireError as exc:
            raise LogError(
                f"{codec.kind_name(f.record)} record: {exc}", path=f.path, offset=f.offset, index=f.index
            ) from None


def _check_record(cluster: ClusterInfo, verifier: Verifier, r: Record) -> None:
    if isinstance(r, CommitRecord):
        proof = parse(pb.CommitProof, r.proof)
        pp = _open_preprepare(cluster, verifier, proof.preprepare)
        if (pp.view, pp.seq, pp.digest) != (r.view, r.seq, r.digest):
            raise WireError("the commit certificate's PRE-PREPARE is for another view, seq or digest")
        if sha256(proof.batch) != r.digest:
            raise WireError("the batch does not match the digest")
        signers: set[int] = set()
        for env in proof.commits:
            c = parse(pb.Commit, open_replica(env, Kind.COMMIT, cluster, verifier))
            if (c.view, c.seq, c.digest) != (r.view, r.seq, r.digest):
                raise WireError(f"COMMIT from replica {env.signer} is for another view, seq or digest")
            signers.add(env.signer)
        if len(signers) < cluster.quorums.commit:
            raise WireError(f"{len(signers)} distinct COMMITs, a certificate needs {cluster.quorums.commit}")
    elif isinstance(r, CheckpointRecord):
        envs = [parse(pb.Envelope, e) for e in r.proof]
        if r.seq == 0 or not check_checkpoint_proof(cluster, verifier, r.seq, r.state_digest, envs):
            raise WireError(f"no valid 2f+1 CHECKPOINT proof for seq {r.seq}")
    elif isinstance(r, PrePrepareRecord):
        env = parse(pb.Envelope, r.envelope)
        pp = _open_preprepare(cluster, verifier, env)
        if (pp.view, pp.seq, pp.digest) != (r.view, r.seq, r.digest):
            raise WireError("the PRE-PREPARE is for another view, seq or digest")
        if sha256(r.batch) != r.digest:
            raise WireError("the batch does not match the digest")
    elif isinstance(r, PreparedRecord):
        cert = check_prepared_proof(cluster, verifier, parse(pb.PreparedProof, r.proof))
        if (cert.view, cert.seq, cert.digest) != (r.view, r.seq, r.digest):
            raise WireError("the prepared certificate is for another view, seq or digest")
    elif isinstance(r, NewViewRecord):
        env = parse(pb.Envelope, r.new_view)
        nv = parse(pb.NewView, open_replica(env, Kind.NEW_VIEW, cluster, verifier))
        if nv.view != r.view or env.signer != cluster.primary(nv.view):
            raise WireError("NEW-VIEW not for this view or not signed by its primary")


def _open_preprepare(cluster: ClusterInfo, verifier: Verifier, env: pb.Envelope) -> pb.PrePrepare:
    pp = parse(pb.PrePrepare, open_replica(env, Kind.PREPREPARE, cluster, verifier))
    if env.signer != cluster.primary(pp.view):
        raise WireError("PRE-PREPARE not signed by the view's primary")
    return pp


def _last_seq(records: list[Record]) -> int:
    return max(
        (r.seq for r in records if isinstance(r, (CommitRecord, CheckpointRecord))),
        default=0,
    )


# ---------------------------------------------------------------- the log


class ReplicaLog:
    """One replica's log in ``data_dir``. Call ``load()`` first; then ``append`` + ``sync``.

    One owner thread appends; ``write_group`` may run on one worker thread meanwhile (see there).
    A record is durable only once the ``sync()`` or ``write_group`` that wrote it has returned.
    """

    def __init__(
        self,
        data_dir: Path,
        replica_id: int,
        signer: Signer,
        cluster: ClusterInfo,
        verifier: Verifier,
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    ) -> None:
        if not 0 <= replica_id < cluster.n:
            raise ValueError(f"replica id {replica_id} not in 0..{cluster.n - 1}")
        if signer.public_key != cluster.public_keys[replica_id]:
            raise ValueError("signing key does not match the cluster's public key for this replica")
        self.data_dir = Path(data_dir)
        self.log_dir = self.data_dir / LOG_DIR
        self.replica_id = replica_id
        self.signer = signer
        self.cluster = cluster
        self.verifier = verifier
        self.segment_bytes = segment_bytes
        self._identity = Identity(cluster.cluster_id, replica_id, signer.public_key)
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._loaded = False
        self._failed: BaseException | None = None
        self._pending: list[tuple[Record, bytes]] = []
        self._live: list[Record] = []  # what a compaction would start from: compact(everything)
        self._segments: dict[int, int] = {}  # number -> size in bytes
        self._seg_no = 0
        self._head_hash = b""
        self._head_index = 0
        self._recovering = False

    # ------------------------------------------------------------ public API

    @property
    def dirty(self) -> bool:
        return bool(self._pending)

    @property
    def size_bytes(self) -> int:
        return sum(dict(self._segments).values())  # a copy: a group may be written on another thread

    def load(self) -> tuple[list[Record], LoadReport]:
        """Verify the log and return its live records in write order (see ``records.compact``).

        Repairs only what a crash explains (a torn last group; an interrupted compaction or wipe),
        with a warning in the report. Anything else raises LogError and changes nothing.
        """
        if self._loaded:
            raise RuntimeError("load() was already called")
        try:
            return self._load()
        except BaseException:
            self.close()  # release the lock: nothing was changed
            raise

    def _load(self) -> tuple[list[Record], LoadReport]:
        if not self.data_dir.is_dir():
            self.data_dir.mkdir(mode=DIR_MODE, parents=True)
            _fsync_dir(self.data_dir.parent)
        self._take_lock()
        warnings: list[str] = [w for d in (self.data_dir, self.log_dir) if (w := _tighten(d))]
        if is_recovering(self.data_dir):
            # Whatever was written since the wipe predates the first ViewRecord after recovery:
            # discard it too (the core persists nothing while it recovers).
            written = [p for _, p in _list_segments(self.log_dir) if p.stat().st_size]
            for p in written:
                p.unlink()
            if written:
                _fsync_dir(self.log_dir)
                warnings.append(
                    f"recovering: discarded {len(written)} segment(s) written before recovery completed"
                )
            warnings.append("state was discarded (RECOVERING): start with recovering=True")
            fresh = self._check_identity()
            self._recovering = True
            self._start_empty()
            self._loaded = True
            return [], LoadReport(0, 0, 0, warnings, 1, 0, recovering=True, fresh=fresh)
        fresh = self._check_identity()
        segs = _list_segments(self.log_dir)
        if not segs:
            raise LogError(
                "IDENTITY exists but the log has no segments: the replica's records were lost "
                "(restart with --recover to rebuild from peers)",
                path=self.log_dir,
            )
        reader = _Reader(self.cluster, self.replica_id, self.verifier, all_seals=False)
        reader.read(segs)
        last = reader.segments[-1]
        torn_bytes = last.size - last.sealed_end if last.torn is not None else 0
        base = reader.base()
        live = _live([f for seg in reader.segments[base:] for f in seg.frames])
        _check_certificates(self.cluster, self.verifier, live)
        # Verified: now repair what a crash left behind.
        if last.torn is not None:
            self._truncate(last.path, last.sealed_end)
            warnings.append(
                f"{last.path.name}: torn tail at offset {last.sealed_end}: {last.torn}; "
                f"truncated {torn_bytes} bytes"
            )
            last.size = last.sealed_end
        if base:
            for seg in reader.segments[:base]:
                seg.path.unlink()
            _fsync_dir(self.log_dir)
            warnings.append(
                f"completed an interrupted compaction: removed {base} segment(s) superseded by the "
                f"checkpoint at the start of {reader.segments[base].path.name}"
            )
        kept = reader.segments[base:]
        self._segments = {s.number: s.size for s in kept}
        self._seg_no = kept[-1].number
        frames = [f for s in reader.segments for f in s.frames]
        if frames:
            self._head_hash, self._head_index = frames[-1].hash, frames[-1].index
        elif segs[0][0] == 1:
            self._head_hash, self._head_index = genesis_hash(self.cluster.cluster_id, self.replica_id), 0
        else:
            raise LogError(
                "the log has only empty segments and does not start at segment 000001: records were "
                "lost (restart with --recover to rebuild from peers)",
                path=self.log_dir,
            )
        self._open_segment(self._seg_no, create=False)
        records = [f.record for f in live]
        self._live = list(records)
        self._loaded = True
        warnings.extend(reader.warnings)
        report = LoadReport(
            len(records), _last_seq(records), torn_bytes, warnings, len(kept), self.size_bytes, fresh=fresh
        )
        return records, report

    def append(self, record: Record) -> None:
        """Buffer a record; it is not durable until ``sync()`` returns."""
        self._check_usable()
        entry = codec.encode_entry(record)
        if len(entry) > MAX_BODY - 4096:  # room for chain fields, framing and the seal
            raise ValueError(f"{codec.kind_name(record)} record of {len(entry)} bytes is too large to log")
        self._pending.append((record, entry))

    def sync(self) -> float:
        """Write everything appended as one group and make it durable (``take_group`` then
        ``write_group`` on the caller's thread); returns the seconds spent."""
        if not self._pending:
            return 0.0
        return self.write_group(self.take_group())

    def take_group(self) -> list[tuple[Record, bytes]]:
        """Everything appended so far, as the next group to write. Records appended after this call
        belong to the next group. Call from the thread that appends."""
        self._check_usable()
        pending, self._pending = self._pending, []
        return pending

    def write_group(self, pending: list[tuple[Record, bytes]]) -> float:
        """Write one group (one write, one fsync, one seal); returns the seconds spent. A full
        CheckpointRecord in the group starts a new compacted segment; a delta one does not (older
        segments hold its chain), but what it supersedes leaves the records kept in memory.

        May run on a worker thread while the owner keeps appending (the node does this so the event
        loop never waits for the disk), but only one ``write_group`` at a time, groups in the order
        ``take_group`` made them."""
        if not pending:
            return 0.0
        self._check_usable()
        start = time.perf_counter()
        try:
            if any(isinstance(r, CheckpointRecord) and not r.delta_of for r, _ in pending):
                self._write_compacted(pending)
            else:
                group = self._frames(pending)
                if self._segments[self._seg_no] >= self.segment_bytes:
                    self._rotate()
                self._write_group(group)
                self._live.extend(r for r, _ in pending)
                if any(isinstance(r, CheckpointRecord) for r, _ in pending):
                    self._live = compact(self._live)
        except OSError as exc:
            self._failed = exc
            raise LogIOError(exc.errno, f"log write failed, restart required: {exc}") from exc
        except BaseException as exc:
            self._failed = exc  # the group is lost: never let a later sync pretend it is durable
            raise
        if self._recovering and any(isinstance(r, ViewRecord) for r, _ in pending):
            # Best effort: if the marker survives, the next start just recovers again (safe).
            with contextlib.suppress(OSError):
                (self.data_dir / RECOVERING_FILE).unlink(missing_ok=True)
                _fsync_dir(self.data_dir)
            self._recovering = False
        return time.perf_counter() - start

    def mark_recovering(self) -> None:
        """The core found this log rolled back (``RecoveryStarted``): from now on it is treated as
        wiped. The marker is durable on return; a restart discards the log and recovers, and the
        marker goes with the first ViewRecord group once recovery ends (as after ``wipe_state``)."""
        _write_atomic(self.data_dir / RECOVERING_FILE, b"log found rolled back; recovering from peers\n")
        self._recovering = True

    def close(self) -> None:
        """Release the files. Records appended but not synced are dropped (they were never durable)."""
        self._pending.clear()
        for attr in ("_fd", "_lock_fd"):
            fd = getattr(self, attr)
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, attr, None)
        self._loaded = False

    # ------------------------------------------------------------ internals

    def _check_usable(self) -> None:
        if not self._loaded:
            raise RuntimeError("call load() before appending")
        if self._failed is not None:
            raise LogIOError(f"an earlier log write failed ({self._failed}); restart required")

    def _take_lock(self) -> None:
        fd = os.open(self.data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise LogError("data dir is in use by another process", path=self.data_dir) from None
        self._lock_fd = fd

    def _check_identity(self) -> bool:
        """Compare IDENTITY with our config; create it (and an empty first segment) on first use.
        True if it was created now."""
        ident = read_identity(self.data_dir)
        mine = self._identity
        if ident is not None:
            if ident.cluster_id != mine.cluster_id:
                raise LogError(
                    f"data dir belongs to cluster {ident.cluster_id.hex()}, not {mine.cluster_id.hex()}",
                    path=self.data_dir / IDENTITY_FILE,
                )
            if ident.replica_id != mine.replica_id:
                raise LogError(
                    f"data dir belongs to replica {ident.replica_id}, not {mine.replica_id}",
                    path=self.data_dir / IDENTITY_FILE,
                )
            if ident.public_key != mine.public_key:
                raise LogError(
                    f"data dir was written with public key {ident.public_key.hex()[:16]}..., but replica "
                    f"{mine.replica_id}'s key is now {mine.public_key.hex()[:16]}...",
                    path=self.data_dir / IDENTITY_FILE,
                )
            return False
        segs = _list_segments(self.log_dir)
        if any(p.stat().st_size for _, p in segs):
            raise LogError("log has records but the data dir has no IDENTITY file", path=self.data_dir)
        # First use. The empty first segment exists before IDENTITY does, so a crash here never
        # leaves an IDENTITY without a log (which would read as a lost log).
        self.log_dir.mkdir(mode=DIR_MODE, exist_ok=True)
        _fsync_dir(self.data_dir)
        if not segs:
            fd = os.open(self.log_dir / segment_name(1), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            os.close(fd)
            _fsync_dir(self.log_dir)
        _write_atomic(self.data_dir / IDENTITY_FILE, mine.render().encode())
        return True

    def _start_empty(self) -> None:
        """A new log: segment 1 (empty) after the genesis hash. Other segments are already gone."""
        for number, p in _list_segments(self.log_dir):
            if number != 1:
                p.unlink()
        self._segments = {}
        self._head_hash = genesis_hash(self.cluster.cluster_id, self.replica_id)
        self._head_index = 0
        fd = os.open(self.log_dir / segment_name(1), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.close(fd)
        _fsync_dir(self.log_dir)
        self._open_segment(1, create=False)

    def _open_segment(self, number: int, create: bool) -> None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | (os.O_CREAT | os.O_EXCL if create else 0)
        path = self.log_dir / segment_name(number)
        fd = os.open(path, flags, 0o600)
        if create:
            _fsync_dir(self.log_dir)
        if self._fd is not None:
            os.close(self._fd)
        self._fd = fd
        self._seg_no = number
        self._segments[number] = os.fstat(fd).st_size

    def _rotate(self) -> None:
        self._open_segment(self._seg_no + 1, create=True)

    def _truncate(self, path: Path, size: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _frames(self, entries: list[tuple[Record, bytes]]) -> tuple[list[bytes], bytes, int]:
        """The frames of one group as pieces to write; returns (pieces, head hash, head index)."""
        pieces: list[bytes] = []
        small: list[bytes] = []
        prev, index = self._head_hash, self._head_index
        cid = self.cluster.cluster_id
        for pos, (_, entry) in enumerate(entries):
            index += 1
            chain = codec.chain_fields(self.replica_id, index, prev)
            seal = b""
            if pos == len(entries) - 1:
                signed = _sha256_parts(entry, chain)
                seal = self.signer.sign(seal_payload(cid, signed))
            body = codec.frame_body_parts([entry, chain], seal)
            length = sum(len(p) for p in body)
            if length > MAX_BODY:
                raise ValueError(f"record of {length} bytes exceeds the log's frame limit")
            crc = 0
            link = hashlib.sha256()
            for p in body:
                crc = zlib.crc32(p, crc)
                link.update(p)
            head8 = struct.pack(">II", length, crc)
            small.append(head8 + struct.pack(">I", zlib.crc32(head8)))
            for p in body:
                if len(p) < _SMALL:
                    small.append(p)
                else:
                    pieces.append(b"".join(small))
                    small = []
                    pieces.append(p)
            prev = link.digest()
        if small:
            pieces.append(b"".join(small))
        return pieces, prev, index

    def _write_group(self, group: tuple[list[bytes], bytes, int]) -> None:
        """Write one group's frames to the current segment and fsync it."""
        assert self._fd is not None
        pieces, head, index = group
        before = self._segments[self._seg_no]
        try:
            written = _write_all(self._fd, pieces)
        except OSError:
            # Leave no partial group behind a later one (that would read as mid-file corruption).
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, before)
            raise
        os.fsync(self._fd)
        self._segments[self._seg_no] = before + written
        self._head_hash, self._head_index = head, index

    def _write_compacted(self, pending: list[tuple[Record, bytes]]) -> None:
        """New segment = the checkpoint, then what ``compact`` keeps, as one sealed group; it is made
        durable (file and directory) before the older segments are deleted."""
        encoded = {id(r): e for r, e in pending}
        kept = compact(self._live + [r for r, _ in pending])
        ckpt = next(r for r in kept if isinstance(r, CheckpointRecord) and not r.delta_of)
        ordered = [ckpt, *(r for r in kept if r is not ckpt)]
        group = self._frames([(r, encoded.get(id(r)) or codec.encode_entry(r)) for r in ordered])
        old = sorted(self._segments)
        number = self._seg_no + 1
        self._open_segment(number, create=True)  # fsyncs the directory: the new name is durable
        try:
            self._write_group(group)
        except OSError:
            with contextlib.suppress(OSError):
                (self.log_dir / segment_name(number)).unlink()
            raise
        self._live = ordered
        for n in old:
            with contextlib.suppress(FileNotFoundError):
                (self.log_dir / segment_name(n)).unlink()
            del self._segments[n]
        _fsync_dir(self.log_dir)


def _sha256_parts(*parts: bytes) -> bytes:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.digest()


# ---------------------------------------------------------------- offline verification


def verify_log(
    path: Path, cluster: ClusterInfo, replica_id: int | None = None, *, verifier: Verifier | None = None
) -> VerifySummary:
    """Verify a data dir, its ``log/`` dir, or one segment file with public keys only.

    Read-only (a torn tail is reported, not truncated). Never raises on bad data: the first problem
    found is in ``summary.problem``. Checks every seal, so a problem is located to its group.
    """
    path = Path(path)
    summary = VerifySummary(str(path), replica_id)
    reader: _Reader | None = None
    try:
        single = path.is_file()
        if single:
            m = SEGMENT_RE.match(path.name)
            segs = [(int(m.group(1)) if m else 0, path)]
            data_dir = path.parent.parent
        elif path.is_dir():
            log_dir = path / LOG_DIR if (path / LOG_DIR).is_dir() else path
            data_dir = log_dir.parent
            segs = _list_segments(log_dir)
            if not segs:
                raise LogError("no segment files (NNNNNN.seg) found", path=log_dir)
        else:
            raise LogError("no such file or directory", path=path)
        ident = read_identity(data_dir)
        if ident is not None:
            if ident.cluster_id != cluster.cluster_id:
                raise LogError(
                    f"data dir belongs to cluster {ident.cluster_id.hex()}, not {cluster.cluster_id.hex()}",
                    path=data_dir / IDENTITY_FILE,
                )
            if replica_id is None:
                replica_id = ident.replica_id
            elif ident.replica_id != replica_id:
                raise LogError(
                    f"data dir belongs to replica {ident.replica_id}, not {replica_id}",
                    path=data_dir / IDENTITY_FILE,
                )
        if is_recovering(data_dir):
            summary.warnings.append("RECOVERING marker present: the replica discards this log on start")
        if replica_id is not None and not 0 <= replica_id < cluster.n:
            raise LogError(f"replica id {replica_id} not in 0..{cluster.n - 1}")
        reader = _Reader(
            cluster, replica_id, verifier or Ed25519Verifier(), all_seals=True, allow_partial_start=single
        )
        summary.segments = len(segs)
        summary.bytes = sum(p.stat().st_size for _, p in segs)
        reader.read(segs)
        last = reader.segments[-1]
        if last.torn is not None:
            summary.torn_tail_bytes = last.size - last.sealed_end
            summary.warnings.append(
                f"{last.path.name}: torn tail at offset {last.sealed_end}: {last.torn}; "
                f"{summary.torn_tail_bytes} bytes would be truncated on start"
            )
        base = reader.base()
        if base:
            summary.warnings.append(
                f"{base} segment(s) superseded by the checkpoint at the start of "
                f"{reader.segments[base].path.name} (interrupted compaction; removed on start)"
            )
        live = _live([f for seg in reader.segments[base:] for f in seg.frames])
        summary.live_records = len(live)
        _check_certificates(cluster, reader.verifier, live)
    except LogError as exc:
        summary.problem = str(exc)
    except OSError as exc:
        summary.problem = f"cannot read: {exc}"
    if reader is not None:
        _fill(summary, reader)
    return summary


def _fill(summary: VerifySummary, reader: _Reader) -> None:
    summary.replica_id = reader.replica_id
    summary.warnings.extend(reader.warnings)
    frames = list(reader.frames())
    summary.records = len(frames)
    summary.groups = sum(1 for f in frames if f.seal)
    if frames:
        summary.first_index, summary.last_index = frames[0].index, frames[-1].index
    kinds: dict[str, int] = {}
    for f in frames:
        r = f.record
        kinds[codec.kind_name(r)] = kinds.get(codec.kind_name(r), 0) + 1
        if isinstance(r, (CommitRecord, CheckpointRecord)):
            summary.last_seq = max(summary.last_seq, r.seq)
        if isinstance(r, CheckpointRecord):
            summary.checkpoint_seq = max(summary.checkpoint_seq or 0, r.seq)
        if isinstance(r, (ViewRecord, NewViewRecord)):
            summary.last_view = max(summary.last_view, r.view)
    summary.kinds = kinds
