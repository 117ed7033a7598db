"""Re-exported from ``bft.handshake``, the protocol module replicas and clients share (it moved
there so that the client does not import the replica runtime for its proofs)."""

from bft.handshake import (
    LINK_CONTEXT,
    NONCE_LEN,
    ROUTE_CONTEXT,
    SUBSCRIBE_CONTEXT,
    CheckedPush,
    auth_proof,
    check_auth_proof,
    check_link_hello,
    check_push,
    check_session_claim,
    link_hello,
    seal_push,
    session_claim,
)

__all__ = [
    "LINK_CONTEXT",
    "NONCE_LEN",
    "ROUTE_CONTEXT",
    "SUBSCRIBE_CONTEXT",
    "CheckedPush",
    "auth_proof",
    "check_auth_proof",
    "check_link_hello",
    "check_push",
    "check_session_claim",
    "link_hello",
    "seal_push",
    "session_claim",
]
