"""End-to-end encryption: what the recipient receives proves sender and recipient, and decrypts."""

from __future__ import annotations

import pytest
from chat_helpers import CLUSTER, VERIFIER, Driver, User

from bft.app.chat import ChatApp
from bft.crypto import HashSigner, HashVerifier
from bft.pb.bftchat.v1 import protocol_pb2 as pb
from bft.wire import make_request, open_request
from client import e2e


def delivered(text: bytes = b"hi bob") -> tuple[User, User, bytes, bytes]:
    """(alice, bob, signed, signature) of one message alice sent bob through the app."""
    d = Driver()
    alice, bob = User("alice"), User("bob")
    for u in (alice, bob):
        d.run(u.request(e2e.register_op(u.name, u.box.public)))
    d.run(alice.send(bob, text))
    msg = d.query(bob.request(e2e.fetch_op("bob"))).messages.messages[0]
    return alice, bob, msg.signed, msg.signature


def test_roundtrip_through_the_app() -> None:
    alice, bob, signed, sig = delivered(b"\x00binary \xff body")
    got = e2e.open_message(signed, sig, CLUSTER, "BOB", bob.box)
    assert got.plaintext == b"\x00binary \xff body"
    assert got.sender == "alice" and got.sender_key == alice.key and got.recipient == "bob"
    assert got.session == 1 and got.timestamp == alice.ts


def test_replicas_store_ciphertext_only() -> None:
    secret = b"the plaintext that replicas must never see"
    _alice, _bob, signed, _sig = delivered(secret)
    assert secret not in signed


def test_tampering_and_misdelivery_are_detected() -> None:
    alice, bob, signed, sig = delivered()
    with pytest.raises(e2e.E2EError, match="verification"):
        e2e.open_message(signed[:-1] + bytes([signed[-1] ^ 1]), sig, CLUSTER, "bob", bob.box)
    with pytest.raises(e2e.E2EError, match="verification"):
        e2e.open_message(signed, bytes(64), CLUSTER, "bob", bob.box)
    with pytest.raises(e2e.E2EError, match="verification"):
        e2e.open_message(signed, sig, b"other cluster id", "bob", bob.box)
    with pytest.raises(e2e.E2EError, match="another account"):
        e2e.open_message(signed, sig, CLUSTER, "carol", bob.box)
    with pytest.raises(e2e.E2EError, match="another box key"):
        e2e.open_message(signed, sig, CLUSTER, "bob", alice.box)
    # Right public key but the wrong secret (a key mix-up on the client) does not decrypt.
    wrong = e2e.BoxKeys(secret=alice.box.secret, public=bob.box.public)
    with pytest.raises(e2e.E2EError, match="decrypt"):
        e2e.open_message(signed, sig, CLUSTER, "bob", wrong)


def test_non_send_requests_are_refused() -> None:
    bob = User("bob")
    for op in (e2e.register_op("bob", bob.box.public), b"\xff\xff"):
        env = pb.Envelope()
        env.ParseFromString(make_request(bob.signer, CLUSTER, 1, 1, op))
        with pytest.raises(e2e.E2EError):
            e2e.open_message(env.body, env.signature, CLUSTER, "bob", bob.box)


def test_plaintext_limit_matches_app_limit() -> None:
    alice, bob = User("alice"), User("bob")
    op = e2e.encrypt_send_op("alice", alice.box, "bob", bob.box.public, bytes(e2e.MAX_PLAINTEXT))
    d = Driver(ChatApp())
    for u in (alice, bob):
        d.run(u.request(e2e.register_op(u.name, u.box.public)))
    assert d.run(alice.request(op)).WhichOneof("result") == "sent"
    with pytest.raises(ValueError):
        e2e.encrypt_send_op("alice", alice.box, "bob", bob.box.public, bytes(e2e.MAX_PLAINTEXT + 1))
    with pytest.raises(ValueError):
        e2e.encrypt_send_op("alice", alice.box, "bob", b"short", b"x")


def test_simulator_signers_work_too() -> None:
    """The core's simulator uses keyed-hash signatures; the same helpers accept its verifier."""
    registry = HashVerifier()
    signer = HashSigner(b"alice secret", registry)
    alice_box, bob_box = e2e.BoxKeys.generate(), e2e.BoxKeys.generate()
    raw = e2e.seal_message(signer, CLUSTER, 7, 3, "alice", alice_box, "bob", bob_box.public, b"sim")
    req = open_request(raw, CLUSTER, registry).request
    got = e2e.open_message(req.signed, req.signature, CLUSTER, "bob", bob_box, registry)
    assert (got.plaintext, got.sender_key, got.session, got.timestamp) == (b"sim", signer.public_key, 7, 3)
    with pytest.raises(e2e.E2EError):
        e2e.open_message(req.signed, req.signature, CLUSTER, "bob", bob_box, VERIFIER)
