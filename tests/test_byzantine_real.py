"""Lying replicas on real processes: `bftchat-fault` turns replicas Byzantine over gRPC, with the
admin key, and clients still never accept a wrong result while the honest replicas agree.

The behaviour matrix runs at n = 4 (f = 1); combinations including the primary at n = 7 (f = 2).
Also the honest limit: f+1 replicas down stop progress but not safety, and progress resumes.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_helper import REPO, ChatUser, Cluster, run

FAULT = "--allow-fault-injection"


def fault(c: Cluster, replica: int, *words: str, expect_ok: bool = True) -> str:
    """Run the real `bftchat-fault` tool; its one-line answer."""
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "bft.runtime.faultctl",
            "--config",
            str(c.config_path),
            "--replica",
            str(replica),
            *words,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        check=False,
    )
    assert (res.returncode == 0) == expect_ok, res.stdout + res.stderr
    return (res.stdout + res.stderr).strip()


def start_faulty_cluster(c: Cluster) -> None:
    for i in range(c.n):
        c.start(i, FAULT)
    c.wait_healthy(timeout=60)
    c.wait_agree(timeout=60)


async def exchange(c: Cluster, tag: str, count: int = 3) -> set[int]:
    """Two fresh users register and exchange messages; every accepted result must be the truth.
    Returns the replicas that sent alice a validly signed reply saying something else (liars)."""
    from bft.pb.bftchat.v1 import protocol_pb2 as pb

    liars: set[int] = set()
    async with ChatUser(c, f"a{tag}") as alice, ChatUser(c, f"b{tag}") as bob:
        seen = alice.client.on_reply

        def watch(replica: int, data: bytes) -> None:
            if b"(a lie)" in pb.ClientReply.FromString(data).result:
                liars.add(replica)
            seen(replica, data)

        alice.client.on_reply = watch  # type: ignore[method-assign]
        await alice.register()
        await bob.register()
        sent = [b"%s message %d" % (tag.encode(), k) for k in range(count)]
        for text in sent:
            await alice.send(bob, text, timeout=90)
        # f+1 matching replies decide; give the remaining replies a moment, to see who said what.
        for _ in range(40):
            if liars:
                break
            await asyncio.sleep(0.05)
        got = [t for _, t in await bob.fetch_all(read_only=False)]
        assert got == sent
    return liars


@pytest.fixture(scope="module")
def c4(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("byz4"), 4) as c:
        start_faulty_cluster(c)
        yield c


def test_fault_endpoint_refuses_without_the_flag_or_the_admin_key(tmp_path: Path, c4: Cluster) -> None:
    # Wrong admin key: refused by the replica.
    from bft.keys import generate_user_key, write_admin_key

    other = tmp_path / "other-admin.key"
    write_admin_key(other, generate_user_key().signer)
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "bft.runtime.faultctl",
            "--config",
            str(c4.config_path),
            "--replica",
            "1",
            "--admin-key",
            str(other),
            "silent",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
        check=False,
    )
    assert res.returncode == 1 and "bad admin signature" in res.stderr
    assert not c4.status(1).faults  # type: ignore[union-attr]


# Each behaviour on one replica of four, as (offset from the current primary, fault words).
MATRIX = [
    (0, ("equivocate",)),
    (0, ("silent",)),
    (1, ("wrong-digest",)),
    (2, ("forge",)),
    (3, ("lie-to-clients",)),
    (1, ("bad-checkpoint",)),
    (2, ("replay",)),
    (3, ("drop-to", "0", "drop-to", "1")),
    (1, ("slow", "300")),
    (0, ("no-relay",)),  # the primary withholds relayed votes: slots wait a tick, then backups vote directly
]


@pytest.mark.timeout(600)
def test_each_behaviour_at_n4(c4: Cluster) -> None:
    for k, (offset, words) in enumerate(MATRIX):
        # Offsets are from the current primary (views move between rounds): 0 = the primary.
        liar = (offset + c4.status(1).primary) % 4  # type: ignore[union-attr]
        answer = fault(c4, liar, *words)
        assert f"replica {liar}:" in answer
        assert c4.status(liar).faults  # type: ignore[union-attr]
        honest = [i for i in range(4) if i != liar]
        view_before = c4.status(honest[0]).view  # type: ignore[union-attr]
        try:
            # A liar is heard only on requests it is a designated replier of (f+1 in n): enough
            # requests that it is one at least once (all but 2^-13).
            lied = run(exchange(c4, f"m{k}", 12 if words[0] == "lie-to-clients" else 3), timeout=240)
            c4.wait_agree(honest, timeout=90, same_view=False)
        finally:
            fault(c4, liar, "heal")
        if words[0] == "lie-to-clients":
            assert lied == {liar}, "the liar's replies were seen and outvoted"
        if offset == 0 and words[0] in ("silent", "equivocate"):
            assert c4.status(honest[0]).view > view_before, "a lying primary is replaced"  # type: ignore[union-attr]
        c4.wait_agree(timeout=90, same_view=False)
        if words[0] == "equivocate":
            accused = {a for i in honest for a in c4.status(i).accused}  # type: ignore[union-attr]
            assert liar in accused, "equivocation must leave evidence naming the primary"
            assert accused <= {liar}, "nobody honest is accused"


@pytest.mark.timeout(300)
def test_crash_fault_exits_and_the_cluster_continues(c4: Cluster) -> None:
    fault(c4, 2, "crash")
    c4.procs[2].popen.wait(timeout=10)
    assert not c4.alive(2)
    run(exchange(c4, "crash"), timeout=120)
    c4.start(2, FAULT)
    c4.wait_healthy([2], timeout=30)
    c4.wait_agree(timeout=90, same_view=False)


@pytest.fixture(scope="module")
def c7(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("byz7"), 7) as c:
        start_faulty_cluster(c)
        yield c


COMBOS = [
    {0: ("equivocate",), 1: ("lie-to-clients",)},
    {0: ("silent",), 1: ("bad-new-view",)},
    {0: ("wrong-digest", "forge"), 4: ("bad-checkpoint", "replay")},
]


@pytest.mark.timeout(600)
def test_two_liars_including_the_primary_at_n7(c7: Cluster) -> None:
    for k, combo in enumerate(COMBOS):
        primary = c7.status(2).primary  # type: ignore[union-attr]
        # Re-aim the combination at whoever is primary now (views move between rounds).
        liars = {(i - 0 + primary) % 7: words for i, words in combo.items()}
        for liar, words in liars.items():
            fault(c7, liar, *words)
        honest = [i for i in range(7) if i not in liars]
        view_before = c7.status(honest[0]).view  # type: ignore[union-attr]
        try:
            lied = run(exchange(c7, f"c{k}"), timeout=300)
            if any("lie-to-clients" in w for w in liars.values()):
                assert lied == {i for i, w in liars.items() if "lie-to-clients" in w}
            if any("bad-new-view" in w for w in liars.values()):
                # The silent primary's successor sent a wrong NEW-VIEW: replaced in turn.
                assert c7.status(honest[0]).view >= view_before + 2  # type: ignore[union-attr]
            c7.wait_agree(honest, timeout=120, same_view=False)
        finally:
            for liar in liars:
                fault(c7, liar, "heal")
        c7.wait_agree(timeout=120, same_view=False)


@pytest.mark.timeout(300)
def test_f_plus_one_down_stops_progress_but_not_safety(c7: Cluster) -> None:
    down = [4, 5, 6]

    async def scenario() -> None:
        async with ChatUser(c7, "limit-a") as a, ChatUser(c7, "limit-b") as b:
            await a.register()
            await b.register()
            for i in down:
                c7.kill9(i)
            pending = asyncio.ensure_future(a.send(b, b"needs 2f+1", timeout=120))
            await asyncio.sleep(6)
            assert not pending.done(), "committed with only 2f replicas up"
            c7.start(down[0], FAULT)
            await pending
            assert [t for _, t in await b.fetch_all(read_only=False)] == [b"needs 2f+1"]

    run(scenario(), timeout=200)
    for i in down[1:]:
        c7.start(i, FAULT)
    c7.wait_healthy(timeout=30)
    c7.wait_agree(timeout=120, same_view=False)
