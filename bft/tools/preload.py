"""A big replicated state for benchmarks, installed without running millions of requests.

``bftchat-bench --preload-accounts N --preload-messages M`` measures the cluster on top of a state
of N accounts and M undelivered messages. Ordering that many requests through the protocol would
take hours here, so the state is made by this documented fast path instead:

1. The operations are executed by ``ChatApp`` itself, as the core would execute them: N
   registrations (at one batch time an hour before now, so they are outside the registration
   window), then M sends. Each send is a real client request: NaCl-boxed to its recipient and
   Ed25519-signed by its sender, so recipients can fetch, verify and decrypt it. Only a pool of
   ``MESSAGING_POOL`` accounts sends and receives; the other accounts get keys derived by hashing
   (they never sign anything).
2. The result becomes a stable checkpoint at sequence number K (``checkpoint_interval``): the
   ``StateSnapshot`` with its chunk tree, and CHECKPOINT votes signed by every replica (the bench
   made their keys). It is appended to each replica's log before the replica first starts, so each
   restores it exactly as after a restart, and the cluster goes on from K + 1.

The replicated state is then what the protocol would have built from the same operations, with
one difference: the client table is empty, as if every client session had since been evicted
(its floor stays 0). Nothing else differs, and the checkpoint is checked like any other: a replica
restoring it recomputes its digest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bft.app.base import ExecContext, Request
from bft.app.chat import ChatApp, ChatLimits
from bft.core.clients import ClientTable
from bft.core.config import ClusterInfo
from bft.core.events import CheckpointRecord
from bft.core.pages import Snapshot, encode_page, encode_pages
from bft.core.replica import state_digest
from bft.crypto import Ed25519Signer, Ed25519Verifier, Kind, Signer
from bft.pb.bftchat.v1 import protocol_pb2 as pb
from bft.storage.log import ReplicaLog
from bft.wire import open_request, seal

MESSAGING_POOL = 1000  # accounts that send and receive the preloaded messages
HOUR_US = 3600 * 1_000_000


@dataclass(frozen=True)
class Preloaded:
    """A built state and where it sits in time."""

    app: ChatApp
    accounts: int
    messages: int
    last_ts: int  # the batch time of the last operation (the checkpoint's clock clamp)


def _derived(tag: bytes, i: int) -> bytes:
    return hashlib.sha256(b"bftchat preload " + tag + i.to_bytes(8, "big")).digest()


def build(accounts: int, messages: int, cluster_id: bytes, now_us: int, body: int = 256) -> Preloaded:
    """Execute ``accounts`` registrations and ``messages`` sends through ``ChatApp``."""
    from client import e2e

    if messages and accounts < 2:
        raise ValueError("messages need at least two accounts")
    pool = min(accounts, MESSAGING_POOL)
    signers = [Ed25519Signer(_derived(b"signing", i)) for i in range(pool)]
    boxes = [e2e.BoxKeys.from_secret(_derived(b"box", i)) for i in range(pool)]
    # Registrations at one time an hour ago; the window limit does not apply to a preload.
    app = ChatApp(ChatLimits(register_max=accounts + 1))
    t0 = now_us - HOUR_US
    for i in range(accounts):
        key = signers[i].public_key if i < pool else _derived(b"key", i)
        box = boxes[i].public if i < pool else _derived(b"boxpub", i)
        op = e2e.register_op(f"p{i}", box)
        app.execute(Request(key, 1, 1, op, b"", b""), ExecContext(1, i, t0))
    plaintext = bytes(body)
    for m in range(messages):
        src, dst = m % pool, (m + 1) % pool
        raw = e2e.seal_message(
            signers[src], cluster_id, 2, m + 1, f"p{src}", boxes[src], f"p{dst}", boxes[dst].public, plaintext
        )
        request = open_request(raw, cluster_id, Ed25519Verifier()).request
        app.execute(request, ExecContext(2 + m // 512, m % 512, t0 + 1 + m // 512))
    last_ts = t0 + 2 + messages // 512
    return Preloaded(app, accounts, messages, last_ts)


def checkpoint(
    info: ClusterInfo, signers: Sequence[Signer], app: ChatApp, seq: int, last_ts: int
) -> CheckpointRecord:
    """A stable checkpoint of ``app`` at ``seq`` (empty client table), voted by every signer."""
    p = info.params
    clients = ClientTable(p.client_table_capacity, p.state_pages)
    app.set_page_count(p.state_pages)
    pages = [encode_page(i, seq, last_ts, clients.page(i), app.page(i)) for i in range(p.state_pages)]
    state = state_digest(seq, app.digest(), clients.digest(), last_ts)
    digest = Snapshot.of_pages(seq, state, pages, p.state_chunk_bytes).digest
    vote = pb.Checkpoint(seq=seq, state_digest=digest)
    proof = tuple(
        seal(s, i, Kind.CHECKPOINT, info.cluster_id, vote).SerializeToString() for i, s in enumerate(signers)
    )
    return CheckpointRecord(seq, digest, encode_pages(pages), proof)


def install(
    data_dirs: Sequence[Path], info: ClusterInfo, signers: Sequence[Signer], record: CheckpointRecord
) -> None:
    """Append ``record`` to every replica's log (before the replicas first start)."""
    for i, (directory, signer) in enumerate(zip(data_dirs, signers, strict=True)):
        log = ReplicaLog(directory, i, signer, info, Ed25519Verifier())
        try:
            records, _ = log.load()
            if any(isinstance(r, CheckpointRecord) for r in records):
                raise ValueError(f"{directory} already holds a checkpoint: preload a fresh cluster only")
            log.append(record)
            log.sync()
        finally:
            log.close()
