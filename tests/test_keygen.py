"""bftchat-keygen: files and modes, refusal to clobber, --force, exit codes, and a subprocess run."""

from __future__ import annotations

import ipaddress
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from bft.clusterconf import load_config
from bft.keys import KeyFileError, load_admin_key, load_replica_key, load_user_key
from bft.tools.keygen import main

REPO = Path(__file__).resolve().parent.parent


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# ---- user --------------------------------------------------------------------------------------


def test_user_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "home" / "alice.key"  # the parent directory is created
    assert main(["user", "--out", str(out), "--name", "Alice"]) == 0
    assert mode(out) == 0o600
    key = load_user_key(out)
    assert key.name == "alice"
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if line.startswith("fingerprint: ")] == [
        f"fingerprint: {key.fingerprint()}"
    ]


def test_user_key_refuses_to_clobber(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "u.key"
    assert main(["user", "--out", str(out)]) == 0
    first = load_user_key(out).signer.seed
    capsys.readouterr()
    assert main(["user", "--out", str(out)]) == 1
    assert "already exists" in one_error_line(capsys.readouterr().err)
    assert load_user_key(out).signer.seed == first
    assert main(["user", "--out", str(out), "--force"]) == 0
    assert load_user_key(out).signer.seed != first
    assert mode(out) == 0o600


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["user"]) == 2  # --out missing
    assert main(["frobnicate"]) == 2
    assert main(["user", "--out", str(tmp_path / "x.key"), "--name", "9lives"]) == 2
    assert main(["cluster", "--dir", str(tmp_path / "c"), "--replicas", "5"]) == 2
    assert main(["cluster", "--dir", str(tmp_path / "c"), "--base-port", "65534"]) == 2
    assert main(["cluster", "--dir", str(tmp_path / "c"), "--base-port", "http"]) == 2
    assert main(["cluster", "--dir", str(tmp_path / "c"), "--hosts", "a,,b"]) == 2
    assert main(["cluster", "--dir", str(tmp_path / "c"), "--hosts", "a b"]) == 2
    c4 = ["cluster", "--dir", str(tmp_path / "c"), "--replicas", "4"]
    assert main([*c4, "--metrics-base-port", "7102"]) == 2  # collides with client ports
    assert main([*c4, "--peer-base-port", "7103"]) == 2
    assert main([*c4, "--metrics-base-port", "8101"]) == 2  # collides with the default peer ports
    assert main([*c4, "--base-port", "64600"]) == 2  # peer ports would pass 65535
    assert "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "c").exists() and not (tmp_path / "x.key").exists()
    assert main(["--help"]) == 0


def test_unwritable_location_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("")
    assert main(["user", "--out", str(tmp_path / "file" / "u.key")]) == 1
    assert "cannot create directory" in one_error_line(capsys.readouterr().err)


# ---- cluster -----------------------------------------------------------------------------------


def check_cluster(directory: Path, n: int) -> None:
    """Every file there with the right mode, and the config agrees with the keys and certificates."""
    cfg = load_config(directory / "config.toml")
    assert cfg.n == n and cfg.f == (n - 1) // 3
    assert mode(directory / "config.toml") == 0o644
    for r in cfg.replicas:
        key_file = directory / f"replica-{r.id}.key"
        assert mode(key_file) == 0o600
        rid, signer = load_replica_key(key_file)
        assert rid == r.id and signer.public_key == r.public_key
        assert mode(directory / "tls" / f"replica-{r.id}.key") == 0o600
        cert = x509.load_pem_x509_certificate((directory / "tls" / f"replica-{r.id}.pem").read_bytes())
        assert cfg.tls_ca is not None
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(cfg.tls_ca.read_bytes()))
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        try:
            assert ipaddress.ip_address(r.host) in san.get_values_for_type(x509.IPAddress)
        except ValueError:
            assert r.host in san.get_values_for_type(x509.DNSName)
    assert cfg.tls_ca == directory.absolute() / "tls" / "ca.pem"
    assert mode(directory / "tls" / "ca.key") == 0o600
    assert cfg.admin_public_key == load_admin_key(directory / "admin.key").public_key
    assert mode(directory / "admin.key") == 0o600


def test_cluster_default_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "cluster"
    assert main(["cluster", "--dir", str(directory)]) == 0
    check_cluster(directory, 7)
    cfg = load_config(directory / "config.toml")
    assert cfg.name == "local"
    assert [(r.host, r.port, r.peer_port) for r in cfg.replicas] == [
        ("127.0.0.1", 7100 + i, 8100 + i) for i in range(7)
    ]
    assert mode(directory) == 0o700
    out = capsys.readouterr().out
    assert cfg.cluster_id.hex() in out and "next steps:" in out


def test_cluster_refuses_to_clobber_then_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "c"
    assert main(["cluster", "--dir", str(directory), "--replicas", "7"]) == 0
    before = load_config(directory / "config.toml")
    seed0 = load_replica_key(directory / "replica-0.key")[1].seed
    capsys.readouterr()
    assert main(["cluster", "--dir", str(directory), "--replicas", "4"]) == 1
    assert "a cluster is already there" in one_error_line(capsys.readouterr().err)
    assert load_config(directory / "config.toml") == before
    assert load_replica_key(directory / "replica-0.key")[1].seed == seed0

    # --force replaces everything, and drops the keys of replicas the new cluster does not have.
    assert main(["cluster", "--dir", str(directory), "--replicas", "4", "--force"]) == 0
    check_cluster(directory, 4)
    after = load_config(directory / "config.toml")
    assert after.cluster_id != before.cluster_id
    assert load_replica_key(directory / "replica-0.key")[1].seed != seed0
    leftovers = sorted(p.name for p in directory.rglob("replica-*"))
    assert leftovers == sorted(
        [f"replica-{i}.key" for i in range(4)]
        + [f"replica-{i}.{ext}" for i in range(4) for ext in ("pem", "key")]
    )


def test_cluster_refuses_partial_leftovers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "c"
    directory.mkdir()
    (directory / "admin.key").write_text("old")
    assert main(["cluster", "--dir", str(directory), "--replicas", "4"]) == 1
    assert "admin.key' already exists" in one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in directory.iterdir()) == ["admin.key"]  # nothing half-written


def test_cluster_hosts_round_robin(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    directory = tmp_path / "multi"
    hosts = ["10.0.0.1", "node-b.example.com", "2001:db8::7"]
    args = ["cluster", "--dir", str(directory), "--hosts", ",".join(hosts), "--base-port", "8000"]
    assert main([*args, "--metrics-base-port", "9100", "--peer-base-port", "8500", "--name", "prod"]) == 0
    check_cluster(directory, 7)
    cfg = load_config(directory / "config.toml")
    assert cfg.name == "prod"
    assert [(r.host, r.port, r.peer_port, r.metrics_port) for r in cfg.replicas] == [
        (hosts[i % 3], 8000 + i, 8500 + i, 9100 + i) for i in range(7)
    ]
    out = capsys.readouterr().out
    assert "10.0.0.1 (replica 0, 3, 6): config.toml tls/ca.pem replica-{0,3,6}.key" in out


def test_loose_permissions_on_generated_keys_are_refused(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    assert main(["cluster", "--dir", str(directory), "--replicas", "4"]) == 0
    key = directory / "replica-2.key"
    os.chmod(key, 0o644)
    with pytest.raises(KeyFileError, match=r"permissions 0644 for '.*replica-2.key' are too open; chmod 600"):
        load_replica_key(key)


def test_subprocess(tmp_path: Path) -> None:
    """The module runs as a program; a user error is one line on stderr and status 1, no traceback."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable,
        "-m",
        "bft.tools.keygen",
        "cluster",
        "--dir",
        str(tmp_path / "c"),
        "--replicas",
        "4",
    ]
    ok = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "config.toml" in ok.stdout
    check_cluster(tmp_path / "c", 4)
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert again.returncode == 1
    assert one_error_line(again.stderr).startswith("error: ")
