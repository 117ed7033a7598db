"""Receipts (client/receipts.py) checked offline: real Ed25519 signatures over real reply roots.

A batch of two requests is executed by four replica keys (n=4, f=1); the client's replies are
collected by the same ``ReplyCollector`` the session uses, and the receipt built from the accepted
reply. It verifies with the cluster's public keys alone; a signature removed (below f+1), another
cluster's keys, a tampered result or path, a repeated replica, a replica disagreeing on the seq, a
one-round read and a readable field that lies are refused.
"""

from __future__ import annotations

import json

import pytest

from bft import merkle
from bft.core.config import ClusterInfo
from bft.core.replica import leaf_bytes
from bft.crypto import Ed25519Signer, Ed25519Verifier, Kind
from bft.pb.bftchat.v1 import protocol_pb2 as pb
from bft.replies import ReplyCollector, check_reply
from bft.wire import seal
from client import receipts

KEY, SESSION, STAMP = b"k" * 32, 7, 1000
SIGNERS = [Ed25519Signer.generate() for _ in range(4)]
CLUSTER = ClusterInfo(tuple(s.public_key for s in SIGNERS), b"c" * 16)
OTHER = ClusterInfo(tuple(Ed25519Signer.generate().public_key for _ in range(4)), b"d" * 16)


def replies(cluster: ClusterInfo, seq: int = 5, result: bytes = b"ok", by: range = range(4)) -> list[bytes]:
    """Each replica's ClientReply for our request, in a batch with another client's request."""
    leaves = [
        merkle.leaf_hash(leaf_bytes(b"o" * 32, 1, 1, pb.REPLY_OK, b"other")),
        merkle.leaf_hash(leaf_bytes(KEY, SESSION, STAMP, pb.REPLY_OK, result)),
    ]
    root, paths = merkle.build(leaves)
    out = []
    for i in by:
        env = seal(SIGNERS[i], i, Kind.REPLY, cluster.cluster_id, pb.ReplyRoot(view=2, seq=seq, root=root))
        reply = pb.ClientReply(
            root=env, session=SESSION, timestamp=STAMP, result=result, index=1, path=paths[1], client_key=KEY
        )
        out.append(reply.SerializeToString())
    return out


def accepted_receipt(raws: list[bytes], read_only: bool = False) -> bytes:
    """The receipt a session builds: its collector's accepted reply (f+1 or 2f+1 agreeing)."""
    collector = ReplyCollector.for_request(CLUSTER.quorums, read_only)
    for raw in raws:
        got = collector.add(check_reply(raw, CLUSTER, Ed25519Verifier(), KEY, SESSION, STAMP))
        if got is not None:
            return receipts.make(CLUSTER.cluster_id, got)
    raise AssertionError("not accepted")


def rebuilt(data: bytes, **change: object) -> bytes:
    r = pb.Receipt()
    r.ParseFromString(data)
    for k, v in change.items():
        if k == "replies":
            del r.replies[:]
            r.replies.extend(v)  # type: ignore[arg-type]
        else:
            setattr(r, k, v)
    return r.SerializeToString(deterministic=True)


def test_a_receipt_verifies_offline_with_the_public_keys_alone() -> None:
    data = accepted_receipt(replies(CLUSTER))
    v = receipts.verify(data, ClusterInfo(CLUSTER.public_keys, CLUSTER.cluster_id))
    assert (v.seq, v.view, v.signers, v.result, v.session, v.timestamp) == (
        5,
        2,
        (0, 1),
        b"ok",
        SESSION,
        STAMP,
    )
    assert len(pb.Receipt.FromString(data).replies) == 2  # f+1: what the client had when it accepted


def test_one_signature_removed_is_refused() -> None:
    data = accepted_receipt(replies(CLUSTER))
    only = pb.Receipt.FromString(data).replies[:1]
    with pytest.raises(receipts.ReceiptError, match="1 valid signing replicas, 2 matching needed"):
        receipts.verify(rebuilt(data, replies=only), CLUSTER)


def test_a_signature_broken_is_refused() -> None:
    data = accepted_receipt(replies(CLUSTER))
    first, second = pb.Receipt.FromString(data).replies
    reply = pb.ClientReply.FromString(second)
    reply.root.signature = bytes(64)
    with pytest.raises(receipts.ReceiptError, match="1 invalid"):
        receipts.verify(rebuilt(data, replies=[first, reply.SerializeToString()]), CLUSTER)


def test_another_clusters_config_is_refused() -> None:
    data = accepted_receipt(replies(CLUSTER))
    with pytest.raises(receipts.ReceiptError, match="not of this config"):
        receipts.verify(data, OTHER)
    # Claiming the other cluster's id does not help: the signatures' domain names the cluster.
    same_id = ClusterInfo(OTHER.public_keys, CLUSTER.cluster_id)
    with pytest.raises(receipts.ReceiptError, match="0 valid signing replicas"):
        receipts.verify(data, same_id)
    # Nor does a receipt signed by the other cluster's replicas for this cluster id.
    with pytest.raises(receipts.ReceiptError, match="not of this config"):
        receipts.verify(rebuilt(data, cluster_id=OTHER.cluster_id), CLUSTER)


def test_a_tampered_result_or_path_is_refused() -> None:
    data = accepted_receipt(replies(CLUSTER))
    raws = list(pb.Receipt.FromString(data).replies)
    for field, value in (("result", b"no"), ("index", 0), ("timestamp", STAMP + 1)):
        tampered = []
        for raw in raws:
            reply = pb.ClientReply.FromString(raw)
            setattr(reply, field, value)
            tampered.append(reply.SerializeToString())
        with pytest.raises(receipts.ReceiptError, match="0 valid signing replicas, 2 matching needed"):
            receipts.verify(rebuilt(data, replies=tampered), CLUSTER)
    # The receipt's own (unsigned) request fields must match the signed replies' leaves.
    with pytest.raises(receipts.ReceiptError, match="0 valid"):
        receipts.verify(rebuilt(data, session=SESSION + 1), CLUSTER)


def test_a_replica_repeated_counts_once() -> None:
    data = accepted_receipt(replies(CLUSTER))
    first = pb.Receipt.FromString(data).replies[0]
    with pytest.raises(receipts.ReceiptError, match="1 valid signing replicas"):
        receipts.verify(rebuilt(data, replies=[first, first]), CLUSTER)


def test_replicas_that_disagree_on_the_seq_do_not_make_a_receipt() -> None:
    a = replies(CLUSTER, seq=5, by=range(0, 1))
    b = replies(CLUSTER, seq=9, by=range(1, 2))
    data = rebuilt(accepted_receipt(replies(CLUSTER)), replies=a + b)
    with pytest.raises(receipts.ReceiptError, match="only 1 replicas signed the same sequence number"):
        receipts.verify(data, CLUSTER)


def test_a_one_round_read_is_no_receipt() -> None:
    raws = replies(CLUSTER, seq=0)
    assert accepted_receipt(raws, read_only=True) == b""
    data = rebuilt(accepted_receipt(replies(CLUSTER)), replies=raws[:3])
    with pytest.raises(receipts.ReceiptError, match="nothing was committed"):
        receipts.verify(data, CLUSTER)


def test_the_json_document_must_say_what_the_signatures_prove() -> None:
    data = accepted_receipt(replies(CLUSTER))
    v = receipts.verify(data, CLUSTER)
    doc = json.loads(json.dumps(receipts.to_json(v, data, message_id=3)))
    got, parsed = receipts.from_file(json.dumps(doc).encode())
    assert got == data and parsed is not None
    receipts.check_stated(v, parsed, got)
    with pytest.raises(receipts.ReceiptError, match="seq"):
        receipts.check_stated(v, {**parsed, "seq": 4}, got)
    assert receipts.from_file(data) == (data, None)  # the bare protobuf works too
    with pytest.raises(receipts.ReceiptError, match="version"):
        receipts.from_file(json.dumps({**doc, "version": 2}).encode())
    with pytest.raises(receipts.ReceiptError, match="version 2"):
        receipts.verify(rebuilt(data, version=2), CLUSTER)
