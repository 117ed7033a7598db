"""``bftchat-cluster`` as a user runs it: a subprocess that creates the cluster, brings every replica
up, serves a chat round trip, stops all replicas on SIGTERM with exit status 0, and on a second run
over the same directory finds the data of the first.

The helpers (``Launcher``, ``round_trip``) are shared with tests/test_newcomer.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import pytest
from cluster_helper import free_range, run

from bft.clusterconf import load_config
from bft.crypto import Ed25519Signer
from client import e2e
from client.session import ClusterSession

REPO = Path(__file__).resolve().parent.parent
UP_TIMEOUT = 60.0


class Launcher:
    """One run of the launcher command, its output in a file, stopped by PID."""

    def __init__(self, cmd: Sequence[str], out: Path, cwd: Path = REPO, env: dict[str, str] | None = None):
        self.out = out
        self.popen = subprocess.Popen(
            list(cmd),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def text(self) -> str:
        return self.out.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = UP_TIMEOUT) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.text())
            if m:
                return m
            if self.popen.poll() is not None:
                raise AssertionError(f"launcher exited ({self.popen.returncode}):\n{self.text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} within {timeout}s:\n{self.text()}")
            time.sleep(0.1)

    def replica_pids(self) -> list[int]:
        return [int(p) for p in re.findall(r"started replica \d+ \(pid (\d+)\)", self.text())]

    def terminate(self, timeout: float = 30.0) -> int:
        os.kill(self.popen.pid, signal.SIGTERM)
        return self.popen.wait(timeout)

    def kill(self) -> None:
        """Cleanup after a failure: the launcher and whatever replicas it still has."""
        for pid in [self.popen.pid, *self.replica_pids()]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


class User:
    def __init__(self, name: str) -> None:
        self.name = name
        self.signer = Ed25519Signer.generate()
        self.box = e2e.BoxKeys.generate()

    def client(self, config_path: Path) -> ClusterSession:
        return ClusterSession.from_config(load_config(config_path), self.signer)


async def _op(client: ClusterSession, op: bytes, read_only: bool = False) -> object:
    reply = await client.request(op, read_only=read_only, timeout=30)
    assert reply.status == 0, reply
    result = e2e.parse_result(reply.result)
    assert result.WhichOneof("result") != "error", result
    return result


async def fetch_plaintexts(config_path: Path, user: User) -> list[bytes]:
    async with user.client(config_path) as c:
        res = await _op(c, e2e.fetch_op(user.name), read_only=True)
        cid = c.cluster.cluster_id
        return [e2e.open_delivered(m, cid, user.name, user.box).plaintext for m in res.messages.messages]  # type: ignore[attr-defined]


async def round_trip(config_path: Path, alice: User, bob: User, text: bytes) -> None:
    """Register both users (once), send ``text`` from alice to bob, and check bob can read it."""
    async with alice.client(config_path) as a, bob.client(config_path) as b:
        await asyncio.gather(a.wait_connected(timeout=20), b.wait_connected(timeout=20))
        for user, c in ((alice, a), (bob, b)):
            await _op(c, e2e.register_op(user.name, user.box.public))
        await _op(a, e2e.encrypt_send_op(alice.name, alice.box, bob.name, bob.box.public, text))
    assert text in await fetch_plaintexts(config_path, bob)


def launcher_ports(taken: set[int]) -> list[str]:
    """Free client, peer, metrics and session port ranges for a 4-replica launcher."""
    kinds = ("--base-port", "--peer-base-port", "--metrics-base-port", "--session-base-port")
    return [x for kind in kinds for x in (kind, str(free_range(4, taken)))]


def launcher_cmd(directory: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "bft.tools.cluster", "--dir", str(directory), *extra]


@pytest.mark.timeout(240)
def test_launcher_runs_stops_cleanly_and_keeps_data(tmp_path: Path) -> None:
    directory = tmp_path / "cluster"
    taken: set[int] = set()
    ports = launcher_ports(taken)
    first = Launcher(launcher_cmd(directory, "--replicas", "4", *ports), tmp_path / "run1.out")
    try:
        first.wait_for(r"all 4 replicas up")
        assert "created cluster" in first.text()
        pids = first.replica_pids()
        assert len(pids) == 4
        alice, bob = User("alice"), User("bob")
        run(round_trip(directory / "config.toml", alice, bob, b"kept across restarts"), timeout=90)
        first.wait_for(r"4/4 up · view \d+ · primary \d+ · committed seq [1-9]")
        # Metrics are on by default: a port per replica, in the table, serving Prometheus text.
        metrics_port = int(ports[ports.index("--metrics-base-port") + 1])
        first.wait_for(rf"Prometheus metrics: http://127.0.0.1:{metrics_port}/metrics")
        page = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port + 3}/metrics", timeout=10).read()
        assert b"bft_committed_requests_total" in page
        assert first.terminate() == 0, first.text()
    finally:
        first.kill()
    assert "stopped (clean" in first.text()
    assert all(gone(pid) for pid in pids), first.text()
    for i in range(4):
        log = (directory / "logs" / f"replica-{i}.log").read_text()
        assert log and "Traceback" not in log, log[-3000:]  # a clean stop logs no traceback

    # Same directory, no --replicas: the same keys and data come back.
    second = Launcher(launcher_cmd(directory), tmp_path / "run2.out")
    try:
        second.wait_for(r"all 4 replicas up")
        assert "created cluster" not in second.text()
        assert "initialised" not in second.text()
        assert run(fetch_plaintexts(directory / "config.toml", bob), timeout=60) == [b"kept across restarts"]
        assert second.terminate() == 0, second.text()
        assert all(gone(pid) for pid in second.replica_pids())
    finally:
        second.kill()


@pytest.mark.timeout(60)
def test_launcher_refuses_a_different_size_and_a_busy_port(tmp_path: Path) -> None:
    directory = tmp_path / "cluster"
    taken: set[int] = set()
    base = free_range(4, taken)
    ports = ["--base-port", str(base), "--peer-base-port", str(free_range(4, taken))]
    from bft.tools import cluster

    assert cluster.ensure_cluster(directory, 4, base_port=base).n == 4
    proc = subprocess.run(
        launcher_cmd(directory, "--replicas", "7", *ports),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2
    assert "holds a 4-replica cluster" in proc.stderr and "Traceback" not in proc.stderr

    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", base + 2))
        s.listen()
        proc = subprocess.run(
            launcher_cmd(directory), cwd=REPO, capture_output=True, text=True, timeout=30, check=False
        )
    assert proc.returncode == 2
    assert f"replica 2: 127.0.0.1:{base + 2} is already in use" in proc.stderr
    assert not (directory / "logs").exists()  # nothing was started


@pytest.mark.timeout(180)
def test_bench_smoke_json(tmp_path: Path) -> None:
    """bftchat-bench end to end at the smallest size: its own cluster (with a small preloaded state),
    two clients in two processes, the baseline, and the JSON fields the docs rely on."""
    proc = subprocess.run(
        [
            sys.executable, "-m", "bft.tools.bench", "--replicas", "4", "--clients", "2",
            "--processes", "2", "--seconds", "1", "--warmup", "0.5", "--size", "64", "--json",
            "--preload-accounts", "40", "--preload-messages", "10",
        ],
        cwd=REPO, capture_output=True, text=True, timeout=170, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    keys = ("throughput_ops", "p50_ms", "p99_ms", "baseline_ops", "cpu_per_op_ms", "floor_ops")
    assert "loop_lag_p999_ms" in row and "gc_pause_max_ms" in row  # None when /metrics was too slow
    for key in (*keys, "replica_rss_mb", "replica_peak_rss_mb"):
        assert isinstance(row[key], float), (key, row)
    assert row["throughput_ops"] > 0 and row["baseline_ops"] > 0 and row["replicas"] == 4
    assert row["preload_accounts"] == 40 and "preloaded 40 accounts and 10 messages" in proc.stderr
    assert "2 client processes" in proc.stderr and "crypto floor" in proc.stderr


@pytest.mark.timeout(180)
def test_bench_failover_reports_the_outage(tmp_path: Path) -> None:
    """--failover stop: the primary is frozen mid-window, the cluster changes view and goes on, and
    the row says how long nothing committed (the figure itself is measured, never asserted)."""
    proc = subprocess.run(
        [
            sys.executable, "-m", "bft.tools.bench", "--replicas", "4", "--clients", "4",
            "--seconds", "8", "--warmup", "0.5", "--size", "64", "--no-baseline", "--json",
            "--failover", "stop", "--failover-at", "2",
        ],
        cwd=REPO, capture_output=True, text=True, timeout=170, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    assert row["failover"] == "stop" and row["fault_at_s"] == 2.0
    assert 0 < row["outage_s"] < 6  # commits resumed inside the window
    assert row["view_after"] >= 1  # in a view whose primary is not the frozen one
    assert "SIGSTOP (frozen) of the primary" in proc.stderr


def test_outage_is_the_longest_gap_after_the_fault() -> None:
    from bft.tools.bench import outage

    assert outage([1.0, 10.1, 10.2, 12.0, 13.5], fault_time=10.0, end=14.0) == pytest.approx(1.8)
    assert outage([1.0, 2.0], fault_time=10.0, end=14.0) == pytest.approx(4.0)  # nothing after it
    assert outage([10.5, 13.9], fault_time=10.0, end=14.0) == pytest.approx(3.4)


@pytest.mark.timeout(120)
def test_launcher_passes_fault_injection_and_shows_faulty_replicas(tmp_path: Path) -> None:
    directory = tmp_path / "cluster"
    taken: set[int] = set()
    ports = launcher_ports(taken)
    fault_flag, json_logs = "--allow-fault-injection", ("--log-format", "json")
    cmd = launcher_cmd(directory, "--replicas", "4", fault_flag, *json_logs, *ports)
    launcher = Launcher(cmd, tmp_path / "run.out")
    try:
        launcher.wait_for(r"all 4 replicas up")
        fault = subprocess.run(
            [sys.executable, "-m", "bft.runtime.faultctl", "--config", str(directory / "config.toml"),
             "--replica", "2", "silent"],
            cwd=REPO, capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert fault.returncode == 0, fault.stdout + fault.stderr
        launcher.wait_for(r"faulty: 2 \(silent\)", timeout=30)
        assert launcher.terminate() == 0, launcher.text()
    finally:
        launcher.kill()
    for i in range(4):  # --log-format reached the replicas: every log line is a JSON object
        lines = (directory / "logs" / f"replica-{i}.log").read_text().splitlines()
        assert lines and all(isinstance(json.loads(line), dict) for line in lines), lines[:3]


@pytest.mark.timeout(180)
def test_launcher_restarts_a_failed_replica_and_one_on_request(tmp_path: Path) -> None:
    directory = tmp_path / "cluster"
    taken: set[int] = set()
    ports = launcher_ports(taken)
    cmd = launcher_cmd(directory, "--replicas", "4", *ports)
    launcher = Launcher(cmd, tmp_path / "run.out")
    try:
        launcher.wait_for(r"all 4 replicas up")
        first = launcher.replica_pids()
        os.kill(first[1], signal.SIGKILL)
        launcher.wait_for(r"restarting replica 1 in 1 s \(failure 1 in a row\)")
        again = int(launcher.wait_for(r"started replica 1 \(pid (\d+)\) again").group(1))
        assert again != first[1] and not gone(again)
        launcher.wait_for(r"4/4 up")

        asked = subprocess.run(
            launcher_cmd(directory, "--restart", "2"), capture_output=True, text=True, timeout=30
        )
        assert asked.returncode == 0, asked.stderr
        launcher.wait_for(r"restart of replica 2 requested: stopping it")
        launcher.wait_for(r"replica 2 stopped with status 0")
        new2 = int(launcher.wait_for(r"started replica 2 \(pid (\d+)\) again").group(1))
        assert gone(first[2]) and not gone(new2)
        bad = subprocess.run(launcher_cmd(directory, "--restart", "9"), capture_output=True, text=True)
        assert bad.returncode == 2 and "replicas 0..3" in bad.stderr
        alice, bob = User("alice"), User("bob")
        run(round_trip(directory / "config.toml", alice, bob, b"after restarts"), timeout=90)
        assert launcher.terminate() == 0, launcher.text()
    finally:
        launcher.kill()
    assert all(gone(pid) for pid in launcher.replica_pids())
    idle = subprocess.run(launcher_cmd(directory, "--restart", "0"), capture_output=True, text=True)
    assert idle.returncode == 2 and "no bftchat-cluster is running" in idle.stderr
