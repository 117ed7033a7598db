"""Floods against real replica processes (n = 4, TLS, loopback), each a few seconds and bounded in
count: the replica under attack stays up, its peak RSS (VmHWM) stays under a stated bound, and
honest clients keep committing during the flood. Floods come from 127.0.0.2 and up (bound source
addresses), honest clients from 127.0.0.1, so per-address limits are tested as they would be used.

Replica 0 (the target) runs with RLIMIT_NOFILE 1024 (soft and hard: the common default soft limit,
and nothing to raise it to), the limit a flood of ~1,000 idle connections used to exhaust.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cluster_helper import Cluster, run

from bft.keys import load_replica_key
from bft.pb.bftchat.v1 import service_pb2 as spb
from bft.runtime import tls
from bft.runtime.handshake import link_hello
from bft.runtime.peers import encode_frame, read_frame
from bft.tools import attack

TARGET = 0
NOFILE = 1024
MIB = 1024


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("flood"), 4) as c:
        c.start(TARGET, "--grpc-sessions", nofile=NOFILE)  # the gRPC session limits are tested here
        c.start_all(range(1, c.n))
        c.wait_healthy()
        c.wait_agree(timeout=30)
        yield c
        c.assert_logs_clean()


def pid(c: Cluster, i: int = TARGET) -> int:
    return c.procs[i].popen.pid


def target(c: Cluster, sources: tuple[str, ...] = attack.SOURCES[:4]) -> attack.Target:
    me = c.config.replicas[TARGET]
    return attack.Target(str(me.host), me.port, c.cluster.cluster_id, c.ca_pem, sources, c.client)


def peak_mib(c: Cluster) -> float:
    """Replica 0's peak RSS so far (VmHWM), printed for the record (pytest -s shows it)."""
    mem = attack.memory_kib(pid(c))
    assert mem is not None, f"replica {TARGET} is gone: {c.tail(TARGET)}"
    print(f"replica {TARGET}: RSS {mem[0] / MIB:.0f} MiB, peak {mem[1] / MIB:.0f} MiB")
    return mem[1] / MIB


async def under_load(c: Cluster, flood: object, min_sends: int = 1) -> tuple[object, int]:
    """Run ``flood`` (a coroutine) while honest clients send; (its result, honest sends during it)."""
    honest = attack.HonestLoad(c.client, clients=2)
    await honest.start()
    try:
        before = honest.sent
        result = await flood  # type: ignore[misc]
        during = honest.sent - before
    finally:
        await honest.stop()
    assert during >= min_sends, f"honest clients committed {during} sends during the flood"
    return result, during


def assert_up(c: Cluster) -> None:
    """Alive, and answering health checks again within 15 s (it may still be working off the
    flood's backlog on a loaded machine)."""
    assert c.alive(TARGET), c.tail(TARGET, 30)
    deadline = time.monotonic() + 15
    while not c.healthy(TARGET):
        assert c.alive(TARGET), c.tail(TARGET, 30)
        assert time.monotonic() < deadline, "replica 0 is up but not answering health checks"
        time.sleep(0.2)


@pytest.mark.timeout(90)
def test_idle_connections_do_not_exhaust_descriptors(cluster: Cluster) -> None:
    """1,200 bare TCP connections (no TLS, no bytes) against a 1024-descriptor replica while honest
    clients commit (a checkpoint every 16 requests opens a new log segment): the replica keeps
    descriptors for its log and peers, refuses the connections past its cap, and stays up."""
    c = cluster
    result, _during = run(under_load(c, attack.flood_connections(target(c), 5.0, count=1200), 40), 80)
    assert_up(c)
    counts = result.counts  # type: ignore[attr-defined]
    assert counts.get("opened", 0) >= 700, counts
    assert peak_mib(c) < 400
    # Afterwards a new client connects and commits.
    run(under_load(c, asyncio.sleep(1.0), 1), 40)
    assert "max_client_connections=" in c.log_file(TARGET).read_text()  # the cap, logged at start


@pytest.mark.timeout(90)
def test_metrics_endpoint_is_not_a_thread_per_connection(cluster: Cluster) -> None:
    c = cluster
    port = c.config.replicas[TARGET].metrics_port
    assert port

    def threads() -> int:
        text = Path(f"/proc/{pid(c)}/status").read_text()
        return int(next(ln.split()[1] for ln in text.splitlines() if ln.startswith("Threads:")))

    async def scenario() -> tuple[int, bytes]:
        conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(40)]  # idle
        await asyncio.sleep(0.5)
        during = threads()
        # Past 16 open connections, new ones are closed unanswered.
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET /metrics HTTP/1.0\r\n\r\n")
        try:
            refused = await asyncio.wait_for(r.read(), 5)
        except ConnectionResetError:  # closed with our request unread: the kernel sends RST
            refused = b""
        assert refused == b""
        for _, cw in conns:
            cw.close()
        await asyncio.sleep(0.5)
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"GET /metrics HTTP/1.0\r\n\r\n")
        body = await asyncio.wait_for(r.read(), 5)
        w.close()
        return during, body

    before = threads()
    during, body = run(scenario(), 30)
    assert during <= before + 2, (before, during)
    assert body.startswith(b"HTTP/1.0 200") and b"bft_committed_requests" in body


@pytest.mark.timeout(120)
def test_one_address_cannot_take_every_session_slot(cluster: Cluster) -> None:
    """One source address opens 1,300 session streams over 20 connections: it gets the
    per-address cap (1,024 by default) and no more; a client from another address still gets in."""
    c = cluster
    t = target(c, sources=("127.0.0.2",))
    flood = attack.flood_sessions(t, 10.0, per_connection=65, connections=20)
    result, _ = run(under_load(c, flood), 100)
    counts = result.counts  # type: ignore[attr-defined]
    attempts = counts.get("opened", 0) + counts.get("refused", 0)
    assert attempts > 1024, counts  # the cap was reached within the flood's time
    assert counts.get("opened", 0) <= 1024, counts
    assert counts.get("refused", 0) >= attempts - 1024, counts
    assert_up(c)
    assert peak_mib(c) < 600


@pytest.mark.timeout(120)
def test_slow_readers_cannot_pin_unbounded_replies(cluster: Cluster) -> None:
    """16 streams that never read, each asking for 40 one-megabyte Fetch pages (640 MiB of replies):
    the replica keeps at most a few MiB per session and a bounded total."""
    c = cluster
    base = peak_mib(c)
    result, _ = run(under_load(c, attack.flood_slow_readers(target(c), 5.0, streams=16, fetches=40)), 100)
    assert result.counts.get("fetches_sent") == 640, result.counts  # type: ignore[attr-defined]
    assert_up(c)
    grown = peak_mib(c) - base
    assert grown < 250, f"peak RSS grew {grown:.0f} MiB"


class FaultyLink:
    """A link to the target as replica 3 (its real key and certificate): a faulty replica."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, c: Cluster, source: str) -> FaultyLink:
        certs = c.config_path.parent / "tls"
        ctx = tls.peer_contexts(certs / tls.CA_CERT_FILE, *tls.replica_cert_paths(certs, 3)).client
        host = "127.0.0.1"
        port = c.config.replicas[TARGET].peer_link_port
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ctx, server_hostname=host, local_addr=(source, 0)
        )
        _, key3 = load_replica_key(c.dir / "replica-3.key")
        raw = await read_frame(reader, 1 << 16)
        assert raw is not None
        nonce = spb.LinkDown.FromString(raw).nonce
        hello = link_hello(key3, c.cluster.cluster_id, 3, TARGET, nonce)
        writer.write(encode_frame(spb.LinkUp(hello=hello).SerializeToString()))
        answer = await read_frame(reader, 1 << 16)
        assert answer is not None and spb.LinkDown.FromString(answer).accepted
        return cls(reader, writer)

    async def closed(self, timeout: float) -> bool:
        try:
            return await asyncio.wait_for(self.reader.read(1), timeout) == b""
        except (ConnectionError, ssl.SSLError):
            return True  # reset or torn down mid-record: closed all the same
        except TimeoutError:
            return False


@pytest.mark.timeout(120)
def test_a_faulty_replica_cannot_exhaust_an_honest_one(cluster: Cluster) -> None:
    """Replica 3's key opens six links to replica 0 and sends 8 MiB frames of ~2.8 million tiny
    messages each: only the newest link stays, each frame is refused after 8,192 messages without
    being queued, and replica 0 stays up, small, and committing."""
    c = cluster
    tiny = b"\x12\x01\x00" * (8 * 1024 * 1024 // 3)  # LinkUp.messages = [b"\x00"] * 2.8 M
    frame = encode_frame(tiny)

    async def flood() -> tuple[int, int]:
        links = []
        for k in range(6):
            links.append(await FaultyLink.open(c, attack.SOURCES[k % 4]))
        for _ in range(3):
            for link in links:
                if not link.writer.is_closing():
                    link.writer.write(frame)
            await asyncio.sleep(0.3)
        for link in links:
            with_timeout = asyncio.wait_for(link.writer.drain(), 5)
            with contextlib.suppress(TimeoutError, ConnectionError, ssl.SSLError):
                await with_timeout
        older = sum([await link.closed(10) for link in links[:-1]])  # a loaded machine is slow
        newest_open = not await links[-1].closed(0.5)
        for link in links:
            link.writer.close()
        return older, int(newest_open)

    (older_closed, _newest), _ = run(under_load(c, flood(), 1), 100)
    assert older_closed == 5, f"{older_closed} of the 5 older links were closed"
    assert_up(c)
    assert peak_mib(c) < 400
    c.wait_agree(timeout=30, same_view=False)


def test_session_limits_hold_against_grpc_directly(cluster: Cluster) -> None:
    """A stream refused for the per-address cap says why (RESOURCE_EXHAUSTED with a reason)."""
    c = cluster

    async def scenario() -> tuple[int, str]:
        relay = await attack.Relay("127.0.0.3", "127.0.0.1", c.config.replicas[TARGET].port).start()
        ch = attack._channel(relay.endpoint, c.ca_pem)
        calls = []
        try:
            for _ in range(1030):
                call = ch.stream_stream(attack.SESSION_METHOD)()
                calls.append(call)
            reasons = []
            for call in calls:
                try:
                    await asyncio.wait_for(call.read(), 10)
                except grpc.aio.AioRpcError as exc:
                    reasons.append(exc.details() or "")
            return len(reasons), reasons[0] if reasons else ""
        finally:
            for call in calls:
                call.cancel()
            await ch.close(grace=None)
            await relay.close()

    refused, reason = run(scenario(), 60)
    assert refused >= 1030 - 1024, refused
    assert "from this address" in reason, reason
    time.sleep(0.5)
    assert_up(c)


@pytest.mark.timeout(120)
def test_attack_tool_runs_a_flood_and_reports(cluster: Cluster) -> None:
    import subprocess
    import sys

    from bft.tools import keygen

    c = cluster
    key = c.dir / "attacker.key"
    if not key.exists():
        keygen.main(["user", "--out", str(key)])
    cmd = [sys.executable, "-m", "bft.tools.attack", "--config", str(c.config_path), "--key", str(key)]
    cmd += ["--seconds", "2", "--baseline-seconds", "1", "--honest-clients", "2", "connections"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=100, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "== flood connections" in out and "share this machine's CPUs" in out, out
    assert "honest sends/s:" in out and "during the flood" in out and "without it" in out, out
    rows = [ln.split() for ln in out.splitlines() if ln.strip()[:1].isdigit()]
    assert sorted(int(row[0]) for row in rows) == list(range(c.n)), out  # one row per replica
    assert all(row[1] == "yes" for row in rows), out
    assert "Traceback" not in r.stderr, r.stderr


def test_attack_tool_refuses_hosts_outside_loopback(tmp_path: Path) -> None:
    from bft.tools import keygen

    cfg, signers, admin = keygen.plan_cluster(
        tmp_path,
        name="far",
        replicas=4,
        hosts=["192.0.2.10"],
        base_port=7100,
        peer_base_port=8100,
        metrics_base_port=9100,
        params=None,
    )
    keygen.write_cluster(cfg, signers, admin, force=False)
    keygen.main(["user", "--out", str(tmp_path / "me.key")])
    args = ["--config", str(cfg.path), "--key", str(tmp_path / "me.key"), "--seconds", "1", "connections"]
    assert attack.main(args) == 2


@pytest.mark.timeout(60)
def test_a_connection_that_never_handshakes_is_closed_within_seconds(cluster: Cluster) -> None:
    """A bare TCP connection (no TLS ClientHello) is closed by the replica after its 5 s handshake
    deadline, not kept for 120 s."""
    import socket

    port = cluster.config.replicas[TARGET].port
    socks = []
    for _ in range(5):
        s = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=("127.0.0.4", 0))
        s.settimeout(15)
        socks.append(s)
    start = time.monotonic()
    try:
        for s in socks:
            assert s.recv(1) == b""  # closed by the replica (a timeout would raise)
    finally:
        for s in socks:
            s.close()
    assert time.monotonic() - start < 15
    assert_up(cluster)


@pytest.mark.timeout(60)
def test_keepalive_ping_floods_are_ended(cluster: Cluster) -> None:
    """A client pinging every 100 ms without data gets GOAWAY (too many pings) after 2 strikes."""
    c = cluster

    async def scenario() -> str:
        opts = [
            ("grpc.keepalive_time_ms", 100),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.use_local_subchannel_pool", 1),
        ]
        creds = grpc.ssl_channel_credentials(root_certificates=c.ca_pem)
        async with grpc.aio.secure_channel(c.endpoint(TARGET), creds, opts) as ch:
            call = ch.stream_stream(attack.SESSION_METHOD)()
            try:
                while True:
                    if await asyncio.wait_for(call.read(), 20) is grpc.aio.EOF:
                        return "eof"
            except grpc.aio.AioRpcError as exc:
                return f"{exc.code().name}: {exc.details()}"
            except TimeoutError:
                return "still open after 20 s"

    outcome = run(scenario(), 40)
    assert outcome.startswith("UNAVAILABLE"), outcome
    assert_up(c)
