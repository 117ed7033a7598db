"""``bftchat-bench``: committed chat sends per second, latency and CPU per op of a real cluster, next
to an unreplicated baseline and the Ed25519 floor of this machine.

    bftchat-bench [--replicas 4[,7]] [--clients 1[,20,50]] [--seconds 10] [--size 256]
                  [--processes P] [--config CONFIG [--insecure]] [--no-baseline]
                  [--json] [--markdown] [--plot FILE] [--save RESULTS.jsonl] [--plot-from RESULTS.jsonl]
                  [--failover kill|stop] [--preload-accounts N[,N...] --preload-messages M[,M...]]

What runs where:

* **Cluster.** Unless ``--config`` names a running one, a fresh cluster per replica count is made
  in a temporary directory exactly as ``bftchat-cluster`` makes one (TLS, default protocol
  parameters, every message signed, the log fsynced before anything that depends on it leaves).
* **Clients.** C closed-loop clients, each its own chat account and Ed25519 key, each sending
  S-byte messages (NaCl-boxed, as the CLI does) to the next account, one request outstanding at a
  time. They run as asyncio sessions in P separate client processes (default 1, 2 from 8 clients
  on), each with its own connection to every replica's session port (``--transport grpc``: the
  sessions of one process share one gRPC channel per replica instead), and with one signature
  cache per process (the f+1 replies of one batch carry the same signed root). Latency is from
  the request's signing to f+1 matching verified replies (``client.session``).
* **Window.** After registration and a warm-up, T seconds are measured: completed sends, their
  latencies, and the CPU (user + system, from /proc) of every replica and client process.
* **Baseline.** The same chat app, client transport, TLS, request signing and verification, signed
  Merkle-rooted replies and a log fsynced per burst, in ONE server process: no replication.
* **Crypto floor.** Ed25519 sign and verify timed here; one committed send needs at least one
  client signature and n verifications of it, so ``cores / (sign + n * verify)`` sends/s is an
  upper bound no design of this protocol on this machine can beat (protocol signatures, amortised
  over batches, come on top).

Exit status 0, or 1 when the run fails (a replica dies, no send completes), 2 for usage errors.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import json
import math
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from bft.version import add_version_argument

DEFAULT_SIZE = 256
WARMUP = 2.0
READY_TIMEOUT = 120.0


class BenchError(Exception):
    """The benchmark could not run or produced nothing: exit 1 with this message."""


class UsageError(Exception):
    """Bad arguments: exit 2."""


# ---------------------------------------------------------------- machine facts


@dataclass
class CryptoCost:
    sign_us: float
    verify_us: float

    def floor_us(self, n: int) -> float:
        """CPU one committed send needs at the least: the client's signature + n verifications."""
        return self.sign_us + n * self.verify_us


def measure_crypto(size: int, rounds: int = 3, count: int = 400) -> CryptoCost:
    """Ed25519 (PyNaCl, as the replicas use it) on a request-sized message; best of a few rounds,
    in process CPU time, so that other load on the machine inflates it as little as possible."""
    from bft.crypto import Ed25519Signer, Ed25519Verifier

    signer = Ed25519Signer.generate()
    verifier = Ed25519Verifier()
    message = os.urandom(size + 200)
    sig = signer.sign(message)
    best_sign = best_verify = float("inf")
    for _ in range(rounds):
        t = time.process_time()
        for _ in range(count):
            signer.sign(message)
        best_sign = min(best_sign, (time.process_time() - t) / count)
        t = time.process_time()
        for _ in range(count):
            verifier.verify(signer.public_key, message, sig)
        best_verify = min(best_verify, (time.process_time() - t) / count)
    return CryptoCost(best_sign * 1e6, best_verify * 1e6)


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def loadavg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def proc_cpu(pid: int) -> float | None:
    """User + system CPU seconds of a process so far, None if it is gone."""
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return float(t.user + t.system)


def cpu_of(pids: Sequence[int]) -> dict[int, float]:
    return {pid: c for pid in pids if (c := proc_cpu(pid)) is not None}


def pids_running(config_path: Path) -> list[int]:
    """Replica processes started with this config (for ``--config``: a cluster we did not start)."""
    found = []
    target = Path(config_path).resolve()
    for proc in psutil.process_iter(["pid", "cmdline"]):
        args = proc.info["cmdline"] or []
        replica = "bft.runtime.main" in args or any(a.endswith("bftchat-replica") for a in args)
        if replica and any(Path(a).resolve() == target for a in args if a.endswith(".toml")):
            found.append(int(proc.info["pid"]))
    return found


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_base(count: int, taken: set[int]) -> int:
    """A base port with ``count`` consecutive free loopback ports, below the ephemeral range."""
    for _ in range(1000):
        base = random.randrange(20000, 30000 - count)
        ports = range(base, base + count)
        if not taken.intersection(ports) and all(_port_free(p) for p in ports):
            taken.update(ports)
            return base
    raise BenchError("no free ports")


# ---------------------------------------------------------------- accounts


def account(tag: str, i: int) -> tuple[str, bytes, bytes]:
    """(name, signing seed, box secret) of bench account ``i``: derived, so every client process
    knows every recipient's public box key without talking to the others."""
    name = f"b{tag}-{i}"
    seed = hashlib.sha256(f"bftchat-bench sign {tag} {i}".encode()).digest()
    box = hashlib.sha256(f"bftchat-bench box {tag} {i}".encode()).digest()
    return name, seed, box


# ---------------------------------------------------------------- the unreplicated baseline server


class _BaselineSession:
    def __init__(self) -> None:
        self.queue: list[bytes] = []
        self.wake = asyncio.Event()

    def send(self, frame: bytes) -> None:
        self.queue.append(frame)
        self.wake.set()


class BaselineServer:
    """ChatApp behind the replicas' client protocol, without replication: verify each signed
    request, execute it, append the burst to a log and fsync it, then answer every request of the
    burst under one signed Merkle root (as replicas do per batch)."""

    def __init__(self, data_dir: Path) -> None:
        from bft.app.chat import ChatApp
        from bft.crypto import Ed25519Signer, Ed25519Verifier

        self.app = ChatApp()
        self.signer = Ed25519Signer.generate()
        self.verifier = Ed25519Verifier()
        self.cluster_id = os.urandom(16)
        self.seq = 0
        self.inbox: list[tuple[bytes, _BaselineSession]] = []
        self.scheduled = False
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log = open(data_dir / "baseline.log", "ab")  # noqa: SIM115 - open for the server's life

    def submit(self, raw: bytes, sess: _BaselineSession) -> None:
        self.inbox.append((raw, sess))
        if not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self.process)

    def process(self) -> None:
        from bft import merkle
        from bft.app.base import ExecContext
        from bft.core.replica import leaf_bytes
        from bft.crypto import Kind, sha256
        from bft.pb.bftchat.v1 import protocol_pb2 as pb
        from bft.pb.bftchat.v1 import service_pb2 as spb
        from bft.wire import WireError, open_request, seal

        self.scheduled = False
        burst, self.inbox = self.inbox, []
        self.seq += 1
        now_us = int(time.time() * 1e6)
        targets = []
        for index, (raw, sess) in enumerate(burst):
            try:
                opened = open_request(raw, self.cluster_id, self.verifier)
            except WireError as exc:
                err = spb.RequestError(request_digest=sha256(raw), message=str(exc))
                sess.send(spb.ServerFrame(error=err).SerializeToString())
                continue
            req = opened.request
            res = self.app.execute(req, ExecContext(self.seq, index, now_us))
            targets.append((req.client_key, req.session, req.timestamp, res.result, sess))
            self.log.write(len(raw).to_bytes(4, "big") + raw)
        if not targets:
            return
        self.log.flush()
        os.fsync(self.log.fileno())
        leaves = [merkle.leaf_hash(leaf_bytes(k, s, t, pb.REPLY_OK, r)) for k, s, t, r, _ in targets]
        root, paths = merkle.build(leaves)
        root_env = seal(
            self.signer, 0, Kind.REPLY, self.cluster_id, pb.ReplyRoot(view=0, seq=self.seq, root=root)
        )
        for i, (k, s, t, r, sess) in enumerate(targets):
            reply = pb.ClientReply(
                root=root_env,
                session=s,
                timestamp=t,
                result=r,
                index=i,
                path=paths[i],
                client_key=k,
                status=pb.REPLY_OK,
            )
            sess.send(spb.ServerFrame(reply=reply.SerializeToString()).SerializeToString())

    async def session(self, requests: Any, context: Any) -> None:
        from bft.pb.bftchat.v1 import service_pb2 as spb
        from bft.wire import WireError, parse

        sess = _BaselineSession()
        sess.send(spb.ServerFrame(nonce=os.urandom(32)).SerializeToString())

        async def read() -> None:
            with contextlib.suppress(Exception):
                async for raw in requests:
                    try:
                        frame = parse(spb.ClientFrame, raw)
                    except WireError:
                        continue
                    if frame.WhichOneof("kind") == "request":
                        self.submit(frame.request, sess)
            sess.wake.set()

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while True:
                while sess.queue:
                    batch, sess.queue = sess.queue, []
                    for frame in batch:
                        await context.write(frame)
                if reader.done():
                    break
                sess.wake.clear()
                if not sess.queue:
                    await sess.wake.wait()
        finally:
            reader.cancel()


async def baseline_server_main(spec: dict[str, Any]) -> int:
    """``--baseline-server``: serve until stdin closes; announce the key and cluster id on stdout."""
    import grpc
    import grpc.aio

    from bft.runtime.server import server_options
    from bft.runtime.tls import server_credentials

    server_obj = BaselineServer(Path(spec["data_dir"]))
    server = grpc.aio.server(options=server_options(1 << 20))
    handler = grpc.method_handlers_generic_handler(
        "bftchat.v1.ClientService", {"Session": grpc.stream_stream_rpc_method_handler(server_obj.session)}
    )
    server.add_generic_rpc_handlers((handler,))
    address = f"127.0.0.1:{spec['port']}"
    tls = spec.get("tls")
    if tls:
        server.add_secure_port(
            address, server_credentials(tls["ca"], tls["cert"], tls["key"], require_client_auth=False)
        )
    else:
        server.add_insecure_port(address)
    await server.start()
    framed = None
    if spec.get("session_port"):
        framed = await _baseline_session_port(server_obj, spec["session_port"], tls)
    print(
        json.dumps(
            {
                "ready": True,
                "key": server_obj.signer.public_key.hex(),
                "cluster_id": server_obj.cluster_id.hex(),
            }
        ),
        flush=True,
    )
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    if framed is not None:
        framed.close()
    await server.stop(0.5)
    return 0


async def _baseline_session_port(server_obj: BaselineServer, port: int, tls: Any) -> asyncio.Server:
    """The baseline's framed session port: the replicas' wire format (``bft.runtime.session_port``)
    in front of the same ``BaselineServer.session``, so the baseline gets the cluster's transport."""
    from bft.framing import encode_frames, read_frame, tune_socket
    from bft.runtime.server import MAX_CLIENT_FRAME
    from bft.runtime.tls import session_server_context

    class Stream:
        def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.reader, self.writer = reader, writer
            self.out: list[bytes] = []

        async def frames(self) -> Any:
            while (raw := await read_frame(self.reader, MAX_CLIENT_FRAME)) is not None:
                yield raw

        async def write(self, frame: bytes) -> None:
            self.writer.write(encode_frames([frame]))
            if self.writer.transport.get_write_buffer_size() > 1 << 16:
                await self.writer.drain()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tune_socket(writer)
        stream = Stream(reader, writer)
        with contextlib.suppress(Exception):
            await server_obj.session(stream.frames(), stream)
        writer.close()

    ctx = session_server_context(tls["cert"], tls["key"]) if tls else None
    return await asyncio.start_server(handle, "127.0.0.1", port, ssl=ctx)


class BaselineClient:
    """What ``ClusterSession`` does for one server: sign, send, verify the one signed reply."""

    def __init__(
        self,
        endpoint: str,
        ca_pem: bytes | None,
        server_key: bytes,
        cluster_id: bytes,
        signer: Any,
        verifier: Any,
        channel: Any,
        session_endpoint: str | None = None,
    ) -> None:
        from bft.core.config import ClusterInfo

        self.session_endpoint = session_endpoint  # framed session port instead of gRPC, if set
        self.ca_pem = ca_pem
        self.writer: asyncio.StreamWriter | None = None
        self.cluster = ClusterInfo((server_key,), cluster_id)
        self.signer = signer
        self.verifier = verifier
        self.channel = channel
        self.session = int.from_bytes(os.urandom(6), "big")
        self.timestamp = 0
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.call: Any = None
        self.reader: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        from client.session import SESSION_METHOD, session_tls, split_endpoint

        if self.session_endpoint is not None:
            from bft.framing import read_frame, tune_socket

            host, port = split_endpoint(self.session_endpoint)
            ctx = session_tls(self.ca_pem) if self.ca_pem is not None else None
            reader, self.writer = await asyncio.open_connection(
                host, port, ssl=ctx, server_hostname=host if ctx else None
            )
            tune_socket(self.writer)

            async def frames() -> Any:
                while (raw := await read_frame(reader, 64 << 20)) is not None:
                    yield raw

            self.reader = asyncio.get_running_loop().create_task(self._read(frames()))
            return
        self.call = self.channel.stream_stream(SESSION_METHOD)()
        self.reader = asyncio.get_running_loop().create_task(self._read(self._grpc_frames()))

    async def _grpc_frames(self) -> Any:
        import grpc.aio

        while (raw := await self.call.read()) is not grpc.aio.EOF:
            yield raw

    async def _read(self, frames: Any) -> None:
        from bft.pb.bftchat.v1 import protocol_pb2 as pb
        from bft.pb.bftchat.v1 import service_pb2 as spb
        from bft.replies import check_reply
        from bft.wire import parse

        async for raw in frames:
            frame = parse(spb.ServerFrame, raw)
            if frame.WhichOneof("kind") != "reply":
                continue
            ts = parse(pb.ClientReply, frame.reply).timestamp
            fut = self.pending.pop(ts, None)
            if fut is not None and not fut.done():
                fut.set_result(
                    check_reply(
                        frame.reply, self.cluster, self.verifier, self.signer.public_key, self.session, ts
                    )
                )

    async def request(self, op: bytes, timeout: float = 30.0) -> Any:
        from bft.pb.bftchat.v1 import service_pb2 as spb
        from bft.wire import make_request

        self.timestamp += 1
        ts = self.timestamp
        raw = make_request(self.signer, self.cluster.cluster_id, self.session, ts, op)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[ts] = fut
        frame = spb.ClientFrame(request=raw).SerializeToString()
        if self.writer is not None:
            from bft.framing import encode_frame

            self.writer.write(encode_frame(frame))
            await self.writer.drain()
        else:
            await self.call.write(frame)
        return await asyncio.wait_for(fut, timeout)

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
        if self.call is not None:
            self.call.cancel()
        if self.writer is not None:
            self.writer.transport.abort()


# ---------------------------------------------------------------- client worker processes


async def worker_main(spec: dict[str, Any]) -> int:
    """``--worker``: drive this process's share of the clients; JSON lines on stdout."""
    from bft.clusterconf import load_config
    from bft.crypto import CachingVerifier, Ed25519Signer, Ed25519Verifier
    from client import e2e
    from client.session import ClusterSession, channel

    tag, total, size = spec["tag"], spec["accounts"], spec["size"]
    mine: list[int] = spec["clients"]
    register: list[int] = spec["register"]
    verifier = CachingVerifier(Ed25519Verifier(), 65536)  # shared: one batch's signed root, many replies
    names, signers, boxes = {}, {}, {}
    for i in range(total):
        name, seed, box = account(tag, i)
        names[i], signers[i], boxes[i] = name, Ed25519Signer(seed), e2e.BoxKeys.from_secret(box)
    clients: dict[int, Any] = {}  # ClusterSession or BaselineClient
    channels: list[Any] = []
    if spec["mode"] == "bft":
        config = load_config(spec["config"])
        ca = None if spec["insecure"] or config.tls_ca is None else Path(config.tls_ca).read_bytes()
        transport = spec.get("transport", "auto")
        if transport == "grpc" or not any(r.session_port for r in config.replicas):
            channels = [channel(r.endpoint, ca) for r in config.replicas]
        for i in sorted(set(mine) | set(register)):
            c = ClusterSession.from_config(config, signers[i], insecure=spec["insecure"], transport=transport)
            for conn, ch in zip(c.conns, channels, strict=False):
                if conn.channel is not None:
                    await conn.channel.close(grace=None)
                    conn.channel = ch
            c.verifier = verifier
            await c.connect()
            clients[i] = c
        await asyncio.gather(*(c.wait_connected(timeout=60) for c in clients.values()))
    else:
        ca = Path(spec["ca"]).read_bytes() if spec.get("ca") else None
        ch = channel(spec["endpoint"], ca)
        channels = [ch]
        for i in sorted(set(mine) | set(register)):
            b = BaselineClient(
                spec["endpoint"],
                ca,
                bytes.fromhex(spec["server_key"]),
                bytes.fromhex(spec["cluster_id"]),
                signers[i],
                verifier,
                ch,
                spec.get("session_endpoint"),
            )
            await b.connect()
            clients[i] = b

    async def request(i: int, op: bytes) -> tuple[bool, str]:
        if spec["mode"] == "bft":
            reply = await clients[i].request(op, timeout=60)
            if reply.status != 0:
                return False, f"status {reply.status}"
            data = reply.result
        else:
            data = (await clients[i].request(op, timeout=60)).result
        result = e2e.parse_result(data)
        if result.WhichOneof("result") == "error":
            return False, result.error.message
        return True, ""

    regs = await asyncio.gather(*(request(i, e2e.register_op(names[i], boxes[i].public)) for i in register))
    bad = [why for ok, why in regs if not ok]
    if bad:
        print(json.dumps({"error": f"register failed: {bad[0]}"}), flush=True)
        return 1
    print(json.dumps({"ready": True}), flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if not line.strip():
        return 0
    go = json.loads(line)
    start, end = go["start"], go["end"]
    latencies: list[float] = []
    done_times: list[float] = []  # wall-clock completion of each successful send (--failover)
    errors: dict[str, int] = {}
    body = os.urandom(size)

    async def drive(i: int) -> None:
        to = (i + 1) % total
        while time.time() < end:
            op = e2e.encrypt_send_op(names[i], boxes[i], names[to], boxes[to].public, body)
            t0 = time.perf_counter()
            try:
                ok, why = await request(i, op)
            except Exception as exc:  # a timeout: count it, keep going
                ok, why = False, type(exc).__name__
            done = time.time()
            if start <= done <= end:
                if ok:
                    latencies.append((time.perf_counter() - t0) * 1000)
                    if spec.get("times"):
                        done_times.append(done)
                else:
                    errors[why] = errors.get(why, 0) + 1

    await asyncio.gather(*(drive(i) for i in mine))
    print(json.dumps({"latencies_ms": latencies, "errors": errors, "done_times": done_times}), flush=True)
    for c in clients.values():
        if spec["mode"] == "bft":
            for conn in c.conns:
                if conn.task is not None:
                    conn.task.cancel()
        else:
            await c.close()
    for ch in channels:
        with contextlib.suppress(Exception):
            await ch.close(grace=None)
    return 0


class Workers:
    """The client processes of one measurement, spoken to by JSON lines."""

    def __init__(self, specs: list[dict[str, Any]], log_dir: Path) -> None:
        from bft.tools.cluster import LocalCluster  # noqa: F401 - same environment as the replicas

        self.procs: list[subprocess.Popen[str]] = []
        self.logs: list[IO[str]] = []
        import bft

        env = dict(os.environ)
        root = str(Path(bft.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        for k, spec in enumerate(specs):
            log = (log_dir / f"client-{k}.log").open("w")
            self.logs.append(log)
            p = subprocess.Popen(
                [sys.executable, "-m", "bft.tools.bench", "--worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=env,
            )
            assert p.stdin is not None
            p.stdin.write(json.dumps(spec) + "\n")
            p.stdin.flush()
            self.procs.append(p)
        self.log_dir = log_dir

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def _line(self, k: int) -> dict[str, Any]:
        p = self.procs[k]
        assert p.stdout is not None
        line = p.stdout.readline()
        if not line:
            tail = (self.log_dir / f"client-{k}.log").read_text(errors="replace").strip().splitlines()[-5:]
            raise BenchError(f"client process {k} exited ({p.poll()}): " + " | ".join(tail))
        msg: dict[str, Any] = json.loads(line)
        if "error" in msg:
            raise BenchError(f"client process {k}: {msg['error']}")
        return msg

    def wait_ready(self) -> None:
        for k in range(len(self.procs)):
            self._line(k)

    def go(self, start: float, end: float) -> None:
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.write(json.dumps({"start": start, "end": end}) + "\n")
            p.stdin.flush()

    def results(self) -> list[dict[str, Any]]:
        return [self._line(k) for k in range(len(self.procs))]

    def close(self) -> None:
        for p in self.procs:
            with contextlib.suppress(Exception):
                if p.stdin:
                    p.stdin.close()
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for log in self.logs:
            log.close()


# ---------------------------------------------------------------- one measurement


@dataclass
class Point:
    """One measured configuration. Times in ms, CPU in seconds unless named otherwise."""

    mode: str  # "bft" or "baseline"
    replicas: int
    clients: int
    client_processes: int
    seconds: float
    size: int
    ops: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    throughput_ops: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    mean_ms: float = 0.0
    cpu_server_s: float = 0.0  # replica processes (or the baseline server)
    cpu_clients_s: float = 0.0
    cpu_per_op_ms: float = 0.0
    batch_mean: float | None = None
    verifications_per_op: float | None = None
    loadavg_before: float = 0.0
    failover: str | None = None  # "kill" (kill -9) or "stop" (SIGSTOP) of the primary, if measured
    fault_at_s: float | None = None  # seconds into the window
    outage_s: float | None = None  # longest time with no commit from the fault on (see ``outage``)
    view_after: float | None = None  # the highest view a replica reports at the end
    replica_rss_mb: float | None = None  # the largest replica's resident memory at the end
    replica_peak_rss_mb: float | None = None  # the largest VmHWM (peak resident memory) of a replica
    loop_lag_p999_ms: float | None = None  # upper bound of the bucket holding the replicas' p99.9
    gc_pause_max_ms: float | None = None  # upper bound of the longest GC pause bucket seen
    preload_accounts: int = 0  # state installed before the run (--preload-accounts)
    preload_messages: int = 0
    # Added for the failover figure (--failover only; keys above are unchanged):
    outage_from_s: float | None = None  # seconds into the window where the outage_s gap starts
    timeline: list[int] | None = None  # completed sends per timeline_bucket_s from the window's start
    timeline_bucket_s: float | None = None
    view_change_timeout_s: float | None = None  # the cluster's initial view-change timeout
    # Added with the session port (keys above are unchanged):
    transport: str = "auto"  # client sessions: "auto" (session ports) or "grpc" (--transport)
    # Added with --protocol (keys above are unchanged): the protocol parameters set on the command
    # line, as given (the rest are the defaults).
    protocol: dict[str, Any] | None = None


@dataclass
class Fault:
    """A fault injected during the window: ``act`` at ``at`` seconds in, ``heal`` after the window."""

    kind: str
    at: float
    pid: int
    replica: int

    def act(self) -> None:
        os.kill(self.pid, signal.SIGKILL if self.kind == "kill" else signal.SIGSTOP)

    def heal(self) -> None:
        if self.kind == "stop":
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)


def outage(done_times: Sequence[float], fault_time: float, end: float) -> float:
    """The longest stretch without a completed send from ``fault_time`` to ``end``.

    Sends prepared before the fault may still complete just after it (the backups commit them
    without the primary), so the outage is the longest gap, not the time to the first completion.
    With no completion at all after the fault it is ``end - fault_time``, a lower bound.
    """
    return outage_span(done_times, fault_time, end)[1]


def outage_span(done_times: Sequence[float], fault_time: float, end: float) -> tuple[float, float]:
    """(start, length) of the gap ``outage`` measures: where to shade it on the timeline."""
    longest, at, prev = 0.0, fault_time, fault_time
    for t in sorted(x for x in done_times if x >= fault_time):
        if t - prev > longest:
            longest, at = t - prev, prev
        prev = t
    if end - prev > longest:
        longest, at = end - prev, prev
    return at, longest


TIMELINE_BUCKET = 0.1  # seconds: fine enough to see a 2 s view change, 600 numbers for a minute


def timeline(
    done_times: Sequence[float], start: float, end: float, bucket: float = TIMELINE_BUCKET
) -> list[int]:
    """Completed sends per ``bucket`` seconds from ``start`` to ``end`` (the last bucket may be
    shorter); completions outside the window are left out."""
    counts = [0] * max(1, math.ceil((end - start) / bucket - 1e-9))
    for t in done_times:
        if start <= t <= end:
            counts[min(int((t - start) / bucket), len(counts) - 1)] += 1
    return counts


def _percentile(values: list[float], q: float) -> float:
    """Quantile ``q`` (0 < q < 1, in hundredths) of the samples, interpolated between the nearest
    ones (``statistics.quantiles``, inclusive: the samples are the whole population measured)."""
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def _samples(port: int) -> Iterator[Sample]:
    """The samples of a replica's /metrics page (none when it cannot be read)."""
    for family in text_string_to_metric_families(metrics_text(port)):
        yield from family.samples


def scrape(ports: Sequence[int]) -> dict[str, float]:
    """Sum of a few counters over the replicas' /metrics (when the cluster serves them)."""
    wanted = (
        "bft_committed_requests_total",
        "bft_committed_batches_total",
        "bft_signature_verifications_total",
    )
    out = dict.fromkeys(wanted, 0.0)
    for port in ports:
        for sample in _samples(port):
            if sample.name in out and not sample.labels:
                out[sample.name] += sample.value
    return out


def metrics_text(port: int) -> str:
    """A replica's /metrics page, or "" when it cannot be read (the samples are then missing)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            return str(r.read().decode())
    except OSError:
        return ""


def metric(port: int, name: str) -> float | None:
    """One unlabelled sample from a replica's /metrics, or None if it cannot be read."""
    for sample in _samples(port):
        if sample.name == name and not sample.labels:
            return float(sample.value)
    return None


def histogram(ports: Sequence[int], name: str, labels: dict[str, str] | None = None) -> dict[float, float]:
    """Cumulative bucket counts of histogram ``name`` summed over the replicas: {le: count}."""
    out: dict[float, float] = {}
    for port in ports:
        for sample in _samples(port):
            if sample.name != f"{name}_bucket":
                continue
            le = sample.labels.get("le", "")
            if {k: v for k, v in sample.labels.items() if k != "le"} == (labels or {}):
                bound = float("inf") if le == "+Inf" else float(le)
                out[bound] = out.get(bound, 0.0) + sample.value
    return out


def bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float | None:
    """The upper bound of the bucket that holds quantile ``q`` of what was observed in between."""
    delta = sorted((le, after[le] - before.get(le, 0.0)) for le in after)
    if not delta or delta[-1][1] <= 0:
        return None
    for le, count in delta:
        if count >= q * delta[-1][1]:
            return le
    return None


def rss_mb(pid: int) -> tuple[float, float] | None:
    """(VmRSS, VmHWM) of a process in MiB, from /proc."""
    from bft.tools.attack import memory_kib

    kib = memory_kib(pid)
    return None if kib is None else (kib[0] / 1024, kib[1] / 1024)


def primary_of(ports: Sequence[int], n: int) -> int:
    """The primary of the view most replicas report (view mod n)."""
    views = [v for v in (metric(port, "bft_view") for port in ports) if v is not None]
    if not views:
        raise BenchError("--failover needs the replicas' metrics (bft_view) to find the primary")
    view = int(statistics.mode(views))
    return view % n


def measure(
    specs: list[dict[str, Any]],
    server_pids: Sequence[int],
    point: Point,
    log_dir: Path,
    metrics_ports: Sequence[int] = (),
    warmup: float = WARMUP,
    profile: Path | None = None,
    fault: Fault | None = None,
) -> Point:
    """Run the client processes through registration, warm-up and the window; fill in ``point``."""
    workers = Workers(specs, log_dir)
    fault_time = 0.0
    try:
        workers.wait_ready()
        point.loadavg_before = loadavg()
        start = time.time() + warmup
        end = start + point.seconds
        workers.go(start, end)
        time.sleep(max(0.0, start - time.time()))
        cpu0 = cpu_of([*server_pids, *workers.pids])
        m0 = scrape(metrics_ports)
        lag0 = histogram(metrics_ports, "bft_event_loop_lag_seconds")
        gc0 = histogram(metrics_ports, "bft_gc_pause_seconds", {"generation": "2"})
        profilers = []
        if profile is not None:
            named = [(f"server-{i}", pid) for i, pid in enumerate(server_pids)]
            named += [(f"client-{k}", pid) for k, pid in enumerate(workers.pids)]
            profilers = start_profilers(profile, point, named, point.seconds)
        if fault is not None:
            time.sleep(max(0.0, start + fault.at - time.time()))
            fault_time = time.time()
            fault.act()
        time.sleep(max(0.0, end - time.time()))
        cpu1 = cpu_of([*server_pids, *workers.pids])
        m1 = scrape(metrics_ports)
        lag1 = histogram(metrics_ports, "bft_event_loop_lag_seconds")
        gc1 = histogram(metrics_ports, "bft_gc_pause_seconds", {"generation": "2"})
        memory = [m for m in (rss_mb(pid) for pid in server_pids) if m is not None]
        for pid in server_pids:
            if pid not in cpu1 and (fault is None or pid != fault.pid):
                raise BenchError(f"server process {pid} died during the run")
        results = workers.results()
        for proc in profilers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
    finally:
        if fault is not None:
            fault.heal()
        workers.close()
    lat = sorted(x for r in results for x in r["latencies_ms"])
    if memory:
        point.replica_rss_mb = max(m[0] for m in memory)
        point.replica_peak_rss_mb = max(m[1] for m in memory)
    lag = bucket_quantile(lag0, lag1, 0.999)
    point.loop_lag_p999_ms = None if lag is None else lag * 1000
    longest = bucket_quantile(gc0, gc1, 1.0)
    point.gc_pause_max_ms = None if longest is None else longest * 1000
    if fault is not None:
        point.failover, point.fault_at_s = fault.kind, fault.at
        done = [t for r in results for t in r["done_times"]]
        gap_from, point.outage_s = outage_span(done, fault_time, end)
        point.outage_from_s = gap_from - start
        point.timeline, point.timeline_bucket_s = timeline(done, start, end), TIMELINE_BUCKET
    # Also without a fault: a healthy run that ends above view 0 had a needless view change.
    views = [v for v in (metric(port, "bft_view") for port in metrics_ports) if v is not None]
    point.view_after = max(views) if views else None
    for r in results:
        for k, v in r["errors"].items():
            point.errors[k] = point.errors.get(k, 0) + v
    point.ops = len(lat)
    point.throughput_ops = len(lat) / point.seconds
    point.p50_ms = _percentile(lat, 0.50)
    point.p99_ms = _percentile(lat, 0.99)
    point.max_ms = lat[-1] if lat else float("nan")
    point.mean_ms = statistics.fmean(lat) if lat else float("nan")
    point.cpu_server_s = sum(cpu1[p] - cpu0.get(p, cpu1[p]) for p in server_pids if p in cpu1)
    point.cpu_clients_s = sum(cpu1[p] - cpu0[p] for p in workers.pids if p in cpu0 and p in cpu1)
    if lat:
        point.cpu_per_op_ms = (point.cpu_server_s + point.cpu_clients_s) / len(lat) * 1000
    if metrics_ports:
        reqs = m1["bft_committed_requests_total"] - m0["bft_committed_requests_total"]
        batches = m1["bft_committed_batches_total"] - m0["bft_committed_batches_total"]
        verifs = m1["bft_signature_verifications_total"] - m0["bft_signature_verifications_total"]
        n = point.replicas
        if batches > 0:
            point.batch_mean = reqs / batches
        if reqs > 0:
            point.verifications_per_op = verifs / (reqs / n)  # per replica-executed request, summed
    return point


# ---------------------------------------------------------------- profiling (py-spy)

# Leaf frames where a sampled thread waits rather than computes: left out of the CPU profile
# (epoll, fsync inside the log's group write, idle executor threads, the gRPC poller thread).
_WAITING = re.compile(
    r"^(\w+\.)?select \(selectors\.py|^ReplicaLog\._write_group \(|^Thread\.run \(threading\.py"
    r"|^_worker \(concurrent/futures/thread\.py|^(Condition\.)?wait \(threading\.py"
)


def start_profilers(
    directory: Path, point: Point, named: Sequence[tuple[str, int]], seconds: float
) -> list[subprocess.Popen[bytes]]:
    """``py-spy record --gil`` on each process for the window: Python frames of the thread holding the
    GIL (on-CPU Python; gRPC C-core threads are not in it), as raw collapsed stacks."""
    import shutil

    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise UsageError("--profile needs py-spy (pip install py-spy)")
    directory.mkdir(parents=True, exist_ok=True)
    procs = []
    for name, pid in named:
        out = directory / f"{point.mode}-n{point.replicas}-c{point.clients}-{name}.txt"
        duration = str(max(1, int(seconds)))
        cmd = [spy, "record", "-p", str(pid), "-d", duration, "-r", "100", "--gil", "-f", "raw"]
        procs.append(
            subprocess.Popen([*cmd, "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )
    return procs


def summarise_profile(path: Path, top: int = 25) -> str:
    """Self and inclusive share of each function over the samples where the process computed
    (a leaf in ``_WAITING`` - idle in epoll, blocked in fsync, the gRPC poller thread - is a wait)."""
    from collections import Counter

    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = waiting = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        if not frames[-1] or _WAITING.match(frames[-1]):
            waiting += int(count)
            continue
        total += int(count)
        own[frames[-1]] += int(count)
        for f in set(frames):
            incl[f] += int(count)
    lines = [f"{path.name}: {total} computing samples, {waiting} waiting (epoll, fsync, gRPC poller)"]
    for label, counter in (("self", own), ("incl", incl)):
        for fn, c in counter.most_common(top):
            lines.append(f"  {label} {100 * c / max(total, 1):5.1f}%  {fn}")
    return "\n".join(lines)


def client_specs(
    mode: str, clients: int, processes: int, tag: str, size: int, extra: dict[str, Any]
) -> list[dict[str, Any]]:
    """Split ``clients`` over ``processes``; account ``clients`` (for a lone client) is a recipient."""
    total = max(clients, 2)
    processes = max(1, min(processes, clients))
    specs = []
    for k in range(processes):
        mine = list(range(k, clients, processes))
        register = mine + (list(range(clients, total)) if k == 0 else [])
        specs.append(
            {
                "mode": mode,
                "tag": tag,
                "accounts": total,
                "clients": mine,
                "register": register,
                "size": size,
                **extra,
            }
        )
    return specs


def default_processes(clients: int) -> int:
    return 1 if clients < 8 else 2


# ---------------------------------------------------------------- clusters and the baseline server


@contextlib.contextmanager
def bench_cluster(
    n: int,
    work: Path,
    insecure: bool,
    out: IO[str],
    preload: tuple[int, int] = (0, 0),
    transport: str = "auto",
    params: Any = None,
) -> Iterator[tuple[Any, list[int], list[int]]]:
    """A fresh local cluster (as bftchat-cluster makes it) with metrics ports; (config, pids, ports).
    ``preload`` = (accounts, messages) installs that state first (``bft.tools.preload``);
    ``params``: its protocol parameters (``--protocol``; None: the defaults)."""
    from bft.tools.cluster import LocalCluster, StatusBoard, ensure_cluster

    taken: set[int] = set()
    directory = work / f"cluster-n{n}"
    config = ensure_cluster(
        directory,
        n,
        base_port=free_base(n, taken),
        peer_base_port=free_base(n, taken),
        metrics_base_port=free_base(n, taken),
        session_base_port=free_base(n, taken),
        params=params,
    )
    extra = ("--grpc-sessions",) if transport == "grpc" else ()
    cluster = LocalCluster(directory, config, insecure=insecure, log_level="WARNING", extra_args=extra)
    cluster.init_genesis()
    ready_timeout = READY_TIMEOUT
    if any(preload):
        install_preload(cluster, *preload, out)
        ready_timeout = READY_TIMEOUT * 5  # every replica restores the big state first
    cluster.start_all()
    try:
        board = StatusBoard(config, cluster.ca_pem)

        async def wait_up() -> None:
            deadline = time.monotonic() + ready_timeout
            try:
                while True:
                    codes = {i: cluster.exit_code(i) for i in range(n)}
                    dead = [i for i, c in codes.items() if c is not None]
                    if dead:
                        raise BenchError(f"replica {dead[0]} exited: {cluster.tail(dead[0], 3)}")
                    await board.poll(codes)
                    views = {st.status.view for st in board.states if st.up}
                    if (
                        board.up_count() == n
                        and len(views) == 1
                        and all(p.status.peers_connected == n - 1 for p in board.states)
                    ):
                        return
                    if time.monotonic() > deadline:
                        raise BenchError(f"cluster not up in {ready_timeout:.0f}s: {board.summary()}")
                    await asyncio.sleep(0.2)
            finally:
                await board.close()

        asyncio.run(wait_up())
        print(f"  cluster n={n} up ({directory})", file=out, flush=True)
        ports = [r.metrics_port for r in config.replicas]
        yield config, list(cluster.pids().values()), ports
    finally:
        codes = cluster.stop_all()
        unclean = {i: c for i, c in codes.items() if c != 0}
        if unclean:
            print(f"  note: replicas stopped uncleanly: {unclean}", file=out)


def install_preload(cluster: Any, accounts: int, messages: int, out: IO[str]) -> None:
    """Build the preloaded state for this cluster and put it in every replica's log."""
    from bft.keys import load_replica_key
    from bft.tools import preload

    t0 = time.perf_counter()
    info = cluster.config.info()
    built = preload.build(accounts, messages, info.cluster_id, time.time_ns() // 1000)
    signers = [load_replica_key(cluster.key_path(i))[1] for i in range(info.n)]
    record = preload.checkpoint(info, signers, built.app, info.params.checkpoint_interval, built.last_ts)
    preload.install([cluster.data_dir(i) for i in range(info.n)], info, signers, record)
    print(
        f"  preloaded {accounts} accounts and {messages} messages: snapshot "
        f"{len(record.snapshot) / 2**20:.0f} MiB, {time.perf_counter() - t0:.0f} s",
        file=out,
        flush=True,
    )


@contextlib.contextmanager
def baseline_server(
    work: Path, insecure: bool, transport: str = "auto"
) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any]]]:
    """The baseline server process; yields it and the client-side spec fields to reach it. With
    ``transport`` auto its clients use a framed session port, as the cluster's do."""
    from bft.runtime.tls import make_ca, make_replica_cert, write_cert_and_key

    directory = work / "baseline"
    directory.mkdir(parents=True, exist_ok=True)
    port = free_base(1, set())
    tls = None
    if not insecure:
        ca = make_ca(directory / "tls", name="baseline", force=True)
        cert, key = make_replica_cert(ca, 0, ["127.0.0.1"])
        write_cert_and_key(
            directory / "tls" / "server.pem", directory / "tls" / "server.key", cert, key, force=True
        )
        tls = {
            "ca": str(directory / "tls" / "ca.pem"),
            "cert": str(directory / "tls" / "server.pem"),
            "key": str(directory / "tls" / "server.key"),
        }
    session_port = free_base(1, {port}) if transport != "grpc" else None
    spec = {
        "port": port,
        "data_dir": str(directory / f"data-{time.time_ns()}"),
        "tls": tls,
        "session_port": session_port,
    }
    import bft

    env = dict(os.environ)
    root = str(Path(bft.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    log = (directory / "server.log").open("a")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bft.tools.bench", "--baseline-server"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=env,
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(spec) + "\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        if not line:
            raise BenchError(f"baseline server failed: {(directory / 'server.log').read_text()[-500:]}")
        hello = json.loads(line)
        client_side = {
            "endpoint": f"127.0.0.1:{port}",
            "server_key": hello["key"],
            "cluster_id": hello["cluster_id"],
            "ca": tls["ca"] if tls else None,
            "session_endpoint": f"127.0.0.1:{session_port}" if session_port else None,
        }
        yield proc, client_side
    finally:
        with contextlib.suppress(Exception):
            if proc.stdin:
                proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# ---------------------------------------------------------------- reporting


def describe_clients(p: Point) -> str:
    procs = f"{p.client_processes} client process{'es' if p.client_processes > 1 else ''}"
    how = (
        "sessions sharing one gRPC channel per server per process"
        if p.transport == "grpc"
        else "sessions each with a connection to every server's session port"
    )
    plural = "s" if p.clients > 1 else ""
    return f"{p.clients} client{plural} (each its own account and key; {procs}, asyncio {how})"


def _carrier(p: Point) -> str:
    return "gRPC" if p.transport == "grpc" else "session port"


def report(p: Point, base: Point | None, crypto: CryptoCost, ncores: int, out: IO[str]) -> None:
    floor_us = crypto.floor_us(p.replicas)
    floor_ops = ncores / floor_us * 1e6
    print(
        f"n={p.replicas}: {describe_clients(p)}, {p.size}-byte messages, {p.seconds:.0f} s "
        f"(load average before: {p.loadavg_before:.2f} on {ncores} cores)",
        file=out,
    )
    print(f"  committed sends/s      {p.throughput_ops:10.1f}   ({p.ops} in the window)", file=out)
    print(
        f"  latency ms             p50 {p.p50_ms:.2f}  p99 {p.p99_ms:.2f}  max {p.max_ms:.2f}  "
        f"(mean {p.mean_ms:.2f})",
        file=out,
    )
    if p.errors:
        print(f"  errors                 {p.errors}", file=out)
    busy = (p.cpu_server_s + p.cpu_clients_s) / (p.seconds * ncores) * 100
    server_ms = p.cpu_server_s / max(p.ops, 1) * 1000
    client_ms = p.cpu_clients_s / max(p.ops, 1) * 1000
    print(
        f"  CPU per committed op   {p.cpu_per_op_ms:.3f} ms (replicas {server_ms:.3f}, "
        f"clients {client_ms:.3f}); our processes used {busy:.0f}% of the machine",
        file=out,
    )
    if p.failover is not None:
        what = "kill -9" if p.failover == "kill" else "SIGSTOP (frozen)"
        print(
            f"  failover               {what} of the primary {p.fault_at_s:.1f} s into the window: "
            f"no commit for {p.outage_s:.2f} s (outage_s); view at the end {p.view_after}; "
            "latencies above are over the whole window",
            file=out,
        )
    if p.replica_rss_mb is not None:
        lag = "-" if p.loop_lag_p999_ms is None else f"<= {p.loop_lag_p999_ms:g} ms"
        gcp = "none" if p.gc_pause_max_ms is None else f"<= {p.gc_pause_max_ms:g} ms"
        print(
            f"  replicas               RSS {p.replica_rss_mb:.0f} MiB (largest; peak "
            f"{p.replica_peak_rss_mb:.0f}); event-loop lag p99.9 {lag}; longest full GC {gcp} "
            "(histogram buckets)",
            file=out,
        )
    if p.batch_mean is not None:
        v = f"{p.verifications_per_op:.1f}" if p.verifications_per_op is not None else "?"
        print(
            f"  requests per batch     {p.batch_mean:.1f} (mean); replica signature checks per op {v}",
            file=out,
        )
    print(
        f"  crypto floor           1 sign + {p.replicas} verifies = {floor_us:.0f} µs CPU per send "
        f"(sign {crypto.sign_us:.0f} µs, verify {crypto.verify_us:.0f} µs) -> {floor_ops:.0f} sends/s "
        f"over {ncores} cores",
        file=out,
    )
    if p.ops:
        print(
            f"  vs the floor           throughput {p.throughput_ops / floor_ops:.0%} of it; "
            f"CPU per op {p.cpu_per_op_ms * 1000 / floor_us:.1f}x it",
            file=out,
        )
    if base is not None:
        ratio = p.throughput_ops / base.throughput_ops if base.throughput_ops else float("nan")
        print(
            f"  baseline (1 process, no replication; same app, {_carrier(base)}, TLS, signatures, fsync): "
            f"{base.throughput_ops:.1f} sends/s, p50 {base.p50_ms:.2f} ms, "
            f"CPU/op {base.cpu_per_op_ms:.3f} ms; BFT/baseline = {ratio:.2f}",
            file=out,
        )
    out.flush()


def as_json(p: Point, base: Point | None, crypto: CryptoCost, ncores: int) -> dict[str, Any]:
    floor_us = crypto.floor_us(p.replicas)
    floor_ops = ncores / floor_us * 1e6
    d = asdict(p)
    d.update(
        {
            "baseline_ops": base.throughput_ops if base else None,
            "baseline_p50_ms": base.p50_ms if base else None,
            "baseline_p99_ms": base.p99_ms if base else None,
            "baseline_cpu_per_op_ms": base.cpu_per_op_ms if base else None,
            "sign_us": crypto.sign_us,
            "verify_us": crypto.verify_us,
            "floor_cpu_us": floor_us,
            "floor_ops": floor_ops,
            "floor_ratio": p.throughput_ops / floor_ops,
            "cpu_ratio": p.cpu_per_op_ms * 1000 / floor_us if p.ops else None,
            "cores": ncores,
        }
    )
    return d


def markdown(rows: list[dict[str, Any]]) -> str:
    head = (
        "| n | clients | sends/s | p50 ms | p99 ms | max ms | CPU/op ms | batch | baseline sends/s | "
        "baseline p50 ms | floor sends/s | of floor |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        batch = f"{r['batch_mean']:.1f}" if r.get("batch_mean") else "-"
        base = f"{r['baseline_ops']:.0f}" if r.get("baseline_ops") else "-"
        bp50 = f"{r['baseline_p50_ms']:.2f}" if r.get("baseline_p50_ms") else "-"
        lines.append(
            f"| {r['replicas']} | {r['clients']} | {r['throughput_ops']:.0f} | {r['p50_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r['max_ms']:.1f} | {r['cpu_per_op_ms']:.2f} | {batch} | {base} | {bp50} | "
            f"{r['floor_ops']:.0f} | {r['floor_ratio']:.0%} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> list[Path]:
    """Every figure the rows allow (``bft.tools.benchplot``, needs matplotlib): throughput and latency
    against clients at ``path``, and next to it ``-failover`` and ``-state`` figures when the rows have
    failover or preload points. Returns the files written."""
    try:
        from bft.tools import benchplot
    except ImportError:
        raise UsageError(
            "--plot needs matplotlib: pip install -e '.[bench]' (or run scripts/bench)"
        ) from None
    return benchplot.plot_all(rows, path)


# ---------------------------------------------------------------- entry point


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def _count_list(text: str) -> list[int]:
    """Like ``_int_list`` but 0 is allowed (an empty state)."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected numbers 0 or more, got {text!r}")
    return values


def preload_sizes(accounts: Sequence[int], messages: Sequence[int]) -> list[tuple[int, int]]:
    """The (accounts, messages) pairs of ``--preload-accounts``/``--preload-messages``: paired by
    position; a single value of either goes with every value of the other."""
    if len(accounts) != len(messages) and 1 not in (len(accounts), len(messages)):
        raise UsageError(
            f"--preload-accounts has {len(accounts)} sizes and --preload-messages {len(messages)}: "
            "give as many of each (paired by position), or one value of either"
        )
    count = max(len(accounts), len(messages))
    pairs = [
        (accounts[k if len(accounts) > 1 else 0], messages[k if len(messages) > 1 else 0])
        for k in range(count)
    ]
    for a, m in pairs:
        if a < 0 or m < 0:
            raise UsageError("--preload-accounts and --preload-messages must not be negative")
        if m and a < 2:
            raise UsageError(
                f"--preload-messages {m} needs --preload-accounts 2 or more (it is paired with {a})"
            )
    return pairs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bftchat-bench",
        description="Measure committed chat sends/s, latency and CPU per op of a local cluster, an "
        "unreplicated baseline, and this machine's Ed25519 floor.",
    )
    add_version_argument(p)
    p.add_argument("--replicas", type=_int_list, default=[4], help="n, or a list: 4,7 (default 4)")
    p.add_argument("--clients", type=_int_list, default=[20], help="C, or a list: 1,20,50 (default 20)")
    p.add_argument(
        "--seconds", type=float, default=10.0, help="measured window per point (default %(default)s)"
    )
    p.add_argument("--size", type=int, default=DEFAULT_SIZE, help="message bytes (default %(default)s)")
    p.add_argument(
        "--processes", type=int, default=None, help="client processes (default 1, or 2 from 8 clients)"
    )
    p.add_argument(
        "--warmup", type=float, default=WARMUP, help="seconds before the window (default %(default)s)"
    )
    p.add_argument("--config", help="use this running cluster instead of starting one")
    p.add_argument("--insecure", action="store_true", help="plaintext gRPC (the cluster must run --insecure)")
    p.add_argument("--no-baseline", action="store_true", help="skip the unreplicated baseline")
    p.add_argument(
        "--transport",
        choices=("auto", "grpc"),
        default="auto",
        help="client sessions: auto = the replicas' session ports where the config has them (and a "
        "session port for the baseline), grpc = the gRPC Session stream for all, with the replicas "
        "started --grpc-sessions (default %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per measured point on stdout")
    p.add_argument("--markdown", action="store_true", help="finish with a Markdown table of every point")
    p.add_argument(
        "--plot",
        metavar="FILE",
        help="write PNG plots (matplotlib): FILE, sends/s and latency against clients with the baseline "
        "and the targets; FILE-failover.png, commits/s over time, for --failover points; FILE-state.png, "
        "cost against the preloaded state, when points differ only in preload size",
    )
    p.add_argument("--save", metavar="FILE", help="append every point as a JSON line to FILE")
    p.add_argument("--plot-from", metavar="FILE", help="only plot/tabulate saved JSON lines (no run)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, data)")
    p.add_argument("--profile", metavar="DIR", help="py-spy every server and client process in the window")
    p.add_argument(
        "--preload-accounts",
        type=_count_list,
        default=[0],
        metavar="N[,N...]",
        help="start each cluster with N registered accounts (a checkpoint built by a fast path, "
        "bft/tools/preload.py), or a list for a state-size curve: 0,100000,1000000 measures every "
        "--replicas/--clients point once per size, each size on its own fresh cluster (default 0)",
    )
    p.add_argument(
        "--preload-messages",
        type=_count_list,
        default=[0],
        metavar="M[,M...]",
        help="...and M undelivered messages among up to 1,000 of them; a list pairs with "
        "--preload-accounts by position (0,20000,200000 with 0,100000,1000000 gives 0/0, "
        "100000/20000, 1000000/200000) and must be as long, a single value goes with every size "
        "(default 0)",
    )
    p.add_argument(
        "--protocol",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="a protocol parameter of the clusters the bench starts, as in a config's [protocol] "
        "table (docs/OPERATIONS.md), e.g. state_pages=131072; repeatable; JSON key protocol "
        "(default: none, the defaults of bft/core/config.py)",
    )
    p.add_argument(
        "--failover",
        choices=["kill", "stop"],
        default=None,
        help="stop the primary during the window (kill: kill -9; stop: SIGSTOP, a frozen primary) and "
        "report the longest time with no commit after it (JSON key outage_s); a fresh cluster per point "
        "(default: none)",
    )
    p.add_argument(
        "--failover-at",
        type=float,
        default=None,
        metavar="S",
        help="seconds into the window for --failover (default: a third of --seconds)",
    )
    return p


def run(args: argparse.Namespace) -> int:
    out = sys.stderr if args.json else sys.stdout
    rows: list[dict[str, Any]] = []
    if args.plot_from:
        try:
            rows = [json.loads(x) for x in Path(args.plot_from).read_text().splitlines() if x.strip()]
        except (OSError, ValueError) as exc:
            raise UsageError(f"--plot-from {args.plot_from}: {exc}") from None
        if args.plot:
            for written in plot(rows, Path(args.plot)):
                print(f"  wrote {written}", file=sys.stderr)
        print(markdown(rows))
        return 0
    if args.size < 1 or args.size > 60_000:
        raise UsageError("--size must be 1..60000 bytes")
    if args.seconds <= 0:
        raise UsageError("--seconds must be positive")
    fault_at = args.failover_at if args.failover_at is not None else args.seconds / 3
    if args.failover and args.config:
        raise UsageError("--failover starts its own clusters: it cannot be used with --config")
    sizes = preload_sizes(args.preload_accounts, args.preload_messages)
    if any(a or m for a, m in sizes) and args.config:
        raise UsageError("--preload-* builds its own clusters: it cannot be used with --config")
    if args.protocol and args.config:
        raise UsageError("--protocol sets up the clusters the bench starts: it cannot be used with --config")
    args.params = args.protocol_table = None
    if args.protocol:
        from bft.clusterconf import ConfigError, parse_protocol, protocol_table

        try:
            args.params = parse_protocol(args.protocol)
            args.protocol_table = protocol_table(args.protocol)  # for the JSON rows, as given
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
    if args.failover and not 0 < fault_at < args.seconds:
        raise UsageError("--failover-at must be inside the window (0 < S < --seconds)")
    config = None
    if args.config:
        from bft.clusterconf import ConfigError, load_config

        try:
            config = load_config(args.config)
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        args.replicas = [config.n]
    ncores = cores()
    crypto = measure_crypto(args.size)
    print(
        f"bftchat-bench: {ncores} cores, load average {loadavg():.2f}; Ed25519 sign {crypto.sign_us:.1f} µs, "
        f"verify {crypto.verify_us:.1f} µs ({args.size + 200}-byte message, best of 3)",
        file=out,
        flush=True,
    )
    work = Path(tempfile.mkdtemp(prefix="bftchat-bench-"))
    baselines: dict[int, Point] = {}
    profile = Path(args.profile) if args.profile else None
    try:
        if not args.no_baseline:
            with baseline_server(work, args.insecure, args.transport) as (server, reach):
                for c in args.clients:
                    procs = args.processes or default_processes(c)
                    point = Point("baseline", 1, c, procs, args.seconds, args.size, transport=args.transport)
                    tag = os.urandom(4).hex()
                    specs = client_specs("baseline", c, procs, tag, args.size, reach)
                    print(f"  baseline, {c} clients ...", file=out, flush=True)
                    baselines[c] = measure(
                        specs, [server.pid], point, work, warmup=args.warmup, profile=profile
                    )
        for n, (j, preload) in itertools.product(args.replicas, enumerate(sizes)):
            where = work if len(sizes) == 1 else work / f"preload-{j}"  # a fresh cluster per size
            if config is not None:
                pids = pids_running(config.path)
                ports = [r.metrics_port for r in config.replicas if r.metrics_port]
                ctx: Any = contextlib.nullcontext((config, pids, ports))
                if not pids:
                    print(
                        "  note: no replica process of this config found here: CPU is the clients' only",
                        file=out,
                    )
            else:
                ctx = bench_cluster(n, where, args.insecure, out, preload, args.transport, args.params)
            fresh = args.failover is not None
            for c, (cfg, pids, ports) in _clusters(ctx, args.clients, fresh, n, where, preload, args, out):
                procs = args.processes or default_processes(c)
                point = Point("bft", n, c, procs, args.seconds, args.size, transport=args.transport)
                point.protocol = args.protocol_table
                point.preload_accounts, point.preload_messages = preload
                tag = os.urandom(4).hex()
                extra = {"config": str(cfg.path), "insecure": args.insecure, "transport": args.transport}
                state = f", preloaded {preload[0]} accounts and {preload[1]} messages" if any(preload) else ""
                print(f"  n={n}, {c} clients{state} ...", file=out, flush=True)
                fault = None
                if args.failover:
                    primary = primary_of(ports, n)
                    fault = Fault(args.failover, fault_at, pids[primary], primary)
                    extra["times"] = True
                    point.view_change_timeout_s = cfg.info().params.view_change_timeout
                measured = measure(
                    client_specs("bft", c, procs, tag, args.size, extra),
                    pids,
                    point,
                    work,
                    ports,
                    args.warmup,
                    profile,
                    fault,
                )
                base = baselines.get(c)
                report(measured, base, crypto, ncores, out)
                row = as_json(measured, base, crypto, ncores)
                rows.append(row)
                if args.json:
                    print(json.dumps(row), flush=True)
                if args.save:
                    with open(args.save, "a") as f:
                        f.write(json.dumps(row) + "\n")
                if not measured.ops:
                    raise BenchError(f"no send completed at n={n}, {c} clients (logs in {work})")
    finally:
        if args.keep:
            print(f"  kept {work}", file=out)
        else:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    if profile is not None:
        summary = "\n\n".join(summarise_profile(f) for f in sorted(profile.glob("*.txt")) if f.stat().st_size)
        (profile / "summary.md").write_text(summary + "\n")
        print(f"  profiles in {profile} (summary.md: top functions by CPU samples)", file=out)
    if args.markdown:
        print(markdown(rows), file=out)
    if args.plot:
        for written in plot(rows, Path(args.plot)):
            print(f"  wrote {written}", file=out)
    return 0


def _clusters(
    shared: Any,
    clients: list[int],
    fresh: bool,
    n: int,
    work: Path,
    preload: tuple[int, int],
    args: argparse.Namespace,
    out: IO[str],
) -> Iterator[tuple[int, tuple[Any, list[int], list[int]]]]:
    """(clients, cluster) for each point: one shared cluster, or a fresh one per point (a failover
    measurement leaves its cluster with a dead or frozen primary)."""
    if not fresh:
        with shared as cluster:
            for c in clients:
                yield c, cluster
        return
    for k, c in enumerate(clients):
        with bench_cluster(
            n, work / f"point-{k}", args.insecure, out, preload, args.transport, args.params
        ) as cluster:
            yield c, cluster


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        return asyncio.run(worker_main(json.loads(sys.stdin.readline())))
    if argv[:1] == ["--baseline-server"]:
        return asyncio.run(baseline_server_main(json.loads(sys.stdin.readline())))
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
