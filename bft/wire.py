"""Signed envelopes: exact bytes + signer + signature. Parse only after verifying.

``body = domain tag || payload``; the signature covers ``body`` exactly as it travels. Nothing is
ever re-serialised to be verified (protobuf encoding is not canonical). Size caps are enforced
before any parsing.

Signed bodies must also be *canonical*: once the signature verified, the payload is parsed and
re-encoded (unknown fields dropped, deterministic encoding), and it must give exactly the signed
bytes. Protobuf keeps unknown fields and accepts repeated scalars and overlong varints, so without
this a faulty replica could pad a validly signed message to any size, and honest replicas would
copy it into every certificate that quotes it. ``SizeCaps`` bounds each kind of signed body (and
hence every certificate) from the cluster's parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from bft.app.base import Request
from bft.crypto import KEY_LEN, SIG_LEN, TAG_LEN, Kind, Signer, Verifier, split_tag, tag
from bft.pb.bftchat.v1 import protocol_pb2 as pb

MAX_REQUEST_BYTES = 128 * 1024
"""A signed client request, envelope included (a 64 KiB chat body plus encryption fits)."""
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
"""One replica-to-replica message (the largest are NEW-VIEWs carrying certificates)."""

M = TypeVar("M", bound=Message)

KIND_MESSAGES: dict[Kind, type[Message]] = {
    Kind.PREPREPARE: pb.PrePrepare,
    Kind.PREPARE: pb.Prepare,
    Kind.COMMIT: pb.Commit,
    Kind.CHECKPOINT: pb.Checkpoint,
    Kind.VIEW_CHANGE: pb.ViewChange,
    Kind.NEW_VIEW: pb.NewView,
    Kind.STATUS: pb.Status,
    Kind.REPLY: pb.ReplyRoot,
    Kind.FETCH: pb.Fetch,
}
"""The message inside each replica-signed kind (the others are checked where they are opened)."""

ACCEPT_UNKNOWN_FIELDS = False
"""Only the simulator's ``accept-unknown-fields`` mutation sets this, to prove the checkers notice."""


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


def parse_canonical(message_type: type[M], data: bytes) -> M:
    """Parse ``data`` and require it to be the canonical encoding of what it parsed to: no unknown
    fields, no repeated or explicitly default scalars, no overlong varints, fields in order."""
    msg = parse(message_type, data)
    if ACCEPT_UNKNOWN_FIELDS:
        return msg
    msg.DiscardUnknownFields()
    if msg.SerializeToString(deterministic=True) != data:
        raise WireError(f"non-canonical {message_type.__name__} (unknown fields or padding)")
    return msg


def drop_if_unknown_fields(msg: Message) -> None:
    """WireError if ``msg`` (an unsigned wrapper, e.g. a PeerMessage) carries unknown fields at any
    depth: they would be kept, stored and re-sent with it."""
    if ACCEPT_UNKNOWN_FIELDS:
        return
    size = msg.ByteSize()
    msg.DiscardUnknownFields()
    if msg.ByteSize() != size:
        raise WireError(f"unknown fields in {type(msg).__name__}")


_ONE_BYTE = tuple(bytes((i,)) for i in range(0x80))


def varint(n: int) -> bytes:
    """``n`` (>= 0) as a protobuf base-128 varint: the length prefix of a length-delimited field, for
    the places that frame bytes they already hold without re-serialising them (peer link frames,
    log frames)."""
    if n < 0x80:
        return _ONE_BYTE[n]  # most lengths and small numbers: no loop (the chat snapshot writes millions)
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def varint_len(value: int) -> int:
    """``len(varint(value))``, without building it."""
    return max(1, (value.bit_length() + 6) // 7)


def uint_field(number: int, value: int) -> bytes:
    """A proto3 ``uint32``/``uint64`` field as deterministic serialisation writes it: nothing for
    zero (the default is left out), else tag and varint. With :func:`len_field_head`, this lets a
    caller that caches encoded pieces (the chat snapshot) join them into exactly the bytes
    ``SerializeToString(deterministic=True)`` would give, without building the message objects."""
    return varint(number << 3) + varint(value) if value else b""


def len_field_head(number: int, length: int) -> bytes:
    """Tag and length prefix of a length-delimited field (bytes, string, submessage) whose content is
    ``length`` bytes. Proto3 leaves an empty ``bytes``/``string`` field out: the caller checks that
    (an empty submessage in a repeated field is still written)."""
    return varint((number << 3) | 2) + varint(length)


def _field(length: int) -> int:
    """Encoded size of a length-delimited field (tag < 16) whose content is ``length`` bytes."""
    return 1 + varint_len(length) + length


_U64 = 1 + 10  # a uint64 field at its largest
_U32 = 1 + 5  # a uint32 field at its largest
_DIGEST = _field(32)


def envelope_size(body: int) -> int:
    """The largest Envelope around a body of ``body`` bytes (signer up to 2^32 - 1)."""
    return _field(body) + 1 + 5 + _field(SIG_LEN)


@dataclass(frozen=True)
class SizeCaps:
    """The largest signed body of each kind, and of the certificates built from them, for one
    cluster: what an honest replica can produce at the configured limits (docs/PROTOCOL.md). A body
    above its cap is dropped before its signature is checked."""

    body: dict[Kind, int]
    batch: int  # a Batch (unsigned; named by a PRE-PREPARE's digest)
    prepared_proof: int
    commit_proof: int
    state_chunk: int = 0  # a StateChunk (unsigned; checked against its checkpoint's page tree)

    @classmethod
    def compute(
        cls,
        n: int,
        f: int,
        window: int,
        batch_max_bytes: int,
        batch_max_requests: int,
        state_chunk_bytes: int = 0,
    ) -> SizeCaps:
        vote = TAG_LEN + _U64 + _U64 + _DIGEST  # PRE-PREPARE, PREPARE, COMMIT
        checkpoint = TAG_LEN + _U64 + _DIGEST
        status = TAG_LEN + _U64 + 2 + _U64 + _U64 + 2 + _U64  # ... recovering, recovery_target
        fetch_state = _field(_U64 + _DIGEST + 4 * _U32 + 2)  # seq, digest, first, count, part, hashes, end
        fetch = TAG_LEN + max(_DIGEST, _field(2 * _U64), fetch_state)
        reply = TAG_LEN + _U64 + _U64 + _DIGEST
        prepared_proof = _field(envelope_size(vote)) + 2 * f * _field(envelope_size(vote))
        view_change = (
            TAG_LEN
            + _U64
            + _U64
            + _DIGEST
            + n * _field(envelope_size(checkpoint))
            + window * _field(prepared_proof)
            + _U64  # epoch
        )
        new_view = (
            TAG_LEN
            + _U64
            + (2 * f + 1) * _field(envelope_size(view_change))
            + window * _field(envelope_size(vote))
        )
        # The primary adds requests while they fit batch_max_bytes, and always at least one.
        batch = _U64 + max(batch_max_bytes, MAX_REQUEST_BYTES) + batch_max_requests * (1 + 3)
        commit_proof = _field(envelope_size(vote)) + _field(batch) + n * _field(envelope_size(vote))
        body = {
            Kind.PREPREPARE: vote,
            Kind.PREPARE: vote,
            Kind.COMMIT: vote,
            Kind.CHECKPOINT: checkpoint,
            Kind.STATUS: status,
            Kind.FETCH: fetch,
            Kind.REPLY: reply,
            Kind.VIEW_CHANGE: view_change,
            Kind.NEW_VIEW: new_view,
        }
        # A StateChunk (bft/core/pages.py) holds at most state_chunk_bytes of whole pages, page
        # hashes or one part of a page (a hash takes 35 bytes where the packer counts 34), with
        # its header and audit paths: a page tree of at most 2^20 pages, a part tree of at most
        # 2^32 parts (field numbers above 15 take a second tag byte).
        content = state_chunk_bytes + state_chunk_bytes // 34 + 35
        state_chunk = content + 8 * (_U64 + 1) + 2 * _DIGEST + (21 + 33) * (_DIGEST + 1)
        return cls(body, batch, prepared_proof, commit_proof, state_chunk)

    def peer_message(self) -> int:
        """The largest PeerMessage an honest replica sends (a NEW-VIEW, a batch with its
        PRE-PREPARE, a CommitProof or a StateChunk)."""
        return max(
            _field(envelope_size(self.body[Kind.NEW_VIEW])),
            _field(envelope_size(self.body[Kind.PREPREPARE])) + _field(self.batch),
            _field(self.commit_proof),
            _field(self.state_chunk),
        )


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
    message_type = KIND_MESSAGES.get(kind)
    if message_type is not None:
        parse_canonical(message_type, split[1])
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

    @property
    def retained_bytes(self) -> int:
        """What keeping it costs: the travelling bytes, the signed body and the operation (three
        copies, so a table of requests is bounded by this, not by ``len(raw)``)."""
        return len(self.raw) + len(self.request.signed) + len(self.request.op)


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
    body = parse_canonical(pb.RequestBody, payload[KEY_LEN:])
    canonical = pb.Envelope(body=env.body, signature=env.signature).SerializeToString()
    if canonical != raw and not ACCEPT_UNKNOWN_FIELDS:
        raise WireError("non-canonical request envelope (unknown fields or padding)")
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
