"""End-to-end encryption of chat messages: the one place where clients (and tests) seal and open them.

One Ed25519 signature serves twice. The sender encrypts the body with NaCl Box (its X25519 secret
key, the recipient's X25519 public key) and puts the ciphertext in a ``ChatSend`` op inside its
signed client request. Every replica verifies that request before ordering it, and stores the exact
signed bytes and signature. The recipient receives those same bytes and verifies them again, so it
learns from the signature alone who sent the message (the signing key, and the sender account the
replicas checked that key owns) and to whom (the op names the recipient and its box key). Replicas
only ever see ciphertext.

The plain (unencrypted) operation builders live here too, so a client needs a single import.
"""

from __future__ import annotations

from dataclasses import dataclass

import nacl.exceptions
import nacl.public
from google.protobuf.message import DecodeError

from bft.app.chat import BOX_KEY_LEN, BOX_OVERHEAD, ChatLimits
from bft.app.names import normalize_name
from bft.crypto import Ed25519Verifier, Signer, Verifier
from bft.pb.bftchat.v1 import chat_pb2 as cpb
from bft.pb.bftchat.v1 import protocol_pb2 as pb
from bft.wire import WireError, make_request, open_request

MAX_PLAINTEXT = ChatLimits().max_body_bytes - BOX_OVERHEAD


class E2EError(ValueError):
    """A delivered message that fails verification, is not addressed to us, or does not decrypt."""


@dataclass(frozen=True, slots=True)
class BoxKeys:
    """An X25519 key pair for NaCl Box. Keep ``secret`` on the client; register ``public``."""

    secret: bytes
    public: bytes

    @classmethod
    def generate(cls) -> BoxKeys:
        return cls.from_secret(bytes(nacl.public.PrivateKey.generate()))

    @classmethod
    def from_secret(cls, secret: bytes) -> BoxKeys:
        sk = nacl.public.PrivateKey(secret)
        return cls(bytes(sk), bytes(sk.public_key))


@dataclass(frozen=True, slots=True)
class Received:
    """A verified, decrypted message."""

    sender_key: bytes  # Ed25519 key that signed the request: the sender's identity
    sender: str  # the account name the replicas checked that key owned when the send executed
    recipient: str
    plaintext: bytes
    session: int
    timestamp: int
    sender_box_key: bytes = b""  # the sender account's box key (the replicas checked it is registered)


# ---- sender side -----------------------------------------------------------------------------


def encrypt_send_op(
    sender: str, sender_box: BoxKeys, recipient: str, recipient_box_key: bytes, plaintext: bytes
) -> bytes:
    """The serialised ``ChatOp`` of a Send: ``plaintext`` boxed to ``recipient_box_key``."""
    if len(plaintext) > MAX_PLAINTEXT:
        raise ValueError(f"plaintext exceeds {MAX_PLAINTEXT} bytes")
    if len(recipient_box_key) != BOX_KEY_LEN:
        raise ValueError("recipient box key must be 32 bytes")
    box = nacl.public.Box(nacl.public.PrivateKey(sender_box.secret), nacl.public.PublicKey(recipient_box_key))
    ciphertext = bytes(box.encrypt(plaintext))  # 24-byte random nonce || tag || ciphertext
    send = cpb.ChatSend(
        sender=sender,
        recipient=recipient,
        recipient_box_key=recipient_box_key,
        sender_box_key=sender_box.public,
        ciphertext=ciphertext,
    )
    return cpb.ChatOp(send=send).SerializeToString()


def seal_message(
    signer: Signer,
    cluster_id: bytes,
    session: int,
    timestamp: int,
    sender: str,
    sender_box: BoxKeys,
    recipient: str,
    recipient_box_key: bytes,
    plaintext: bytes,
) -> bytes:
    """A complete signed client request (serialised Envelope) that sends ``plaintext``."""
    op = encrypt_send_op(sender, sender_box, recipient, recipient_box_key, plaintext)
    return make_request(signer, cluster_id, session, timestamp, op)


# ---- recipient side --------------------------------------------------------------------------


def open_message(
    signed: bytes,
    signature: bytes,
    cluster_id: bytes,
    recipient: str,
    recipient_box: BoxKeys,
    verifier: Verifier | None = None,
) -> Received:
    """Verify a delivered message's signed request bytes, check it is for us, and decrypt it."""
    raw = pb.Envelope(body=signed, signature=signature).SerializeToString()
    try:
        opened = open_request(raw, cluster_id, verifier or Ed25519Verifier())
    except WireError as exc:
        raise E2EError(f"message fails verification: {exc}") from None
    op = cpb.ChatOp()
    try:
        op.ParseFromString(opened.request.op)
    except (DecodeError, ValueError, RuntimeError):
        raise E2EError("signed request carries no chat operation") from None
    if op.WhichOneof("op") != "send":
        raise E2EError("signed request is not a Send")
    send = op.send
    me = normalize_name(recipient)
    if me is None or normalize_name(send.recipient) != me:
        raise E2EError("message is addressed to another account")
    if send.recipient_box_key != recipient_box.public:
        raise E2EError("message is encrypted to another box key")
    sender = normalize_name(send.sender)
    if sender is None:
        raise E2EError("invalid sender name")
    try:
        box = nacl.public.Box(
            nacl.public.PrivateKey(recipient_box.secret), nacl.public.PublicKey(send.sender_box_key)
        )
        plaintext = box.decrypt(send.ciphertext)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        raise E2EError("ciphertext does not decrypt") from None
    req = opened.request
    return Received(req.client_key, sender, me, plaintext, req.session, req.timestamp, send.sender_box_key)


def open_delivered(
    msg: cpb.ChatDelivered,
    cluster_id: bytes,
    recipient: str,
    recipient_box: BoxKeys,
    verifier: Verifier | None = None,
) -> Received:
    """``open_message`` for a ``ChatDelivered`` from a Fetch result."""
    return open_message(msg.signed, msg.signature, cluster_id, recipient, recipient_box, verifier)


# ---- plain operations ------------------------------------------------------------------------


def register_op(name: str, box_key: bytes) -> bytes:
    return cpb.ChatOp(register=cpb.ChatRegister(name=name, box_key=box_key)).SerializeToString()


def list_op(pattern: str = "*", limit: int = 0, after: str = "") -> bytes:
    return cpb.ChatOp(list=cpb.ChatList(pattern=pattern, limit=limit, after=after)).SerializeToString()


def fetch_op(account: str, after_id: int = 0, limit: int = 0) -> bytes:
    fetch = cpb.ChatFetch(account=account, after_id=after_id, limit=limit)
    return cpb.ChatOp(fetch=fetch).SerializeToString()


def ack_op(account: str, up_to_id: int) -> bytes:
    return cpb.ChatOp(ack=cpb.ChatAck(account=account, up_to_id=up_to_id)).SerializeToString()


def delete_op(account: str) -> bytes:
    return cpb.ChatOp(delete=cpb.ChatDelete(account=account)).SerializeToString()


def parse_result(data: bytes) -> cpb.ChatResult:
    """A reply's application result; ValueError if it does not parse."""
    result = cpb.ChatResult()
    try:
        result.ParseFromString(data)
    except (DecodeError, RuntimeError):
        raise ValueError("malformed chat result") from None
    return result
