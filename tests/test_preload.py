"""The benchmark's preload fast path: a state built by ChatApp, installed as a checkpoint signed by
every replica, restored by a real replica core from a real log, with messages recipients can open."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bft.app.chat import ChatApp
from bft.core.config import ClusterInfo, Params
from bft.core.replica import Replica
from bft.crypto import Ed25519Signer, Ed25519Verifier, cluster_id_from
from bft.storage.log import ReplicaLog
from bft.tools import preload
from client import e2e


def test_preloaded_state_restores_in_a_replica_and_messages_open(tmp_path: Path) -> None:
    signers = [Ed25519Signer(bytes([i + 1]) * 32) for i in range(4)]
    info = ClusterInfo(tuple(s.public_key for s in signers), cluster_id_from(b"preload"), Params())
    built = preload.build(30, 12, info.cluster_id, time.time_ns() // 1000)
    assert built.app.account_count == 30 and built.app.stored_messages == 12
    record = preload.checkpoint(info, signers, built.app, 64, built.last_ts)
    dirs = [tmp_path / f"r{i}" for i in range(4)]
    for i, d in enumerate(dirs):  # a genesis data dir, as bftchat-cluster makes it
        genesis = ReplicaLog(d, i, signers[i], info, Ed25519Verifier())
        genesis.load()
        genesis.close()
    preload.install(dirs, info, signers, record)
    with pytest.raises(ValueError, match="already holds a checkpoint"):
        preload.install(dirs[:1], info, signers[:1], record)

    log = ReplicaLog(dirs[2], 2, signers[2], info, Ed25519Verifier())
    records, _ = log.load()
    log.close()
    replica = Replica(info, 2, signers[2], Ed25519Verifier(), ChatApp, records=records)
    assert replica.h == 64 and replica.last_executed == 64 and replica.stable_digest == record.state_digest
    app = replica.app
    assert isinstance(app, ChatApp) and app.digest() == built.app.digest()
    # p1 received p0's message: it verifies and decrypts with p1's (derived) box key.
    inbox = e2e.parse_result(app.query(_fetch(built, "p1"))).messages.messages
    box = e2e.BoxKeys.from_secret(preload._derived(b"box", 1))
    got = e2e.open_delivered(inbox[0], info.cluster_id, "p1", box)
    assert got.sender == "p0" and got.plaintext == bytes(256)


def _fetch(built: preload.Preloaded, name: str) -> object:
    from bft.app.base import Request

    signer = Ed25519Signer(preload._derived(b"signing", int(name[1:])))
    return Request(signer.public_key, 9, 9, e2e.fetch_op(name), b"", b"")
