"""The peer transport in one process: a real ``PeerListener`` and real ``PeerLink``s over mutual TLS
on loopback, with a recording inbox in place of the node.

Checks what the cluster tests only see indirectly: frames arrive as the exact messages sent and in
order; a link whose hello is refused says why on the connecting side and stays down; a link
reconnects after the listener restarts; a certificate from another CA never gets a nonce.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import pytest

from bft.core.config import ClusterInfo
from bft.crypto import Ed25519Signer, Ed25519Verifier, cluster_id_from
from bft.runtime import tls
from bft.runtime.handshake import link_hello
from bft.runtime.logs import LOGGER_NAME, EventLog
from bft.runtime.metrics import Metrics
from bft.runtime.peers import PeerLink, PeerListener

pytestmark = pytest.mark.timeout(60)

SIGNERS = [Ed25519Signer(bytes([i + 7]) * 32) for i in range(4)]
CID = cluster_id_from(b"peer transport test")


class Inbox:
    """Stands in for the node: records what the listener delivers."""

    def __init__(self, replica_id: int) -> None:
        self.id = replica_id
        self.cluster = ClusterInfo(tuple(s.public_key for s in SIGNERS), CID)
        self.stopping = False
        self.messages: list[bytes] = []
        self.arrived = asyncio.Event()

    def deliver_peer(self, messages: list[bytes], peer: int = -1) -> None:
        self.messages.extend(messages)
        self.arrived.set()

    def backlogged(self, peer: int | None = None) -> bool:
        return False

    async def drained(self, peer: int | None = None) -> None:
        return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tls")
    ca = tls.make_ca(d)
    for i in range(4):
        tls.write_cert_and_key(*tls.replica_cert_paths(d, i), *tls.make_replica_cert(ca, i, ["127.0.0.1"]))
    rogue = tls.make_ca(d / "rogue")
    tls.write_cert_and_key(d / "rogue.pem", d / "rogue.key", *tls.make_replica_cert(rogue, 1, ["127.0.0.1"]))
    return d


def _contexts(d: Path, i: int) -> tls.PeerTls:
    return tls.peer_contexts(d / tls.CA_CERT_FILE, *tls.replica_cert_paths(d, i))


def _link(d: Path, me: int, to: int, port: int, signer: Ed25519Signer | None = None) -> PeerLink:
    key = signer or SIGNERS[me]
    return PeerLink(
        to,
        "127.0.0.1",
        port,
        _contexts(d, me).client,
        lambda nonce: link_hello(key, CID, me, to, nonce),
        Metrics(me),
        EventLog(me),
        lambda: None,
    )


async def _listen(d: Path, me: int, port: int) -> tuple[PeerListener, Inbox]:
    inbox = Inbox(me)
    listener = PeerListener(inbox, Ed25519Verifier(), Metrics(me), EventLog(me), _contexts(d, me).server)
    await listener.start("127.0.0.1", port)
    return listener, inbox


async def _until(cond: object, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if cond():  # type: ignore[operator]
            return
        await asyncio.sleep(0.01)
    raise TimeoutError


def test_frames_carry_the_exact_messages_in_order_and_the_link_comes_back(certs: Path) -> None:
    async def scenario() -> tuple[list[bytes], list[bytes]]:
        port = _free_port()
        listener, inbox = await _listen(certs, 0, port)
        link = _link(certs, 1, 0, port)
        link.start()
        await _until(lambda: link.connected)
        sent = [b"m%d-" % i + bytes(range(256)) * (i % 5) for i in range(300)]
        for m in sent:
            link.enqueue(m)
        await _until(lambda: len(inbox.messages) == len(sent))
        first = list(inbox.messages)
        # The listener goes away and comes back on the same port: the link reconnects by itself.
        await listener.close()
        assert listener._server is not None
        await listener._server.wait_closed()
        await _until(lambda: not link.connected)
        listener, inbox = await _listen(certs, 0, port)
        await _until(lambda: link.connected)
        link.enqueue(b"after the restart")
        await _until(lambda: inbox.messages == [b"after the restart"])
        await link.close()
        await listener.close()
        return sent, first

    sent, first = asyncio.run(scenario())
    assert first == sent


def test_a_refused_hello_is_reported_by_the_connecting_side(
    certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Replica 1's link signs its hello with a key that is not replica 1's: replica 0 refuses, and
    replica 1's log says why (a configuration problem is visible where it is made)."""

    async def scenario() -> tuple[bool, list[bytes]]:
        port = _free_port()
        listener, inbox = await _listen(certs, 0, port)
        link = _link(certs, 1, 0, port, signer=Ed25519Signer.generate())
        link.enqueue(b"never delivered")
        link.start()
        await _until(lambda: "peer_refused_link" in caplog.text)
        connected = link.connected
        await link.close()
        await listener.close()
        return connected, inbox.messages

    with caplog.at_level(logging.DEBUG, logger=LOGGER_NAME):
        connected, delivered = asyncio.run(scenario())
    assert not connected and delivered == []
    line = next(r.getMessage() for r in caplog.records if "peer_refused_link" in r.getMessage())
    assert "bad signature on link hello from replica 1" in line, line
    assert "bad_peer_input" in caplog.text  # and the listening side counted it


def test_a_certificate_from_another_ca_gets_no_nonce(certs: Path) -> None:
    async def scenario() -> bool:
        port = _free_port()
        listener, inbox = await _listen(certs, 0, port)
        ctx = tls.peer_contexts(certs / tls.CA_CERT_FILE, certs / "rogue.pem", certs / "rogue.key").client
        got_nonce = False
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1"
            )
            got_nonce = bool(await asyncio.wait_for(reader.read(4), 5))
            writer.close()
        except (OSError, TimeoutError):
            pass  # refused in the handshake (TLS 1.3 may report it on the first read instead)
        await listener.close()
        assert inbox.messages == []
        return got_nonce

    assert asyncio.run(scenario()) is False


def test_connections_that_never_say_hello_are_capped_per_address() -> None:
    """Past MAX_PENDING_PER_ADDRESS connections from one address that have not finished the hello,
    the next is aborted without a nonce; another address still gets one."""
    from bft.runtime.peers import MAX_PENDING_PER_ADDRESS

    async def nonce_from(port: int, source: str) -> tuple[asyncio.StreamWriter, bool]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        try:
            got = await asyncio.wait_for(reader.read(4), 2)
        except (TimeoutError, ConnectionError):
            got = b""
        return writer, bool(got)

    async def scenario() -> tuple[list[bool], bool, bool]:
        port = _free_port()
        inbox = Inbox(0)
        listener = PeerListener(inbox, Ed25519Verifier(), Metrics(0), EventLog(0), None)
        await listener.start("127.0.0.1", port)
        held = [await nonce_from(port, "127.0.0.2") for _ in range(MAX_PENDING_PER_ADDRESS)]
        extra, extra_ok = await nonce_from(port, "127.0.0.2")
        other, other_ok = await nonce_from(port, "127.0.0.3")
        for w, _ in [*held, (extra, False), (other, False)]:
            w.close()
        await listener.close()
        return [ok for _, ok in held], extra_ok, other_ok

    held, extra, other = asyncio.run(scenario())
    assert all(held) and not extra and other
