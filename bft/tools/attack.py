"""``bftchat-attack``: run bounded floods against a cluster you own and report what they cost it.

    bftchat-attack --config CONFIG --key USER.key [--seconds 30] [--target 0] [--insecure]
                   [--i-own-these-hosts] FLOOD [FLOOD ...]

Floods (docs/SECURITY.md, "Attacks and what they get now"):

* ``connections``  bare TCP connections to the target's client port (no TLS, no data), held open
* ``sessions``     as many Session streams as the target accepts, held open
* ``slow-readers`` 16 streams that never read, each asking for 40 one-megabyte Fetch pages
* ``reads``        one-round read requests (Fetch) as fast as 64 sessions can send them
* ``inbox``        Sends from throwaway keys into one account's inbox
* ``list``         List requests with crafted patterns (``*a*b*c*...``)

For each flood it prints, per replica, the resident memory before and after and the peak during it
(``VmHWM``, reset first where ``/proc/PID/clear_refs`` allows), whether the replica is still up, and
the honest clients' sends/s during the flood next to the same clients' figure without it. The
attacker, the honest clients and the replicas share this machine's CPUs: the slow-down includes the
attacker's own CPU use. Connections come from 127.0.0.2 and up when the cluster is on loopback,
so per-address limits see an attacker distinct from the honest clients (127.0.0.1).

Only for clusters you run: any replica address outside loopback is refused unless
``--i-own-these-hosts``. Every flood stops after ``--seconds`` and closes everything it opened.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import multiprocessing
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import grpc
import grpc.aio

from bft.crypto import Ed25519Signer, Signer
from bft.pb.bftchat.v1 import service_pb2 as spb
from bft.version import add_version_argument
from bft.wire import make_request

FLOODS = ("connections", "sessions", "slow-readers", "reads", "inbox", "list")
SESSION_METHOD = "/bftchat.v1.ClientService/Session"
HONEST_CLIENTS = 4
SOURCES = tuple(f"127.0.0.{i}" for i in range(2, 10))  # attacker source addresses on loopback


# ---------------------------------------------------------------- measuring replicas


def pid_listening(port: int) -> int | None:
    """The process listening on TCP ``port`` (this machine, via /proc), or None."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(cols[9])
    if not inodes:
        return None
    wanted = {f"socket:[{i}]" for i in inodes}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in wanted:
                        return int(proc.name)
    return None


def memory_kib(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) of ``pid`` in KiB, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    got = {
        k: int(v.split()[0])
        for k, _, v in (ln.partition(":") for ln in text.splitlines())
        if k in ("VmRSS", "VmHWM")
    }
    return got.get("VmRSS", 0), got.get("VmHWM", 0)


def reset_peak(pid: int) -> bool:
    """Reset ``pid``'s VmHWM to its current RSS (Linux ``clear_refs`` 5); False if not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# ---------------------------------------------------------------- a source-bound relay


class Relay:
    """A TCP relay on 127.0.0.1 whose upstream connections leave from ``source``: gRPC channels
    cannot bind a source address, so an attacker's channel connects here instead."""

    def __init__(self, source: str, host: str, port: int) -> None:
        self.source, self.host, self.port = source, host, port
        self.server: asyncio.Server | None = None
        self.listen_port = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> Relay:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.listen_port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.listen_port}"

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for w in list(self._writers):  # end the pipes (a cancelled handler task logs a traceback)
            w.transport.abort()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)
        for t in list(self._tasks):
            t.cancel()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_r, up_w = await asyncio.open_connection(
                self.host, self.port, local_addr=(self.source, 0) if self.source else None
            )
        except OSError:
            writer.close()
            self._tasks.discard(task)
            return
        self._writers.update((writer, up_w))

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            with contextlib.suppress(Exception):
                w.close()

        try:
            await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))
        finally:
            self._tasks.discard(task)
            self._writers.difference_update((writer, up_w))


def _channel(endpoint: str, ca_pem: bytes | None, own_connection: bool = True) -> grpc.aio.Channel:
    opts: list[tuple[str, object]] = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    if own_connection:  # channels in one process otherwise share one connection per target
        opts.append(("grpc.use_local_subchannel_pool", 1))
    if ca_pem is None:
        return grpc.aio.insecure_channel(endpoint, options=opts)
    opts.append(("grpc.ssl_target_name_override", "127.0.0.1"))
    return grpc.aio.secure_channel(endpoint, grpc.ssl_channel_credentials(root_certificates=ca_pem), opts)


# ---------------------------------------------------------------- the floods


@dataclass
class Target:
    """The replica under attack and how to reach it."""

    host: str
    port: int
    cluster_id: bytes
    ca_pem: bytes | None
    sources: tuple[str, ...]  # attacker source addresses ("" = the system's choice)
    new_client: Callable[[Signer], object]  # a connected-on-enter ClusterSession for a key
    replicas: tuple[tuple[str, int], ...] = ()  # every replica's client address, for flood sessions
    new_client_at: Callable[[Signer, list[str]], object] | None = None  # the same, given endpoints
    rate: float = 0.0  # requests/s of the reads, inbox and list floods in all (0: as fast as they go)


@dataclass
class FloodResult:
    name: str
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n


async def flood_connections(t: Target, seconds: float, count: int = 2000) -> FloodResult:
    """Hold ``count`` bare TCP connections (no TLS, no bytes), reopening those the server closes."""
    res = FloodResult("connections")
    loop = asyncio.get_running_loop()
    socks: list[socket.socket] = []
    deadline = loop.time() + seconds

    async def open_one(i: int) -> socket.socket | None:
        s = socket.socket(socket.AF_INET6 if ":" in t.host else socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            src = t.sources[i % len(t.sources)] if t.sources else ""
            if src:
                s.bind((src, 0))
            await asyncio.wait_for(loop.sock_connect(s, (t.host, t.port)), 2.0)
        except (OSError, TimeoutError):
            res.add("connect_failed")
            s.close()
            return None
        res.add("opened")
        return s

    try:
        while loop.time() < deadline:
            alive = []
            for s in socks:  # a closed connection reads as EOF (or an error)
                try:
                    gone = s.recv(1, socket.MSG_PEEK) == b""
                except BlockingIOError:
                    gone = False
                except OSError:
                    gone = True
                if gone:
                    res.add("closed_by_server")
                    s.close()
                else:
                    alive.append(s)
            socks = alive
            want = count - len(socks)
            for start in range(0, want, 100):
                got = await asyncio.gather(*(open_one(len(socks) + j) for j in range(min(100, want - start))))
                socks += [s for s in got if s is not None]
                if loop.time() >= deadline:
                    break
            res.counts["held_at_end"] = len(socks)
            await asyncio.sleep(0.5)
    finally:
        for s in socks:
            s.close()
    return res


@contextlib.asynccontextmanager
async def _relays(t: Target) -> AsyncIterator[list[Relay]]:
    relays = [await Relay(src, t.host, t.port).start() for src in (t.sources or ("",))]
    try:
        yield relays
    finally:
        for r in relays:
            await r.close()


async def _open_session(ch: grpc.aio.Channel) -> grpc.aio.StreamStreamCall | None:
    call = ch.stream_stream(SESSION_METHOD)()
    try:
        first = await asyncio.wait_for(call.read(), 5)
    except (grpc.aio.AioRpcError, TimeoutError):
        call.cancel()
        return None
    if not isinstance(first, bytes):
        return None
    return call


async def flood_sessions(
    t: Target, seconds: float, per_connection: int = 500, connections: int = 20
) -> FloodResult:
    """Open Session streams over ``connections`` connections until refused; hold them."""
    res = FloodResult("sessions")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    calls: list[grpc.aio.StreamStreamCall] = []
    async with _relays(t) as relays:
        chans = [_channel(relays[i % len(relays)].endpoint, t.ca_pem) for i in range(connections)]
        try:
            attempts = [chans[k % connections] for k in range(per_connection * connections)]
            for start in range(0, len(attempts), 500):
                if loop.time() >= deadline:
                    break
                got = await asyncio.gather(*(_open_session(ch) for ch in attempts[start : start + 500]))
                ok = [c for c in got if c is not None]
                calls += ok
                res.add("opened", len(ok))
                res.add("refused", len(got) - len(ok))
            await asyncio.sleep(max(0.0, deadline - loop.time()))
        finally:
            for c in calls:
                c.cancel()
            for ch in chans:
                await ch.close(grace=None)
    return res


async def _fill_inbox(t: Target, signer: Signer, name: str, messages: int) -> None:
    """Register ``name`` for ``signer`` and send it ``messages`` of 60 KiB (so a Fetch page is 1 MiB)."""
    from client import e2e

    box = e2e.BoxKeys.generate()
    client = t.new_client(signer)
    async with client as c:  # type: ignore[attr-defined]
        await c.request(e2e.register_op(name, box.public))
        for _ in range(messages):
            await c.request(e2e.encrypt_send_op(name, box, name, box.public, os.urandom(60 * 1024)))


async def flood_slow_readers(
    t: Target, seconds: float, streams: int = 16, fetches: int = 40, signer: Signer | None = None
) -> FloodResult:
    """``streams`` sessions that never read, each sending ``fetches`` one-round Fetch requests whose
    replies are 1 MiB pages: the replica must queue (or drop) what the reader never takes."""
    from client import e2e

    res = FloodResult("slow-readers")
    signer = signer or Ed25519Signer.generate()
    name = "slow" + os.urandom(4).hex()
    await _fill_inbox(t, signer, name, 18)
    res.add("inbox_messages", 18)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    calls: list[grpc.aio.StreamStreamCall] = []
    async with _relays(t) as relays:
        chans = [_channel(relays[i % len(relays)].endpoint, t.ca_pem) for i in range(streams)]
        try:
            for i, ch in enumerate(chans):
                call = ch.stream_stream(SESSION_METHOD)()
                calls.append(call)
                session = int.from_bytes(os.urandom(6), "big")
                for k in range(fetches):
                    req = make_request(
                        signer, t.cluster_id, session, 1 + k, e2e.fetch_op(name, limit=1000), read_only=True
                    )
                    await call.write(spb.ClientFrame(request=req).SerializeToString())
                    res.add("fetches_sent")
                res.add("streams")
                del i
            await asyncio.sleep(max(0.0, deadline - loop.time()))
        finally:
            for c in calls:
                c.cancel()
            for ch in chans:
                await ch.close(grace=None)
    return res


async def _blast(
    t: Target, seconds: float, workers: int, make_op: Callable[[int], tuple[bytes, bool]], res: FloodResult
) -> None:
    """``workers`` sessions (throwaway keys) sending ``make_op(i)`` requests back to back, from the
    target's attacker source addresses in turn (through relays to every replica) when it has them."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    relays: list[list[Relay]] = []
    if t.sources and t.replicas and t.new_client_at is not None:
        relays = [[await Relay(src, h, p).start() for h, p in t.replicas] for src in t.sources]

    def new_client(w: int) -> object:
        if not relays or t.new_client_at is None:
            return t.new_client(Ed25519Signer.generate())
        return t.new_client_at(Ed25519Signer.generate(), [r.endpoint for r in relays[w % len(relays)]])

    next_at = loop.time()

    async def pace() -> None:
        nonlocal next_at
        if t.rate > 0:
            at = max(next_at, loop.time())
            next_at = at + 1 / t.rate
            await asyncio.sleep(at - loop.time())

    async def worker(w: int) -> None:
        client = new_client(w)
        async with client as c:  # type: ignore[attr-defined]
            i = 0
            while loop.time() < deadline:
                await pace()
                if loop.time() >= deadline:
                    break
                op, read_only = make_op(w * 1_000_000 + i)
                i += 1
                try:
                    await c.request(op, read_only=read_only, timeout=max(0.5, deadline - loop.time()))
                    res.add("answered")
                except Exception as exc:  # refused, timed out: counted, the flood goes on
                    res.add(type(exc).__name__)

    try:
        await asyncio.gather(*(worker(w) for w in range(workers)))
    finally:
        for group in relays:
            for r in group:
                await r.close()


async def flood_reads(t: Target, seconds: float, workers: int = 64) -> FloodResult:
    from client import e2e

    res = FloodResult("reads")
    await _blast(t, seconds, workers, lambda i: (e2e.fetch_op(f"nobody{i % 97}"), True), res)
    return res


async def flood_inbox(t: Target, seconds: float, workers: int = 16, victim: str = "") -> FloodResult:
    """Sends of 60 KiB from throwaway keys into one account's inbox (registered here if not named)."""
    from client import e2e

    res = FloodResult("inbox")
    box = e2e.BoxKeys.generate()
    if not victim:
        victim = "victim" + os.urandom(4).hex()
        async with t.new_client(Ed25519Signer.generate()) as c:  # type: ignore[attr-defined]
            await c.request(e2e.register_op(victim, box.public))
    body = os.urandom(60 * 1024)
    await _blast(
        t,
        seconds,
        workers,
        lambda i: (e2e.encrypt_send_op(f"x{i}", box, victim, box.public, body), False),
        res,
    )
    return res


async def flood_list(t: Target, seconds: float, workers: int = 32) -> FloodResult:
    from client import e2e

    res = FloodResult("list")
    pattern = "*" + "*".join("abcdefghijklmnop") + "*"
    await _blast(t, seconds, workers, lambda i: (e2e.list_op(pattern, limit=1000), True), res)
    return res


FLOOD_FUNCS: dict[str, Callable[..., Awaitable[FloodResult]]] = {
    "connections": flood_connections,
    "sessions": flood_sessions,
    "slow-readers": flood_slow_readers,
    "reads": flood_reads,
    "inbox": flood_inbox,
    "list": flood_list,
}


# ---------------------------------------------------------------- honest load


class HonestLoad:
    """``HONEST_CLIENTS`` users sending to one another in a closed loop; counts committed sends.

    Runs in a process of its own (``start_process``): in the attacker's process the honest clients
    would wait on the attacker's event loop (verifying thousands of flood replies a second), and
    the figure would measure the tool, not the replicas. They still share the machine's CPUs."""

    def __init__(self, new_client: Callable[[Signer], object], clients: int = HONEST_CLIENTS) -> None:
        self.new_client = new_client
        self.n = clients
        self.sent = 0
        self.failed = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._ready: list[asyncio.Future[None]] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._ready = [loop.create_future() for _ in range(self.n)]
        self._tasks = [loop.create_task(self._user(i)) for i in range(self.n)]
        await asyncio.wait_for(asyncio.gather(*self._ready), 60)

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _user(self, i: int) -> None:
        from client import e2e

        box = e2e.BoxKeys.generate()
        name = f"honest{os.urandom(3).hex()}{i}"
        async with self.new_client(Ed25519Signer.generate()) as c:  # type: ignore[attr-defined]
            await c.request(e2e.register_op(name, box.public), timeout=30)
            self._ready[i].set_result(None)
            while not self._stop.is_set():
                op = e2e.encrypt_send_op(name, box, name, box.public, b"hello %d" % self.sent)
                try:
                    await c.request(op, timeout=10)
                    self.sent += 1
                except Exception:
                    self.failed += 1
                # Keep the inbox from filling: acknowledge now and then.
                if self.sent % 500 == 499:
                    with contextlib.suppress(Exception):
                        await c.request(e2e.ack_op(name, 1 << 62), timeout=10)


def _honest_process(
    config: str, insecure: bool, clients: int, conn: Connection, transport: str = "auto"
) -> None:
    """The honest load's own process: starts ``clients`` users, sends "ready", then answers every
    "count" with the number of committed sends so far, until "stop"."""
    from bft.clusterconf import load_config
    from client.session import ClusterSession

    cfg = load_config(config)

    async def run() -> None:
        load = HonestLoad(
            lambda s: ClusterSession.from_config(cfg, s, insecure=insecure, transport=transport), clients
        )
        await load.start()
        conn.send("ready")
        loop = asyncio.get_running_loop()
        try:
            while True:
                msg = await loop.run_in_executor(None, conn.recv)
                if msg == "stop":
                    return
                conn.send(load.sent)
        finally:
            await load.stop()

    asyncio.run(run())


class HonestProcess:
    """The parent's handle on the honest load's process."""

    def __init__(self, config: str, insecure: bool, clients: int, transport: str = "auto") -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_honest_process,
            args=(config, insecure, clients, child, transport),
            name="honest-load",
            daemon=True,
        )

    async def start(self) -> None:
        self._proc.start()
        if not await self._ask(None, timeout=90):
            raise RuntimeError("the honest clients could not register within 90 s")

    async def _ask(self, msg: object, timeout: float = 10.0) -> object:
        loop = asyncio.get_running_loop()
        if msg is not None:
            self._conn.send(msg)
        ready = await loop.run_in_executor(None, self._conn.poll, timeout)
        return self._conn.recv() if ready else None

    async def sent(self) -> int:
        got = await self._ask("count")
        if not isinstance(got, int):
            raise RuntimeError("the honest load's process stopped answering")
        return got

    async def rate(self, seconds: float) -> float:
        start = await self.sent()
        await asyncio.sleep(seconds)
        return (await self.sent() - start) / seconds

    async def stop(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send("stop")
        await asyncio.get_running_loop().run_in_executor(None, self._proc.join, 15)
        if self._proc.is_alive():
            self._proc.kill()


def _check_hosts(hosts: Sequence[str], allowed: bool) -> str | None:
    for h in hosts:
        try:
            loopback = ipaddress.ip_address(h).is_loopback
        except ValueError:
            loopback = h == "localhost"
        if not loopback and not allowed:
            return (
                f"replica address {h} is not on loopback: pass --i-own-these-hosts if this cluster is "
                "yours to attack"
            )
    return None


def _fmt_kib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.0f} MiB"


async def run_attack(args: argparse.Namespace) -> int:
    from bft.clusterconf import load_config
    from client.session import ClusterSession, session_endpoints

    config = load_config(args.config)
    ca = None if args.insecure or config.tls_ca is None else Path(config.tls_ca).read_bytes()
    cluster = config.info()
    endpoints = [r.endpoint for r in config.replicas]

    framed = session_endpoints(config, args.flood_transport or args.transport)

    def new_client(s: Signer) -> ClusterSession:
        return ClusterSession(cluster, endpoints, s, ca_pem=ca, session_endpoints=framed)

    def new_client_at(s: Signer, at: list[str]) -> ClusterSession:
        """Through relays: to the session ports when the floods use them, else the gRPC ports."""
        if framed is None or None in framed:
            return ClusterSession(cluster, at, s, ca_pem=ca)
        return ClusterSession(cluster, endpoints, s, ca_pem=ca, session_endpoints=at)

    me = config.replicas[args.target]
    on_loopback = all(_check_hosts([r.host], False) is None for r in config.replicas)
    target = Target(
        str(me.host),
        me.port,
        cluster.cluster_id,
        ca,
        SOURCES if on_loopback else (),
        new_client,
        tuple(
            (str(r.host), r.session_port if framed is not None and r.session_port is not None else r.port)
            for r in config.replicas
        ),
        new_client_at,
        args.rate,
    )
    pids = {r.id: pid_listening(r.port) for r in config.replicas}
    print(f"cluster {config.path}: n = {config.n}, target replica {args.target} ({me.endpoint})")
    print(
        "note: the attacker, the honest clients and the replicas share this machine's CPUs; the "
        "honest clients' slow-down includes the attacker's own CPU use."
    )
    honest = HonestProcess(str(config.path), args.insecure, args.honest_clients, args.transport)
    await honest.start()
    code = 0
    try:
        for name in args.floods:
            baseline = await honest.rate(args.baseline_seconds)
            before = {i: memory_kib(p) if p else None for i, p in pids.items()}
            peaks_reset = all(reset_peak(p) for p in pids.values() if p)
            sent0, t0 = await honest.sent(), time.monotonic()
            try:
                result = await FLOOD_FUNCS[name](target, args.seconds)
            except Exception as exc:  # report and go on with the next flood
                result = FloodResult(name, {f"error {type(exc).__name__}: {exc}"[:120]: 1})
            during = (await honest.sent() - sent0) / max(1e-9, time.monotonic() - t0)
            after = {i: memory_kib(p) if p else None for i, p in pids.items()}
            print(f"\n== flood {name} ({args.seconds:g} s against replica {args.target})")
            print("   " + ", ".join(f"{k}: {v}" for k, v in sorted(result.counts.items())) or "   -")
            if "answered" in result.counts:
                print(f"   flood requests answered/s: {result.counts['answered'] / args.seconds:.1f}")
            print(f"   honest sends/s: {during:.1f} during the flood, {baseline:.1f} without it")
            print(f"   {'replica':>7}  {'up':>3}  {'RSS before':>10}  {'RSS after':>10}  {'peak':>10}")
            for i, p in pids.items():
                b, a = before[i], after[i]
                up = "yes" if a is not None else "NO"
                if p is not None and a is None:
                    code = 1
                print(
                    f"   {i:>7}  {up:>3}  {_fmt_kib(b[0] if b else None):>10}  "
                    f"{_fmt_kib(a[0] if a else None):>10}  {_fmt_kib(a[1] if a else None):>10}"
                )
            if not peaks_reset:
                print("   (peak is the process's lifetime peak: /proc/PID/clear_refs was not writable)")
    finally:
        await honest.stop()
    return code


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="bftchat-attack",
        description="Run bounded floods against a cluster you own; "
        "report replica memory and honest throughput.",
        epilog=f"floods: {', '.join(FLOODS)}",
    )
    add_version_argument(ap)
    ap.add_argument("--config", required=True, help="the cluster config (config.toml)")
    ap.add_argument("--key", required=True, help="a user key file of yours (bftchat-keygen user)")
    ap.add_argument("--target", type=int, default=0, help="the replica to attack (default %(default)s)")
    ap.add_argument(
        "--seconds", type=float, default=30.0, help="length of each flood in seconds (default %(default)s)"
    )
    ap.add_argument(
        "--baseline-seconds",
        type=float,
        default=5.0,
        help="honest-only measurement before each flood (default %(default)s)",
    )
    ap.add_argument(
        "--honest-clients",
        type=int,
        default=HONEST_CLIENTS,
        help="clients measuring honest throughput during each flood (default %(default)s)",
    )
    ap.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="requests/s of the reads, inbox and list floods in all; 0 = as fast as their sessions "
        "go (default %(default)s)",
    )
    ap.add_argument("--insecure", action="store_true", help="plaintext (replicas run with --insecure)")
    ap.add_argument(
        "--transport",
        choices=("auto", "grpc"),
        default="auto",
        help="client sessions of the honest load and of the reads, inbox and list floods: auto = the "
        "replicas' session ports where the config has them, grpc = the gRPC port (default %(default)s)",
    )
    ap.add_argument(
        "--flood-transport",
        choices=("auto", "grpc"),
        default=None,
        help="the floods' sessions only, if they should differ from --transport (default: the same)",
    )
    ap.add_argument(
        "--i-own-these-hosts", action="store_true", help="allow replica addresses outside loopback"
    )
    ap.add_argument(
        "floods", nargs="+", choices=FLOODS, metavar="FLOOD", help="floods to run, in order (listed below)"
    )
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from bft.clusterconf import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from bft.keys import KeyFileError, load_user_key

    try:
        load_user_key(args.key)  # a key of the operator's, as for any client; floods use throwaway keys
    except KeyFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    refused = _check_hosts([str(r.host) for r in config.replicas], args.i_own_these_hosts)
    if refused:
        print(f"error: {refused}", file=sys.stderr)
        return 2
    if not 0 <= args.target < config.n or not 0 < args.seconds <= 3600:
        print("error: --target must name a replica and --seconds be in (0, 3600]", file=sys.stderr)
        return 2
    try:
        return asyncio.run(run_attack(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
