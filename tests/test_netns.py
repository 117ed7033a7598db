"""Several machines: replicas spread over three "hosts" (network namespaces joined by veth pairs
and a bridge), addresses from a config made by keygen with --hosts. One host is cut off (link
down); clients keep working while 2f+1 replicas stay reachable; healed, its replicas catch up.

Traffic stays between namespaces this test creates (plus one veth into the test's own namespace,
so the test process can act as the client). Skips with the reason where namespaces are unavailable.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_helper import TEST_PARAMS, ChatUser, Cluster, run

from bft.clusterconf import load_config
from bft.tools import keygen

SUBNET = "10.251.77"  # only ever assigned inside namespaces this test creates
TAG = f"b{os.getpid() % 100000}"
SWITCH = f"{TAG}sw"
HOSTS = [f"{TAG}h{k}" for k in range(3)]
ADDRS = [f"{SUBNET}.{k + 1}" for k in range(3)]


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def _namespaces_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root for ip netns"
    if shutil.which("ip") is None:
        return "iproute2 (ip) not installed"
    probe = f"{TAG}probe"
    try:
        ip("netns", "add", probe)
        ip("netns", "del", probe)
    except (subprocess.CalledProcessError, OSError) as exc:
        return f"cannot create network namespaces here: {exc}"
    return None


@pytest.fixture(scope="module")
def network() -> Iterator[None]:
    reason = _namespaces_unavailable()
    if reason:
        pytest.skip(reason)
    created: list[str] = []
    try:
        ip("netns", "add", SWITCH)
        created.append(SWITCH)
        ip("-n", SWITCH, "link", "add", "br0", "type", "bridge")
        ip("-n", SWITCH, "link", "set", "br0", "up")
        for k, ns in enumerate(HOSTS):
            ip("netns", "add", ns)
            created.append(ns)
            ip(
                "link",
                "add",
                f"{TAG}v{k}",
                "netns",
                ns,
                "type",
                "veth",
                "peer",
                "name",
                f"s{k}",
                "netns",
                SWITCH,
            )
            ip("-n", ns, "addr", "add", f"{ADDRS[k]}/24", "dev", f"{TAG}v{k}")
            ip("-n", ns, "link", "set", f"{TAG}v{k}", "up")
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", SWITCH, "link", "set", f"s{k}", "master", "br0")
            ip("-n", SWITCH, "link", "set", f"s{k}", "up")
        # The test process's own port onto the bridge.
        ip("link", "add", f"{TAG}r", "type", "veth", "peer", "name", "sr", "netns", SWITCH)
        ip("addr", "add", f"{SUBNET}.254/24", "dev", f"{TAG}r")
        ip("link", "set", f"{TAG}r", "up")
        ip("-n", SWITCH, "link", "set", "sr", "master", "br0")
        ip("-n", SWITCH, "link", "set", "sr", "up")
        yield
    finally:
        subprocess.run(["ip", "link", "del", f"{TAG}r"], capture_output=True, check=False)
        for ns in reversed(created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


class NetnsCluster(Cluster):
    """A Cluster whose replica i runs in namespace HOSTS[i % 3], at the address keygen gave it."""

    def __init__(self, directory: Path, n: int = 7) -> None:
        cfg, signers, admin = keygen.plan_cluster(
            directory,
            name="netns",
            replicas=n,
            hosts=ADDRS,
            base_port=7100,
            peer_base_port=8100,
            metrics_base_port=None,
            params=TEST_PARAMS,
        )
        keygen.write_cluster(cfg, signers, admin, force=False)
        self.dir = directory
        self.n = n
        self.tls = True
        self.config_path = cfg.path
        self.config = load_config(cfg.path)
        self.cluster = self.config.info()
        assert self.config.tls_ca is not None
        self.ca_pem = self.config.tls_ca.read_bytes()
        self.procs = {}
        self._started_once = {}

    def host_of(self, i: int) -> int:
        return ADDRS.index(self.config.replicas[i].host)

    def command(self, i: int, *extra: str) -> list[str]:
        return ["ip", "netns", "exec", HOSTS[self.host_of(i)], *super().command(i, *extra)]


@pytest.mark.timeout(240)
def test_cut_off_host_then_heal(network: None, tmp_path: Path) -> None:
    with NetnsCluster(tmp_path) as c:
        c.start_all()
        c.wait_healthy(timeout=60)
        c.wait_agree(timeout=60)
        by_host = {h: [i for i in range(c.n) if c.host_of(i) == h] for h in range(3)}
        # The host holding f replicas and not the primary is the one to cut off.
        victim = next(h for h, ids in by_host.items() if len(ids) == c.cluster.quorums.f and 0 not in ids)

        async def scenario() -> None:
            async with ChatUser(c, "alice") as alice, ChatUser(c, "bob") as bob:
                await alice.register()
                await bob.register()
                await alice.send(bob, b"before the cut")
                ip("-n", HOSTS[victim], "link", "set", f"{TAG}v{victim}", "down")
                try:
                    assert all(c.status(i) is None for i in by_host[victim]), "the cut did not isolate"
                    for k in range(5):
                        await alice.send(bob, b"during the cut %d" % k, timeout=60)
                    texts = [t for _, t in await bob.fetch_all(read_only=False)]
                    assert texts == [b"before the cut"] + [b"during the cut %d" % k for k in range(5)]
                finally:
                    ip("-n", HOSTS[victim], "link", "set", f"{TAG}v{victim}", "up")

        run(scenario(), timeout=180)
        # Healed: the cut-off replicas catch up and every replica agrees on the same state.
        c.wait_agree(timeout=90, same_view=False)
