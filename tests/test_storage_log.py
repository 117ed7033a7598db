"""The replica log on real files: format, group commit, torn tails, tampering, compaction, identity.

Realistic records come from a tiny in-memory cluster of four ``Replica`` objects driven by hand; the
watched replica's Persist outputs go to a real ``ReplicaLog`` that syncs before every Send/ToClient,
as the runtime does.
"""

from __future__ import annotations

import errno
import os
import shutil
import struct
import zlib
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bft.app.kv import KVApp
from bft.core.config import ClusterInfo, Params
from bft.core.events import (
    CancelTimer,
    CheckpointRecord,
    CommitRecord,
    NewViewRecord,
    Persist,
    PreparedRecord,
    PrePrepareRecord,
    Record,
    Send,
    SetTimer,
    ToClient,
    ViewRecord,
)
from bft.core.replica import Replica
from bft.crypto import (
    Ed25519Signer,
    Ed25519Verifier,
    HashSigner,
    HashVerifier,
    Signer,
    Verifier,
    cluster_id_from,
)
from bft.pb.bftchat.v1 import protocol_pb2 as pb
from bft.pb.bftchat.v1 import storage_pb2 as spb
from bft.sim.storage import SimStorage
from bft.storage import codec
from bft.storage import log as logmod
from bft.storage.log import (
    HEADER,
    HEADER_LEN,
    LogError,
    LogIOError,
    ReplicaLog,
    is_recovering,
    verify_log,
    wipe_state,
)
from bft.wire import make_request

WATCH = 1  # the replica whose log we keep: a backup in view 0, the primary of view 1


class Mini:
    """Four replicas, a FIFO network, timers by hand. Replica WATCH persists into ``log``."""

    def __init__(
        self, log_dir: Path | None = None, *, real: bool = False, interval: int = 4, full_bytes: int = 0
    ) -> None:
        self.verifier: Verifier
        if real:
            self.signers: list[Signer] = [Ed25519Signer(bytes([i + 1]) * 32) for i in range(4)]
            self.verifier = Ed25519Verifier()
            self.client: Signer = Ed25519Signer(b"\x77" * 32)
        else:
            hv = HashVerifier()
            self.signers = [HashSigner(b"replica %d" % i, hv) for i in range(4)]
            self.client = HashSigner(b"client", hv)
            self.verifier = hv
        # full_bytes=0: checkpoints logged in full (and the log compacted) as soon as the log has
        # grown by the state's size; more: as changed pages until it has grown that much.
        params = Params(
            checkpoint_interval=interval,
            watermark_window=4 * interval,
            batch_max_requests=4,
            full_checkpoint_log_bytes=full_bytes,
        )
        keys = tuple(s.public_key for s in self.signers)
        self.cluster = ClusterInfo(keys, cluster_id_from(b"mini"), params)
        self.replicas = [Replica(self.cluster, i, self.signers[i], self.verifier, KVApp) for i in range(4)]
        self.model = SimStorage()  # the simulator's model of what must be durable
        self.persisted: list[Record] = []  # every record, uncompacted
        self.log: ReplicaLog | None = None
        self.syncs: list[int] = []  # file size after each sync
        if log_dir is not None:
            self.log = self.open_log(log_dir)
            self.log.load()
        self.ts = 0
        self.now = 0.0
        self.queue: deque[tuple[int, int, bytes]] = deque()
        self.timers: list[dict[str, float]] = [{} for _ in range(4)]
        self.down: set[int] = set()
        for r in self.replicas:
            r.start(self.now)
        for i in range(4):
            self.drain(i)

    def open_log(self, data_dir: Path, **kw: int) -> ReplicaLog:
        return ReplicaLog(data_dir, WATCH, self.signers[WATCH], self.cluster, self.verifier, **kw)

    def drain(self, i: int) -> None:
        for out in self.replicas[i].take_outputs():
            if isinstance(out, Persist):
                if i == WATCH:
                    self.persisted.append(out.record)
                    self.model.append(out.record)
                    if self.log is not None:
                        self.log.append(out.record)
            elif isinstance(out, (Send, ToClient)):
                if i == WATCH and self.model.dirty:
                    self.model.sync()
                    if self.log is not None:
                        self.log.sync()
                        self.syncs.append(self.log.size_bytes)
                if isinstance(out, Send):
                    targets = [out.to] if out.to is not None else [r for r in range(4) if r != i]
                    self.queue.extend((i, t, out.data) for t in targets)
            elif isinstance(out, SetTimer):
                self.timers[i][out.name] = out.at
            elif isinstance(out, CancelTimer):
                self.timers[i].pop(out.name, None)

    def run(self) -> None:
        while self.queue:
            src, dst, data = self.queue.popleft()
            if src in self.down or dst in self.down:
                continue
            self.replicas[dst].on_message(data, self.now)
            self.drain(dst)

    def request(self, op: bytes) -> None:
        self.ts += 1
        raw = make_request(self.client, self.cluster.cluster_id, 1, self.ts, op)
        for i, r in enumerate(self.replicas):
            if i not in self.down:
                r.on_request(raw, self.now)
                self.drain(i)
        self.run()

    def advance(self, dt: float) -> None:
        self.now += dt
        for i, r in enumerate(self.replicas):
            if i in self.down:
                continue
            for name, at in list(self.timers[i].items()):
                if at <= self.now:
                    self.timers[i].pop(name, None)
                    r.on_timer(name, self.now)
                    self.drain(i)
        self.run()

    def scenario(self, before: int = 10, after: int = 10) -> None:
        """Requests in view 0, then the primary (0) goes silent: view change to 1, more requests."""
        for k in range(before):
            self.request(b"set k%d v%d" % (k, k))
        self.down.add(0)
        self.request(b"set x 1")
        for _ in range(20):
            self.advance(1.0)
        for k in range(after):
            self.request(b"add n %d" % k)
        # A replica that is not one of the last request's designated repliers sends nothing after
        # executing it: its commit record becomes durable with the next output that depends on it,
        # here the next status broadcast (the real replica's group commit works the same way).
        self.advance(Params().status_interval)

    def restored(self, records: list[Record]) -> Replica:
        return Replica(self.cluster, WATCH, self.signers[WATCH], self.verifier, KVApp, records=records)


def expected_order(records: list[Record]) -> list[Record]:
    """The model's durable records as the log lays them out: the full checkpoint first (it opens the
    compacted segment), the rest in write order (delta checkpoints included; see STORAGE.md)."""
    ck = [r for r in records if isinstance(r, CheckpointRecord) and not r.delta_of]
    return ck + [r for r in records if not any(r is c for c in ck)]


def segments(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "log").glob("*.seg"))


def reload(m: Mini, data_dir: Path, **kw: int) -> tuple[list[Record], logmod.LoadReport]:
    log = m.open_log(data_dir, **kw)
    try:
        return log.load()
    finally:
        log.close()


def assert_same_state(m: Mini, records: list[Record]) -> None:
    live = m.replicas[WATCH]
    again = m.restored(records)
    assert again.last_executed == live.last_executed
    assert again.app.digest() == live.app.digest()
    assert again.view == live.view


@pytest.fixture(scope="module")
def run_records() -> list[Record]:
    """Every record the watched replica persisted in the scenario, in order (no log attached)."""
    m = Mini(interval=64)
    m.scenario(before=6, after=6)
    return list(m.model.durable)


# ---------------------------------------------------------------- codec


def test_codec_roundtrips_every_record_kind(run_records: list[Record]) -> None:
    kinds = Counter(type(r) for r in run_records)
    assert set(kinds) == {ViewRecord, NewViewRecord, PrePrepareRecord, PreparedRecord, CommitRecord}
    ck = CheckpointRecord(64, b"d" * 32, b"snapshot bytes", (b"env1", b"env2", b""))
    legacy = CheckpointRecord(64, b"d" * 32, b"snapshot bytes", (b"env1",), paged=False)
    for r in [*run_records, ck, legacy, ViewRecord(0)]:
        data = codec.encode_record(r, 3, 17, b"h" * 32)
        dec = codec.decode_record(data)
        assert dec.record == r
        assert (dec.replica, dec.index, dec.prev_hash) == (3, 17, b"h" * 32)
        assert codec.record_from_bytes(codec.record_bytes(r)) == r


def test_frame_body_parts_are_a_log_frame() -> None:
    for record, seal in [(b"r" * 5, b""), (b"x" * 300, b"s" * 64), (b"y" * 70000, b"")]:
        body = b"".join(codec.frame_body_parts([record[:2], record[2:]], seal))
        assert body == spb.LogFrame(record=record, seal=seal).SerializeToString()
        assert codec.decode_frame_body(body) == (record, seal)


def test_codec_rejects_garbage() -> None:
    for data in [b"", b"\xff\xff\xff", spb.LogRecord(index=1, prev_hash=b"h" * 32).SerializeToString()]:
        with pytest.raises(codec.CodecError):
            codec.decode_record(data)
    with pytest.raises(codec.CodecError):
        codec.decode_frame_body(b"\x12\x01x")  # a seal but no record


# ---------------------------------------------------------------- roundtrip and group commit


def test_log_roundtrip_through_a_real_run(tmp_path: Path) -> None:
    m = Mini(tmp_path, interval=4)
    m.scenario()
    assert m.log is not None
    m.log.close()
    records, report = reload(m, tmp_path)
    assert records == expected_order(m.model.durable)
    assert {type(r) for r in records} >= {CheckpointRecord, ViewRecord, NewViewRecord, CommitRecord}
    assert report.records == len(records)
    assert report.last_seq == m.replicas[WATCH].last_executed
    assert report.truncated_tail_bytes == 0 and report.warnings == []
    assert_same_state(m, records)


def test_log_roundtrip_with_ed25519(tmp_path: Path) -> None:
    m = Mini(tmp_path, real=True, interval=4)
    m.scenario(before=5, after=5)
    assert m.log is not None
    m.log.close()
    records, _ = reload(m, tmp_path)
    assert records == expected_order(m.model.durable)
    assert_same_state(m, records)
    summary = verify_log(tmp_path, m.cluster)  # default verifier: Ed25519, public keys only
    assert summary.ok, summary.render()
    assert summary.replica_id == WATCH and summary.last_seq == m.replicas[WATCH].last_executed


def test_group_commit_is_one_write_one_fsync_one_signature(
    tmp_path: Path, run_records: list[Record], monkeypatch: pytest.MonkeyPatch
) -> None:
    m = Mini()
    log = m.open_log(tmp_path)
    log.load()
    calls = Counter[str]()
    real_fsync, real_writev, real_sign = os.fsync, os.writev, m.signers[WATCH].sign

    def fsync(fd: int) -> None:
        calls["fsync"] += 1
        real_fsync(fd)

    def writev(fd: int, bufs: list[bytes]) -> int:
        calls["writev"] += 1
        return real_writev(fd, bufs)

    def sign(data: bytes) -> bytes:
        calls["sign"] += 1
        return real_sign(data)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "writev", writev)
    monkeypatch.setattr(m.signers[WATCH], "sign", sign)
    body = [r for r in run_records if not isinstance(r, CheckpointRecord)]
    for r in body:
        log.append(r)
    assert log.dirty and log.size_bytes == 0
    assert log.sync() >= 0.0
    assert calls == Counter(fsync=1, writev=1, sign=1)
    assert not log.dirty and log.size_bytes > 0
    assert log.sync() == 0.0 and calls["fsync"] == 1  # nothing pending: no-op
    log.close()
    records, _ = reload(m, tmp_path)
    assert records == [r for r in body if r in records]  # compact's selection, in write order


# ---------------------------------------------------------------- torn tails


def build_log(tmp_path: Path) -> tuple[Mini, Path]:
    m = Mini(tmp_path / "d", interval=64)
    m.scenario(before=3, after=0)
    assert m.log is not None
    m.log.close()
    return m, tmp_path / "d"


def test_torn_last_record_truncated_at_every_offset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m, d = build_log(tmp_path)
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # ~1000 restarts; durability is not the point here
    seg = segments(d)[-1]
    data = seg.read_bytes()
    start = m.syncs[-2]  # where the last group begins
    assert len(data) == m.syncs[-1]
    all_records = expected_order(m.model.durable)
    last_group = [f for f in frame_offsets(seg) if f[0] >= start]
    for cut in range(start, len(data)):
        seg.write_bytes(data[:cut])
        records, report = reload(m, d)
        assert records == all_records[: len(all_records) - len(last_group)]
        assert report.truncated_tail_bytes == cut - start
        assert (cut == start) == (report.warnings == [])
        assert seg.stat().st_size == start
    # After a truncation the log appends normally and reloads.
    seg.write_bytes(data[: start + 7])
    log = m.open_log(d)
    log.load()
    log.append(ViewRecord(9))
    log.sync()
    log.close()
    records, report = reload(m, d)
    assert records[-1] == ViewRecord(9) and report.warnings == []


def test_torn_multi_record_group_is_dropped_whole(tmp_path: Path, run_records: list[Record]) -> None:
    m = Mini()
    d = tmp_path / "d"
    log = m.open_log(d)
    log.load()
    first, group = run_records[:3], run_records[3:9]
    for r in first:
        log.append(r)
    log.sync()
    size = log.size_bytes
    for r in group:
        log.append(r)
    log.sync()
    log.close()
    seg = segments(d)[-1]
    data = seg.read_bytes()
    # Cut inside the group's last frame: its first five records are complete but unsealed.
    seg.write_bytes(data[:-3])
    records, report = reload(m, d)
    assert records == first
    assert report.truncated_tail_bytes == len(data) - 3 - size
    assert "without a seal" in report.warnings[0] or "incomplete frame" in report.warnings[0]


def test_zero_filled_tail_is_torn(tmp_path: Path) -> None:
    m, d = build_log(tmp_path)
    seg = segments(d)[-1]
    good = seg.read_bytes()
    records, _ = reload(m, d)
    seg.write_bytes(good + bytes(4096))  # size extended, data never written
    again, report = reload(m, d)
    assert again == records and report.truncated_tail_bytes == 4096
    assert seg.read_bytes() == good


def test_bad_checksum_in_final_frame_is_torn(tmp_path: Path) -> None:
    m, d = build_log(tmp_path)
    seg = segments(d)[-1]
    data = bytearray(seg.read_bytes())
    data[-5] ^= 0x40
    seg.write_bytes(bytes(data))
    records, report = reload(m, d)
    assert "bad checksum in the final frame" in report.warnings[0]
    assert len(records) == len(m.model.durable) - 1


# ---------------------------------------------------------------- tampering and corruption


def frame_offsets(path: Path) -> list[tuple[int, int]]:
    data = path.read_bytes()
    out, pos = [], 0
    while pos < len(data):
        length = HEADER.unpack_from(data, pos)[0]
        out.append((pos, pos + HEADER_LEN + length))
        pos += HEADER_LEN + length
    return out


def test_flipping_a_byte_of_a_middle_record_is_detected(tmp_path: Path) -> None:
    m, d = build_log(tmp_path)
    seg = segments(d)[-1]
    data = seg.read_bytes()
    frames = frame_offsets(seg)
    start, end = frames[len(frames) // 2]
    for pos in [*range(start, start + HEADER_LEN), *range(start + HEADER_LEN, end, 3)]:
        bad = bytearray(data)
        bad[pos] ^= 0x01
        seg.write_bytes(bytes(bad))
        with pytest.raises(LogError) as info:
            reload(m, d)
        err = info.value
        assert err.path == seg and err.offset == start, str(err)
        assert seg.name in str(err) and f"offset {start}" in str(err)
        assert "checksum" in err.what
    seg.write_bytes(data)
    reload(m, d)  # and the original is still fine


def rewrite_frame(path: Path, index: int, fn: Callable[[spb.LogFrame], None]) -> None:
    """Replace frame ``index``'s body by ``fn(LogFrame)`` with valid checksums: a careful forger."""
    data = path.read_bytes()
    start, end = frame_offsets(path)[index]
    frame = spb.LogFrame()
    frame.ParseFromString(data[start + HEADER_LEN : end])
    fn(frame)
    body = frame.SerializeToString()
    head8 = struct.pack(">II", len(body), zlib.crc32(body))
    path.write_bytes(data[:start] + head8 + struct.pack(">I", zlib.crc32(head8)) + body + data[end:])


def test_forged_record_with_valid_checksums_breaks_the_chain(tmp_path: Path) -> None:
    m, d = build_log(tmp_path)
    seg = segments(d)[-1]
    n = len(frame_offsets(seg))

    def change_view(frame: spb.LogFrame) -> None:
        rec = spb.LogRecord()
        rec.ParseFromString(frame.record)
        which = rec.WhichOneof("entry")
        getattr(rec, which).view += 1
        frame.record = rec.SerializeToString()

    rewrite_frame(seg, n // 2, change_view)
    with pytest.raises(LogError, match="hash chain broken") as info:
        reload(m, d)
    assert info.value.index is not None


def test_forged_last_record_fails_the_seal(tmp_path: Path) -> None:
    m, d = build_log(tmp_path)
    seg = segments(d)[-1]

    def change(frame: spb.LogFrame) -> None:
        rec = spb.LogRecord()
        rec.ParseFromString(frame.record)
        getattr(rec, rec.WhichOneof("entry")).view += 1
        frame.record = rec.SerializeToString()

    rewrite_frame(seg, len(frame_offsets(seg)) - 1, change)
    with pytest.raises(LogError, match="seal does not verify"):
        reload(m, d)
    assert not verify_log(d, m.cluster, verifier=m.verifier).ok


def test_removing_a_middle_seal_is_caught_by_the_chain(tmp_path: Path) -> None:
    m, d = build_log(tmp_path)
    seg = segments(d)[-1]
    data = seg.read_bytes()
    sealed = []
    for i, (start, end) in enumerate(frame_offsets(seg)[:-1]):
        if codec.decode_frame_body(data[start + HEADER_LEN : end])[1]:
            sealed.append(i)

    def unseal(frame: spb.LogFrame) -> None:
        frame.seal = b""

    rewrite_frame(seg, sealed[0], unseal)
    with pytest.raises(LogError, match="hash chain broken"):
        reload(m, d)


def test_log_signed_by_another_key_is_detected(tmp_path: Path, run_records: list[Record]) -> None:
    good = Mini(real=True)
    # A forger with its own Ed25519 key writes a well-formed log for replica WATCH.
    evil_keys = list(good.cluster.public_keys)
    evil_signer = Ed25519Signer(b"\x66" * 32)
    evil_keys[WATCH] = evil_signer.public_key
    evil_cluster = ClusterInfo(tuple(evil_keys), good.cluster.cluster_id, good.cluster.params)
    evil = ReplicaLog(tmp_path / "evil", WATCH, evil_signer, evil_cluster, Ed25519Verifier())
    evil.load()
    evil.append(ViewRecord(3))
    evil.sync()
    evil.close()
    d = tmp_path / "good"
    log = good.open_log(d)
    log.load()
    log.close()
    for p in segments(d):
        p.unlink()
    for p in segments(tmp_path / "evil"):
        shutil.copy(p, d / "log" / p.name)
    with pytest.raises(LogError, match="seal does not verify with replica 1's key"):
        reload(good, d)
    summary = verify_log(d, good.cluster)
    assert not summary.ok and "seal does not verify" in (summary.problem or "")


def test_another_replicas_log_is_detected(tmp_path: Path) -> None:
    m = Mini()
    other = ReplicaLog(tmp_path / "r2", 2, m.signers[2], m.cluster, m.verifier)
    other.load()
    other.append(ViewRecord(1))
    other.sync()
    other.close()
    d = tmp_path / "r1"
    reload(m, d)  # creates IDENTITY and an empty segment
    shutil.copy(segments(tmp_path / "r2")[0], segments(d)[0])
    with pytest.raises(LogError, match="belongs to replica 2, not 1"):
        reload(m, d)


def test_bad_certificates_are_detected(tmp_path: Path, run_records: list[Record]) -> None:
    m = Mini()
    commit = next(r for r in run_records if isinstance(r, CommitRecord))
    proof = pb.CommitProof()
    proof.ParseFromString(commit.proof)
    weak = pb.CommitProof(preprepare=proof.preprepare, batch=proof.batch, commits=proof.commits[:2])
    cases: list[tuple[Record, str]] = [
        (CommitRecord(commit.seq, commit.view, commit.digest, weak.SerializeToString()), "distinct COMMITs"),
        (CommitRecord(commit.seq + 1, commit.view, commit.digest, commit.proof), "another view, seq"),
        (CommitRecord(commit.seq, commit.view, commit.digest, b"\xff\xff"), "malformed"),
        (CheckpointRecord(64, b"d" * 32, b"", (proof.commits[0].SerializeToString(),)), "CHECKPOINT proof"),
    ]
    for i, (bad, what) in enumerate(cases):
        d = tmp_path / str(i)
        log = m.open_log(d)
        log.load()
        log.append(bad)  # the replica's own key seals it: only the certificate check can object
        log.sync()
        log.close()
        with pytest.raises(LogError, match=what):
            reload(m, d)
        assert what in (verify_log(d, m.cluster, verifier=m.verifier).problem or "")


# ---------------------------------------------------------------- segments and compaction


def test_checkpoint_compaction_deletes_old_segments(tmp_path: Path) -> None:
    m = Mini(interval=4)
    d = tmp_path / "d"
    m.log = m.open_log(d, segment_bytes=2048)  # rotate often, so compaction has segments to delete
    m.log.load()
    seen: set[str] = set()
    orig_sync = m.log.sync

    def sync() -> float:
        t = orig_sync()
        seen.update(p.name for p in segments(d))
        return t

    m.log.sync = sync  # type: ignore[method-assign]
    m.scenario()
    m.log.close()
    left = segments(d)
    assert len(seen) > len(left) + 3  # many segments came and went
    records, report = reload(m, d, segment_bytes=2048)
    assert isinstance(records[0], CheckpointRecord)
    assert records == expected_order(m.model.durable)
    assert report.segments == len(left)
    assert_same_state(m, records)


def test_delta_checkpoints_keep_their_chain_across_rotations(tmp_path: Path) -> None:
    """Stable checkpoints logged as changed pages (the default for a small state) do not compact the
    log, even when one opens a segment after a rotation: the full checkpoint and every delta after it
    reload in order and rebuild the same state. (Taking a delta that opens a segment for a finished
    compaction deleted the full checkpoint on load.)"""
    m = Mini(interval=2, full_bytes=1 << 30)
    d = tmp_path / "d"
    m.log = m.open_log(d, segment_bytes=512)  # a rotation every group or two
    m.log.load()
    m.scenario()
    m.log.close()
    ckpts = [r for r in m.model.durable if isinstance(r, CheckpointRecord)]
    assert len(ckpts) > 4 and not ckpts[0].delta_of and all(r.delta_of for r in ckpts[1:])
    reader = logmod._Reader(m.cluster, WATCH, m.verifier, all_seals=False)
    reader.read(logmod._list_segments(d / "log"))
    openers = [s.frames[0].record for s in reader.segments if s.frames]
    assert any(isinstance(r, CheckpointRecord) and r.delta_of for r in openers)  # the trap is set
    records, report = reload(m, d, segment_bytes=512)
    assert records == expected_order(m.model.durable)
    assert report.warnings == []
    assert_same_state(m, records)


def test_interrupted_compaction_is_completed_on_load(tmp_path: Path) -> None:
    m = Mini(tmp_path / "d", interval=4)
    d = tmp_path / "d"
    assert m.log is not None
    saved = tmp_path / "saved"
    orig_sync = m.log.sync
    state: dict[str, object] = {}

    def sync() -> float:
        pending = m.log._pending  # type: ignore[union-attr]
        if "done" not in state and any(isinstance(r, CheckpointRecord) for r, _ in pending):
            shutil.copytree(d / "log", saved)
            state["done"] = True
            state["model"] = list(m.model.durable)
        return orig_sync()

    m.log.sync = sync  # type: ignore[method-assign]
    m.scenario(before=5, after=0)
    m.log.close()
    assert "done" in state
    new_segments = segments(d)
    # Crash after the new segment was durable but before the old ones were deleted:
    crashed = tmp_path / "crashed"
    shutil.copytree(d, crashed)
    for p in saved.iterdir():
        if not (crashed / "log" / p.name).exists():
            shutil.copy(p, crashed / "log" / p.name)
    records, report = reload(m, crashed)
    assert records == expected_order(m.model.durable)
    assert any("interrupted compaction" in w for w in report.warnings)
    assert [p.name for p in segments(crashed)] == [p.name for p in new_segments]


def test_crash_while_writing_the_compacted_segment(tmp_path: Path) -> None:
    """The new segment is torn: load falls back to the old segments (the checkpoint never synced)."""
    m = Mini(interval=4)
    d = tmp_path / "d"
    log = m.open_log(d)
    log.load()
    m2 = Mini(interval=4)
    m2.scenario(before=5, after=0)
    recs = m2.persisted
    ck_at = next(i for i, r in enumerate(recs) if isinstance(r, CheckpointRecord))
    before = recs[:ck_at]
    for r in before:
        log.append(r)
        log.sync()
    old = {p.name: p.read_bytes() for p in segments(d)}
    log.append(recs[ck_at])
    log.sync()
    log.close()
    (new,) = segments(d)
    data = new.read_bytes()
    for name, content in old.items():
        (d / "log" / name).write_bytes(content)
    new.write_bytes(data[: len(data) // 2])
    m2.log = None
    records, report = reload(m2, d)
    assert records == [r for r in before if r in records] and records
    assert not any(isinstance(r, CheckpointRecord) for r in records)
    assert report.truncated_tail_bytes == len(data) // 2


def test_missing_segments_are_detected(tmp_path: Path) -> None:
    m = Mini(tmp_path / "d", interval=64)
    d = tmp_path / "d"
    assert m.log is not None
    m.log.segment_bytes = 1024
    m.scenario(before=4, after=0)
    m.log.close()
    segs = segments(d)
    assert len(segs) >= 4
    saved = {p: p.read_bytes() for p in segs}
    segs[1].unlink()
    with pytest.raises(LogError, match=f"segment {segs[1].name} is missing"):
        reload(m, d)
    segs[1].write_bytes(saved[segs[1]])
    segs[0].unlink()
    with pytest.raises(LogError, match="earlier segments are missing"):
        reload(m, d)
    segs[0].write_bytes(saved[segs[0]])
    # Losing the newest segment leaves a consistent, older prefix: a rollback that only an external
    # anchor could expose (STORAGE.md, "Limits"). It loads.
    segs[-1].unlink()
    reload(m, d)
    segs[-1].write_bytes(saved[segs[-1]])
    for p in segs:
        p.unlink()
    with pytest.raises(LogError, match="no segments"):
        reload(m, d)


# ---------------------------------------------------------------- identity, lock, recovery


def test_identity_mismatch(tmp_path: Path) -> None:
    m = Mini()
    d = tmp_path / "d"
    reload(m, d)
    assert "replica 1" in (d / "IDENTITY").read_text()
    other = ReplicaLog(d, 2, m.signers[2], m.cluster, m.verifier)
    with pytest.raises(LogError, match="belongs to replica 1, not 2"):
        other.load()
    other.close()
    foreign = ClusterInfo(m.cluster.public_keys, cluster_id_from(b"other"), m.cluster.params)
    with pytest.raises(LogError, match="belongs to cluster"):
        ReplicaLog(d, WATCH, m.signers[WATCH], foreign, m.verifier).load()
    rotated_signer = HashSigner(b"new key", HashVerifier())
    keys = list(m.cluster.public_keys)
    keys[WATCH] = rotated_signer.public_key
    rotated = ClusterInfo(tuple(keys), m.cluster.cluster_id, m.cluster.params)
    with pytest.raises(LogError, match="public key"):
        ReplicaLog(d, WATCH, rotated_signer, rotated, m.verifier).load()
    # Key rotation goes through --recover: the wipe discards IDENTITY with the state.
    wipe_state(d)
    log = ReplicaLog(d, WATCH, rotated_signer, rotated, m.verifier)
    assert log.load()[1].recovering
    log.close()
    assert rotated_signer.public_key.hex() in (d / "IDENTITY").read_text()
    (d / "IDENTITY").write_text("something else\n")
    with pytest.raises(LogError, match="not a bftchat IDENTITY"):
        reload(m, d)


def test_log_without_identity_is_refused(tmp_path: Path) -> None:
    m = Mini(tmp_path / "d", interval=64)
    assert m.log is not None
    m.request(b"set a 1")
    m.log.close()
    (tmp_path / "d" / "IDENTITY").unlink()
    with pytest.raises(LogError, match="no IDENTITY"):
        reload(m, tmp_path / "d")


def test_second_process_is_locked_out(tmp_path: Path) -> None:
    m = Mini()
    first = m.open_log(tmp_path)
    first.load()
    with pytest.raises(LogError, match="in use"):
        reload(m, tmp_path)
    first.close()
    reload(m, tmp_path)


def test_wipe_and_recovering_marker_survive_crashes(tmp_path: Path, run_records: list[Record]) -> None:
    m = Mini()
    d = tmp_path / "d"
    log = m.open_log(d)
    log.load()
    for r in run_records[:5]:
        log.append(r)
    log.sync()
    log.close()
    assert not is_recovering(d)
    wipe_state(d)
    assert is_recovering(d) and segments(d) == []
    records, report = reload(m, d)
    assert records == [] and report.recovering
    # Recovery ends: the core persists a checkpoint first; crash before the ViewRecord is synced.
    log = m.open_log(d)
    log.load()
    log.append(run_records[0])
    log.sync()
    log.close()
    assert is_recovering(d)
    records, report = reload(m, d)
    assert records == [] and report.recovering and "discarded" in report.warnings[0]
    log = m.open_log(d)
    log.load()
    log.append(ViewRecord(7))
    log.sync()
    assert not is_recovering(d)
    log.close()
    records, report = reload(m, d)
    assert records == [ViewRecord(7)] and not report.recovering
    wipe_state(tmp_path / "fresh")  # --recover on a new dir: recovering from the start
    assert is_recovering(tmp_path / "fresh")


def test_a_log_found_rolled_back_is_marked_recovering_until_recovery_ends(
    tmp_path: Path, run_records: list[Record]
) -> None:
    """The core's RecoveryStarted (its own signature on something this log cannot have produced):
    the node marks the data dir, so a restart discards the old log instead of trusting it again."""
    m = Mini()
    d = tmp_path / "d"
    log = m.open_log(d)
    log.load()
    for r in run_records[:5]:
        log.append(r)
    log.sync()
    log.mark_recovering()
    assert is_recovering(d)
    log.close()
    records, report = reload(m, d)
    assert records == [] and report.recovering
    log = m.open_log(d)
    log.load()
    log.append(ViewRecord(3))
    log.sync()
    assert not is_recovering(d)
    log.close()


def test_failed_write_leaves_a_clean_log_and_refuses_more(
    tmp_path: Path, run_records: list[Record], monkeypatch: pytest.MonkeyPatch
) -> None:
    m = Mini()
    log = m.open_log(tmp_path)
    log.load()
    log.append(run_records[0])
    log.sync()
    size = log.size_bytes
    real = os.writev

    def short_then_fail(fd: int, bufs: list[bytes]) -> int:
        monkeypatch.setattr(os, "writev", lambda *_: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
        return real(fd, [bufs[0][:10]])  # a partial write, then the disk is full

    monkeypatch.setattr(os, "writev", short_then_fail)
    log.append(run_records[1])
    with pytest.raises(LogIOError):
        log.sync()
    with pytest.raises(LogIOError):
        log.append(run_records[2])
    log.close()
    monkeypatch.setattr(os, "writev", real)
    assert segments(tmp_path)[0].stat().st_size == size
    records, report = reload(m, tmp_path)
    assert records == [run_records[0]] and report.warnings == []


# ---------------------------------------------------------------- verify-log


def test_verify_log_summary_good_and_bad(tmp_path: Path) -> None:
    m, d = build_log(tmp_path)
    good = verify_log(d, m.cluster, verifier=m.verifier)
    assert good.ok, good.render()
    assert good.replica_id == WATCH
    assert good.records == len(m.model.durable) and good.groups == len(m.syncs)
    assert good.last_seq == m.replicas[WATCH].last_executed and good.last_view == 1
    text = good.render()
    assert "result: OK" in text and f"records: {good.records}" in text
    for p in (d / "log", segments(d)[0]):  # the log dir, or one segment file
        assert verify_log(p, m.cluster, verifier=m.verifier).records == good.records
    seg = segments(d)[-1]
    data = seg.read_bytes()
    seg.write_bytes(data[:-10])
    torn = verify_log(d, m.cluster, verifier=m.verifier)
    assert torn.ok and torn.torn_tail_bytes > 0 and "torn tail" in torn.render()
    assert seg.stat().st_size == len(data) - 10  # verify-log never repairs
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0xFF
    seg.write_bytes(bytes(bad))
    summary = verify_log(d, m.cluster, verifier=m.verifier)
    assert not summary.ok and seg.name in (summary.problem or "")
    assert "result: FAILED" in summary.render() and 0 < summary.records < good.records
    assert not verify_log(d, m.cluster, replica_id=2, verifier=m.verifier).ok
    assert "no such file" in (verify_log(tmp_path / "nope", m.cluster).problem or "")
    junk = tmp_path / "junk.seg"
    junk.write_bytes(os.urandom(1000))
    assert not verify_log(junk, m.cluster).ok


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_damage_anywhere_never_crashes(tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    """Random truncations, byte flips and overwrites: load either succeeds (only for a torn tail) or
    raises LogError; verify_log never raises."""
    base = _fuzz_base(tmp_path_factory)
    m, d0 = base
    d = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(d0, d, dirs_exist_ok=True)
    seg = segments(d)[-1]
    blob = bytearray(seg.read_bytes())
    action = data.draw(st.sampled_from(["truncate", "flip", "overwrite"]))
    pos = data.draw(st.integers(0, len(blob) - 1))
    if action == "truncate":
        blob = blob[:pos]
    elif action == "flip":
        blob[pos] ^= data.draw(st.integers(1, 255))
    else:
        blob[pos : pos + 8] = data.draw(st.binary(min_size=8, max_size=8))
    seg.write_bytes(bytes(blob))
    summary = verify_log(d, m.cluster, verifier=m.verifier)
    try:
        records, report = reload(m, d)
    except LogError:
        assert not summary.ok
        return
    assert summary.ok, summary.problem
    if action != "truncate":  # a cut at a group boundary is a consistent (older) prefix: see STORAGE.md
        assert report.truncated_tail_bytes > 0 or records == expected_order(m.model.durable)


_FUZZ: dict[str, tuple[Mini, Path]] = {}


def _fuzz_base(factory: pytest.TempPathFactory) -> tuple[Mini, Path]:
    if "base" not in _FUZZ:
        _FUZZ["base"] = build_log(factory.mktemp("fuzzbase"))
    return _FUZZ["base"]


def test_crash_during_first_use_is_harmless(tmp_path: Path) -> None:
    """An empty first segment without IDENTITY (crash before IDENTITY was written) starts cleanly."""
    m = Mini()
    (tmp_path / "log").mkdir(mode=0o700)  # as the replica creates it
    (tmp_path / "log" / "000001.seg").write_bytes(b"")
    records, report = reload(m, tmp_path)
    assert records == [] and report.warnings == [] and report.fresh
    assert (tmp_path / "IDENTITY").exists()
    assert not reload(m, tmp_path)[1].fresh


# ---------------------------------------------------------------- the one varint helper


@given(st.integers(min_value=1, max_value=2**64 - 1))
def test_varint_is_protobufs_length_prefix(n: int) -> None:
    """bft.wire.varint (the one helper the log frames and the peer link frames use) is the varint
    protobuf writes, and varint_len its length."""
    from bft.wire import varint, varint_len

    assert varint(n) == spb.LogRecord(index=n).SerializeToString()[1:]  # field 2 (tag 0x10), varint
    assert varint_len(n) == len(varint(n))
    assert varint(0) == b"\x00" and varint_len(0) == 1  # (protobuf leaves a zero scalar out)
