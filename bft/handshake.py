"""The handshake and claim proofs of the protocol, shared by replicas and clients: peer-link
hellos, push subscriptions, reply-route claims, and pushes (what the replica's services sign and
check, and what a client signs and checks; ``bft.runtime.handshake`` re-exports it).

Each signed body starts with the domain tag (AUTH or PUSH, cluster id) and, for AUTH, a context
string, so a proof made for one purpose is never accepted for another (a push subscription is no
reply-route claim, and the other way round). The AUTH proofs sign a nonce the *verifying* replica
chose for this stream, so a recorded proof is useless on any other stream.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from bft.crypto import KEY_LEN, Kind, Signer, Verifier, split_tag, tag
from bft.pb.bftchat.v1 import protocol_pb2 as pb
from bft.pb.bftchat.v1 import service_pb2 as spb
from bft.wire import WireError, parse, seal

NONCE_LEN = 32
LINK_CONTEXT = b"bftchat peer link\0"
SUBSCRIBE_CONTEXT = b"bftchat push subscribe\0"
ROUTE_CONTEXT = b"bftchat reply route\0"


# ---- peer links -------------------------------------------------------------------------------


def link_hello(signer: Signer, cluster_id: bytes, from_id: int, to_id: int, nonce: bytes) -> spb.LinkHello:
    """The connecting replica's answer to the nonce of the replica it connects to."""
    body = spb.LinkHelloBody(from_replica=from_id, to_replica=to_id, nonce=nonce).SerializeToString()
    data = tag(Kind.AUTH, cluster_id) + LINK_CONTEXT + body
    return spb.LinkHello(proof=pb.Envelope(body=data, signer=from_id, signature=signer.sign(data)))


def check_link_hello(
    hello: spb.LinkHello,
    cluster_id: bytes,
    public_keys: tuple[bytes, ...],
    my_id: int,
    nonce: bytes,
    verifier: Verifier,
) -> int:
    """The id of the replica that signed ``hello`` for this link; WireError if it does not hold."""
    env = hello.proof
    split = split_tag(env.body, cluster_id)
    if split is None or split[0] != Kind.AUTH or not split[1].startswith(LINK_CONTEXT):
        raise WireError("link hello is not a peer-link proof of this cluster")
    body = parse(spb.LinkHelloBody, split[1][len(LINK_CONTEXT) :])
    sender = body.from_replica
    if sender != env.signer or not 0 <= sender < len(public_keys) or sender == my_id:
        raise WireError(f"link hello from unknown replica {env.signer}")
    if body.to_replica != my_id:
        raise WireError(f"link hello addressed to replica {body.to_replica}, this is {my_id}")
    if body.nonce != nonce:
        raise WireError("link hello signs another nonce (replayed)")
    if not verifier.verify(public_keys[sender], env.body, env.signature):
        raise WireError(f"bad signature on link hello from replica {sender}")
    return sender


# ---- push subscriptions -----------------------------------------------------------------------


def _subscribe_body(cluster_id: bytes, replica_id: int, nonce: bytes) -> bytes:
    return tag(Kind.AUTH, cluster_id) + SUBSCRIBE_CONTEXT + struct.pack(">I", replica_id) + nonce


def auth_proof(signer: Signer, cluster_id: bytes, replica_id: int, nonce: bytes) -> spb.AuthProof:
    """A client's proof that it holds ``signer``'s key, for one replica's session nonce."""
    sig = signer.sign(_subscribe_body(cluster_id, replica_id, nonce))
    return spb.AuthProof(public_key=signer.public_key, signature=sig)


def check_auth_proof(
    proof: spb.AuthProof, cluster_id: bytes, replica_id: int, nonce: bytes, verifier: Verifier
) -> bytes:
    """The proven public key; WireError if the signature does not hold for this session's nonce."""
    body = _subscribe_body(cluster_id, replica_id, nonce)
    if not verifier.verify(proof.public_key, body, proof.signature):
        raise WireError("subscription proof does not verify for this session")
    return proof.public_key


# ---- reply-route claims -----------------------------------------------------------------------


def _claim_body(cluster_id: bytes, replica_id: int, nonce: bytes, session: int) -> bytes:
    return (
        tag(Kind.AUTH, cluster_id)
        + ROUTE_CONTEXT
        + struct.pack(">I", replica_id)
        + nonce
        + struct.pack(">Q", session)
    )


def session_claim(
    signer: Signer, cluster_id: bytes, replica_id: int, nonce: bytes, session: int
) -> spb.SessionClaim:
    """A client's claim that replies for (its key, ``session``) go on the stream of ``nonce``."""
    sig = signer.sign(_claim_body(cluster_id, replica_id, nonce, session))
    return spb.SessionClaim(public_key=signer.public_key, session=session, signature=sig)


def check_session_claim(
    claim: spb.SessionClaim, cluster_id: bytes, replica_id: int, nonce: bytes, verifier: Verifier
) -> tuple[bytes, int]:
    """The claimed (public key, session); WireError unless the key signed it for this stream's nonce."""
    if len(claim.public_key) != KEY_LEN:
        raise WireError(f"claim names a {len(claim.public_key)}-byte key, not {KEY_LEN}")
    body = _claim_body(cluster_id, replica_id, nonce, claim.session)
    if not verifier.verify(claim.public_key, body, claim.signature):
        raise WireError("reply-route claim does not verify for this session stream")
    return claim.public_key, claim.session


# ---- pushes -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckedPush:
    replica: int
    recipient_key: bytes
    recipient: str
    message_id: int
    seq: int


def seal_push(
    signer: Signer,
    replica_id: int,
    cluster_id: bytes,
    recipient_key: bytes,
    recipient: str,
    msg_id: int,
    seq: int,
) -> pb.Envelope:
    push = spb.Push(recipient_key=recipient_key, recipient=recipient, message_id=msg_id, seq=seq)
    return seal(signer, replica_id, Kind.PUSH, cluster_id, push)


def check_push(
    env: pb.Envelope, cluster_id: bytes, public_keys: tuple[bytes, ...], verifier: Verifier
) -> CheckedPush:
    """A push verified against its replica's key; WireError otherwise."""
    split = split_tag(env.body, cluster_id)
    if split is None or split[0] != Kind.PUSH:
        raise WireError("not a push of this cluster")
    if not 0 <= env.signer < len(public_keys):
        raise WireError(f"push from unknown replica {env.signer}")
    if not verifier.verify(public_keys[env.signer], env.body, env.signature):
        raise WireError(f"bad signature on push from replica {env.signer}")
    push = parse(spb.Push, split[1])
    return CheckedPush(env.signer, push.recipient_key, push.recipient, push.message_id, push.seq)
