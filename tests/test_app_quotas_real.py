"""The app's quotas come from the cluster config's [chat] table and hold on real replicas."""

from __future__ import annotations

from pathlib import Path

from cluster_helper import ChatUser, Cluster, run

from bft.pb.bftchat.v1 import chat_pb2 as cpb
from client import e2e


def test_config_chat_limits_reach_every_replica(tmp_path: Path) -> None:
    with Cluster(tmp_path, 4) as cluster:
        with cluster.config_path.open("a") as f:
            f.write("\n[chat]\nmax_inbox = 4\n")  # a lone sender may fill half: 2 messages
        cluster.start_all()
        cluster.wait_healthy()

        async def scenario() -> None:
            mallory, alice, bob = (ChatUser(cluster, name) for name in ("mallory", "alice", "bob"))
            async with mallory, alice, bob:
                for u in (mallory, alice, bob):
                    await u.register()
                for i in range(2):
                    await mallory.send(alice, b"spam %d" % i)
                op = e2e.encrypt_send_op("mallory", mallory.box, "alice", alice.box.public, b"more")
                reply = await mallory.client.request(op)
                result = e2e.parse_result(reply.result)
                assert result.WhichOneof("result") == "error"
                assert result.error.code == cpb.ChatError.QUOTA_EXCEEDED
                await bob.send(alice, b"still gets through")
                got = [text for _, text in await alice.fetch_all()]
                assert got == [b"spam 0", b"spam 1", b"still gets through"]

        run(scenario(), 60)
