"""All signing and hashing in one place.

Every signed payload starts with a domain tag ``MAGIC | version | kind | cluster id`` so that a
signature made for one purpose (a PREPARE, a client request, a reply) can never be replayed as
another, nor in another cluster. Two signer families share one interface: Ed25519 (PyNaCl) for real
use, and a keyed-hash signer that keeps the deterministic simulator fast. The keyed-hash signer is
unforgeable *in the model*: each replica holds only its own secret; only the simulator's verifier
knows them all.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

import nacl.bindings
import nacl.exceptions
import nacl.signing

MAGIC = b"BFTC"
PROTOCOL_VERSION = 1
CLUSTER_ID_LEN = 16
TAG_LEN = len(MAGIC) + 2 + CLUSTER_ID_LEN
KEY_LEN = 32
SIG_LEN = 64


class Kind(IntEnum):
    """What a signature is for; the second-last byte of every domain tag."""

    REQUEST = 1
    PREPREPARE = 2
    PREPARE = 3
    COMMIT = 4
    CHECKPOINT = 5
    VIEW_CHANGE = 6
    NEW_VIEW = 7
    STATUS = 8
    REPLY = 9
    FETCH = 10
    LOG_RECORD = 11
    PUSH = 12
    ADMIN = 13
    AUTH = 14


def tag(kind: Kind, cluster_id: bytes) -> bytes:
    """The domain tag that prefixes every signed body."""
    if len(cluster_id) != CLUSTER_ID_LEN:
        raise ValueError("cluster id must be 16 bytes")
    return MAGIC + bytes((PROTOCOL_VERSION, int(kind))) + cluster_id


def split_tag(body: bytes, cluster_id: bytes) -> tuple[Kind, bytes] | None:
    """(kind, payload) if ``body`` starts with a valid tag of this cluster, else None."""
    if len(body) < TAG_LEN or body[:4] != MAGIC or body[4] != PROTOCOL_VERSION:
        return None
    if body[6:TAG_LEN] != cluster_id:
        return None
    try:
        kind = Kind(body[5])
    except ValueError:
        return None
    return kind, body[TAG_LEN:]


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def cluster_id_from(text: bytes) -> bytes:
    """A cluster id derived from a config's canonical description."""
    return hashlib.sha256(b"bftchat cluster id\0" + text).digest()[:CLUSTER_ID_LEN]


class Signer(Protocol):
    """Signs exact bytes with one private key."""

    @property
    def public_key(self) -> bytes: ...

    def sign(self, data: bytes) -> bytes: ...


class Verifier(Protocol):
    """Checks a signature over exact bytes for a public key."""

    def verify(self, public_key: bytes, data: bytes, signature: bytes) -> bool: ...


class Ed25519Signer:
    """Ed25519 via libsodium (PyNaCl): about 30 µs to sign on the reference machine."""

    def __init__(self, seed: bytes) -> None:
        self._key = nacl.signing.SigningKey(seed)
        self._public = bytes(self._key.verify_key)
        self._sk = bytes(self._key) + self._public

    @classmethod
    def generate(cls) -> Ed25519Signer:
        return cls(bytes(nacl.signing.SigningKey.generate()))

    @property
    def public_key(self) -> bytes:
        return self._public

    @property
    def seed(self) -> bytes:
        return bytes(self._key)

    def sign(self, data: bytes) -> bytes:
        return nacl.bindings.crypto_sign(data, self._sk)[:SIG_LEN]


class Ed25519Verifier:
    """Ed25519 verification (about 70 µs); libsodium rejects non-canonical signatures."""

    def verify(self, public_key: bytes, data: bytes, signature: bytes) -> bool:
        if len(public_key) != KEY_LEN or len(signature) != SIG_LEN:
            return False
        try:
            nacl.bindings.crypto_sign_open(signature + data, public_key)
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError):
            return False
        return True


class HashSigner:
    """Keyed-hash signer for the simulator: the 'public key' names a secret only the model knows."""

    def __init__(self, secret: bytes, registry: HashVerifier) -> None:
        self._secret = secret
        self._public = hashlib.blake2b(secret, digest_size=KEY_LEN, person=b"bftchat-pk").digest()
        registry.register(self._public, secret)

    @property
    def public_key(self) -> bytes:
        return self._public

    def sign(self, data: bytes) -> bytes:
        return hashlib.blake2b(data, key=self._secret, digest_size=SIG_LEN).digest()


class HashVerifier:
    """The simulator's oracle: knows every HashSigner's secret, so it can check their signatures."""

    def __init__(self) -> None:
        self._secrets: dict[bytes, bytes] = {}

    def register(self, public_key: bytes, secret: bytes) -> None:
        self._secrets[public_key] = secret

    def verify(self, public_key: bytes, data: bytes, signature: bytes) -> bool:
        secret = self._secrets.get(public_key)
        if secret is None or len(signature) != SIG_LEN:
            return False
        expected = hashlib.blake2b(data, key=secret, digest_size=SIG_LEN).digest()
        return hmac.compare_digest(expected, signature)


class AcceptAllVerifier:
    """Accepts everything. Used for the ``skip-signature-check`` mutation (proving the simulator notices
    forgeries) and for replaying a replica's own already-verified log on restart."""

    def verify(self, public_key: bytes, data: bytes, signature: bytes) -> bool:
        return True


@dataclass
class VerifyStats:
    verified: int = 0
    cache_hits: int = 0
    failures: int = 0


class CachingVerifier:
    """Verifies each (key, bytes, signature) once: certificates repeat envelopes already checked.

    The cache key is a hash of the whole triple (lengths included), never the signature alone, so a
    known-good signature cannot vouch for other bytes; and never the bytes themselves, which would
    make every verified message (up to a 128 KiB request) a retained copy. Bounded LRU of 32-byte
    keys, so bounded in bytes too.
    """

    def __init__(self, inner: Verifier, capacity: int = 65536) -> None:
        self._inner = inner
        self._cache: OrderedDict[bytes, None] = OrderedDict()
        self._capacity = capacity
        self.stats = VerifyStats()

    def __len__(self) -> int:
        return len(self._cache)

    def verify(self, public_key: bytes, data: bytes, signature: bytes) -> bool:
        h = hashlib.sha256(len(public_key).to_bytes(2, "big") + public_key)
        h.update(len(signature).to_bytes(2, "big") + signature)
        h.update(data)
        key = h.digest()
        if key in self._cache:
            self._cache.move_to_end(key)
            self.stats.cache_hits += 1
            return True
        if not self._inner.verify(public_key, data, signature):
            self.stats.failures += 1
            return False
        self.stats.verified += 1
        self._cache[key] = None
        if len(self._cache) > self._capacity:
            self._cache.popitem(last=False)
        return True
