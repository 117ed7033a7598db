#!/usr/bin/env python3
"""Restart-time benchmark (not a test): one replica restarting from a log whose checkpoint holds
N undelivered chat messages (default 100,000): log load + verification, snapshot restore, replay.

Usage: .venv/bin/python scripts/bench_restart.py [--messages 100000]
Prints the single-replica restart time; a whole cluster restarts its n replicas in parallel on the
machine's cores, so its time is about max(1, n / cores) times that.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_chat import BOX, key, req, send_op  # type: ignore[import-not-found]

from bft.app.base import ExecContext
from bft.app.chat import ChatApp
from bft.core.clients import ClientTable
from bft.core.config import ClusterInfo, Params
from bft.core.events import ViewRecord
from bft.core.replica import Replica, state_digest
from bft.crypto import Ed25519Signer, Ed25519Verifier, cluster_id_from
from bft.storage.log import ReplicaLog
from bft.tools import preload
from client import e2e


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--messages",
        type=int,
        default=100_000,
        help="undelivered chat messages in the checkpoint the replica restarts from (default %(default)s)",
    )
    args = ap.parse_args()
    params = Params(checkpoint_interval=64)
    signers = [Ed25519Signer(bytes([i + 1]) * 32) for i in range(4)]
    info = ClusterInfo(tuple(s.public_key for s in signers), cluster_id_from(b"bench restart"), params)

    print(f"building a state with {args.messages} undelivered messages ...", flush=True)
    app = ChatApp()
    users = 100
    for u in range(users):
        app.execute(req(key(u), e2e.register_op(f"user{u}", BOX), u + 1), ExecContext(1, u, 1))
    for m in range(args.messages):
        u, to = m % users, (m + 1) % users
        op = send_op(f"user{u}", f"user{to}", 256)
        app.execute(req(key(u), op, 1000 + m), ExecContext(2 + m // 400, m % 400, 2 + m))
    seq, last_ts = 64, 2 + args.messages
    record = preload.checkpoint(info, signers[:3], app, seq, last_ts)  # 2f+1 votes
    data, digest = record.snapshot, record.state_digest
    state = state_digest(seq, app.digest(), ClientTable(params.client_table_capacity).digest(), last_ts)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "data"
        log = ReplicaLog(d, 1, signers[1], info, Ed25519Verifier())
        log.load()
        log.append(record)
        log.append(ViewRecord(1))
        log.sync()
        log.close()
        size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
        os.sync()
        t0 = time.perf_counter()
        log = ReplicaLog(d, 1, signers[1], info, Ed25519Verifier())
        records, _ = log.load()
        t1 = time.perf_counter()
        replica = Replica(info, 1, signers[1], Ed25519Verifier(), ChatApp, records=records)
        t2 = time.perf_counter()
        log.close()
        assert replica.state_digest() == state and replica.stable_digest == digest
    print(f"log on disk: {size / 1e6:.1f} MB (snapshot {len(data) / 1e6:.1f} MB)")
    print(f"load + verify log: {t1 - t0:.2f} s; restore snapshot into the core: {t2 - t1:.2f} s")
    print(
        f"one replica restarts in {t2 - t0:.2f} s; 7 replicas on {os.cpu_count()} cores: "
        f"~{(t2 - t0) * max(1, 7 / (os.cpu_count() or 1)):.1f} s"
    )


if __name__ == "__main__":
    main()
