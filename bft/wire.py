"""Signed envelopes: exact bytes + signer + signature. Parse only after verifying.

``body = domain tag || payload``; the signature covers ``body`` exactly as it travels. Nothing is
ever re-serialised to be verified (protobuf encoding is not canonical). Size caps are enforced
before any parsing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from bft.app.base import Request
from bft.crypto import KEY_LEN, TAG_LEN, Kind, Signer, Verifier, split_tag, tag
from bft.pb.bftchat.v1 import protocol_pb2 as pb

MAX_REQUEST_BYTES = 128 * 1024
"""A signed client request, envelope included (a 64 KiB chat body plus encryption fits)."""
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
"""One replica-to-replica message (the largest are NEW-VIEWs carrying certificates)."""

M = TypeVar("M", bound=Message)


class WireError(ValueError):
    """Malformed, oversized, mis-tagged or wrongly signed input."""


def parse(message_type: type[M], data: bytes) -> M:
    """Parse protobuf bytes, turning every decoder failure into a WireError."""
    msg = message_type()
    try:
        msg.ParseFromString(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise WireError(f"malformed {message_type.__name__}: {exc}") from None
    return msg


def seal(signer: Signer, signer_id: int, kind: Kind, cluster_id: bytes, message: Message) -> pb.Envelope:
    """Sign a replica message: the envelope carries the exact bytes that were signed."""
    body = tag(kind, cluster_id) + message.SerializeToString()
    return pb.Envelope(body=body, signer=signer_id, signature=signer.sign(body))


def open_envelope(
    env: pb.Envelope, kind: Kind, cluster_id: bytes, public_key: bytes, verifier: Verifier
) -> bytes:
    """Verify ``env`` as a ``kind`` message by ``public_key``; return the payload bytes to parse."""
    split = split_tag(env.body, cluster_id)
    if split is None or split[0] != kind:
        raise WireError(f"not a {kind.name} of this cluster")
    if not verifier.verify(public_key, env.body, env.signature):
        raise WireError(f"bad signature on {kind.name} from {env.signer}")
    return split[1]


def peek_kind(env: pb.Envelope, cluster_id: bytes) -> Kind | None:
    """The kind named by the tag (not yet verified): used only to route, never to act."""
    split = split_tag(env.body, cluster_id)
    return None if split is None else split[0]


# ---- client requests ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OpenedRequest:
    """A verified client request and its protocol fields."""

    request: Request
    read_only: bool
    min_seq: int
    raw: bytes  # the serialised Envelope, as it travels inside batches


def make_request(
    signer: Signer,
    cluster_id: bytes,
    session: int,
    timestamp: int,
    op: bytes,
    *,
    read_only: bool = False,
    min_seq: int = 0,
) -> bytes:
    """A signed client request, serialised: ``tag || client key || RequestBody``."""
    body = pb.RequestBody(session=session, timestamp=timestamp, op=op, read_only=read_only, min_seq=min_seq)
    signed = tag(Kind.REQUEST, cluster_id) + signer.public_key + body.SerializeToString()
    return pb.Envelope(body=signed, signature=signer.sign(signed)).SerializeToString()


def open_request(raw: bytes, cluster_id: bytes, verifier: Verifier) -> OpenedRequest:
    """Verify and parse a serialised client request; WireError on any defect."""
    if len(raw) > MAX_REQUEST_BYTES:
        raise WireError(f"request of {len(raw)} bytes exceeds {MAX_REQUEST_BYTES}")
    env = parse(pb.Envelope, raw)
    split = split_tag(env.body, cluster_id)
    if split is None or split[0] != Kind.REQUEST:
        raise WireError("not a client request of this cluster")
    payload = split[1]
    if len(payload) < KEY_LEN:
        raise WireError("request too short")
    key = payload[:KEY_LEN]
    if not verifier.verify(key, env.body, env.signature):
        raise WireError("bad client signature")
    body = parse(pb.RequestBody, payload[KEY_LEN:])
    req = Request(
        client_key=key,
        session=body.session,
        timestamp=body.timestamp,
        op=body.op,
        signed=env.body,
        signature=env.signature,
    )
    return OpenedRequest(req, body.read_only, body.min_seq, raw)


def request_signer_key(signed: bytes) -> bytes:
    """The client key inside exact signed request bytes (already verified by the caller)."""
    return signed[TAG_LEN : TAG_LEN + KEY_LEN]
