"""``scripts/demo``: the story of a BFT chat cluster, told on real local replica processes.

alice and bob chat; two replicas (the primary among them) start lying and messages still arrive
correctly, with the liars named; all seven replicas are killed -9 and restarted with accounts and
unread messages intact; one replica's data is wiped and it recovers from the others; a partitioned
replica catches up. Every claim is checked; the exit status is 0 only if all of them held. It uses
a temporary directory and stops exactly the processes it started.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # before grpc is imported: no C-core chatter

import argparse
import asyncio
import contextlib
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from bft.crypto import Ed25519Signer
from bft.pb.bftchat.v1 import service_pb2 as spb
from bft.tools import faultctl
from bft.tools.cluster import LocalCluster, ensure_cluster
from bft.version import add_version_argument
from client import e2e
from client.session import ClusterSession, session_endpoints, status

T = TypeVar("T")
FAULTS = "--allow-fault-injection"


class CheckFailed(Exception):
    pass


class Story:
    def __init__(self, out: Any = sys.stdout) -> None:
        self.out = out
        self.step_no = 0
        self.checks = 0

    def step(self, text: str) -> None:
        self.step_no += 1
        print(f"\n[{self.step_no}] {text}", file=self.out, flush=True)

    def say(self, text: str) -> None:
        print(f"    {text}", file=self.out, flush=True)

    def check(self, ok: bool, text: str) -> None:
        self.checks += 1
        print(f"    {'✔' if ok else '✘'} {text}", file=self.out, flush=True)
        if not ok:
            raise CheckFailed(text)


class User:
    """A chat account: signing key, box keys, and a BFT client session to every replica."""

    def __init__(self, cluster: LocalCluster, name: str) -> None:
        self.name = name
        self.signer = Ed25519Signer.generate()
        self.box = e2e.BoxKeys.generate()
        self.cluster = cluster

    def client(self) -> ClusterSession:
        return ClusterSession(
            self.cluster.config.info(),
            self.cluster.endpoints(),
            self.signer,
            ca_pem=self.cluster.ca_pem,
            session_endpoints=session_endpoints(self.cluster.config),
        )

    async def op(self, op: bytes, read_only: bool = False) -> Any:
        async with self.client() as c:
            reply = await c.request(op, read_only=read_only, timeout=90)
        result = e2e.parse_result(reply.result)
        if result.WhichOneof("result") == "error":
            raise CheckFailed(f"{self.name}: {result.error.message}")
        return result

    async def send(self, to: User, text: str) -> tuple[Any, set[int]]:
        """Send; also return the replicas whose (validly signed) replies said something else."""
        op = e2e.encrypt_send_op(self.name, self.box, to.name, to.box.public, text.encode())
        liars: set[int] = set()
        async with self.client() as c:
            accept = c.on_reply

            def watch(replica: int, data: bytes) -> None:
                from bft.pb.bftchat.v1 import protocol_pb2 as pb

                r = pb.ClientReply.FromString(data)
                try:
                    ok = e2e.parse_result(r.result).WhichOneof("result") == "sent"
                except ValueError:
                    ok = False
                if not ok:
                    liars.add(replica)
                heard.add(replica)
                accept(replica, data)

            heard: set[int] = set()
            c.on_reply = watch  # type: ignore[method-assign]
            reply = await c.request(op, timeout=90)
            # f+1 matching replies decide; wait a moment for the rest, to see who said what.
            for _ in range(40):
                if len(heard) >= self.cluster.config.n:
                    break
                await asyncio.sleep(0.05)
        return e2e.parse_result(reply.result), liars

    async def inbox(self, ack: bool = True) -> list[str]:
        res = await self.op(e2e.fetch_op(self.name))
        texts = []
        last = 0
        for m in res.messages.messages:
            got = e2e.open_delivered(m, self.cluster.config.cluster_id, self.name, self.box)
            texts.append(got.plaintext.decode())
            last = m.id
        if ack and last:
            await self.op(e2e.ack_op(self.name, last))
        return texts


_LOOP: asyncio.AbstractEventLoop | None = None


def run(coro: Awaitable[T], timeout: float = 180) -> T:
    """Run one step on the demo's single event loop (grpc.aio channels belong to one loop)."""
    global _LOOP
    if _LOOP is None:
        _LOOP = asyncio.new_event_loop()

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return _LOOP.run_until_complete(bounded())


def _close_loop() -> None:
    """Cancel what the clients left waiting, then close the loop (no 'destroyed pending' noise)."""
    global _LOOP
    if _LOOP is None:
        return
    pending = [t for t in asyncio.all_tasks(_LOOP) if not t.done()]
    for t in pending:
        t.cancel()
    if pending:
        _LOOP.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    _LOOP.run_until_complete(_LOOP.shutdown_asyncgens())
    _LOOP.close()
    _LOOP = None


def statuses(c: LocalCluster) -> dict[int, spb.StatusReply | None]:
    async def one(i: int) -> spb.StatusReply | None:
        try:
            return await status(c.endpoints()[i], c.ca_pem, timeout=2.0)
        except Exception:
            return None

    async def all_() -> list[spb.StatusReply | None]:
        return list(await asyncio.gather(*(one(i) for i in range(c.config.n))))

    return dict(enumerate(run(all_(), timeout=20)))


def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.3)
    return False


def agree(c: LocalCluster, ids: list[int]) -> bool:
    st = statuses(c)
    got = [st[i] for i in ids]
    if any(s is None or s.recovering for s in got):
        return False
    return len({(s.last_executed, s.state_digest) for s in got if s is not None}) == 1


def fault(c: LocalCluster, replica: int, *words: str) -> str:
    cmd = faultctl.parse_faults(list(words))
    cmd.replica_id = replica
    cmd.timestamp_us = int(time.time() * 1_000_000)
    from bft.keys import load_admin_key

    admin = load_admin_key(c.directory / "admin.key")
    req = faultctl.sign_command(admin, c.config.cluster_id, cmd)
    reply = run(faultctl.send_fault(c.endpoints()[replica], c.ca_pem, req), timeout=20)
    if not reply.ok:
        raise CheckFailed(f"replica {replica} refused the fault: {reply.message}")
    return ", ".join(reply.active) or "honest"


def kill9(c: LocalCluster, i: int) -> None:
    p = c.procs[i].popen
    if p.poll() is None:
        os.kill(p.pid, signal.SIGKILL)
    p.wait()


def tell(story: Story, c: LocalCluster) -> None:
    n = c.config.n
    everyone = list(range(n))
    story.step(f"Starting {n} replicas (f = {c.config.f}): every message signed, every batch fsynced")
    c.start_all()
    story.check(wait_until(lambda: agree(c, everyone), 60, "up"), f"all {n} replicas up and in agreement")

    alice, bob = User(c, "alice"), User(c, "bob")
    story.step("alice and bob register and chat (end-to-end encrypted; replicas store only ciphertext)")
    run(alice.op(e2e.register_op("alice", alice.box.public)))
    run(bob.op(e2e.register_op("bob", bob.box.public)))
    run(alice.send(bob, "hi bob, it's alice"))
    run(bob.send(alice, "hello alice!"))
    got_b, got_a = run(bob.inbox()), run(alice.inbox())
    story.say(f"bob read: {got_b}; alice read: {got_a}")
    story.check(got_b == ["hi bob, it's alice"] and got_a == ["hello alice!"], "both messages arrived intact")

    st = statuses(c)
    primary = next(s.primary for s in st.values() if s is not None)
    liar = (primary + 3) % n
    story.step(
        f"Two replicas start lying: the primary (replica {primary}) equivocates, "
        f"replica {liar} lies to clients"
    )
    story.say(f"replica {primary}: {fault(c, primary, 'equivocate')}")
    story.say(f"replica {liar}: {fault(c, liar, 'lie-to-clients')}")
    lies_seen: set[int] = set()
    # Only a request's f+1 designated repliers answer it, so the liar is heard on the requests it
    # is one of those for: send at least 3 messages, and on until it was heard (at most 12).
    sent = 0
    while sent < 3 or (liar not in lies_seen and sent < 12):
        _, lied = run(alice.send(bob, f"message {sent} while two replicas lie"))
        lies_seen |= lied
        sent += 1
    got = run(bob.inbox())
    story.say(f"bob read: {got}")
    story.check(
        got == [f"message {k} while two replicas lie" for k in range(sent)], "every message arrived correctly"
    )
    st = statuses(c)
    accused = sorted(
        {a for i, s in st.items() if s is not None and i not in (primary, liar) for a in s.accused}
    )
    story.check(
        primary in accused,
        f"honest replicas hold signed evidence naming replica {primary} (accused: {accused})",
    )
    story.check(
        liar in lies_seen,
        f"alice's client saw replica {liar}'s false replies and outvoted them with f+1 others",
    )
    new_primary = next(s.primary for s in st.values() if s is not None)
    story.say(f"the equivocating primary was replaced: replica {new_primary} leads now")
    fault(c, primary, "heal")
    fault(c, liar, "heal")

    story.step("bob goes offline; alice leaves him two messages")
    run(alice.send(bob, "are you there?"))
    run(alice.send(bob, "call me when you're back"))
    story.say("both committed (f+1 matching replies)")

    story.step(f"kill -9 all {n} replicas at once, then restart them (no manual step)")
    for i in everyone:
        kill9(c, i)
    story.say(f"all {n} processes killed")
    c.start_all()
    story.check(wait_until(lambda: agree(c, everyone), 90, "restart"), "all replicas back and in agreement")
    listed = run(alice.op(e2e.list_op("*"), read_only=False))
    names = sorted(a.name for a in listed.accounts.accounts)
    story.check(names == ["alice", "bob"], f"accounts intact: {names}")
    got = run(bob.inbox())
    story.say(f"bob comes back online and reads: {got}")
    story.check(got == ["are you there?", "call me when you're back"], "unread messages intact, exactly once")

    wiped = (new_primary + 2) % n
    story.step(f"replica {wiped} loses its disk: data wiped, restarted with --recover")
    kill9(c, wiped)
    shutil.rmtree(c.data_dir(wiped))
    c.extra_args = (FAULTS, "--recover")
    c.start(wiped)
    c.extra_args = (FAULTS,)
    run(alice.send(bob, "written while a replica rebuilds"))
    story.check(
        wait_until(lambda: agree(c, everyone), 90, "recover"),
        f"replica {wiped} rebuilt its state from the others",
    )

    cut = (new_primary + 4) % n
    story.step(f"replica {cut} is partitioned from the others; the cluster carries on")
    fault(c, cut, *[w for j in everyone if j != cut for w in ("drop-to", str(j))])
    for j in everyone:
        if j != cut:
            fault(c, j, "drop-to", str(cut))
    for k in range(3):
        run(alice.send(bob, f"sent during the partition {k}"))
    st = statuses(c)
    behind = st[cut] is not None and st[cut].last_executed < max(s.last_executed for s in st.values() if s)  # type: ignore[union-attr]
    story.check(behind, f"replica {cut} fell behind while cut off")
    for j in everyone:
        fault(c, j, "heal")
    story.check(wait_until(lambda: agree(c, everyone), 90, "heal"), f"healed: replica {cut} caught up")
    got = run(bob.inbox())
    story.check(
        got == ["written while a replica rebuilds"] + [f"sent during the partition {k}" for k in range(3)],
        "bob reads everything, in order",
    )


def _free_base(n: int) -> int:
    """A base port such that base..base+n and base+10000..+n are free on 127.0.0.1."""
    import random
    import socket

    def free(port: int) -> bool:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
        return True

    while True:
        base = random.randrange(20000, 29000)
        if all(free(base + k) and free(base + 10_000 + k) for k in range(n)):
            return base


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="scripts/demo", description=__doc__.splitlines()[0])
    add_version_argument(ap)
    ap.add_argument(
        "--replicas",
        type=int,
        default=7,
        help="cluster size; two replicas lie at once, so at least 7 (default %(default)s)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary cluster directory")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    story = Story()
    tmp = Path(tempfile.mkdtemp(prefix="bftchat-demo-"))
    c: LocalCluster | None = None
    code = 1
    base = _free_base(args.replicas)
    try:
        config = ensure_cluster(tmp, args.replicas, base_port=base, peer_base_port=base + 10_000)
        c = LocalCluster(tmp, config, extra_args=(FAULTS,), log_level="WARNING")
        c.init_genesis()
        tell(story, c)
        print(f"\nAll {story.checks} checks held.", flush=True)
        code = 0
    except CheckFailed as exc:
        print(f"\nFAILED: {exc}", file=sys.stderr)
        if c is not None:
            for i in range(c.config.n):
                print(f"--- replica {i} log tail:\n{c.tail(i, 8)}", file=sys.stderr)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
    finally:
        _close_loop()
        if c is not None:
            c.stop_all()
        if args.keep:
            print(f"cluster directory kept: {tmp}")
        else:
            with contextlib.suppress(OSError):
                shutil.rmtree(tmp)
    return code


if __name__ == "__main__":
    sys.exit(main())
