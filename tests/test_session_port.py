"""The session port (``bft.runtime.session_port``): client sessions as length-prefixed frames over
TLS, on real replica processes (n = 4, loopback; all with --grpc-sessions, so that both carriers
are served). Replica 0 runs with small limits so that each one is reached in seconds:
--max-client-connections 40 (20 for this port, 20 for gRPC) and --max-sessions-per-address 6
(both ports together). Floods come from 127.0.0.2 and up; the honest
client from 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import time
from collections.abc import Iterator
from typing import Any

import pytest
from cluster_helper import Cluster, run

from bft.framing import SESSION_ALPN, encode_frame, read_frame
from bft.pb.bftchat.v1 import service_pb2 as spb
from bft.runtime.metrics import Metrics
from bft.runtime.server import (
    MAX_CLIENT_FRAME,
    SESSION_QUEUE_BYTES,
    ClientSession,
    QueueBudget,
)
from bft.tools import attack
from client import e2e
from client.session import session_tls

TARGET = 0
CONNECTIONS = 40  # --max-client-connections: half of it for the session port
PER_ADDRESS = 6


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("sessions"), 4) as c:
        c.start(
            TARGET,
            "--max-client-connections",
            str(CONNECTIONS),
            "--max-sessions-per-address",
            str(PER_ADDRESS),
            "--grpc-sessions",
        )
        for i in range(1, c.n):
            c.start(i, "--grpc-sessions")
        c.wait_healthy()
        c.wait_agree(timeout=30)
        yield c
        c.assert_logs_clean()


def port(c: Cluster) -> int:
    p = c.config.replicas[TARGET].session_port
    assert p is not None
    return p


async def commit_one(c: Cluster, name: str) -> float:
    """Register ``name`` through a client on the session ports; the seconds it took."""
    async with c.client() as s:
        assert all(conn.session_endpoint for conn in s.conns)
        await s.wait_connected(timeout=20)
        t = time.perf_counter()
        reply = await s.request(e2e.register_op(name, e2e.BoxKeys.generate().public), timeout=20)
        assert e2e.parse_result(reply.result).WhichOneof("result") == "registered"
        return time.perf_counter() - t


async def open_session(
    c: Cluster, source: str, alpn: list[str] | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, spb.ServerFrame]:
    """A raw TLS connection to replica 0's session port and its first frame."""
    assert c.ca_pem is not None
    ctx = session_tls(c.ca_pem)
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port(c), ssl=ctx, server_hostname="127.0.0.1", local_addr=(source, 0)
    )
    raw = await asyncio.wait_for(read_frame(reader, 1 << 20), 10)
    assert raw is not None
    return reader, writer, spb.ServerFrame.FromString(raw)


def test_a_client_commits_and_receives_pushes_over_the_session_port(cluster: Cluster) -> None:
    """Requests, replies, claims and push subscriptions all work on the framed transport; the
    gRPC Session stream still works beside it."""
    c = cluster

    async def scenario() -> None:
        await commit_one(c, "framed1")
        box = e2e.BoxKeys.generate()
        async with c.client() as bob, c.client() as alice:
            await bob.wait_connected(timeout=20)
            await alice.wait_connected(timeout=20)
            await bob.request(e2e.register_op("bobf", box.public), timeout=20)
            alice_box = e2e.BoxKeys.generate()
            await alice.request(e2e.register_op("alicef", alice_box.public), timeout=20)
            await bob.subscribe(timeout=20)  # AuthProof on every framed stream
            op = e2e.encrypt_send_op("alicef", alice_box, "bobf", box.public, b"hello over frames")
            await alice.request(op, timeout=20)
            push = await asyncio.wait_for(bob.pushes.get(), 20)
            assert push.recipient == "bobf"
        async with c.client(transport="grpc") as g:
            assert all(conn.session_endpoint is None for conn in g.conns)
            await g.wait_connected(timeout=20)
            reply = await g.request(e2e.register_op("grpcf", box.public), timeout=20)
            assert e2e.parse_result(reply.result).WhichOneof("result") == "registered"

    run(scenario(), 90)


def test_bare_connections_past_the_cap_are_closed_at_accept(cluster: Cluster) -> None:
    """Connections are counted from accept, handshaking or not: past this port's share of
    --max-client-connections (20) a new one is closed at once, those within it after the 5 s
    handshake deadline; then honest clients get in again."""
    c = cluster
    socks = []
    closed_at: list[float] = []
    try:
        for i in range(CONNECTIONS):
            try:
                s = socket.create_connection(
                    ("127.0.0.1", port(c)), timeout=5, source_address=(f"127.0.0.{2 + i % 4}", 0)
                )
            except ConnectionResetError:  # refused at accept before connect() returned
                closed_at.append(0.0)
                continue
            s.settimeout(20)
            socks.append(s)
        time.sleep(0.5)
        start = time.monotonic()
        for s in socks:  # closed already: refused at accept
            s.settimeout(0.05)
            try:
                if s.recv(1) == b"":
                    closed_at.append(time.monotonic() - start)
                    s.close()
            except ConnectionResetError:
                closed_at.append(time.monotonic() - start)
                s.close()
            except TimeoutError:
                pass
        quick = len(closed_at)
        # Refused at accept: at least those past the port's 20 (more if earlier tests' sessions
        # still linger in their slots).
        assert quick >= CONNECTIONS // 2, closed_at
        for s in socks:  # the others: at the handshake deadline
            if s.fileno() == -1:
                continue
            s.settimeout(20)
            with contextlib.suppress(ConnectionResetError):
                assert s.recv(1) == b""  # closed by the replica (a timeout would raise)
            closed_at.append(time.monotonic() - start)
        assert max(closed_at) < 12, closed_at
    finally:
        for s in socks:
            s.close()
    assert run(commit_one(c, "afterbare"), 60)


def test_sessions_per_address_are_counted_across_both_ports(cluster: Cluster) -> None:
    """One address holds at most --max-sessions-per-address sessions, gRPC and framed together
    (3 over gRPC + 3 framed here): the next framed one gets ``refused`` with the reason, another
    address still gets in, and the slots come back when the sessions end."""
    c = cluster

    async def scenario() -> None:
        relay = await attack.Relay("127.0.0.6", "127.0.0.1", c.config.replicas[TARGET].port).start()
        ch = attack._channel(relay.endpoint, c.ca_pem)
        calls = [ch.stream_stream(attack.SESSION_METHOD)() for _ in range(PER_ADDRESS // 2)]
        held = []
        try:
            for call in calls:  # each gRPC session is up once its nonce arrived
                first = spb.ServerFrame.FromString(await asyncio.wait_for(call.read(), 10))
                assert first.WhichOneof("kind") == "nonce"
            for _ in range(PER_ADDRESS - len(calls)):
                _, w, first = await open_session(c, "127.0.0.6")
                assert first.WhichOneof("kind") == "nonce"
                held.append(w)
            reader, w, first = await open_session(c, "127.0.0.6")
            held.append(w)
            assert first.WhichOneof("kind") == "refused"
            assert "too many client sessions from this address" in first.refused
            assert await asyncio.wait_for(reader.read(1), 5) == b""  # and closed
            _, w, first = await open_session(c, "127.0.0.7")
            held.append(w)
            assert first.WhichOneof("kind") == "nonce"
        finally:
            for w in held:
                w.close()
            for call in calls:
                call.cancel()
            await ch.close(grace=None)
            await relay.close()
        deadline = time.monotonic() + 10
        while True:
            _, w, first = await open_session(c, "127.0.0.6")
            w.close()
            if first.WhichOneof("kind") == "nonce" or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert first.WhichOneof("kind") == "nonce"

    run(scenario(), 60)


def test_one_address_gets_a_quarter_of_the_port_counted_from_accept(cluster: Cluster) -> None:
    """Bare connections from one address past its share of the port (a quarter of it, at most
    --max-sessions-per-address: 5 here) are closed at accept; another address still connects."""
    c = cluster
    share = min(PER_ADDRESS, CONNECTIONS // 2 // 4)
    socks = []
    refused = 0
    for _ in range(share + 3):
        try:
            socks.append(
                socket.create_connection(("127.0.0.1", port(c)), timeout=5, source_address=("127.0.0.5", 0))
            )
        except ConnectionResetError:  # refused at accept before connect() returned
            refused += 1
    try:
        time.sleep(0.5)
        for s in socks:
            s.settimeout(0.05)
            try:
                refused += s.recv(1) == b""
            except ConnectionResetError:
                refused += 1
            except TimeoutError:
                pass
        assert refused == 3, refused
    finally:
        for s in socks:
            s.close()
    assert run(commit_one(c, "othersource"), 60)  # 127.0.0.1 was never refused


def test_a_refused_tls_client_that_never_says_goodbye_holds_no_descriptor(cluster: Cluster) -> None:
    """A client that completes the handshake, is refused (no protocol id here) and then neither
    reads nor closes: the replica aborts the connection after CLOSE_SECONDS instead of waiting
    for the client's TLS goodbye (30 s), so its descriptor goes with its slot."""
    c = cluster
    pid = c.procs[TARGET].popen.pid

    def fds() -> int:
        return len(os.listdir(f"/proc/{pid}/fd"))

    async def scenario() -> int:
        assert c.ca_pem is not None
        ctx = session_tls(c.ca_pem)
        ctx.set_alpn_protocols(["h2"])
        before = fds()
        held = []
        for i in range(12):  # from 12 addresses: each address's share of the port is 5 here
            _, w = await asyncio.open_connection(
                "127.0.0.1", port(c), ssl=ctx, server_hostname="127.0.0.1", local_addr=(f"127.0.1.{i}", 0)
            )
            w.transport.pause_reading()  # never reads (so never answers the TLS goodbye) ...
            held.append(w)  # ... and never closes until the end
        await asyncio.sleep(2.0)
        extra = fds() - before
        for w in held:
            w.transport.abort()
        return extra

    assert run(scenario(), 30) <= 3  # type: ignore[operator]


async def _refusing_session(why: str) -> tuple[Any, Any, list[int]]:
    """A session port that refuses every session with ``why``, and a client session against it
    (four replicas, all that port): (server, session, [sessions accepted])."""
    from bft.core.config import ClusterInfo
    from bft.crypto import Ed25519Signer
    from client.session import ClusterSession

    accepted = [0]

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted[0] += 1
        writer.write(encode_frame(spb.ServerFrame(refused=why).SerializeToString()))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    where = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    info = ClusterInfo(tuple(Ed25519Signer.generate().public_key for _ in range(4)), bytes(16))
    session = ClusterSession(info, [where] * 4, Ed25519Signer.generate(), session_endpoints=[where] * 4)
    await session.connect()
    return server, session, accepted


def test_a_refused_client_backs_off_instead_of_reconnecting_at_once() -> None:
    """A session port that refuses every session: the client's reconnections back off (0.05 s
    doubling to 1 s), they do not come ~25 times a second."""

    async def scenario() -> int:
        server, session, accepted = await _refusing_session("full")
        await asyncio.sleep(3.0)
        assert "refused the session: full" in session.conns[0].last_error
        await session.close()
        server.close()
        return accepted[0]

    accepted = run(scenario(), 30)
    assert accepted <= 4 * 10, accepted  # four streams; without the back-off ~70 each


def test_a_client_without_the_protocol_id_or_with_an_oversized_frame_is_ended(cluster: Cluster) -> None:
    """No ALPN (or another one): one ``refused`` frame naming the protocol, then closed. A frame
    over MAX_CLIENT_FRAME: closed before it is read. Garbage inside a frame: an error frame, and
    the session goes on. The replica stays up and honest clients commit."""
    c = cluster

    async def scenario() -> None:
        reader, w, first = await open_session(c, "127.0.0.8", alpn=["h2"])
        assert first.WhichOneof("kind") == "refused" and SESSION_ALPN in first.refused
        assert await asyncio.wait_for(reader.read(1), 5) == b""
        w.close()
        reader, w, first = await open_session(c, "127.0.0.8")
        assert first.WhichOneof("kind") == "nonce"
        w.write(encode_frame(b"\xff\xff\xff"))  # not a ClientFrame
        raw = await asyncio.wait_for(read_frame(reader, 1 << 20), 10)
        assert raw is not None and spb.ServerFrame.FromString(raw).WhichOneof("kind") == "error"
        w.write((MAX_CLIENT_FRAME + 1).to_bytes(4, "big"))  # a header announcing too much
        await w.drain()
        assert await asyncio.wait_for(reader.read(1), 5) == b""
        w.close()

    run(scenario(), 60)
    assert c.alive(TARGET)
    assert run(commit_one(c, "aftergarbage"), 60)


def test_a_plain_tcp_client_gets_no_session_from_a_tls_port(cluster: Cluster) -> None:
    """Frames without TLS on a TLS port: the handshake fails and the connection is closed."""
    c = cluster

    async def scenario() -> bytes:
        reader, w = await asyncio.open_connection("127.0.0.1", port(c), local_addr=("127.0.0.9", 0))
        w.write(encode_frame(spb.ClientFrame(request=b"x").SerializeToString()))
        try:
            return await asyncio.wait_for(reader.read(), 10)
        except ConnectionResetError:
            return b""
        finally:
            w.close()

    assert b"nonce" not in run(scenario(), 30)  # type: ignore[operator]
    assert c.alive(TARGET)


def test_a_write_in_progress_stays_counted_in_the_queue_budgets() -> None:
    """``take_all`` hands a transport everything queued at once; until ``written`` those bytes
    still count for the session and for all sessions, so a slow reader cannot hold a second queue's
    worth outside the bounds."""
    budget = QueueBudget()
    sess = ClientSession(Metrics(0), budget)
    frame = bytes(1024 * 1024)
    for _ in range(3):
        sess.send(frame)
    frames = sess.take_all()
    assert len(frames) == 3 and not sess.queue
    assert sess.queued == budget.total == 3 * len(frame)  # in flight, still counted
    for _ in range(8):
        sess.send(frame)  # the client is not reading: the queue keeps the bound with the write
    assert sess.queued <= SESSION_QUEUE_BYTES + len(frame) * 4
    sess.written()
    assert sess.queued == budget.total == sum(map(len, sess.queue))
    sess.take_all()
    sess.close()
    sess.written()  # a write that ends after the session closed gives nothing back twice
    assert budget.total == 0


def test_the_session_tls_context_demands_the_cluster_ca(cluster: Cluster) -> None:
    """A client that trusts another CA does not complete the handshake (no session, no nonce)."""
    c = cluster
    other = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    other.load_default_certs()
    other.set_alpn_protocols([SESSION_ALPN])

    async def scenario() -> str:
        try:
            await asyncio.open_connection("127.0.0.1", port(c), ssl=other, server_hostname="127.0.0.1")
        except ssl.SSLCertVerificationError as exc:
            return exc.verify_message
        return "connected"

    assert run(scenario(), 30) != "connected"


def test_a_replicas_refusal_text_is_shortened_and_printable() -> None:
    """A faulty replica's ``refused`` reason may be anything up to a 64 MiB frame: the client keeps
    a short, printable version of it (it ends up in the one-line "cluster unreachable" error), not
    terminal escapes or megabytes."""

    async def scenario() -> str:
        server, session, _ = await _refusing_session("\x1b[2J\x1b]0;owned\x07" + "x" * 100_000)
        deadline = time.monotonic() + 10
        while "refused" not in session.conns[0].last_error and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        text = session.conns[0].last_error
        await session.close()
        server.close()
        return text

    text = run(scenario(), 30)
    assert isinstance(text, str) and "refused the session" in text
    assert len(text) <= 300 and "\x1b" not in text and "\x07" not in text, repr(text[:80])
