"""Normal operation of real replica processes at n=7 over TLS: chat operations from concurrent
clients, live pushes, push authorisation, status, health, reflection and metrics."""

from __future__ import annotations

import asyncio
import importlib.util
import re
import urllib.request
from collections.abc import Iterator

import pytest
from cluster_helper import ChatUser, Cluster, RawSession, run
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from bft.crypto import Ed25519Signer
from bft.pb.bftchat.v1 import protocol_pb2 as pb
from bft.pb.bftchat.v1 import service_pb2 as spb
from bft.runtime.handshake import auth_proof
from client import e2e


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("basic"), 7) as c:
        c.start_all()
        c.wait_healthy()
        c.wait_agree(timeout=30)
        yield c


@pytest.mark.timeout(90)
def test_concurrent_clients_run_every_chat_operation(cluster: Cluster) -> None:
    async def scenario() -> None:
        users = [ChatUser(cluster, f"user{i}") for i in range(5)]
        for u in users:
            await u.__aenter__()
        try:
            regs = await asyncio.gather(*(u.register() for u in users))
            assert [r.registered.name for r in regs] == [f"user{i}" for i in range(5)]  # type: ignore[attr-defined]
            listed = await users[0].op(e2e.list_op("user*"), read_only=True)
            names = [a.name for a in listed.accounts.accounts]  # type: ignore[attr-defined]
            assert names == [f"user{i}" for i in range(5)]
            listed = await users[1].op(e2e.list_op("*3"), read_only=True)
            assert [a.name for a in listed.accounts.accounts] == ["user3"]  # type: ignore[attr-defined]

            async def send_round(i: int) -> list[int]:
                ids = []
                for j in range(5):
                    if j != i:
                        res = await users[i].send(users[j], b"hello %d from %d" % (j, i))
                        ids.append(res.sent.id)  # type: ignore[attr-defined]
                return ids

            sent = await asyncio.gather(*(send_round(i) for i in range(5)))
            all_ids = [m for ids in sent for m in ids]
            assert len(set(all_ids)) == 20
            for j, u in enumerate(users):
                inbox = await u.fetch_all()
                texts = sorted(t for _, t in inbox)
                assert texts == sorted(b"hello %d from %d" % (j, i) for i in range(5) if i != j)
            # Ack the first two messages of user0, delete user4 (and its inbox).
            inbox0 = await users[0].fetch_all()
            acked = await users[0].op(e2e.ack_op("user0", inbox0[1][0]))
            assert acked.acked.removed == 2 and acked.acked.remaining == 2  # type: ignore[attr-defined]
            assert len(await users[0].fetch_all()) == 2
            deleted = await users[4].op(e2e.delete_op("user4"))
            assert deleted.deleted.dropped == 4  # type: ignore[attr-defined]
            listed = await users[2].op(e2e.list_op("*"), read_only=True)
            assert [a.name for a in listed.accounts.accounts] == [f"user{i}" for i in range(4)]  # type: ignore[attr-defined]
            # A non-owner cannot act as another account: an app error, the same on every replica.
            reply = await users[1].client.request(e2e.fetch_op("user0"), read_only=True)
            assert e2e.parse_result(reply.result).error.code == e2e.cpb.ChatError.NOT_OWNER
        finally:
            for u in users:
                await u.__aexit__()

    run(scenario(), 80)
    agreed = cluster.wait_agree(timeout=20)
    assert agreed.last_executed > 0


@pytest.mark.timeout(60)
def test_live_push_reaches_the_subscribed_owner_only(cluster: Cluster) -> None:
    async def scenario() -> None:
        async with ChatUser(cluster, "pushee") as alice, ChatUser(cluster, "pusher") as bob:
            await alice.register()
            await bob.register()
            await alice.client.subscribe()
            # Mallory subscribes with her own key: she must not see Alice's pushes.
            mallory = cluster.client(Ed25519Signer.generate())
            await mallory.connect()
            try:
                await mallory.subscribe()
                sent = await bob.send(alice, b"ping")
                push = await asyncio.wait_for(alice.client.pushes.get(), 10)
                assert push.recipient == "pushee"
                assert push.recipient_key == alice.signer.public_key
                assert (push.message_id, push.seq) == (sent.sent.id, sent.sent.seq)  # type: ignore[attr-defined]
                await asyncio.sleep(0.5)
                assert mallory.pushes.empty()
            finally:
                await mallory.close()

    run(scenario(), 50)


@pytest.mark.timeout(30)
def test_nobody_else_can_subscribe_to_a_key(cluster: Cluster) -> None:
    alice = Ed25519Signer.generate()
    mallory = Ed25519Signer.generate()
    cid = cluster.cluster.cluster_id

    async def scenario() -> None:
        async with await RawSession.open(cluster, 2) as one, await RawSession.open(cluster, 2) as two:
            nonce, nonce2 = one.nonce, two.nonce
            # Alice's key, signed by Mallory.
            forged = spb.AuthProof(
                public_key=alice.public_key, signature=auth_proof(mallory, cid, 2, nonce).signature
            )
            # Alice's genuine proof, but for another session's nonce (replayed), or another replica.
            replayed = auth_proof(alice, cid, 2, nonce2)
            other_replica = auth_proof(alice, cid, 3, nonce)
            for proof in (forged, replayed, other_replica):
                await one.write(spb.ClientFrame(auth=proof).SerializeToString())
                got = await one.read()
                assert got.WhichOneof("kind") == "auth_error", got
                assert "does not verify" in got.auth_error
            # The genuine proof on its own session works.
            await two.write(spb.ClientFrame(auth=replayed).SerializeToString())
            assert (await two.read()).subscribed == alice.public_key

    run(scenario(), 20)


@pytest.mark.timeout(30)
def test_status_health_reflection_and_metrics(cluster: Cluster) -> None:
    statuses = cluster.statuses()
    for i, st in statuses.items():
        assert st is not None
        assert st.replica_id == i and st.cluster_id == cluster.cluster.cluster_id
        assert st.primary == st.view % 7 and st.peers_connected == 6 and st.log_bytes > 0
    assert all(cluster.healthy(i) for i in range(7))
    # Replicas run on uvloop when it is installed (a dependency on Linux): the event loop is named
    # in the "started" line.
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    assert all(f"loop={loop}" in cluster.log_file(i).read_text() for i in range(7))

    with cluster._channel(0) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        req = reflection_pb2.ServerReflectionRequest(list_services="")
        (resp,) = list(stub.ServerReflectionInfo(iter([req]), timeout=5))
        names = {s.name for s in resp.list_services_response.service}
        assert {"bftchat.v1.ClientService", "grpc.health.v1.Health"} <= names
        assert "bftchat.v1.ReplicaLink" not in names  # the peer service lives on the peer port only

    port = cluster.config.replicas[0].metrics_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for metric in (
        "bft_committed_requests_total",
        "bft_committed_batches_total",
        "bft_view ",
        "bft_view_changes_total",
        "bft_checkpoint_seq",
        "bft_log_bytes",
        "bft_fsync_seconds_bucket",
        "bft_verify_seconds_bucket",
        "bft_peers_connected 6.0",
        "bft_event_loop_lag_seconds_bucket",
        'bft_gc_pause_seconds_count{generation="2"}',
    ):
        assert metric in text, metric
    # The loop is probed every 50 ms from the start, and the restored heap is frozen out of GC.
    lag_count = re.search(r"^bft_event_loop_lag_seconds_count (\S+)$", text, re.M)
    assert lag_count is not None and float(lag_count.group(1)) > 0
    frozen = re.search(r"gc_frozen_objects=(\d+)", cluster.log_file(0).read_text())
    assert frozen is not None and int(frozen.group(1)) > 10_000


def _scrape(cluster: Cluster, i: int) -> str:
    port = cluster.config.replicas[i].metrics_port
    return str(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode())


def _sample(text: str, series: str) -> float:
    found = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    assert found is not None, series
    return float(found.group(1))


@pytest.mark.timeout(60)
def test_build_info_labelled_series_at_zero_and_request_latency(cluster: Cluster) -> None:
    from bft.runtime.metrics import BAD_INPUT_ENDPOINTS
    from bft.version import version

    text = _scrape(cluster, 1)
    assert _sample(text, f'bft_build_info{{version="{version()}"}}') == 1.0
    for peer in (0, 2, 3, 4, 5, 6):  # every peer's series exists before anything was dropped
        assert _sample(text, f'bft_peer_messages_dropped_total{{peer="{peer}"}}') >= 0
    assert 'peer="1"' not in text  # not itself
    for endpoint in BAD_INPUT_ENDPOINTS:
        assert _sample(text, f'bft_bad_input_total{{endpoint="{endpoint}"}}') >= 0

    def counts(kind: str) -> float:
        return sum(
            _sample(_scrape(cluster, i), f'bft_request_seconds_count{{kind="{kind}"}}') for i in range(7)
        )

    before = {kind: counts(kind) for kind in ("ordered", "read")}

    async def scenario() -> None:
        async with ChatUser(cluster, "latency") as user:
            await user.register()
            await user.op(e2e.list_op("*"), read_only=True)

    run(scenario(), 40)
    # One ordered and one read request, each timed by the replicas that took it from the client.
    assert counts("ordered") > before["ordered"]
    assert counts("read") > before["read"]


@pytest.mark.timeout(60)
def test_concurrent_reads_share_one_signed_root_per_burst_and_are_accepted(cluster: Cluster) -> None:
    """Reads that reach a replica in one burst are signed under one ReplyRoot (seq 0), each reply
    with its path; the real client accepts every one from 2f+1 matching replies. Before, every read
    reply had a root of its own, so no two reads' replies from one replica ever shared a signature."""

    async def scenario() -> list[list[pb.ClientReply]]:
        sessions = [cluster.client(Ed25519Signer.generate()) for _ in range(16)]
        for s in sessions:
            await s.connect()
        try:
            await asyncio.gather(*(s.request(e2e.list_op("nobody*"), read_only=True) for s in sessions))
            got = []
            for _ in range(3):  # every session at once: most reads reach a replica in the same burst
                accepted = await asyncio.gather(
                    *(s.request(e2e.list_op("nobody*"), read_only=True) for s in sessions)
                )
                for a in accepted:
                    assert a.seq == 0 and len(a.proof) >= cluster.cluster.quorums.read
                    assert not e2e.parse_result(a.result).accounts.accounts
                    got.append([pb.ClientReply.FromString(raw) for raw in a.proof])
            return got
        finally:
            for s in sessions:
                await s.close()

    proofs = run(scenario(), 50)
    assert isinstance(proofs, list)
    replies = [r for proof in proofs for r in proof]
    roots = {(r.root.signer, r.root.SerializeToString()) for r in replies}
    assert len(roots) < len(replies)  # some replica signed one root for several reads
    assert any(r.path for r in replies)
