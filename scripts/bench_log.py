#!/usr/bin/env python3
"""Benchmark of the replica log (bft/storage/log.py) on this machine's disk, with Ed25519 keys.

1. Group commit: append k CommitRecords and sync (one write, one fsync, one seal), k = 1, 10, 100.
2. Load (verify + return records) of logs holding 100,000 committed messages:
   * window: 400-message batches, 250 sequence numbers (about what the watermark window lets a
     replica hold after its last stable checkpoint), PRE-PREPARE + PREPARED + COMMIT records each;
     every certificate is checked;
   * uncompacted: 10-message batches, 10,000 sequence numbers, no checkpoint (more than a replica can
     accumulate; shows the per-record cost);
   * checkpoint: a 48 MB snapshot (state of 100,000 messages) with its 2f+1 proof, plus 64 sequence
     numbers of 10-message batches after it.

Usage: .venv/bin/python scripts/bench_log.py [--quick] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bft.core.config import ClusterInfo, Params
from bft.core.events import CheckpointRecord, CommitRecord, PreparedRecord, PrePrepareRecord, Record
from bft.crypto import Ed25519Signer, Ed25519Verifier, HashSigner, HashVerifier, Kind, sha256
from bft.pb.bftchat.v1 import protocol_pb2 as pb
from bft.storage.log import ReplicaLog, verify_log
from bft.wire import make_request, seal

ME = 1  # the replica whose log we write (a backup of view 0)
MSG_BYTES = 256


class Cluster:
    """Four Ed25519 replicas that sign real certificates for made-up batches."""

    def __init__(self) -> None:
        self.signers = [Ed25519Signer(bytes([i + 1]) * 32) for i in range(4)]
        self.info = ClusterInfo(
            tuple(s.public_key for s in self.signers), b"bench-cluster-id", Params(checkpoint_interval=64)
        )
        hv = HashVerifier()  # client requests are opaque to the log: a cheap signer is enough
        self.client = HashSigner(b"bench client", hv)
        self.ts = 0

    def batch(self, messages: int) -> bytes:
        reqs = []
        for _ in range(messages):
            self.ts += 1
            op = b"send " + os.urandom(MSG_BYTES)
            reqs.append(make_request(self.client, self.info.cluster_id, 1, self.ts, op))
        return pb.Batch(timestamp_us=self.ts, requests=reqs).SerializeToString()

    def slot(self, seq: int, messages: int) -> list[Record]:
        """PRE-PREPARE, PREPARED and COMMIT records of one sequence number, view 0."""
        cid = self.info.cluster_id
        data = self.batch(messages)
        digest = sha256(data)
        pp = seal(self.signers[0], 0, Kind.PREPREPARE, cid, pb.PrePrepare(view=0, seq=seq, digest=digest))
        prepares = [
            seal(self.signers[i], i, Kind.PREPARE, cid, pb.Prepare(view=0, seq=seq, digest=digest))
            for i in (1, 2)
        ]
        commits = [
            seal(self.signers[i], i, Kind.COMMIT, cid, pb.Commit(view=0, seq=seq, digest=digest))
            for i in (0, 1, 2)
        ]
        return [
            PrePrepareRecord(0, seq, digest, pp.SerializeToString(), data),
            PreparedRecord(
                0, seq, digest, pb.PreparedProof(preprepare=pp, prepares=prepares).SerializeToString()
            ),
            CommitRecord(
                seq, 0, digest, pb.CommitProof(preprepare=pp, batch=data, commits=commits).SerializeToString()
            ),
        ]

    def checkpoint(self, seq: int, snapshot: bytes) -> CheckpointRecord:
        digest = sha256(snapshot)
        proof = tuple(
            seal(
                self.signers[i],
                i,
                Kind.CHECKPOINT,
                self.info.cluster_id,
                pb.Checkpoint(seq=seq, state_digest=digest),
            ).SerializeToString()
            for i in (0, 1, 2)
        )
        return CheckpointRecord(seq, digest, snapshot, proof)

    def open(self, data_dir: Path) -> ReplicaLog:
        return ReplicaLog(data_dir, ME, self.signers[ME], self.info, Ed25519Verifier())


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:8.3f} ms"


def bench_group_commit(c: Cluster, root: Path, quick: bool) -> None:
    print("== group commit (append k CommitRecords of one 256-byte message each, then sync)")
    records = [c.slot(seq, 1)[2] for seq in range(1, 101)]
    size = len(records[0].proof)
    print(f"   record: CommitRecord with a 1-message batch and 3 COMMITs, {size} bytes of proof")
    for k in (1, 10, 100):
        rounds = {1: 300, 10: 150, 100: 40}[k] // (4 if quick else 1)
        d = root / f"gc{k}"
        log = c.open(d)
        log.load()
        times = []
        for _ in range(rounds):
            for r in records[:k]:
                log.append(r)
            times.append(log.sync())
        log.close()
        med, p99 = statistics.median(times), statistics.quantiles(times, n=100, method="inclusive")[98]
        print(f"   k={k:3d}: per sync median {ms(med)}  p99 {ms(p99)}  per record {ms(med / k)}", end="")
        print(f"  ({rounds} syncs)")
        shutil.rmtree(d)
    fd = os.open(root / "raw", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    raw = []
    for _ in range(200):
        t = time.perf_counter()
        os.write(fd, b"x" * 1100)
        os.fsync(fd)
        raw.append(time.perf_counter() - t)
    os.close(fd)
    print(f"   baseline: write 1100 bytes + os.fsync, median {ms(statistics.median(raw))}")


def build(c: Cluster, d: Path, records_by_group: list[list[Record]]) -> None:
    log = c.open(d)
    log.load()
    for group in records_by_group:
        for r in group:
            log.append(r)
        log.sync()
    log.close()


def measure_load(c: Cluster, d: Path, label: str, messages: int) -> None:
    size = sum(p.stat().st_size for p in (d / "log").glob("*.seg"))
    best = float("inf")
    for _ in range(3):
        log = c.open(d)
        t = time.perf_counter()
        records, report = log.load()
        best = min(best, time.perf_counter() - t)
        log.close()
    t = time.perf_counter()
    summary = verify_log(d, c.info)
    vt = time.perf_counter() - t
    assert summary.ok, summary.problem
    print(
        f"   {label}: {messages} messages, {summary.records} records, {size / 1e6:.1f} MB on disk; "
        f"load {best:.3f} s ({len(records)} live records, last seq {report.last_seq}); "
        f"verify-log (every seal) {vt:.3f} s"
    )


def bench_load(c: Cluster, root: Path, quick: bool) -> None:
    total = 10_000 if quick else 100_000
    print(f"== load of a log holding {total} committed messages (Ed25519, best of 3)")
    # Window: big batches, every certificate after the (absent) checkpoint is checked.
    per = 400
    d = root / "window"
    build(c, d, [c.slot(seq, per) for seq in range(1, total // per + 1)])
    measure_load(c, d, "window      (400/batch)", total)
    shutil.rmtree(d)
    # Uncompacted: many small batches.
    per = 10
    d = root / "uncompacted"
    build(c, d, [c.slot(seq, per) for seq in range(1, total // per + 1)])
    measure_load(c, d, "uncompacted (10/batch) ", total)
    shutil.rmtree(d)
    # After a checkpoint: a large snapshot plus a short tail.
    d = root / "checkpoint"
    snapshot = os.urandom(480 * total)
    groups: list[list[Record]] = [[c.checkpoint(64, snapshot)]]
    groups += [c.slot(seq, 10) for seq in range(65, 129)]
    build(c, d, groups)
    measure_load(c, d, f"checkpoint  ({len(snapshot) // 1_000_000} MB snapshot + 64 slots)", total + 640)
    shutil.rmtree(d)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="10x smaller logs, fewer rounds")
    ap.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_log_", dir=args.dir))
    try:
        c = Cluster()
        print(f"dir: {root}")
        bench_group_commit(c, root, args.quick)
        bench_load(c, root, args.quick)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
