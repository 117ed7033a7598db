"""Real replica processes on 127.0.0.1 for the runtime tests.

``Cluster`` writes keys, TLS files and a config into a temporary directory, starts replicas as
``python -m bft.runtime.main`` subprocesses on free loopback ports, waits for gRPC health, and stops
exactly the processes it started, by PID (SIGTERM, then SIGKILL). It can kill -9 one replica,
restart it, or wipe its data dir and restart it with ``--recover``. Each replica's stderr goes to
``replica-<i>.log`` beside its data dir (appended across restarts) for post-mortems.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bft.clusterconf import load_config
from bft.core.config import Params
from bft.crypto import Ed25519Signer, Ed25519Verifier, Signer
from bft.framing import encode_frame, read_frame
from bft.keys import load_replica_key
from bft.pb.bftchat.v1 import service_pb2 as spb
from bft.storage.log import ReplicaLog
from bft.tools import keygen
from client import e2e
from client.session import (
    SESSION_METHOD,
    STATUS_METHOD,
    ClusterSession,
    channel,
    session_endpoints,
    session_tls,
    wall_clock_us,
)

REPO = Path(__file__).resolve().parent.parent

# Faster than the defaults, so that view changes and checkpoints happen within a test's time.
TEST_PARAMS = Params(
    view_change_timeout=1.0,
    max_view_change_timeout=8.0,
    status_interval=0.2,
    checkpoint_interval=16,
    watermark_window=64,
)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_range(count: int, taken: set[int]) -> int:
    """A base port with ``count`` consecutive free ports, below the ephemeral range."""
    while True:
        base = random.randrange(20000, 30000 - count)
        ports = range(base, base + count)
        if not taken.intersection(ports) and all(_port_free(p) for p in ports):
            taken.update(ports)
            return base


def write_cluster(directory: Path, n: int, *, params: Params = TEST_PARAMS) -> Path:
    """Keys, TLS files and config.toml for an n-replica cluster on 127.0.0.1 (``bftchat-keygen
    cluster`` with free ports); returns the config path."""
    taken: set[int] = set()
    cfg, signers, admin = keygen.plan_cluster(
        directory,
        name="test",
        replicas=n,
        hosts=["127.0.0.1"],
        base_port=free_range(n, taken),
        peer_base_port=free_range(n, taken),
        metrics_base_port=free_range(n, taken),
        params=params,
        session_base_port=free_range(n, taken),
    )
    keygen.write_cluster(cfg, signers, admin, force=False)
    return cfg.path


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    stderr: object


class Cluster:
    """N replica processes of one cluster. Use as a context manager (stops all on exit)."""

    def __init__(
        self, directory: Path, n: int = 4, *, tls: bool = True, params: Params = TEST_PARAMS
    ) -> None:
        self.dir = directory
        self.n = n
        self.tls = tls
        self.config_path = write_cluster(directory, n, params=params)
        self.config = load_config(self.config_path)
        self.cluster = self.config.info()
        self.ca_pem = self.config.tls_ca.read_bytes() if tls and self.config.tls_ca else None
        self.procs: dict[int, Proc] = {}
        self._started_once: dict[int, bool] = {}

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    # ---- paths

    def data_dir(self, i: int) -> Path:
        return self.dir / f"data-{i}"

    def log_file(self, i: int) -> Path:
        return self.dir / f"replica-{i}.log"

    def endpoint(self, i: int) -> str:
        return self.config.replicas[i].endpoint

    def peer_endpoint(self, i: int) -> str:
        return f"127.0.0.1:{self.config.replicas[i].peer_link_port}"

    def segments(self, i: int) -> list[Path]:
        return sorted((self.data_dir(i) / "log").glob("*.seg"))

    # ---- processes

    def command(self, i: int, *extra: str) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "bft.runtime.main",
            "--config",
            str(self.config_path),
            "--id",
            str(i),
            "--key",
            str(self.dir / f"replica-{i}.key"),
            "--data",
            str(self.data_dir(i)),
        ]
        if not self.tls:
            cmd.append("--insecure")
        return cmd + list(extra)

    def init_data(self, i: int) -> None:
        """Create replica ``i``'s data dir as at cluster genesis (an operator's first step).

        A replica that finds no data dir at all starts *recovering* (it may be one that lost its
        disk), which at genesis costs a view change and, when the replicas start far apart, can leave
        a late one alone in a higher view; tests want a plain genesis in view 0.
        """
        if self.data_dir(i).exists():
            return
        _, signer = load_replica_key(self.dir / f"replica-{i}.key")
        log = ReplicaLog(self.data_dir(i), i, signer, self.cluster, Ed25519Verifier())
        log.load()
        log.close()

    def start(self, i: int, *extra: str, nofile: int | tuple[int, int] | None = None) -> None:
        """Start replica ``i``; ``nofile``: its RLIMIT_NOFILE (soft and hard, or both the same), as
        a host might set it."""
        assert i not in self.procs or self.procs[i].popen.poll() is not None, f"replica {i} is running"
        if "--recover" not in extra and not self._started_once.get(i):
            self.init_data(i)
        self._started_once[i] = True
        err = self.log_file(i).open("ab")

        def limit() -> None:
            if nofile is not None:
                import resource

                soft, hard = nofile if isinstance(nofile, tuple) else (nofile, nofile)
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

        popen = subprocess.Popen(
            self.command(i, *extra),
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=REPO,
            start_new_session=True,
            preexec_fn=limit if nofile is not None else None,
        )
        self.procs[i] = Proc(popen, err)

    def start_all(self, ids: Iterable[int] | None = None) -> None:
        for i in range(self.n) if ids is None else ids:
            self.start(i)

    def run_once(self, i: int, *extra: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run a replica command expected to exit by itself (e.g. refusing to start)."""
        return subprocess.run(
            self.command(i, *extra), capture_output=True, text=True, cwd=REPO, timeout=timeout, check=False
        )

    def assert_logs_clean(self) -> None:
        """No replica logged a traceback or a core error (module fixtures check this at the end)."""
        for i in range(self.n):
            text = self.log_file(i).read_text(errors="replace")
            assert "Traceback" not in text and "core_error" not in text, self.tail(i, 40)

    def alive(self, i: int) -> bool:
        p = self.procs.get(i)
        return p is not None and p.popen.poll() is None

    def kill9(self, i: int) -> None:
        p = self.procs.get(i)
        if p is not None and p.popen.poll() is None:
            os.kill(p.popen.pid, signal.SIGKILL)
            p.popen.wait(10)
        self._close(i)

    def stop(self, i: int, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait (SIGKILL past ``timeout``); returns the exit code."""
        p = self.procs.get(i)
        if p is None:
            return None
        if p.popen.poll() is None:
            os.kill(p.popen.pid, signal.SIGTERM)
            try:
                p.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(p.popen.pid, signal.SIGKILL)
                p.popen.wait(10)
        self._close(i)
        return p.popen.returncode

    def _close(self, i: int) -> None:
        p = self.procs.get(i)
        if p is not None:
            with contextlib.suppress(Exception):
                p.stderr.close()  # type: ignore[attr-defined]

    def stop_all(self) -> None:
        """SIGTERM every running replica at once, then wait for each (SIGKILL past 10 s)."""
        for p in self.procs.values():
            if p.popen.poll() is None:
                os.kill(p.popen.pid, signal.SIGTERM)
        for i in list(self.procs):
            self.stop(i)

    def kill_all(self) -> None:
        for i in list(self.procs):
            self.kill9(i)

    def wipe(self, i: int) -> None:
        """Destroy replica ``i``'s data dir (it must be stopped)."""
        import shutil

        assert not self.alive(i)
        shutil.rmtree(self.data_dir(i), ignore_errors=True)

    def reset(self) -> None:
        """Stop every replica, wipe every data dir and start again from genesis (same config and
        keys, so the same cluster id, but empty state: message ids start over)."""
        self.stop_all()
        for i in range(self.n):
            self.wipe(i)
        self._started_once.clear()
        self.start_all()

    # ---- waiting

    def _channel(self, i: int) -> grpc.Channel:
        if self.ca_pem is None:
            return grpc.insecure_channel(self.endpoint(i))
        return grpc.secure_channel(
            self.endpoint(i), grpc.ssl_channel_credentials(root_certificates=self.ca_pem)
        )

    def healthy(self, i: int) -> bool:
        try:
            with self._channel(i) as ch:
                stub = health_pb2_grpc.HealthStub(ch)
                resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)
        except grpc.RpcError:
            return False

    def wait_healthy(self, ids: Iterable[int] | None = None, timeout: float = 30.0) -> None:
        wanted = list(range(self.n) if ids is None else ids)
        deadline = time.monotonic() + timeout
        for i in wanted:
            while not self.healthy(i):
                if not self.alive(i):
                    raise RuntimeError(
                        f"replica {i} exited ({self.procs[i].popen.returncode}): {self.tail(i)}"
                    )
                if time.monotonic() > deadline:
                    raise TimeoutError(f"replica {i} not healthy: {self.tail(i)}")
                time.sleep(0.05)

    def tail(self, i: int, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_file(i).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def status(self, i: int) -> spb.StatusReply | None:
        try:
            with self._channel(i) as ch:
                raw = ch.unary_unary(STATUS_METHOD)(b"", timeout=2.0)
                return spb.StatusReply.FromString(raw)
        except grpc.RpcError:
            return None

    def statuses(self, ids: Iterable[int] | None = None) -> dict[int, spb.StatusReply | None]:
        return {i: self.status(i) for i in (range(self.n) if ids is None else ids)}

    def wait_agree(
        self, ids: Sequence[int] | None = None, timeout: float = 60.0, same_view: bool = True
    ) -> spb.StatusReply:
        """Until every replica in ``ids`` reports the same last executed seq and state digest, none
        recovering (and, with ``same_view``, all in one view and none changing views)."""
        wanted = list(range(self.n) if ids is None else ids)
        deadline = time.monotonic() + timeout
        last: dict[int, spb.StatusReply | None] = {}
        while time.monotonic() < deadline:
            last = self.statuses(wanted)
            got = [s for s in last.values() if s is not None]
            keys: set[tuple[object, ...]] = {(s.last_executed, s.state_digest) for s in got}
            if same_view:
                keys = {(s.last_executed, s.state_digest, s.view, s.view_changing) for s in got}
            if len(got) == len(wanted) and not any(s.recovering for s in got) and len(keys) == 1:
                return got[0]
            time.sleep(0.2)
        summary = {
            i: None
            if s is None
            else f"view {s.view}{' (changing)' if s.view_changing else ''} executed {s.last_executed} "
            f"digest {s.state_digest.hex()[:8]}{' recovering' if s.recovering else ''}"
            for i, s in last.items()
        }
        raise TimeoutError(f"replicas do not agree: {summary}")

    # ---- clients

    def client(
        self,
        signer: Signer | None = None,
        session: int | None = None,
        clock: Callable[[], int] | None = None,
        transport: str = "auto",
    ) -> ClusterSession:
        """A client session with every replica: on their session ports (``auto``) or over gRPC."""
        endpoints = [self.endpoint(i) for i in range(self.n)]
        return ClusterSession(
            self.cluster,
            endpoints,
            signer or Ed25519Signer.generate(),
            ca_pem=self.ca_pem,
            session=session,
            clock=clock or wall_clock_us,
            session_endpoints=session_endpoints(self.config, transport),
        )


class RawSession:
    """One session stream to one replica, frame by frame (tests of what a replica answers to what a
    client sends): over its session port (``framed``, what clients use by default) or the gRPC
    ``Session`` call (``grpc``; the replica must serve it: ``--grpc-sessions``)."""

    def __init__(self) -> None:
        self.nonce = b""
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._channel: grpc.aio.Channel | None = None
        self._call: grpc.aio.StreamStreamCall | None = None

    @classmethod
    async def open(cls, c: Cluster, replica: int, transport: str = "framed") -> RawSession:
        self = cls()
        if transport == "grpc":
            self._channel = channel(c.endpoint(replica), c.ca_pem)
            self._call = self._channel.stream_stream(SESSION_METHOD)()
        else:
            port = c.config.replicas[replica].session_port
            assert port is not None
            ctx = session_tls(c.ca_pem) if c.ca_pem is not None else None
            self._reader, self._writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1" if ctx else None
            )
        first = await self.read()
        assert first.WhichOneof("kind") == "nonce", first
        self.nonce = first.nonce
        return self

    async def write(self, raw: bytes) -> None:
        if self._call is not None:
            await self._call.write(raw)
        else:
            assert self._writer is not None
            self._writer.write(encode_frame(raw))
            await self._writer.drain()

    async def read(self, timeout: float = 10.0) -> spb.ServerFrame:
        """The next frame; EOFError when the replica ended the session."""
        if self._call is not None:
            raw = await asyncio.wait_for(self._call.read(), timeout)
            if raw is grpc.aio.EOF:
                raise EOFError
        else:
            assert self._reader is not None
            raw = await asyncio.wait_for(read_frame(self._reader, 64 << 20), timeout)
            if raw is None:
                raise EOFError
        assert isinstance(raw, bytes)
        return spb.ServerFrame.FromString(raw)

    async def done_writing(self) -> None:
        """Half-close: the client sends no more, and still reads."""
        if self._call is not None:
            await self._call.done_writing()
        else:
            assert self._writer is not None
            self._writer.write_eof()

    async def close(self) -> None:
        if self._call is not None:
            self._call.cancel()
        if self._channel is not None:
            await self._channel.close()
        if self._writer is not None:
            self._writer.transport.abort()

    async def __aenter__(self) -> RawSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def run(coro: object, timeout: float = 120.0) -> object:
    """Run a coroutine from a sync test with a hard bound."""

    async def bounded() -> object:
        return await asyncio.wait_for(coro, timeout)  # type: ignore[arg-type]

    return asyncio.run(bounded())


# ---- chat users ---------------------------------------------------------------------------------


class ChatUser:
    """A chat account driven through a ClusterSession: signing key, box keys and the plain operations."""

    def __init__(
        self, cluster: Cluster, name: str, signer: Ed25519Signer | None = None, box: e2e.BoxKeys | None = None
    ) -> None:
        self.name = name
        self.signer = signer or Ed25519Signer.generate()
        self.box = box or e2e.BoxKeys.generate()
        self.client = cluster.client(self.signer)

    async def __aenter__(self) -> ChatUser:
        await self.client.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()

    async def op(self, op: bytes, *, read_only: bool = False, timeout: float = 30.0) -> object:
        """Run ``op``; the parsed ChatResult (raises if the app returned an error)."""
        reply = await self.client.request(op, read_only=read_only, timeout=timeout)
        assert reply.status == 0, reply
        result = e2e.parse_result(reply.result)
        if result.WhichOneof("result") == "error":
            raise AssertionError(f"{self.name}: {result.error.message}")
        return result

    async def register(self) -> object:
        return await self.op(e2e.register_op(self.name, self.box.public))

    async def send(self, to: ChatUser, text: bytes, timeout: float = 30.0) -> object:
        op = e2e.encrypt_send_op(self.name, self.box, to.name, to.box.public, text)
        return await self.op(op, timeout=timeout)

    async def fetch_all(self, *, read_only: bool = True) -> list[tuple[int, bytes]]:
        """Every undelivered message (id, plaintext), verified and decrypted, following pages."""
        out: list[tuple[int, bytes]] = []
        after = 0
        while True:
            res = await self.op(e2e.fetch_op(self.name, after_id=after), read_only=read_only)
            msgs = res.messages  # type: ignore[attr-defined]
            for m in msgs.messages:
                got = e2e.open_delivered(m, self.client.cluster.cluster_id, self.name, self.box)
                out.append((m.id, got.plaintext))
                after = m.id
            if not msgs.more:
                return out
