"""Receipts: a client's proof, checkable offline, that the cluster committed one of its requests.

A client accepts an ordered request's result once f+1 replicas sent matching replies, each a
replica's signature over its batch's ``ReplyRoot`` (view, seq, root of a hash tree over the batch's
results; the signature's domain names the cluster id) plus the Merkle path from the client's own
leaf (key, session, timestamp, status, result) to that root. Kept together, those replies are a
certificate: at least one honest replica committed the request at that sequence number with that
result. A receipt (protobuf ``Receipt``, version 1) is exactly that: the serialised ``ClientReply``
messages as received, never re-encoded, since the signatures are over those exact bytes.

Verification (``verify``) uses the client's own acceptance code (``bft.replies``: ``check_reply``
on each reply, ``ReplyCollector`` for the f+1 rule, one implementation) and also requires f+1 of the
agreeing replicas to have signed the same (seq, root), so that the seq it reports is one that f+1
replicas (at least one honest) signed. It needs nothing but the cluster's public keys.

What a receipt proves and what it does not: docs/CHAT.md, "Receipts".
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

from bft.core.config import ClusterInfo
from bft.crypto import Ed25519Verifier, Verifier, sha256
from bft.pb.bftchat.v1 import protocol_pb2 as pb
from bft.replies import CheckedReply, ReplyCollector, check_reply
from bft.wire import WireError, parse, parse_canonical

VERSION = 1
MAX_RECEIPT = 4 * 1024 * 1024  # bytes: far above n replies of one batch path; a bigger file is refused
JSON_FORMAT = "bftchat-receipt"


class ReceiptError(Exception):
    """The receipt does not prove what it claims (or is not a receipt of this cluster)."""


@dataclass(frozen=True, slots=True)
class Verified:
    """What a valid receipt proves: the request (client_key, session, timestamp) was committed at
    ``seq`` (in ``view``) with (``status``, ``result``), signed over ``root`` by ``signers``."""

    cluster_id: bytes
    client_key: bytes
    session: int
    timestamp: int
    view: int
    seq: int
    root: bytes
    status: int
    result: bytes
    signers: tuple[int, ...]


def make(cluster_id: bytes, reply: CheckedReply) -> bytes:
    """The receipt of an accepted reply (``ReplyCollector.add`` filled ``proof``); b"" if there is
    none (a one-round read, seq 0: nothing was committed)."""
    if not reply.proof or reply.seq == 0:
        return b""
    first = parse(pb.ClientReply, reply.proof[0])
    receipt = pb.Receipt(
        version=VERSION,
        cluster_id=cluster_id,
        client_key=first.client_key,
        session=first.session,
        timestamp=first.timestamp,
        replies=list(reply.proof),
    )
    return receipt.SerializeToString(deterministic=True)


def verify(data: bytes, cluster: ClusterInfo, verifier: Verifier | None = None) -> Verified:
    """Check a receipt against ``cluster``'s public keys; ReceiptError unless f+1 distinct
    replicas of that cluster signed the same (seq, root) and the result's path leads to it."""
    if len(data) > MAX_RECEIPT:
        raise ReceiptError(f"receipt of {len(data)} bytes exceeds {MAX_RECEIPT}")
    try:
        r = parse_canonical(pb.Receipt, data)
    except WireError as exc:
        raise ReceiptError(f"not a receipt: {exc}") from None
    if r.version != VERSION:
        raise ReceiptError(f"receipt version {r.version}: this bftchat reads version {VERSION}")
    if r.cluster_id != cluster.cluster_id:
        raise ReceiptError(
            f"receipt of cluster {r.cluster_id.hex()[:16]}, "
            f"not of this config's {cluster.cluster_id.hex()[:16]}"
        )
    if len(r.replies) > cluster.n:
        raise ReceiptError(f"{len(r.replies)} replies for a cluster of {cluster.n} replicas")
    verifier = verifier or Ed25519Verifier()
    collector = ReplyCollector.for_request(cluster.quorums, read_only=False)
    accepted: CheckedReply | None = None
    bad: list[str] = []
    for raw in r.replies:
        try:
            reply = check_reply(raw, cluster, verifier, r.client_key, r.session, r.timestamp)
        except WireError as exc:
            bad.append(str(exc))
            continue
        accepted = collector.add(reply) or accepted
    need = cluster.quorums.f + 1
    why = f" ({len(bad)} invalid: {bad[0]})" if bad else ""
    if accepted is None:
        have = len(collector.votes)
        raise ReceiptError(f"{have} valid signing replicas, {need} matching needed{why}")
    group = [
        v for v in collector.votes.values() if (v.status, v.result) == (accepted.status, accepted.result)
    ]
    (seq, root), count = Counter((v.seq, v.root) for v in group).most_common(1)[0]
    if count < need:
        raise ReceiptError(f"only {count} replicas signed the same sequence number and root, {need} needed")
    if seq == 0:
        raise ReceiptError("a one-round read's replies (seq 0): nothing was committed")
    signers = tuple(sorted(v.replica for v in group if (v.seq, v.root) == (seq, root)))
    view = sorted((v.view for v in group if v.replica in signers), reverse=True)[need - 1]
    return Verified(
        r.cluster_id,
        r.client_key,
        r.session,
        r.timestamp,
        view,
        seq,
        root,
        accepted.status,
        accepted.result,
        signers,
    )


def to_json(v: Verified, data: bytes, **extra: Any) -> dict[str, Any]:
    """The receipt as the CLI prints it: a versioned JSON document whose ``receipt`` field is the
    exact protobuf bytes (hex); the other fields are for reading and are checked on verification."""
    return {
        "format": JSON_FORMAT,
        "version": VERSION,
        **extra,
        "cluster_id": v.cluster_id.hex(),
        "client_key": v.client_key.hex(),
        "session": v.session,
        "timestamp": v.timestamp,
        "seq": v.seq,
        "view": v.view,
        "root": v.root.hex(),
        "status": v.status,
        "result_sha256": sha256(v.result).hex(),
        "signers": list(v.signers),
        "receipt": data.hex(),
    }


def from_file(content: bytes) -> tuple[bytes, dict[str, Any] | None]:
    """A receipt file: the JSON document ``to_json`` wrote, or the bare protobuf bytes."""
    try:
        doc = json.loads(content)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return content, None
    if not isinstance(doc, dict) or doc.get("format") != JSON_FORMAT:
        raise ReceiptError(f'not a receipt document (no "format": "{JSON_FORMAT}")')
    if doc.get("version") != VERSION:
        raise ReceiptError(f"receipt document version {doc.get('version')}: this bftchat reads {VERSION}")
    try:
        return bytes.fromhex(str(doc["receipt"])), doc
    except (KeyError, ValueError):
        raise ReceiptError('receipt document without a hex "receipt" field') from None


def check_stated(v: Verified, doc: dict[str, Any], data: bytes) -> None:
    """The readable fields of a JSON receipt must say what the signed bytes prove."""
    proven = to_json(v, data)
    for key in (
        "cluster_id",
        "client_key",
        "session",
        "timestamp",
        "seq",
        "view",
        "root",
        "status",
        "signers",
    ):
        if key in doc and doc[key] != proven[key]:
            raise ReceiptError(
                f"the document's {key} {doc[key]!r} is not what its signatures prove ({proven[key]!r})"
            )
