"""Fault commands: only the admin key, only for the named replica, never replayed."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from bft.crypto import Ed25519Signer, Ed25519Verifier, cluster_id_from
from bft.pb.bftchat.v1 import admin_pb2 as apb
from bft.runtime.faultctl import FaultError, check_command, parse_faults, sign_command

CID = cluster_id_from(b"fault test")
ADMIN = Ed25519Signer.generate()


def _now() -> int:
    return int(time.time() * 1_000_000)


def _cmd(replica: int = 2, ts: int | None = None, *faults: str) -> apb.FaultCommand:
    cmd = parse_faults(list(faults) or ["equivocate"])
    cmd.replica_id = replica
    cmd.timestamp_us = ts if ts is not None else _now()
    return cmd


def test_parse_faults() -> None:
    cmd = parse_faults(["equivocate", "lie-to-clients", "drop-to", "3", "slow", "200"])
    assert list(cmd.behaviours) == ["equivocate", "lie-to-clients"]
    assert list(cmd.drop_to) == [3] and cmd.slow_ms == 200
    assert parse_faults(["heal"]).heal and parse_faults(["crash"]).crash
    for bad in (["drop-to"], ["slow", "x"], ["levitate"], [], ["heal", "silent"]):
        with pytest.raises(FaultError):
            parse_faults(bad)


def test_valid_command_is_accepted() -> None:
    cmd = _cmd()
    got = check_command(sign_command(ADMIN, CID, cmd), CID, ADMIN.public_key, Ed25519Verifier(), 2, 0, _now())
    assert list(got.behaviours) == ["equivocate"]


@pytest.mark.parametrize(
    "case",
    ["other-key", "other-replica", "replay", "stale", "other-cluster", "tampered", "no-admin-key"],
)
def test_bad_commands_are_refused(case: str) -> None:
    now = _now()
    signer, replica, last, cid, admin_key = ADMIN, 2, 0, CID, ADMIN.public_key
    cmd = _cmd(ts=now)
    if case == "other-key":
        signer = Ed25519Signer.generate()
    elif case == "other-replica":
        replica = 3
    elif case == "replay":
        last = now
    elif case == "stale":
        cmd.timestamp_us = now - 3600 * 1_000_000
    elif case == "other-cluster":
        cid = cluster_id_from(b"elsewhere")
    req = sign_command(signer, CID, cmd)
    if case == "tampered":
        req.body = req.body[:-1] + bytes([req.body[-1] ^ 1])
    with pytest.raises(FaultError):
        check_command(
            req, cid, None if case == "no-admin-key" else admin_key, Ed25519Verifier(), replica, last, now
        )


def test_no_silent_plaintext_without_tls_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A config without tls_ca needs --insecure, as for the chat client (nothing is sent)."""
    from cluster_helper import write_cluster

    from bft.clusterconf import dump_config, load_config
    from bft.runtime import faultctl

    cfg = load_config(write_cluster(tmp_path, 4))
    plain = tmp_path / "plain.toml"
    plain.write_text(dump_config(dataclasses.replace(cfg, tls_ca=None, path=plain)))
    code = faultctl.main(["--config", str(plain), "--replica", "1", "equivocate"])
    assert code == 1
    assert "has no tls_ca: pass --insecure" in capsys.readouterr().err


def test_operations_doc_lists_every_fault() -> None:
    """docs/OPERATIONS.md's fault list names every fault bftchat-fault accepts."""
    from bft.runtime.faultctl import ALL_FAULTS

    doc = (Path(__file__).resolve().parent.parent / "docs" / "OPERATIONS.md").read_text()
    listed = doc[doc.index("Behaviours: `equivocate`") : doc.index("`bftchat-fault --help` lists them all")]
    assert [f for f in ALL_FAULTS if f"`{f}" not in listed] == []
