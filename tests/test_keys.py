"""Key files: round trips, 0600 and O_EXCL on write, OpenSSH-style refusal of loose permissions."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from bft.crypto import Ed25519Signer, Ed25519Verifier
from bft.keys import (
    KeyFileError,
    fingerprint_of,
    generate_user_key,
    load_admin_key,
    load_replica_key,
    load_user_key,
    read_secret_file,
    write_admin_key,
    write_public_file,
    write_replica_key,
    write_secret_file,
    write_user_key,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_user_key_round_trip(tmp_path: Path) -> None:
    key = generate_user_key("alice")
    path = tmp_path / "alice.key"
    write_user_key(path, key)
    assert mode(path) == 0o600
    loaded = load_user_key(path)
    assert loaded.signer.seed == key.signer.seed
    assert loaded.box_secret == key.box_secret
    assert loaded.box_public == key.box_public
    assert loaded.name == "alice"
    assert loaded.fingerprint() == key.fingerprint()
    sig = loaded.signer.sign(b"hello")
    assert Ed25519Verifier().verify(key.signing_public, b"hello", sig)


def test_user_key_without_name(tmp_path: Path) -> None:
    key = generate_user_key()
    write_user_key(tmp_path / "u.key", key)
    assert load_user_key(tmp_path / "u.key").name is None


def test_fingerprint_format_and_binding() -> None:
    key = generate_user_key()
    fp = key.fingerprint()
    assert re.fullmatch(r"([a-z2-7]{4}-){7}[a-z2-7]{4}", fp)
    assert fp == fingerprint_of(key.signing_public, key.box_public)
    # Each public key moves the fingerprint.
    other = generate_user_key()
    assert fingerprint_of(other.signing_public, key.box_public) != fp
    assert fingerprint_of(key.signing_public, other.box_public) != fp


def test_replica_and_admin_round_trip(tmp_path: Path) -> None:
    signer = Ed25519Signer.generate()
    write_replica_key(tmp_path / "r.key", 3, signer)
    rid, loaded = load_replica_key(tmp_path / "r.key")
    assert rid == 3 and loaded.public_key == signer.public_key
    admin = Ed25519Signer.generate()
    write_admin_key(tmp_path / "a.key", admin)
    assert load_admin_key(tmp_path / "a.key").seed == admin.seed
    assert mode(tmp_path / "r.key") == mode(tmp_path / "a.key") == 0o600


def test_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    path = tmp_path / "u.key"
    first = generate_user_key()
    write_user_key(path, first)
    with pytest.raises(KeyFileError, match="already exists"):
        write_user_key(path, generate_user_key())
    assert load_user_key(path).signer.seed == first.signer.seed
    second = generate_user_key()
    write_user_key(path, second, force=True)
    assert load_user_key(path).signer.seed == second.signer.seed
    assert mode(path) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["u.key"]  # no temp file left behind


def test_mode_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_secret_file(tmp_path / "a", b"x")
        write_secret_file(tmp_path / "a", b"y", force=True)
        write_public_file(tmp_path / "b", b"z")
    finally:
        os.umask(old)
    assert mode(tmp_path / "a") == 0o600
    assert mode(tmp_path / "b") == 0o644


@pytest.mark.parametrize("loose", [0o644, 0o640, 0o604, 0o660, 0o700])
def test_loose_permissions_are_refused(tmp_path: Path, loose: int) -> None:
    path = tmp_path / "u.key"
    write_user_key(path, generate_user_key())
    os.chmod(path, loose)
    if loose & 0o077:
        with pytest.raises(KeyFileError) as e:
            load_user_key(path)
        assert str(e.value) == f"permissions {loose:04o} for '{path}' are too open; chmod 600 {path}"
    else:
        load_user_key(path)  # 0700: only the owner, fine


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        load_replica_key(tmp_path / "nope.key")
    with pytest.raises(KeyFileError, match="not a regular file"):
        read_secret_file(tmp_path)
    with pytest.raises(KeyFileError, match="cannot create"):
        write_secret_file(tmp_path / "missing-dir" / "k", b"x")


def write_raw(path: Path, text: str) -> Path:
    write_secret_file(path, text.encode(), force=True)
    return path


def replica_text(**overrides: str) -> str:
    signer = Ed25519Signer(bytes(range(32)))
    fields = {
        "kind": '"replica"',
        "version": "1",
        "replica_id": "2",
        "seed": f'"{signer.seed.hex()}"',
        "public_key": f'"{signer.public_key.hex()}"',
    }
    fields.update(overrides)
    return "".join(f"{k} = {v}\n" for k, v in fields.items() if v)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("this is = not [toml", "malformed"),
        (replica_text(kind='"user"'), "expected a replica key, found kind 'user'"),
        (replica_text(kind=""), "no kind"),
        (replica_text(version="2"), "unsupported version 2"),
        (replica_text(replica_id='"2"'), "replica_id must be an integer"),
        (replica_text(replica_id="-1"), "replica_id must be an integer >= 0"),
        (replica_text(seed='"zz"'), "seed is not valid hex"),
        (replica_text(seed='"abcd"'), "seed must be 32 bytes"),
        (replica_text(seed=""), "missing field 'seed'"),
        (replica_text(public_key='"' + "00" * 32 + '"'), "public_key does not match"),
        (replica_text(extra='"x"'), "unknown field 'extra'"),
    ],
)
def test_malformed_files_give_clear_errors(tmp_path: Path, text: str, message: str) -> None:
    path = write_raw(tmp_path / "r.key", text)
    with pytest.raises(KeyFileError, match=re.escape(message)) as e:
        load_replica_key(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_damaged_user_file_is_caught(tmp_path: Path) -> None:
    path = tmp_path / "u.key"
    write_user_key(path, generate_user_key("bob"))
    text = path.read_text()
    other = generate_user_key()
    seed_line = next(line for line in text.splitlines() if line.startswith("box_secret"))
    write_raw(path, text.replace(seed_line, f'box_secret = "{other.box_secret.hex()}"'))
    with pytest.raises(KeyFileError, match="box_public does not match"):
        load_user_key(path)


def test_wrong_kind_for_each_loader(tmp_path: Path) -> None:
    write_admin_key(tmp_path / "a.key", Ed25519Signer.generate())
    with pytest.raises(KeyFileError, match="expected a user key, found kind 'admin'"):
        load_user_key(tmp_path / "a.key")
    with pytest.raises(KeyFileError, match="expected a replica key"):
        load_replica_key(tmp_path / "a.key")
    write_user_key(tmp_path / "u.key", generate_user_key())
    with pytest.raises(KeyFileError, match="expected an admin key"):
        load_admin_key(tmp_path / "u.key")


def test_name_with_quotes_round_trips(tmp_path: Path) -> None:
    from bft.keys import UserKey

    key = generate_user_key()
    odd = UserKey(key.signer, key.box_private, 'a "quoted"\\ name\t\x7f')
    write_user_key(tmp_path / "u.key", odd)
    assert load_user_key(tmp_path / "u.key").name == odd.name
