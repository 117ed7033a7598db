"""Operations guards with a real replica process: ``--recover`` never wipes a live replica's data
dir, a captured admin command cannot be replayed after a restart, and the data dir is private."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_helper import Cluster

from bft.crypto import Ed25519Verifier
from bft.keys import load_admin_key, load_replica_key
from bft.pb.bftchat.v1 import admin_pb2 as apb
from bft.runtime.faultctl import parse_faults, send_fault, sign_command
from bft.storage.log import ReplicaLog


@pytest.fixture
def one(tmp_path: Path) -> Iterator[Cluster]:
    """Replica 0 of a 4-replica cluster, running alone (enough to test its own data dir)."""
    with Cluster(tmp_path, 4) as c:
        yield c


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.timeout(60)
def test_recover_refuses_a_live_data_dir_and_in_use_does_not_suggest_it(one: Cluster) -> None:
    c = one
    c.start(0)
    c.wait_healthy([0])
    segments = c.segments(0)
    identity = (c.data_dir(0) / "IDENTITY").read_bytes()
    assert segments
    for extra in (("--recover",), ()):
        r = c.run_once(0, *extra)
        assert r.returncode == 1, r.stderr
        assert "in use" in r.stderr and "--recover" not in r.stderr, r.stderr
        assert r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    # Nothing of the live replica was touched.
    assert c.segments(0) == segments and all(p.exists() for p in segments)
    assert (c.data_dir(0) / "IDENTITY").read_bytes() == identity
    assert not (c.data_dir(0) / "RECOVERING").exists()
    assert c.alive(0) and c.healthy(0)
    # Once stopped, --recover works as before.
    assert c.stop(0) == 0
    c.start(0, "--recover")
    c.wait_healthy([0])
    assert (c.data_dir(0) / "RECOVERING").exists()


@pytest.mark.timeout(60)
def test_admin_command_is_not_replayable_after_a_restart(one: Cluster) -> None:
    c = one
    admin = load_admin_key(c.dir / "admin.key")
    cmd = parse_faults(["slow", "1"])
    cmd.replica_id = 0
    cmd.timestamp_us = int(time.time() * 1_000_000)
    captured = sign_command(admin, c.cluster.cluster_id, cmd)

    def send(req: apb.AdminRequest) -> apb.AdminReply:
        return asyncio.run(send_fault(c.endpoint(0), c.ca_pem, req))

    c.start(0, "--allow-fault-injection")
    c.wait_healthy([0])
    first = send(captured)
    assert first.ok, first.message
    assert send(captured).message == "replayed or out-of-order command"
    assert c.stop(0) == 0
    c.start(0, "--allow-fault-injection")
    c.wait_healthy([0])
    again = send(captured)
    assert not again.ok and again.message == "replayed or out-of-order command", again.message
    status = c.status(0)
    assert status is not None and list(status.faults) == []
    guard = c.data_dir(0) / "ADMIN_LAST"
    assert guard.read_text().strip() == str(cmd.timestamp_us) and _mode(guard) == 0o600
    # A fresh command still works after the restart.
    cmd.timestamp_us = int(time.time() * 1_000_000)
    assert send(sign_command(admin, c.cluster.cluster_id, cmd)).ok
    # An unreadable guard refuses to start (starting from 0 would reopen every old command).
    assert c.stop(0) == 0
    guard.write_text("garbage\n")
    r = c.run_once(0, "--allow-fault-injection")
    assert r.returncode == 1 and "admin replay guard" in r.stderr, r.stderr


def test_data_dir_and_segments_are_private(tmp_path: Path) -> None:
    c = Cluster(tmp_path, 4)
    _, signer = load_replica_key(c.dir / "replica-0.key")
    old = os.umask(0o022)
    try:
        log = ReplicaLog(c.data_dir(0), 0, signer, c.cluster, Ed25519Verifier())
        _, report = log.load()
        log.close()
    finally:
        os.umask(old)
    data = c.data_dir(0)
    assert _mode(data) == 0o700 and _mode(data / "log") == 0o700
    files = [p for p in data.rglob("*") if p.is_file()]
    assert files and all(_mode(p) == 0o600 for p in files), {str(p): oct(_mode(p)) for p in files}
    assert not report.warnings
    # An existing looser data dir is tightened, with a warning that says so.
    data.chmod(0o755)
    (data / "log").chmod(0o755)
    log = ReplicaLog(data, 0, signer, c.cluster, Ed25519Verifier())
    _, report = log.load()
    log.close()
    assert _mode(data) == 0o700 and _mode(data / "log") == 0o700
    assert sum("tightened to 0700" in w for w in report.warnings) == 2, report.warnings


@pytest.mark.timeout(120)
def test_full_disk_stops_the_replica_cleanly(tmp_path: Path) -> None:
    """Replica 0's data dir on a 1 MiB tmpfs fills up under 60 KiB messages: it stops with one clear
    `fatal` line naming ENOSPC and exit code 1 (no traceback, no limping on); the others go on."""
    import shutil
    import subprocess

    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs")
    from cluster_helper import ChatUser, run

    with Cluster(tmp_path, 4) as c:
        data = c.data_dir(0)
        data.mkdir(mode=0o700)
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(data)],
            capture_output=True,
            text=True,
            check=False,
        )
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
        try:
            c.start_all()
            c.wait_healthy()

            async def fill() -> int:
                sent = 0
                async with ChatUser(c, "filler") as a, ChatUser(c, "sink") as b:
                    await a.register()
                    await b.register()
                    while c.alive(0) and sent < 60:
                        await a.send(b, os.urandom(60 * 1024))
                        sent += 1
                    await asyncio.sleep(1.0)
                    await a.send(b, b"after replica 0 stopped")  # the other three still commit
                return sent

            run(fill(), 100)
            deadline = time.monotonic() + 10
            while c.alive(0) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not c.alive(0), "replica 0 kept running on a full disk"
            code = c.procs[0].popen.returncode
            text = c.log_file(0).read_text(errors="replace")
            assert code == 1, (code, text[-2000:])
            assert "event=fatal" in text and "No space left on device" in text, text[-2000:]
            assert "Traceback" not in text
        finally:
            c.stop_all()
            subprocess.run(["umount", str(data)], check=False)


@pytest.mark.timeout(60)
def test_descriptor_limit_is_raised_and_client_connections_keep_a_reserve(one: Cluster) -> None:
    """Started with the common default (soft 1024, hard 4096), the replica raises its soft limit to
    the hard one and caps client connections below it, keeping 256 + 4n descriptors."""
    c = one
    c.start(0, nofile=(1024, 4096))
    c.wait_healthy([0])
    status = Path(f"/proc/{c.procs[0].popen.pid}/limits").read_text()
    line = next(ln for ln in status.splitlines() if ln.startswith("Max open files"))
    assert line.split()[3:5] == ["4096", "4096"], line
    log = c.log_file(0).read_text()
    assert "fd_limit=4096 max_client_connections=3824 " in log, log[-1500:]
