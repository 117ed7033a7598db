"""Private key files on disk: the one place replicas, the admin tool and chat clients read and write them.

A key file is a small TOML document with a ``kind`` field (``user``, ``replica`` or ``admin``), a
format ``version`` and hex-encoded secrets, plus the matching public keys for the reader's benefit
(checked on load, so a damaged file is caught rather than silently yielding another identity).

Key files are created with ``O_CREAT | O_EXCL`` and mode 0600, so an existing key is never clobbered
by accident; ``force=True`` replaces one atomically (temp file + rename). Like OpenSSH, readers
refuse a file that group or others may access: a leaked replica key lets an attacker sign as that
replica, and a leaked user key lets it read the user's mail.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import stat
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import nacl.public
import tomli_w

from bft.crypto import KEY_LEN, Ed25519Signer

FORMAT_VERSION = 1
KIND_USER = "user"
KIND_REPLICA = "replica"
KIND_ADMIN = "admin"
_ARTICLE = {KIND_USER: "a", KIND_REPLICA: "a", KIND_ADMIN: "an"}
MAX_KEY_FILE_BYTES = 64 * 1024  # a key file is a few hundred bytes; refuse to slurp anything big


class KeyFileError(ValueError):
    """A key file that is missing, unreadable, too open, malformed, or would be overwritten."""


# ---- users -------------------------------------------------------------------------------------


def fingerprint_of(signing_public: bytes, box_public: bytes) -> str:
    """A short, human-comparable digest of a user's two public keys (compare it out of band).

    160 bits of SHA-256, base32 in eight groups of four: far beyond what it takes to find a second
    key pair with the same fingerprint, short enough to read over the phone.
    """
    digest = hashlib.sha256(b"bftchat user fingerprint v1\0" + signing_public + box_public).digest()
    text = base64.b32encode(digest[:20]).decode("ascii").rstrip("=").lower()
    return "-".join(text[i : i + 4] for i in range(0, len(text), 4))


@dataclass(frozen=True)
class UserKey:
    """A chat user's identity: an Ed25519 signing key and an X25519 (NaCl Box) key."""

    signer: Ed25519Signer
    box_private: nacl.public.PrivateKey
    name: str | None = None  # a label (e.g. the account name to use by default); not secret

    @property
    def signing_public(self) -> bytes:
        return self.signer.public_key

    @property
    def box_public(self) -> bytes:
        return bytes(self.box_private.public_key)

    @property
    def box_secret(self) -> bytes:
        return bytes(self.box_private)

    def fingerprint(self) -> str:
        return fingerprint_of(self.signing_public, self.box_public)


def generate_user_key(name: str | None = None) -> UserKey:
    return UserKey(Ed25519Signer.generate(), nacl.public.PrivateKey.generate(), name)


def write_user_key(path: str | Path, key: UserKey, force: bool = False) -> None:
    fields: dict[str, str | int] = {"kind": KIND_USER, "version": FORMAT_VERSION}
    if key.name is not None:
        fields["name"] = key.name
    fields |= {
        "signing_seed": key.signer.seed.hex(),
        "box_secret": key.box_secret.hex(),
        "signing_public": key.signing_public.hex(),
        "box_public": key.box_public.hex(),
        "fingerprint": key.fingerprint(),
    }
    write_secret_file(path, _render("bftchat user key", fields), force)


def load_user_key(path: str | Path) -> UserKey:
    doc = _KeyDoc.read(path, KIND_USER)
    doc.allow("name", "signing_seed", "box_secret", "signing_public", "box_public", "fingerprint")
    signer = Ed25519Signer(doc.key32("signing_seed"))
    box = nacl.public.PrivateKey(doc.key32("box_secret"))
    name = doc.optional_str("name")
    key = UserKey(signer, box, name)
    doc.check_public("signing_public", key.signing_public)
    doc.check_public("box_public", key.box_public)
    if "fingerprint" in doc.data and doc.data["fingerprint"] != key.fingerprint():
        doc.fail("fingerprint does not match the keys (file damaged or edited)")
    return key


# ---- replicas and the admin --------------------------------------------------------------------


def write_replica_key(path: str | Path, replica_id: int, signer: Ed25519Signer, force: bool = False) -> None:
    if replica_id < 0:
        raise KeyFileError(f"replica id must be >= 0, got {replica_id}")
    fields: dict[str, str | int] = {
        "kind": KIND_REPLICA,
        "version": FORMAT_VERSION,
        "replica_id": replica_id,
        "seed": signer.seed.hex(),
        "public_key": signer.public_key.hex(),
    }
    write_secret_file(path, _render(f"bftchat replica {replica_id} signing key", fields), force)


def load_replica_key(path: str | Path) -> tuple[int, Ed25519Signer]:
    doc = _KeyDoc.read(path, KIND_REPLICA)
    doc.allow("replica_id", "seed", "public_key")
    replica_id = doc.data.get("replica_id")
    if type(replica_id) is not int or replica_id < 0:
        doc.fail("replica_id must be an integer >= 0")
    signer = Ed25519Signer(doc.key32("seed"))
    doc.check_public("public_key", signer.public_key)
    return replica_id, signer


def write_admin_key(path: str | Path, signer: Ed25519Signer, force: bool = False) -> None:
    fields: dict[str, str | int] = {
        "kind": KIND_ADMIN,
        "version": FORMAT_VERSION,
        "seed": signer.seed.hex(),
        "public_key": signer.public_key.hex(),
    }
    write_secret_file(path, _render("bftchat cluster admin key (signs fault injection)", fields), force)


def load_admin_key(path: str | Path) -> Ed25519Signer:
    doc = _KeyDoc.read(path, KIND_ADMIN)
    doc.allow("seed", "public_key")
    signer = Ed25519Signer(doc.key32("seed"))
    doc.check_public("public_key", signer.public_key)
    return signer


# ---- secret files ------------------------------------------------------------------------------


def write_secret_file(path: str | Path, data: bytes, force: bool = False) -> None:
    """Create ``path`` with mode 0600; an existing file is an error unless ``force`` (atomic replace).

    Also used for TLS private keys. The mode is set on the open descriptor, so the secret is never
    readable by others, whatever the umask, not even for a moment.
    """
    path = Path(path)
    if force:
        _replace_file(path, data, 0o600)
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(f"'{path}' already exists; not overwriting it (--force replaces it)") from None
    except OSError as e:
        raise KeyFileError(f"cannot create '{path}': {e.strerror}") from None
    try:
        os.fchmod(fd, 0o600)
        _write_all(fd, data)
        os.fsync(fd)
    except OSError as e:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise KeyFileError(f"cannot write '{path}': {e.strerror}") from None
    os.close(fd)
    _fsync_dir(path.parent)


def write_public_file(path: str | Path, data: bytes, force: bool = False) -> None:
    """Write a shareable file (certificate, cluster config) with mode 0644, atomically (temp + rename).

    An existing file is an error unless ``force``.
    """
    path = Path(path)
    if not force and path.exists():
        raise KeyFileError(f"'{path}' already exists; not overwriting it (--force replaces it)")
    _replace_file(path, data, 0o644)


def read_secret_file(path: str | Path) -> bytes:
    """The bytes of a private file; refuses one that group or others can access (as OpenSSH does)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise KeyFileError(f"key file '{path}' does not exist") from None
    except OSError as e:
        raise KeyFileError(f"cannot open key file '{path}': {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"key file '{path}' is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if os.name == "posix" and mode & 0o077:
            raise KeyFileError(f"permissions {mode:04o} for '{path}' are too open; chmod 600 {path}")
        if st.st_size > MAX_KEY_FILE_BYTES:
            raise KeyFileError(f"key file '{path}' is too large ({st.st_size} bytes)")
        chunks = []
        while chunk := os.read(fd, MAX_KEY_FILE_BYTES + 1):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as e:
        raise KeyFileError(f"cannot read key file '{path}': {e.strerror}") from None
    finally:
        os.close(fd)


def _replace_file(path: Path, data: bytes, mode: int) -> None:
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise KeyFileError(f"cannot create a file next to '{path}': {e.strerror}") from None
    try:
        os.fchmod(fd, mode)  # mkstemp creates 0600, so a secret is never readable by others
        _write_all(fd, data)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except OSError as e:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise KeyFileError(f"cannot write '{path}': {e.strerror}") from None
    _fsync_dir(path.parent)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(directory: Path) -> None:
    """Make the new directory entry durable (best effort: not every platform can open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


# ---- format helpers ----------------------------------------------------------------------------


def _render(title: str, fields: dict[str, str | int]) -> bytes:
    """A flat TOML document under a one-line comment."""
    head = f"# {title}. SECRET: keep this file mode 0600 and never share or commit it.\n"
    return (head + tomli_w.dumps(fields)).encode("utf-8")


class _KeyDoc:
    """A parsed key file, with checks that name the file and the field in every error."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data

    @classmethod
    def read(cls, path: str | Path, kind: str) -> _KeyDoc:
        path = Path(path)
        raw = read_secret_file(path)
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise KeyFileError(f"key file '{path}' is malformed: {e}") from None
        doc = cls(path, data)
        found = data.get("kind")
        if found != kind:
            what = f"kind {found!r}" if isinstance(found, str) else "no kind (not a bftchat key file?)"
            doc.fail(f"expected {_ARTICLE[kind]} {kind} key, found {what}")
        if data.get("version") != FORMAT_VERSION:
            doc.fail(f"unsupported version {data.get('version')!r} (this build reads {FORMAT_VERSION})")
        return doc

    def fail(self, problem: str) -> NoReturn:
        raise KeyFileError(f"key file '{self.path}': {problem}")

    def allow(self, *keys: str) -> None:
        unknown = sorted(set(self.data) - {"kind", "version", *keys})
        if unknown:
            self.fail(f"unknown field {unknown[0]!r}")

    def key32(self, key: str) -> bytes:
        value = self.data.get(key)
        if value is None:
            self.fail(f"missing field {key!r}")
        if not isinstance(value, str):
            self.fail(f"{key} must be a hex string")
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            self.fail(f"{key} is not valid hex")
        if len(raw) != KEY_LEN:
            self.fail(f"{key} must be {KEY_LEN} bytes ({2 * KEY_LEN} hex digits), got {len(raw)}")
        return raw

    def optional_str(self, key: str) -> str | None:
        value = self.data.get(key)
        if value is not None and not isinstance(value, str):
            self.fail(f"{key} must be a string")
        return value

    def check_public(self, key: str, derived: bytes) -> None:
        """A stored public key, if present, must match the secret (catches a damaged or mixed-up file)."""
        if key in self.data and self.data[key] != derived.hex():
            self.fail(f"{key} does not match the secret key (file damaged or edited)")
