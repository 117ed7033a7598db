"""Hostile input on every endpoint of real replicas (n=4, TLS): the peer port and the client session.

Each bad input gets a clear error or is dropped; afterwards every replica is still running, none
logged an internal error, the cluster still commits, and nothing committed before is lost.
"""

from __future__ import annotations

import asyncio
import ssl
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import grpc.aio
import pytest
from cluster_helper import ChatUser, Cluster, RawSession, run

from bft.crypto import Ed25519Signer, Kind, cluster_id_from
from bft.keys import load_replica_key
from bft.pb.bftchat.v1 import protocol_pb2 as pb
from bft.pb.bftchat.v1 import service_pb2 as spb
from bft.runtime import tls
from bft.runtime.handshake import link_hello
from bft.runtime.peers import MAX_FRAME_WIRE, encode_frame, read_frame
from bft.runtime.server import MAX_CLIENT_FRAME
from bft.wire import MAX_REQUEST_BYTES, WireError, make_request, seal
from client import e2e
from client.session import STATUS_METHOD, channel

TARGET = 0  # the replica under attack


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("bad"), 4) as c:
        for i in range(c.n):  # both carriers of a client session are tested here
            c.start(i, "--grpc-sessions")
        c.wait_healthy()
        c.wait_agree(timeout=30)
        yield c
        c.assert_logs_clean()


@dataclass
class History:
    """Messages committed before the attacks (they must all survive them) and their recipient."""

    texts: list[bytes]
    witness: Ed25519Signer
    box: e2e.BoxKeys


@pytest.fixture(scope="module")
def history(cluster: Cluster) -> History:
    h = History([b"before-%d" % i for i in range(5)], Ed25519Signer.generate(), e2e.BoxKeys.generate())

    async def scenario() -> None:
        async with ChatUser(cluster, "keeper") as a, ChatUser(cluster, "witness", h.witness, h.box) as b:
            await a.register()
            await b.register()
            for t in h.texts:
                await a.send(b, t)

    run(scenario(), 60)
    return h


def _peer_tls(c: Cluster, cert_of: int | None) -> ssl.SSLContext:
    """A TLS client context trusting the cluster CA, presenting replica ``cert_of``'s certificate."""
    assert c.config.tls_ca is not None
    if cert_of is None:
        ctx = ssl.create_default_context(cafile=str(c.config.tls_ca))
        return ctx
    return tls.peer_contexts(c.config.tls_ca, *tls.replica_cert_paths(c.config.tls_ca.parent, cert_of)).client


class RawLink:
    """A hand-driven connection to a replica's peer port (frames as in bft/runtime/peers.py)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, c: Cluster, target: int, cert_of: int | None = 3, tls_on: bool = True) -> RawLink:
        port = c.config.replicas[target].peer_link_port
        ctx = _peer_tls(c, cert_of) if tls_on else None
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1" if ctx else None),
            10,
        )
        return cls(reader, writer)

    async def down(self) -> spb.LinkDown | None:
        """The next LinkDown, or None when the replica closed the connection."""
        try:
            raw = await asyncio.wait_for(read_frame(self.reader, MAX_FRAME_WIRE), 10)
        except (ConnectionError, ssl.SSLError, WireError):
            return None
        return None if raw is None else spb.LinkDown.FromString(raw)

    def send(self, payload: bytes) -> None:
        self.writer.write(encode_frame(payload))

    async def closed(self) -> bool:
        """True once the replica has closed the connection (within 10 s)."""
        try:
            while await asyncio.wait_for(self.reader.read(65536), 10):
                pass
        except (ConnectionError, ssl.SSLError):
            pass
        return True

    def close(self) -> None:
        self.writer.close()


@pytest.mark.timeout(30)
def test_peer_port_needs_a_cluster_certificate(cluster: Cluster) -> None:
    """TLS without a client certificate, and plaintext, never get as far as a nonce."""

    async def scenario() -> None:
        for cert_of, tls_on in ((None, True), (None, False)):
            try:
                link = await RawLink.open(cluster, TARGET, cert_of, tls_on)
            except (ConnectionError, ssl.SSLError):
                continue  # refused during the handshake: fine
            assert await link.down() is None, (cert_of, tls_on)
            link.close()

    run(scenario(), 25)


@pytest.mark.timeout(60)
def test_peer_hello_must_come_from_the_replica_it_names(cluster: Cluster) -> None:
    c = cluster
    cid = c.cluster.cluster_id
    _, key3 = load_replica_key(c.dir / "replica-3.key")
    _, key2 = load_replica_key(c.dir / "replica-2.key")
    stranger = Ed25519Signer.generate()

    def up(hello: spb.LinkHello) -> bytes:
        return spb.LinkUp(hello=hello).SerializeToString()

    cases: list[tuple[str, object, str]] = [
        ("signed by a stranger", lambda n: up(link_hello(stranger, cid, 3, TARGET, n)), "bad signature"),
        ("unknown replica", lambda n: up(link_hello(stranger, cid, 99, TARGET, n)), "unknown replica"),
        ("for another replica", lambda n: up(link_hello(key3, cid, 3, 1, n)), "addressed to replica 1"),
        ("replayed nonce", lambda n: up(link_hello(key3, cid, 3, TARGET, b"\0" * 32)), "another nonce"),
        (
            "other cluster",
            lambda n: up(link_hello(key3, cluster_id_from(b"x"), 3, TARGET, n)),
            "this cluster",
        ),
        ("no hello first", lambda n: spb.LinkUp(messages=[b"x"]).SerializeToString(), "start with a hello"),
        ("malformed", lambda n: b"\xff\xff\xff", "malformed LinkUp"),
        ("someone else's certificate", lambda n: up(link_hello(key2, cid, 2, TARGET, n)), "certificate"),
    ]

    async def scenario() -> None:
        for what, make, expected in cases:
            link = await RawLink.open(c, TARGET, cert_of=3)
            first = await link.down()
            assert first is not None and len(first.nonce) == 32
            link.send(make(first.nonce))  # type: ignore[operator]
            answer = await link.down()
            assert answer is not None and not answer.accepted, what
            assert expected in answer.error, (what, answer.error)
            assert await link.closed()
            link.close()
        # The real hello is accepted; a frame header announcing more than the limit ends the link.
        link = await RawLink.open(c, TARGET, cert_of=3)
        first = await link.down()
        assert first is not None
        link.send(up(link_hello(key3, cid, 3, TARGET, first.nonce)))
        answer = await link.down()
        assert answer is not None and answer.accepted and not answer.error
        link.writer.write(struct.pack(">I", MAX_FRAME_WIRE + 1) + b"x" * 100)
        assert await link.closed()
        link.close()

    run(scenario(), 50)
    text = c.log_file(TARGET).read_text(errors="replace")
    assert "bad_peer_input" in text and "over the" in text


@pytest.mark.timeout(60)
def test_garbage_from_an_authenticated_peer_is_dropped(cluster: Cluster, history: History) -> None:
    """A Byzantine replica 3 (its real certificate and key) sends junk on its link to replica 0."""
    c = cluster
    cid = c.cluster.cluster_id
    _, key3 = load_replica_key(c.dir / "replica-3.key")
    status = pb.Status(view=10**9, last_executed=10**9, stable_seq=10**9)
    valid = pb.PeerMessage(envelope=seal(key3, 3, Kind.STATUS, cid, status)).SerializeToString()
    forged = pb.PeerMessage(envelope=seal(key3, 1, Kind.STATUS, cid, status)).SerializeToString()
    unknown = pb.PeerMessage(
        envelope=seal(key3, 77, Kind.COMMIT, cid, pb.Commit(view=0, seq=1))
    ).SerializeToString()
    bad_sig = pb.PeerMessage(
        envelope=pb.Envelope(
            body=b"BFTC" + bytes([1, int(Kind.PREPARE)]) + cid + b"x", signer=3, signature=b"s" * 64
        )
    ).SerializeToString()
    junk = [b"", b"\x00", b"\xff" * 100, bytes(range(256)) * 40, forged, unknown, bad_sig, valid * 3]
    junk += [valid] * 200  # replays of one validly signed (lying) message
    junk += [pb.PeerMessage(request=b"\x01" * 1000).SerializeToString()] * 20

    async def scenario() -> None:
        link = await RawLink.open(c, TARGET, cert_of=3)
        first = await link.down()
        assert first is not None
        link.send(spb.LinkUp(hello=link_hello(key3, cid, 3, TARGET, first.nonce)).SerializeToString())
        answer = await link.down()
        assert answer is not None and answer.accepted
        for _ in range(5):
            link.send(spb.LinkUp(messages=junk).SerializeToString())
            link.send(b"\xff\xfe not a frame")  # a well-framed but malformed LinkUp: dropped, link stays up
        link.send(spb.LinkUp(messages=junk).SerializeToString())
        await link.writer.drain()
        await asyncio.sleep(0.5)
        # (Whether this link is still up says nothing: the real replica 3 reconnecting replaces it,
        # one inbound link per replica, newest wins. test_flood covers that rule.)
        link.close()
        async with ChatUser(c, "after-peer-junk") as u:
            await u.register()

    run(scenario(), 50)
    assert all(c.alive(i) and c.healthy(i) for i in range(c.n))
    c.wait_agree(timeout=30, same_view=False)


async def _outcome(call: grpc.aio.StreamStreamCall) -> tuple[grpc.StatusCode, str]:
    """How the server ended the call."""
    try:
        while await call.read() is not grpc.aio.EOF:
            pass
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return await call.code(), await call.details()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", ["framed", "grpc"])
def test_client_session_rejects_bad_input_clearly(cluster: Cluster, history: History, transport: str) -> None:
    c = cluster
    cid = c.cluster.cluster_id
    user = Ed25519Signer.generate()
    op = e2e.register_op("sessionuser", bytes(32))
    # TARGET is the primary: a first copy there is the normal route, so it replies only if it is a
    # designated replier of the request (docs/PROTOCOL.md): pick a session id for which it is.
    session = next(s for s in range(1, 10_000) if TARGET in c.cluster.quorums.repliers(user.public_key, s, 1))
    signed = make_request(user, cid, session, 1, op)
    env = pb.Envelope.FromString(signed)
    env.signature = bytes(64)
    wrong_sig = env.SerializeToString()
    other_cluster = make_request(user, cluster_id_from(b"elsewhere"), 1, 1, op)
    too_big = make_request(user, cid, 1, 2, b"x" * (MAX_REQUEST_BYTES + 100))
    assert len(too_big) + 16 < MAX_CLIENT_FRAME

    cases: list[tuple[bytes, str]] = [
        (b"\xff\xff\xff", "malformed ClientFrame"),
        (b"", "empty client frame"),
        (spb.ClientFrame(request=b"garbage").SerializeToString(), "malformed Envelope"),
        (spb.ClientFrame(request=wrong_sig).SerializeToString(), "bad client signature"),
        (spb.ClientFrame(request=other_cluster).SerializeToString(), "not a client request of this cluster"),
        (spb.ClientFrame(request=too_big).SerializeToString(), "exceeds"),
    ]

    if transport == "grpc":  # one registration per carrier
        op = e2e.register_op("sessionuser2", bytes(32))
        signed = make_request(user, cid, session, 1, op)

    async def scenario() -> None:
        async with await RawSession.open(c, TARGET, transport) as raw_session:
            for raw, expected in cases:
                await raw_session.write(raw)
                got = await raw_session.read()
                assert got.WhichOneof("kind") == "error", got
                assert expected in got.error.message, (expected, got.error.message)
            bad_auth = spb.AuthProof(public_key=b"short", signature=b"")
            await raw_session.write(spb.ClientFrame(auth=bad_auth).SerializeToString())
            assert (await raw_session.read()).WhichOneof("kind") == "auth_error"
            # The session is still usable: a good request gets its (signed) reply.
            await raw_session.write(spb.ClientFrame(request=signed).SerializeToString())
            got = await raw_session.read()
            assert got.WhichOneof("kind") == "reply"
            reply = pb.ClientReply.FromString(got.reply)
            assert e2e.parse_result(reply.result).registered.name.startswith("sessionuser")
            # Beyond the size limit: the session ends (gRPC: RESOURCE_EXHAUSTED), the replica stays.
            huge = spb.ClientFrame(request=bytes(MAX_CLIENT_FRAME)).SerializeToString()
            if transport == "grpc":
                await raw_session.write(huge)
                assert raw_session._call is not None
                code, _ = await asyncio.wait_for(_outcome(raw_session._call), 10)
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
            else:
                with pytest.raises((EOFError, ConnectionError)):
                    await raw_session.write(huge)
                    await raw_session.read()
        if transport == "framed":
            return
        ch = channel(c.endpoint(TARGET), c.ca_pem)
        async with ch:
            # Status ignores whatever it is sent.
            raw = await ch.unary_unary(STATUS_METHOD)(b"\xff\xff", timeout=5)
            assert spb.StatusReply.FromString(raw).replica_id == TARGET
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await ch.unary_unary("/bftchat.v1.ClientService/Nope")(b"", timeout=5)
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED

    run(scenario(), 50)
    assert all(c.alive(i) and c.healthy(i) for i in range(c.n))


@pytest.mark.timeout(60)
def test_replayed_requests_execute_once(cluster: Cluster, history: History) -> None:
    c = cluster

    async def scenario() -> None:
        async with ChatUser(c, "replayer") as a, ChatUser(c, "replayee") as b:
            await a.register()
            await b.register()
            first = await a.send(b, b"once")
            raw_first = a.client.last_raw
            await a.send(b, b"twice")
            # Replay both signed requests on fresh sessions to every replica: the latest gets the
            # cached reply again, the older one a stale-timestamp refusal; neither executes again.
            for i in range(c.n):
                async with await RawSession.open(c, i) as raw:
                    await raw.write(spb.ClientFrame(request=raw_first).SerializeToString())
                    await raw.write(spb.ClientFrame(request=a.client.last_raw).SerializeToString())
                    frames = {f.WhichOneof("kind"): f for f in [await raw.read(), await raw.read()]}
                    assert frames["error"].error.min_timestamp == a.client._timestamp + 1
                    reply = pb.ClientReply.FromString(frames["reply"].reply)
                    sent = e2e.parse_result(reply.result).sent
                    assert sent.id == first.sent.id + 1  # type: ignore[attr-defined]
            inbox = await b.fetch_all()
            assert [t for _, t in inbox] == [b"once", b"twice"]

    run(scenario(), 50)


@pytest.mark.timeout(60)
def test_nothing_was_lost(cluster: Cluster, history: History) -> None:
    c = cluster

    async def scenario() -> None:
        async with ChatUser(c, "witness", history.witness, history.box) as w:
            inbox = await w.fetch_all(read_only=False)
            assert [t for _, t in inbox] == history.texts

    run(scenario(), 30)
    c.wait_agree(timeout=30, same_view=False)
    assert all(c.alive(i) and c.healthy(i) for i in range(c.n))


@pytest.mark.timeout(30)
@pytest.mark.parametrize("transport", ["grpc"])  # TLS streams have no half-close (docs/PROTOCOL.md)
def test_half_closed_session_still_gets_its_reply(cluster: Cluster, history: History, transport: str) -> None:
    user = Ed25519Signer.generate()
    raw = make_request(user, cluster.cluster.cluster_id, 5, 1, e2e.list_op("*"), read_only=True)

    async def scenario() -> None:
        async with await RawSession.open(cluster, 1, transport) as session:
            await session.write(spb.ClientFrame(request=raw).SerializeToString())
            await session.done_writing()
            got = await session.read()
            assert got.WhichOneof("kind") == "reply"

    run(scenario(), 20)
