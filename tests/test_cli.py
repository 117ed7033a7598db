"""The ``bftchat`` CLI end to end: real replica processes (n=4, TLS), the CLI as subprocesses.

Two users register, exchange messages (also while one is offline), list with wildcards, delete an
account; a key file with loose permissions is refused; a key cannot act as another's account; an
unreachable cluster is named replica by replica. The library is exercised directly too: several
processes and a script sharing one key, and live delivery through the synchronous wrapper.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_helper import Cluster, write_cluster

from bft.keys import load_user_key, write_user_key
from bft.runtime import keygen
from client.chat import ChatClient, SyncChatClient
from client.errors import StaleTimestamp
from client.session import ClusterSession, wall_clock_us


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("cli"), 4) as c:
        c.start_all()
        c.wait_healthy()
        c.wait_agree(timeout=30)
        yield c


def cli(
    config: Path, key: Path, *args: str, stdin: str | None = None, timeout: float = 40
) -> subprocess.CompletedProcess[str]:
    """Run ``bftchat --config CONFIG --key KEY ARGS`` in the key's directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BFTCHAT_")}
    cmd = [sys.executable, "-m", "client.cli", "--config", str(config), "--key", str(key), *args]
    return subprocess.run(
        cmd,
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        cwd=key.parent,
        env=env,
        timeout=timeout,
        check=False,
    )


def ok(proc: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    """The JSON objects a successful --json run printed (nothing for a text-mode run)."""
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    assert "--json" in proc.args or proc.stdout.strip(), proc  # text mode: something for people
    return [json.loads(line) for line in proc.stdout.splitlines()] if "--json" in proc.args else []


def failed(proc: subprocess.CompletedProcess[str], code: int, text: str) -> str:
    """Assert a one-line error naming ``text``, with no traceback; return the line."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert text in lines[0], lines[0]
    return lines[0]


def new_key(directory: Path, name: str) -> Path:
    """``bftchat-keygen user --out DIR/NAME.key`` (in-process: same code, no startup cost)."""
    directory.mkdir(exist_ok=True)
    path = directory / f"{name}.key"
    assert keygen.main(["user", "--out", str(path)]) == 0
    return path


@pytest.mark.timeout(110)
def test_register_exchange_list_and_delete(cluster: Cluster, tmp_path: Path) -> None:
    cfg = cluster.config_path
    alice, bob, alfred = (new_key(tmp_path, n) for n in ("alice", "bob", "alfred"))

    assert ok(cli(cfg, alice, "--json", "register", "Alice"))[0]["registered"] == "alice"
    assert load_user_key(alice).name == "alice"  # the key file now says who "I" am
    ok(cli(cfg, bob, "register", "bob"))
    ok(cli(cfg, alfred, "register", "alfred", "--json"))  # global options after the command too
    failed(cli(cfg, alfred, "register", "bob"), 1, "name 'bob' is taken")
    assert ok(cli(cfg, alice, "--json", "register", "alice"))[0]["registered"] == "alice"  # ours: fine

    # Wildcards.
    assert [a["name"] for a in ok(cli(cfg, bob, "--json", "list", "al*"))] == ["alfred", "alice"]
    assert [a["name"] for a in ok(cli(cfg, bob, "--json", "list", "?ob"))] == ["bob"]
    listed = cli(cfg, bob, "list", "*i*")
    assert [line.split()[0] for line in listed.stdout.splitlines()] == ["alice"]

    # Bob is offline (no process of his runs) while Alice sends; then he fetches.
    first = ok(cli(cfg, alice, "--json", "send", "bob", "hello bob"))[0]
    assert first["to"] == "bob"
    ok(cli(cfg, alice, "--json", "send", "bob", "-", stdin="line one\nline two\n"))
    failed(cli(cfg, alice, "send", "nobody", "hi"), 1, "no such user: 'nobody'")
    inbox = ok(cli(cfg, bob, "--json", "inbox"))
    assert [(m["from"], m["text"]) for m in inbox] == [
        ("alice", "hello bob"),
        ("alice", "line one\nline two"),
    ]
    assert inbox[0]["id"] == first["id"] and inbox[0]["id"] < inbox[1]["id"]
    assert ok(cli(cfg, bob, "--json", "inbox")) == []  # acknowledged: not delivered twice
    text_inbox = cli(cfg, bob, "inbox")
    assert text_inbox.stdout == "" and "no new messages" in text_inbox.stderr

    ok(cli(cfg, bob, "send", "alice", "hi alice"))
    got = cli(cfg, alice, "inbox")
    assert got.returncode == 0 and "bob: hi alice" in got.stdout

    # Each side's local history holds both directions, in order.
    hist = ok(cli(cfg, bob, "--json", "history", "alice"))
    assert [(h["from"], h["text"]) for h in hist] == [
        ("alice", "hello bob"),
        ("alice", "line one\nline two"),
        ("bob", "hi alice"),
    ]
    assert (tmp_path / "bob.key.history.sqlite").stat().st_mode & 0o777 == 0o600
    assert "alice: hello bob" in cli(cfg, alice, "history", "bob").stdout

    # Delete: asks first; then the name is gone and sends to it fail.
    failed(cli(cfg, alfred, "delete-account", stdin="n\n"), 1, "not deleted")
    ok(cli(cfg, alice, "send", "alfred", "you there?"))
    gone = ok(cli(cfg, alfred, "--json", "delete-account", "--yes"))[0]
    assert gone == {"deleted": "alfred", "dropped": 1}
    assert load_user_key(alfred).name is None
    assert [a["name"] for a in ok(cli(cfg, bob, "--json", "list", "al*"))] == ["alice"]
    failed(cli(cfg, alice, "send", "alfred", "hello?"), 1, "no such user: 'alfred'")
    failed(cli(cfg, alfred, "inbox"), 1, "no account")


@pytest.mark.timeout(60)
def test_key_file_with_loose_permissions_is_refused(cluster: Cluster, tmp_path: Path) -> None:
    key = new_key(tmp_path, "loose")
    key.chmod(0o644)
    failed(cli(cluster.config_path, key, "list"), 1, "too open")
    failed(cli(cluster.config_path, tmp_path / "missing.key", "list"), 1, "does not exist")


@pytest.mark.timeout(60)
def test_wrong_key_cannot_act_as_another_account(cluster: Cluster, tmp_path: Path) -> None:
    cfg = cluster.config_path
    owner, mallory = new_key(tmp_path, "owner"), new_key(tmp_path, "mallory")
    ok(cli(cfg, owner, "register", "victim"))
    ok(cli(cfg, owner, "send", "victim", "note to self"))
    # Mallory's key claims the name: locally (key file) or with --as. The replicas refuse.
    write_user_key(mallory, dataclasses.replace(load_user_key(mallory), name="victim"), force=True)
    failed(cli(cfg, mallory, "inbox"), 1, "this key does not own account 'victim'")
    failed(cli(cfg, mallory, "--as", "victim", "send", "victim", "x"), 1, "does not own")
    failed(cli(cfg, mallory, "chat", "victim", stdin="/quit\n"), 1, "does not own")
    err = cli(cfg, mallory, "--json", "delete-account", "--yes")
    assert ok_error(err) == "not_owner"
    assert [m["text"] for m in ok(cli(cfg, owner, "--json", "inbox"))] == ["note to self"]


def ok_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The error code of a failed --json run (also printed as JSON on stdout)."""
    assert proc.returncode == 1, proc
    return str(json.loads(proc.stdout.splitlines()[-1])["error"])


@pytest.mark.timeout(60)
def test_unreachable_cluster_names_each_replica(tmp_path: Path) -> None:
    config = write_cluster(tmp_path / "down", 4)  # keys and config of a cluster nobody started
    key = new_key(tmp_path, "lonely")
    t0 = time.monotonic()
    line = failed(cli(config, key, "list"), 3, "cluster unreachable")
    assert time.monotonic() - t0 < 20
    for i in range(4):
        assert f"replica {i}: 127.0.0.1:" in line
    assert "refused" in line.lower()


def without_tls_ca(config: Path, out: Path) -> Path:
    """A copy of ``config`` with its ``tls_ca`` line removed (paths inside stay valid: same dir)."""
    lines = [ln for ln in config.read_text().splitlines() if not ln.startswith("tls_ca")]
    assert len(lines) < len(config.read_text().splitlines())
    out.write_text("\n".join(lines) + "\n")
    return out


@pytest.mark.timeout(60)
def test_config_without_tls_ca_needs_insecure(tmp_path: Path) -> None:
    """Issue 12 item 11: no silent plaintext. A config without ``tls_ca`` is refused, before anything
    is sent, with one line saying what to do; ``--insecure`` is the way to ask for plaintext (it
    then tries to connect: here nobody listens, so the cluster is unreachable)."""
    config = write_cluster(tmp_path / "c", 4)
    plain = without_tls_ca(config, config.with_name("plain.toml"))
    key = new_key(tmp_path, "carl")
    line = failed(cli(plain, key, "list"), 1, "no tls_ca in the config; pass --insecure")
    assert str(plain) in line
    assert ok_error(cli(plain, key, "--json", "list")) == "config"
    failed(cli(plain, key, "--insecure", "list", "--timeout", "3"), 3, "cluster unreachable")


@pytest.mark.timeout(90)
def test_one_key_in_several_processes_and_live_delivery(cluster: Cluster, tmp_path: Path) -> None:
    """``send`` processes and a script share one key (each its own session and timestamps) while
    the recipient's script gets each message live, once, verified and decrypted."""
    cfg = cluster.config_path
    sender, reader = new_key(tmp_path, "multi"), new_key(tmp_path, "reader")
    ok(cli(cfg, sender, "register", "multi"))
    ok(cli(cfg, reader, "register", "reader"))

    with SyncChatClient.from_files(cfg, reader) as rc, SyncChatClient.from_files(cfg, sender) as sc:
        assert rc.account == "reader"
        live = rc.messages(idle_timeout=8)
        base = [sys.executable, "-m", "client.cli", "--config", str(cfg), "--key", str(sender)]
        procs = [
            subprocess.Popen(
                [*base, "send", "reader", f"process {i}"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                cwd=tmp_path,
            )
            for i in range(3)
        ]
        script_ids = [sc.send("reader", f"script {i}").id for i in range(3)]
        for p in procs:
            _, err = p.communicate(timeout=40)
            assert p.returncode == 0, err
        got = []
        for m in live:
            assert m.sender == "multi" and m.problem is None
            got.append(m)
            if len(got) == 6:
                break
        live.close()
        assert sorted(m.text for m in got) == sorted(
            [f"process {i}" for i in range(3)] + [f"script {i}" for i in range(3)]
        )
        assert [m.id for m in got] == sorted(m.id for m in got)
        assert set(script_ids) <= {m.id for m in got}
        assert rc.inbox() == []  # all acknowledged
        assert [a.name for a in sc.accounts("mul*")] == ["multi"]


@pytest.mark.timeout(60)
def test_concurrent_calls_in_one_client(cluster: Cluster, tmp_path: Path) -> None:
    """One session, many callers: requests queue (one outstanding per session), none is lost."""
    cfg = cluster.config_path
    a, b = new_key(tmp_path, "conc-a"), new_key(tmp_path, "conc-b")

    async def scenario() -> None:
        async with ChatClient.from_files(cfg, a) as ca, ChatClient.from_files(cfg, b) as cb:
            await asyncio.gather(ca.register("conc-a"), cb.register("conc-b"))
            reads = asyncio.gather(*(ca.lookup("conc-b") for _ in range(3)))
            sent = await asyncio.gather(*(ca.send("conc-b", f"m{i}") for i in range(6)))
            assert {a.name for a in await reads} == {"conc-b"}
            inbox = await cb.inbox()
            assert sorted(m.text for m in inbox) == [f"m{i}" for i in range(6)]
            assert len({s.id for s in sent}) == 6
            assert await cb.ack(inbox[-1].id) == 0

    asyncio.run(asyncio.wait_for(scenario(), 50))


def test_timestamps_follow_the_clock_and_stay_monotone() -> None:
    """max(clock, last + 1): a new process starts above any floor from earlier sessions, and a
    stale-timestamp bump (the session layer moves past what the replicas named) is honoured."""
    s = object.__new__(ClusterSession)
    s._timestamp, s._clock, s.session = 0, wall_clock_us, 1
    first = s._next_timestamp()
    assert abs(first - time.time_ns() // 1000) < 10_000_000
    s._move_past(first + 10**12 + 1, 1)  # the replicas named a floor far ahead of our clock
    assert s._next_timestamp() == first + 10**12 + 1
    assert s._next_timestamp() == first + 10**12 + 2
    with pytest.raises(StaleTimestamp):
        s._move_past(2**64, 1)  # beyond any timestamp: not recoverable


@pytest.mark.timeout(120)
def test_one_replica_down_is_tolerated_two_are_named(cluster: Cluster, tmp_path: Path) -> None:
    """n=4 tolerates f=1 replica down; with two down the CLI says which and why (exit 3)."""
    cfg = cluster.config_path
    key = new_key(tmp_path, "downer")
    ok(cli(cfg, key, "register", "downer"))
    primary = cluster.wait_agree(timeout=30).primary
    victims = [i for i in range(cluster.n) if i != primary][:2]
    try:
        cluster.stop(victims[0])
        ok(cli(cfg, key, "send", "downer", "with one down"))
        cluster.stop(victims[1])
        proc = cli(cfg, key, "--timeout", "3", "send", "downer", "with two down")
        line = failed(proc, 3, "cluster unreachable: 2 of 4 replicas reachable, 3 needed")
        for i in victims:
            assert f"replica {i}: 127.0.0.1:" in line
        assert line.lower().count("refused") == 2
    finally:
        for i in victims:
            if not cluster.alive(i):
                cluster.start(i)
        cluster.wait_healthy()
    texts = [m["text"] for m in ok(cli(cfg, key, "--json", "inbox"))]
    assert texts[0] == "with one down"  # the second may commit too, once the replicas are back
