"""``bftchat-cluster``: a whole local cluster in one command (keys, replicas, live status, clean stop).

    bftchat-cluster [--dir keys/cluster] [--replicas 7] [--insecure] [--allow-fault-injection]
                    [--grpc-sessions]
                    [--base-port 7100] [--peer-base-port P]
    bftchat-cluster [--dir keys/cluster] --restart I

On first use it writes the cluster's keys, TLS files and ``config.toml`` into DIR (as
``bftchat-keygen cluster`` does) and creates each replica's data dir at genesis. It then starts
every replica as a child process (``DIR/data/replica-<i>``, output appended to
``DIR/logs/replica-<i>.log``), shows a live status line, and on Ctrl-C, SIGTERM or SIGHUP stops
exactly the processes it started, by PID (SIGTERM, then SIGKILL after a grace period). Data stays
in DIR, so the next run continues where this one stopped. A replica that fails once the cluster is
up (non-zero exit, killed) is restarted after an exponential back-off (``Supervisor``); ``--restart
I`` from another terminal asks the running launcher to restart replica I.

The process machinery (``LocalCluster``) is shared with ``bftchat-bench``, which starts its own
clusters the same way.

Exit status: 0 after a clean stop; 1 when a replica cannot start or does not stop cleanly; 2 for
usage errors (including a DIR holding a different cluster, ports in use). Errors are one line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bft.tools.keygen import port_number
from bft.version import add_version_argument

DEFAULT_DIR = Path("keys/cluster")
DEFAULT_REPLICAS = 7
DEFAULT_BASE_PORT = 7100
STOP_GRACE = 10.0  # seconds a replica gets after SIGTERM before SIGKILL
REFRESH = 1.0  # status refresh interval
PLAIN_EVERY = 5.0  # without a terminal, one status line this often (and on every change of state)
FAULT_FLAG = "--allow-fault-injection"
RESTART_MIN = 1.0  # seconds before restarting a replica that failed; doubles per failure in a row...
RESTART_MAX = 30.0  # ...up to this
STABLE_UPTIME = 30.0  # a replica that ran this long before failing starts its back-off afresh


class UsageError(Exception):
    """Something the user can fix by changing the command or the directory: exit 2."""


class StartError(Exception):
    """The cluster could not be brought up: exit 1."""


# ---------------------------------------------------------------- the cluster's files


def ensure_cluster(
    directory: Path,
    replicas: int | None,
    *,
    base_port: int = DEFAULT_BASE_PORT,
    peer_base_port: int | None = None,
    metrics_base_port: int | None = None,
    params: Any = None,
    out: IO[str] | None = None,
    session_base_port: int | None = None,
) -> Any:
    """The cluster config in ``directory``, created (keys, TLS, config) if there is none yet.

    An existing cluster is reused as it is; asking for another size is an error rather than a
    silent re-key, because new keys would orphan the data the old replicas wrote.
    """
    from bft.clusterconf import ConfigError, load_config
    from bft.keys import KeyFileError
    from bft.runtime.tls import TlsError
    from bft.tools import keygen

    config_path = directory / keygen.CONFIG_FILE
    if config_path.exists():
        try:
            config = load_config(config_path)
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        if replicas is not None and replicas != config.n:
            raise UsageError(
                f"{directory} holds a {config.n}-replica cluster; drop --replicas, or use another --dir "
                f"for {replicas} replicas"
            )
        return config
    n = DEFAULT_REPLICAS if replicas is None else replicas
    try:
        cfg, signers, admin = keygen.plan_cluster(
            directory,
            name="local",
            replicas=n,
            hosts=["127.0.0.1"],
            base_port=base_port,
            peer_base_port=peer_base_port,
            metrics_base_port=metrics_base_port,
            params=params,
            session_base_port=session_base_port,
        )
        keygen.write_cluster(cfg, signers, admin, force=False)
    except keygen.UsageError as exc:
        raise UsageError(str(exc)) from None
    except (KeyFileError, TlsError, ConfigError) as exc:
        raise UsageError(f"cannot create the cluster in {directory}: {exc}") from None
    if out is not None:
        print(
            f"created cluster in {directory}: n={cfg.n}, f={cfg.f}, keys, TLS certificates and "
            f"{keygen.CONFIG_FILE}",
            file=out,
            flush=True,
        )
    return load_config(config_path)


def replica_supports(flag: str) -> bool:
    """Whether ``bftchat-replica`` (this tree's) accepts ``flag`` (options land independently)."""
    try:
        from bft.runtime import main as replica_main

        parser = getattr(replica_main, "build_parser", None)
        return parser is not None and flag in parser().format_help()
    except Exception:  # an import problem surfaces when the replicas start, with their own message
        return False


def port_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on right now (in use, or not a local address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"{host}:{port} is already in use"
            if exc.errno == errno.EADDRNOTAVAIL:
                return f"{host} is not an address of this machine"
            return f"cannot listen on {host}:{port}: {exc.strerror}"
    return None


# ---------------------------------------------------------------- processes


@dataclass
class ReplicaProc:
    id: int
    popen: subprocess.Popen[bytes]
    log: IO[bytes]
    exit_reported: bool = False


def _die_with_parent() -> None:
    """Child side of fork: get SIGTERM if the launcher dies without stopping us (Linux only), so a
    killed launcher never leaves replicas holding the ports."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


@dataclass
class LocalCluster:
    """The replica processes of one cluster directory, started and stopped by PID."""

    directory: Path
    config: Any
    insecure: bool = False
    extra_args: tuple[str, ...] = ()
    log_level: str = "INFO"
    log_format: str = "text"
    procs: dict[int, ReplicaProc] = field(default_factory=dict)

    def key_path(self, i: int) -> Path:
        return self.directory / f"replica-{i}.key"

    def data_dir(self, i: int) -> Path:
        return self.directory / "data" / f"replica-{i}"

    def log_path(self, i: int) -> Path:
        return self.directory / "logs" / f"replica-{i}.log"

    @property
    def ca_pem(self) -> bytes | None:
        tls_ca = self.config.tls_ca
        return None if self.insecure or tls_ca is None else Path(tls_ca).read_bytes()

    def endpoints(self) -> list[str]:
        return [r.endpoint for r in self.config.replicas]

    def check_ports(self) -> None:
        for r in self.config.replicas:
            ports = [r.port, r.peer_link_port] + [p for p in (r.session_port, r.metrics_port) if p]
            for port in ports:
                problem = port_problem(r.host, port)
                if problem:
                    raise UsageError(
                        f"replica {r.id}: {problem} (is this cluster, or another one, already running?)"
                    )

    def init_genesis(self) -> bool:
        """Create every data dir at genesis when none exists yet; returns whether it did.

        A replica that finds no data dir starts *recovering* (it may have lost its disk), which at
        genesis would cost a view change. Once the cluster has run, a missing dir is exactly that
        case, so only a cluster with no data at all is initialised here.
        """
        if any(self.data_dir(i).exists() for i in range(self.config.n)):
            return False
        from bft.crypto import Ed25519Verifier
        from bft.keys import KeyFileError, load_replica_key
        from bft.storage.log import ReplicaLog

        info = self.config.info()
        for i in range(self.config.n):
            try:
                _, signer = load_replica_key(self.key_path(i))
            except KeyFileError as exc:
                raise UsageError(str(exc)) from None
            log = ReplicaLog(self.data_dir(i), i, signer, info, Ed25519Verifier())
            log.load()
            log.close()
        return True

    def command(self, i: int) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "bft.runtime.main",
            "--config",
            str(self.config.path),
            "--id",
            str(i),
            "--key",
            str(self.key_path(i)),
            "--data",
            str(self.data_dir(i)),
            "--log-level",
            self.log_level,
            "--log-format",
            self.log_format,
        ]
        if self.insecure:
            cmd.append("--insecure")
        return cmd + list(self.extra_args)

    def _env(self) -> dict[str, str]:
        """Children import the very ``bft`` package this process runs (a checkout or a clone)."""
        import bft

        root = str(Path(bft.__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def start(self, i: int) -> ReplicaProc:
        old = self.procs.get(i)
        if old is not None:
            if old.popen.poll() is None:
                raise RuntimeError(f"replica {i} is still running (pid {old.popen.pid})")
            with contextlib.suppress(OSError):
                old.log.close()
        self.log_path(i).parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path(i).open("ab")
        log.write(self._start_marker(i).encode())
        log.flush()
        popen = subprocess.Popen(
            self.command(i),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self._env(),
            start_new_session=True,  # Ctrl-C reaches the launcher only; it stops the replicas in order
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        proc = ReplicaProc(i, popen, log)
        self.procs[i] = proc
        return proc

    def _start_marker(self, i: int) -> str:
        """The line the launcher writes before each start, in the replicas' log format (so a JSON
        log stays one JSON object per line)."""
        if self.log_format == "json":
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            return json.dumps({"time": now, "replica": i, "event": "launcher_starting_replica"}) + "\n"
        return f"---- bftchat-cluster: starting replica {i} at {time.ctime()}\n"

    def start_all(self) -> None:
        for i in range(self.config.n):
            self.start(i)

    def alive(self, i: int) -> bool:
        p = self.procs.get(i)
        return p is not None and p.popen.poll() is None

    def exit_code(self, i: int) -> int | None:
        p = self.procs.get(i)
        return None if p is None else p.popen.poll()

    def pids(self) -> dict[int, int]:
        return {i: p.popen.pid for i, p in self.procs.items()}

    def tail(self, i: int, lines: int = 5) -> str:
        try:
            text = self.log_path(i).read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def signal_all(self, sig: int) -> None:
        for p in self.procs.values():
            if p.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.popen.pid, sig)

    def stop_one(self, i: int, grace: float = STOP_GRACE) -> int | None:
        """SIGTERM replica ``i``, SIGKILL it after ``grace``; its exit code (None if never started)."""
        p = self.procs.get(i)
        if p is None:
            return None
        if p.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.popen.pid, signal.SIGTERM)
            try:
                return p.popen.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.popen.pid, signal.SIGKILL)
        return p.popen.wait()

    # ---- restart requests from another process (``bftchat-cluster --restart I``)

    @property
    def control_dir(self) -> Path:
        return self.directory / "control"

    def take_restart_requests(self) -> list[int]:
        """Replica ids asked for since the last call (each request file is consumed)."""
        found = []
        with contextlib.suppress(FileNotFoundError):
            for entry in sorted(self.control_dir.iterdir()):
                name = entry.name
                if name.startswith("restart-") and name[8:].isdigit():
                    with contextlib.suppress(FileNotFoundError):
                        entry.unlink()
                        if int(name[8:]) < self.config.n:
                            found.append(int(name[8:]))
        return found

    def stop_all(self, grace: float = STOP_GRACE) -> dict[int, int]:
        """SIGTERM every replica, wait up to ``grace``, SIGKILL the rest; the exit codes by id."""
        self.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.popen.wait(max(0.0, deadline - time.monotonic()))
        self.signal_all(signal.SIGKILL)
        codes = {}
        for i, p in self.procs.items():
            codes[i] = p.popen.wait()
            with contextlib.suppress(OSError):
                p.log.close()
        return codes


# ---------------------------------------------------------------- status


def faults_from_status(replica: int, status: Any) -> list[str]:
    """The default fault probe: behaviours a replica reports about itself.

    Nothing reports them yet; if ``StatusReply`` grows a repeated ``faults`` field (the active
    fault-injection behaviours), they show up here with no other change. A launcher that knows
    better (it injected the faults itself) can pass its own probe to ``StatusBoard``.
    """
    if status is None:
        return []
    try:
        return [str(x) for x in getattr(status, "faults", ())]
    except Exception:
        return []


FaultProbe = Callable[[int, Any], list[str]]


@dataclass
class ReplicaState:
    id: int
    endpoint: str
    status: Any = None  # the last StatusReply, or None when it did not answer
    exit_code: int | None = None
    faults: list[str] = field(default_factory=list)

    @property
    def up(self) -> bool:
        return self.status is not None and self.exit_code is None


class StatusBoard:
    """Polls every replica's Status once per refresh over long-lived channels, and renders it."""

    def __init__(
        self, config: Any, ca_pem: bytes | None, fault_probe: FaultProbe = faults_from_status
    ) -> None:
        self.config = config
        self.ca_pem = ca_pem
        self.fault_probe = fault_probe
        self.states = [ReplicaState(r.id, r.endpoint) for r in config.replicas]
        self._channels: list[Any] = []

    async def poll(self, exit_codes: dict[int, int | None], timeout: float = 0.8) -> None:
        from client.session import STATUS_METHOD, channel

        if not self._channels:
            self._channels = [channel(r.endpoint, self.ca_pem) for r in self.config.replicas]

        async def one(i: int) -> Any:
            if exit_codes.get(i) is not None:
                return None
            try:
                raw = await self._channels[i].unary_unary(STATUS_METHOD)(b"", timeout=timeout)
                from bft.pb.bftchat.v1 import service_pb2 as spb
                from bft.wire import parse

                return parse(spb.StatusReply, raw)
            except Exception:  # unreachable, starting, stopping, or a garbled answer: "down"
                return None

        replies = await asyncio.gather(*(one(i) for i in range(len(self.states))))
        for st, reply in zip(self.states, replies, strict=True):
            st.status = reply
            st.exit_code = exit_codes.get(st.id)
            st.faults = self.fault_probe(st.id, reply)

    async def close(self) -> None:
        for ch in self._channels:
            with contextlib.suppress(Exception):
                await ch.close(grace=None)
        self._channels = []

    # ---- what the cluster as a whole says

    def up_count(self) -> int:
        return sum(st.up for st in self.states)

    def agreed_view(self) -> int | None:
        """The view at least f+1 up replicas are in (so one liar cannot move it), or the max."""
        views = sorted((st.status.view for st in self.states if st.up), reverse=True)
        if not views:
            return None
        f = self.config.f
        return views[f] if len(views) > f else views[0]

    def committed(self) -> int | None:
        """The highest sequence number executed by at least f+1 replicas (one of them honest)."""
        seqs = sorted((st.status.last_executed for st in self.states if st.up), reverse=True)
        f = self.config.f
        return seqs[f] if len(seqs) > f else None

    def summary(self, starting: bool = False) -> str:
        """One line: how many are up, the view and primary, the committed seq, who is not well."""
        n = self.config.n
        parts = [f"{self.up_count()}/{n} up"]
        view = self.agreed_view()
        if view is not None:
            parts.append(f"view {view}")
            parts.append(f"primary {view % n}")
        if any(st.up and st.status.view_changing for st in self.states):
            parts.append("view change in progress")
        committed = self.committed()
        parts.append(f"committed seq {committed if committed is not None else '-'}")
        recovering = [str(st.id) for st in self.states if st.up and st.status.recovering]
        if recovering:
            parts.append(f"recovering: {','.join(recovering)}")
        faulty = [f"{st.id} ({', '.join(st.faults)})" for st in self.states if st.faults]
        if faulty:
            parts.append(f"faulty: {'; '.join(faulty)}")
        accusers: dict[int, set[int]] = {}
        for st in self.states:
            for culprit in getattr(st.status, "accused", ()) if st.up else ():
                accusers.setdefault(int(culprit), set()).add(st.id)
        if accusers:  # signed evidence of equivocation, as each replica reports it
            named = [f"{c} (by {len(by)})" for c, by in sorted(accusers.items())]
            parts.append(f"accused: {', '.join(named)}")
        down = [
            f"{st.id} (exited {st.exit_code})" if st.exit_code is not None else str(st.id)
            for st in self.states
            if not st.up
        ]
        if down:
            parts.append(f"{'starting' if starting else 'down'}: {', '.join(down)}")
        return " · ".join(parts)

    def table(self) -> list[str]:
        head = "  id  endpoint               state       view  executed  checkpoint  peers  metrics  faults"
        lines = [head]
        for st in self.states:
            s = st.status
            if st.exit_code is not None:
                state = f"exited {st.exit_code}"
            elif s is None:
                state = "down"
            elif s.recovering:
                state = "recovering"
            elif s.view_changing:
                state = "view-chg"
            elif s.primary == st.id:
                state = "primary"
            else:
                state = "up"
            if s is None:
                lines.append(f"  {st.id:<3} {st.endpoint:<22} {state:<11}")
                continue
            faults = ", ".join(st.faults) or "-"
            metrics = self.config.replicas[st.id].metrics_port or "-"
            lines.append(
                f"  {st.id:<3} {st.endpoint:<22} {state:<11} {s.view:<5} {s.last_executed:<9} "
                f"{s.stable_checkpoint:<11} {s.peers_connected}/{self.config.n - 1:<4} {metrics:<8} {faults}"
            )
        return lines


class Display:
    """A terminal redraws the table in place; anything else gets a plain line every few seconds."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.tty = out.isatty()
        self._drawn = 0
        self._last_plain = 0.0
        self._last_summary = ""

    def note(self, text: str) -> None:
        """A one-off event (a replica exited ...), printed above the live block."""
        self._erase()
        print(text, file=self.out, flush=True)

    def _erase(self) -> None:
        if self.tty and self._drawn:
            self.out.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def show(self, board: StatusBoard, footer: str, starting: bool = False) -> None:
        summary = board.summary(starting)
        if self.tty:
            self._erase()
            lines = [*board.table(), f"{time.strftime('%H:%M:%S')}  {summary}", footer]
            self.out.write("\n".join(lines) + "\n")
            self.out.flush()
            self._drawn = len(lines)
            return
        now = time.monotonic()
        changed = summary != self._last_summary and now - self._last_plain >= 1.0
        if changed or now - self._last_plain >= PLAIN_EVERY:
            print(f"[{time.strftime('%H:%M:%S')}] {summary}", file=self.out, flush=True)
            self._last_plain = now
            self._last_summary = summary


def _tool(name: str) -> str:
    """How to call one of our console scripts: by name if on PATH, else from this venv's bin."""
    import shutil

    if shutil.which(name):
        return name
    path = Path(sys.executable).parent / name
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


def connect_hint(config_path: Path, insecure: bool, metrics_ports: Sequence[int] = ()) -> list[str]:
    """How to talk to the cluster: the CLI if this tree has it, the client library otherwise."""
    flag = " --insecure" if insecure else ""
    try:
        config = str(config_path.relative_to(Path.cwd()))
    except ValueError:
        config = str(config_path)
    try:
        import client.cli  # noqa: F401

        has_cli = True
    except Exception:
        has_cli = False
    if not has_cli:
        return [
            "connect (the bftchat CLI is not in this tree yet): client.session.ClusterSession.from_config("
            f"load_config('{config}'), signer{', insecure=True' if insecure else ''})"
        ]
    cli = f"{_tool('bftchat')} --config {config}{flag} --key keys/alice.key"
    hint = [
        "connect the CLI from another terminal (bftchat --help lists the commands):",
        f"  {_tool('bftchat-keygen')} user --out keys/alice.key",
        f"  {cli} register alice",
        f"  {cli} chat bob",
    ]
    if metrics_ports:
        hint.append(f"Prometheus metrics: http://127.0.0.1:{metrics_ports[0]}/metrics (one port per replica)")
    return hint


# ---------------------------------------------------------------- the launcher


class _Lock:
    """One launcher per directory: a second one would fight over the ports and the data dirs."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / ".cluster.lock"
        self.fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            other = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise UsageError(
                f"another bftchat-cluster (pid {other}) is running on {self.path.parent}"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


async def run_launcher(
    cluster: LocalCluster, out: IO[str], fault_probe: FaultProbe = faults_from_status
) -> int:
    """Show the status until a stop signal; then stop every replica. The exit status."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals > 1:  # impatient second Ctrl-C: no more grace
            cluster.signal_all(signal.SIGKILL)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, on_signal)
    board = StatusBoard(cluster.config, cluster.ca_pem, fault_probe)
    display = Display(out)
    n = cluster.config.n
    came_up = False
    failed_start = False
    supervisor = Supervisor(cluster, display)
    footer = "Ctrl-C stops all replicas (data stays in " + str(cluster.directory) + ")"
    try:
        while not stop.is_set():
            codes = {i: cluster.exit_code(i) for i in range(n)}
            for i, code in codes.items():
                p = cluster.procs[i]
                if code is not None and not p.exit_reported:
                    p.exit_reported = True
                    display.note(
                        f"replica {i} exited with status {code}; its log {cluster.log_path(i)} ends:"
                    )
                    display.note("    " + cluster.tail(i).replace("\n", "\n    "))
                    if not came_up:
                        failed_start = True
                    else:
                        supervisor.exited(i, code)
            if failed_start:
                display.note("a replica could not start: stopping the cluster")
                break
            await supervisor.step()
            codes = {i: cluster.exit_code(i) for i in range(n)}
            if all(code is not None for code in codes.values()) and not supervisor.pending:
                display.note("every replica has exited")
                break
            await board.poll(codes)
            if not came_up and board.up_count() == n:
                came_up = True
                display.note(f"all {n} replicas up")
                ports = [r.metrics_port for r in cluster.config.replicas if r.metrics_port]
                for line in connect_hint(cluster.config.path, cluster.insecure, ports):
                    display.note(line)
            display.show(board, footer, starting=not came_up)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), REFRESH)
    finally:
        await board.close()
        display.note("stopping replicas ...")
        codes_now = await asyncio.to_thread(cluster.stop_all)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    clean = all(code == 0 for code in codes_now.values())
    detail = ", ".join(f"{i}:{c}" for i, c in sorted(codes_now.items()))
    display.note(f"stopped ({'clean' if clean else 'not clean'}; exit status by replica {detail})")
    return 0 if clean and not failed_start and came_up else 1


@dataclass
class _Backoff:
    failures: int = 0  # failures in a row, each within STABLE_UPTIME of its start
    due: float | None = None  # monotonic time of the next start, when one is scheduled
    started: float = field(default_factory=time.monotonic)


class Supervisor:
    """Restarts replicas: one that failed (non-zero exit, a signal) after an exponential back-off,
    and any replica on request (``bftchat-cluster --restart I``, SIGTERM first if it runs).

    A replica stops itself when its core raises inside a validated transition (it restarts from
    its log), so a crash loop is possible in principle: the back-off bounds its cost. A replica
    that exits 0 was stopped on purpose and stays stopped until asked for.
    """

    def __init__(self, cluster: LocalCluster, display: Display) -> None:
        self.cluster = cluster
        self.display = display
        self.state = {i: _Backoff() for i in range(cluster.config.n)}

    @property
    def pending(self) -> bool:
        return any(b.due is not None for b in self.state.values())

    def exited(self, i: int, code: int) -> None:
        b = self.state[i]
        if code == 0:
            self.display.note(
                f"replica {i} stopped cleanly; 'bftchat-cluster --dir {self.cluster.directory} "
                f"--restart {i}' starts it again"
            )
            return
        now = time.monotonic()
        if now - b.started >= STABLE_UPTIME:
            b.failures = 0
        delay = min(RESTART_MAX, RESTART_MIN * 2**b.failures)
        b.failures += 1
        b.due = now + delay
        self.display.note(f"restarting replica {i} in {delay:.0f} s (failure {b.failures} in a row)")

    async def step(self) -> None:
        """Carry out restart requests, then every restart that is due."""
        for i in self.cluster.take_restart_requests():
            if self.cluster.alive(i):
                self.display.note(f"restart of replica {i} requested: stopping it")
                self.cluster.procs[i].exit_reported = True
                code = await asyncio.to_thread(self.cluster.stop_one, i)
                self.display.note(f"replica {i} stopped with status {code}")
            self.state[i] = _Backoff(due=time.monotonic())
        now = time.monotonic()
        for i, b in self.state.items():
            if b.due is not None and now >= b.due and not self.cluster.alive(i):
                b.due, b.started = None, now
                proc = self.cluster.start(i)
                self.display.note(f"started replica {i} (pid {proc.popen.pid}) again")


def request_restart(directory: Path, replica: int) -> None:
    """Ask the launcher running on ``directory`` to restart ``replica`` (a file it polls)."""
    from bft.clusterconf import ConfigError, load_config

    lock = _Lock(directory)
    try:
        n = load_config(directory / "config.toml").n
    except ConfigError as exc:
        raise UsageError(f"{directory} is not a cluster directory ({exc})") from None
    if not 0 <= replica < n:
        raise UsageError(f"--restart {replica}: the cluster has replicas 0..{n - 1}")
    try:
        lock.acquire()
    except UsageError:
        control = directory / "control"
        control.mkdir(mode=0o700, exist_ok=True)
        (control / f"restart-{replica}").touch(mode=0o600)
        return
    lock.release()
    raise UsageError(f"no bftchat-cluster is running on {directory}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bftchat-cluster",
        description="Run a local bftchat cluster: create its keys on first use, start every replica, "
        "show a live status, stop them all on Ctrl-C. Data persists in DIR between runs.",
    )
    add_version_argument(p)
    p.add_argument("--dir", default=str(DEFAULT_DIR), help="cluster directory (default %(default)s)")
    p.add_argument(
        "--replicas",
        type=int,
        default=None,
        help=f"n = 3f + 1 for a new cluster (default {DEFAULT_REPLICAS}; an existing DIR keeps its n)",
    )
    p.add_argument("--insecure", action="store_true", help="plaintext gRPC instead of TLS (tests only)")
    p.add_argument(
        FAULT_FLAG,
        action="store_true",
        help="let the admin key inject faults into the replicas (bftchat-fault); off by default",
    )
    p.add_argument(
        "--grpc-sessions",
        action="store_true",
        help="replicas also serve client sessions over gRPC, not only on their session ports "
        "(bftchat-replica --grpc-sessions); off by default",
    )
    p.add_argument(
        "--base-port",
        type=port_number,
        default=DEFAULT_BASE_PORT,
        help="new cluster: replica i serves clients on base + i (default %(default)s)",
    )
    p.add_argument(
        "--peer-base-port",
        type=port_number,
        default=None,
        help="new cluster: peer links on base + i (default base-port + 1000)",
    )
    p.add_argument(
        "--metrics-base-port",
        type=port_number,
        default=None,
        help="new cluster: Prometheus /metrics of replica i on base + i (default base-port + 2000)",
    )
    p.add_argument(
        "--session-base-port",
        type=port_number,
        default=None,
        help="new cluster: framed client sessions of replica i on base + i (default base-port + 3000)",
    )
    p.add_argument(
        "--no-metrics",
        action="store_true",
        help="new cluster: no metrics ports in its config",
    )
    p.add_argument(
        "--restart",
        type=int,
        metavar="I",
        default=None,
        help="ask the bftchat-cluster running on DIR to restart replica I (stopping it first if it "
        "runs), then exit; failed replicas are restarted automatically with back-off",
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="the replicas' log level (logs in DIR/logs; default %(default)s)",
    )
    p.add_argument(
        "--log-format",
        default="text",
        choices=("text", "json"),
        help="the replicas' log lines: key=value text or one JSON object each (default %(default)s)",
    )
    return p


def metrics_base_port(args: argparse.Namespace) -> int | None:
    """Metrics are on by default for a new cluster: base-port + 2000 unless told otherwise."""
    if args.no_metrics:
        return None
    return args.metrics_base_port if args.metrics_base_port is not None else args.base_port + 2000


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = sys.stdout
    directory = Path(args.dir)
    if args.restart is not None:
        try:
            request_restart(directory, args.restart)
        except UsageError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"asked the launcher on {directory} to restart replica {args.restart}", file=out)
        return 0
    lock = _Lock(directory)
    try:
        lock.acquire()
        config = ensure_cluster(
            directory,
            args.replicas,
            base_port=args.base_port,
            peer_base_port=args.peer_base_port,
            metrics_base_port=metrics_base_port(args),
            out=out,
            session_base_port=args.session_base_port,
        )
        if not args.insecure and config.tls_ca is None:
            raise UsageError(f"{config.path} has no tls_ca; run with --insecure")
        extra: list[str] = ["--grpc-sessions"] if args.grpc_sessions else []
        if args.allow_fault_injection:
            if replica_supports(FAULT_FLAG):
                extra.append(FAULT_FLAG)
            else:
                print(
                    f"note: this tree's bftchat-replica has no {FAULT_FLAG} yet; starting without it",
                    file=out,
                )
        cluster = LocalCluster(
            directory,
            config,
            insecure=args.insecure,
            extra_args=tuple(extra),
            log_level=args.log_level,
            log_format=args.log_format,
        )
        cluster.check_ports()
        if cluster.init_genesis():
            print(f"initialised {config.n} data dirs in {directory / 'data'}", file=out)
        mode = "plaintext (--insecure)" if args.insecure else "TLS"
        print(
            f'cluster "{config.name}" n={config.n} f={config.f} in {directory} ({mode}); '
            f"logs in {directory / 'logs'}",
            file=out,
            flush=True,
        )
        try:
            cluster.start_all()
            for i, pid in cluster.pids().items():
                print(
                    f"started replica {i} (pid {pid}) on {config.replicas[i].endpoint}", file=out, flush=True
                )
            return asyncio.run(run_launcher(cluster, out))
        finally:
            if any(cluster.alive(i) for i in cluster.procs):  # interrupted before the loop took over
                cluster.stop_all()
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before the loop took over the signals; nothing was started
        return 130
    finally:
        lock.release()


if __name__ == "__main__":
    sys.exit(main())
