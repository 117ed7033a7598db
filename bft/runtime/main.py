"""``bftchat-replica``: run one replica process, or verify a replica's log offline.

    bftchat-replica --config CONFIG --id I --key KEYFILE --data DIR [--insecure] [--recover]
                    [--metrics-port P] [--log-level LEVEL] [--log-format text|json]
                    [--loop auto|uvloop|asyncio]
    bftchat-replica verify-log PATH --config CONFIG [--id I]

Exit codes: 0 after a clean shutdown (SIGTERM/SIGINT) or a good log; 1 when the replica cannot
start on its data (tampered or foreign log) or stops on a fatal error, or the log has a problem;
2 for usage and configuration errors. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import os

# gRPC's C core logs every failed TLS handshake at INFO on stderr (a port scan, a peer restarting):
# noise in a replica's log, which reports link state itself. Errors still show.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import argparse
import asyncio
import fcntl
import functools
import logging
import resource
import signal
import ssl
import sys
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bft.app.chat import ChatApp
from bft.clusterconf import add_config_argument
from bft.core.replica import Replica
from bft.crypto import CachingVerifier, Ed25519Signer, Ed25519Verifier
from bft.handshake import link_hello
from bft.runtime import logs
from bft.runtime.faultctl import (
    ADMIN_LAST_FILE,
    FaultController,
    FaultError,
    admin_handler,
    read_last_timestamp,
)
from bft.runtime.logs import EventLog
from bft.runtime.metrics import Metrics
from bft.runtime.node import Node, TimedVerifier
from bft.runtime.pauses import PauseMonitor, freeze_heap
from bft.runtime.peers import PeerLink, PeerLinks
from bft.runtime.server import ClientLimits, Servers
from bft.runtime.tls import PeerTls
from bft.version import add_version_argument

SHUTDOWN_GRACE = 1.0
FD_RESERVE = 256  # descriptors kept from client connections: log, peer links, metrics, TLS files
FD_PER_PEER = 4  # an outgoing and an incoming link, and one of each reconnecting


class UsageError(Exception):
    """Bad arguments, config, key or TLS files: exit 2 with this message."""


class StartError(Exception):
    """The replica refuses to start on its data: exit 1 with this message."""


def _host(addr: Any) -> str:
    host = str(addr.host)
    return f"[{host}]" if ":" in host else host


@dataclass
class Tls:
    """The client port's gRPC credentials (server TLS) and the peer links' ssl contexts (mutual TLS)."""

    client_port: grpc.ServerCredentials
    peers: PeerTls
    sessions: ssl.SSLContext  # the session port (server certificate only)


def load_tls(config: Any, replica_id: int) -> Tls:
    """The cluster CA and this replica's certificate and key, as ``bftchat-keygen`` laid them out."""
    from bft.runtime.tls import (
        TlsError,
        peer_contexts,
        replica_cert_paths,
        server_credentials,
        session_server_context,
    )

    if config.tls_ca is None:
        raise UsageError(f"{config.path}: no tls_ca in the config; pass --insecure to run without TLS")
    ca = Path(config.tls_ca)
    cert, key = replica_cert_paths(ca.parent, replica_id)
    try:
        return Tls(
            server_credentials(ca, cert, key, require_client_auth=False),
            peer_contexts(ca, cert, key),
            session_server_context(cert, key),
        )
    except (TlsError, ssl.SSLError) as exc:
        raise UsageError(str(exc)) from None


# ---------------------------------------------------------------- running a replica


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to its hard limit (the default soft limit, often 1024, is
    what a flood of idle connections exhausted); returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass  # e.g. above the kernel's nr_open: keep what we have
    return soft


def client_connection_cap(wanted: int, fd_limit: int, n: int) -> int:
    """At most ``wanted`` client connections, and never so many that the log, the peer links and
    the metrics endpoint could find no descriptor left (each connection costs one)."""
    reserve = FD_RESERVE + FD_PER_PEER * n
    return min(wanted, fd_limit - reserve)


def _in_use(data: Path, rid: int) -> StartError:
    """The data dir's lock is held: another process runs on it. Never suggest --recover here (it
    would discard a live replica's log)."""
    return StartError(
        f"data dir {data} is in use by another process (is replica {rid} already running? stop it first)"
    )


def _try_lock(data: Path) -> int | None:
    """flock the data dir's LOCK file as ``ReplicaLog`` does; the fd, or None if another process
    holds it. Creates the data dir (0700) if need be."""
    from bft.storage.log import LOCK_FILE

    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(data / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _locked_by_other(data: Path) -> bool:
    if not data.is_dir():
        return False
    fd = _try_lock(data)
    if fd is None:
        return True
    os.close(fd)
    return False


def wipe_locked(data: Path, rid: int) -> None:
    """``--recover``: discard the state under the data dir's lock, so that a running replica's log
    is never touched (the lock is released after the wipe; ``ReplicaLog.load`` takes it again, and
    a process that slips in between only finds a data dir marked RECOVERING)."""
    from bft.storage.log import wipe_state

    try:
        fd = _try_lock(data)
    except OSError as exc:
        raise StartError(f"cannot lock {data}: {exc}") from None
    if fd is None:
        raise _in_use(data, rid)
    try:
        wipe_state(data)
    except OSError as exc:
        raise StartError(f"cannot wipe {data}: {exc}") from None
    finally:
        os.close(fd)


@dataclass
class Prepared:
    """Everything checked and loaded before any port is opened."""

    config: Any
    replica_id: int
    signer: Ed25519Signer
    tls: Tls | None
    log: Any
    core: Replica
    timing: TimedVerifier
    verifier: CachingVerifier
    events: EventLog
    metrics_port: int | None
    load_seconds: float
    data_dir: Path
    limits: ClientLimits
    allow_fault_injection: bool = False
    grpc_sessions: bool = False  # also serve client sessions on the gRPC port (given a session port)


def prepare(args: argparse.Namespace) -> Prepared:
    from bft.clusterconf import ConfigError, load_config
    from bft.keys import KeyFileError, load_replica_key
    from bft.storage.log import LogError, ReplicaLog

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    rid = args.id
    if not 0 <= rid < config.n:
        raise UsageError(f"--id {rid}: the cluster has replicas 0..{config.n - 1}")
    events = EventLog(rid)
    try:
        key_id, signer = load_replica_key(args.key)
    except KeyFileError as exc:
        raise UsageError(str(exc)) from None
    if key_id != rid:
        raise UsageError(f"{args.key} is the key of replica {key_id}, not {rid}")
    if signer.public_key != config.replicas[rid].public_key:
        raise UsageError(f"{args.key}: public key does not match replica {rid} in {config.path}")
    tls = None if args.insecure else load_tls(config, rid)
    for flag in ("max_client_connections", "max_sessions", "max_sessions_per_address"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be at least 1")
    fd_limit = raise_fd_limit()
    max_connections = client_connection_cap(args.max_client_connections, fd_limit, config.n)
    if max_connections < 1:
        raise UsageError(
            f"RLIMIT_NOFILE is {fd_limit}: too low to keep {fd_limit - max_connections} descriptors for "
            "the log and the peers and still accept clients (raise it with ulimit -n / LimitNOFILE=)"
        )
    limits = ClientLimits(max_connections, args.max_sessions, args.max_sessions_per_address)
    cluster = config.info()
    timing = TimedVerifier(Ed25519Verifier())
    verifier = CachingVerifier(timing)
    data = Path(args.data)
    started = time.perf_counter()
    if args.recover:
        wipe_locked(data, rid)
        events.warning("state_wiped", data=str(data))
    log = ReplicaLog(data, rid, signer, cluster, verifier)
    try:
        records, report = log.load()
    except LogError as exc:
        if _locked_by_other(data):
            raise _in_use(data, rid) from None
        raise StartError(
            f"refusing to start replica {rid}: {exc} "
            "(inspect with 'bftchat-replica verify-log'; restart with --recover to rebuild from peers)"
        ) from None
    except OSError as exc:
        raise StartError(f"cannot open the log in {data}: {exc}") from None
    for warning in report.warnings:
        events.warning("log_repaired", detail=warning)
    recovering = report.recovering or getattr(report, "fresh", False)
    app = functools.partial(ChatApp, config.chat)  # every replica runs the config's limits
    core = Replica(cluster, rid, signer, verifier, app, records=records, recovering=recovering)
    load_seconds = time.perf_counter() - started
    events.info(
        "log_loaded",
        records=report.records,
        last_seq=report.last_seq,
        log_bytes=report.bytes,
        recovering=recovering,
        seconds=f"{load_seconds:.3f}",
    )
    metrics_port = args.metrics_port if args.metrics_port is not None else config.replicas[rid].metrics_port
    if getattr(args, "allow_fault_injection", False):
        try:  # the admin replay guard must load, or the endpoint would accept old commands again
            read_last_timestamp(data / ADMIN_LAST_FILE)
        except (FaultError, OSError) as exc:
            log.close()
            raise StartError(f"cannot read the admin replay guard: {exc}") from None
    return Prepared(
        config,
        rid,
        signer,
        tls,
        log,
        core,
        timing,
        verifier,
        events,
        metrics_port,
        load_seconds,
        data,
        limits,
        allow_fault_injection=bool(getattr(args, "allow_fault_injection", False)),
        grpc_sessions=bool(getattr(args, "grpc_sessions", False)),
    )


async def serve(p: Prepared) -> int:
    """Run until SIGTERM/SIGINT (exit 0) or a fatal error (exit 1)."""
    config, rid, events = p.config, p.replica_id, p.events
    asyncio.get_running_loop().set_exception_handler(events.loop_exception_handler())
    cluster = config.info()
    metrics = Metrics(rid, config.n)
    me = config.replicas[rid]
    events.info(
        "limits",
        fd_limit=resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        max_client_connections=p.limits.max_connections,
        max_sessions=p.limits.max_sessions,
        max_sessions_per_address=p.limits.max_sessions_per_address,
    )
    metrics_server = None
    if p.metrics_port:
        try:
            metrics_server = await metrics.serve(p.metrics_port, str(me.host))
        except OSError as exc:
            raise StartError(f"cannot serve metrics on {me.host}:{p.metrics_port}: {exc}") from None
    peers = PeerLinks(rid, metrics)
    tls = p.tls
    client_creds = tls.client_port if tls else None
    node = Node(
        replica_id=rid,
        cluster=cluster,
        signer=p.signer,
        core=p.core,
        storage=p.log,
        peers=peers,
        metrics=metrics,
        events=events,
        timing=p.timing,
        on_state_installed=freeze_heap,
    )

    def hello_for(peer: int) -> Any:
        return lambda nonce: link_hello(p.signer, cluster.cluster_id, rid, peer, nonce)

    for addr in config.replicas:
        if addr.id != rid:
            peers.add(
                PeerLink(
                    addr.id,
                    str(addr.host),
                    addr.peer_link_port,
                    tls.peers.client if tls else None,
                    hello_for(addr.id),
                    metrics,
                    events,
                    peers.update_gauge,
                )
            )
    admin = None
    if p.allow_fault_injection:
        controller = FaultController(
            node, cluster.cluster_id, config.admin_public_key, p.verifier, p.data_dir / ADMIN_LAST_FILE
        )
        admin = admin_handler(controller)
        events.warning("fault_injection_enabled")
    grpc_sessions = p.grpc_sessions or me.session_port is None  # always without a session port
    servers = Servers(
        node,
        p.verifier,
        metrics,
        events,
        client_creds=client_creds,
        peer_tls=tls.peers.server if tls else None,
        admin=admin,
        limits=p.limits,
        session_port=me.session_port,
        session_tls=tls.sessions if tls else None,
        grpc_sessions=grpc_sessions,
    )
    try:
        servers.bind(f"{_host(me)}:{me.port}")
        await servers.start(str(me.host), me.peer_link_port)
    except RuntimeError as exc:
        raise StartError(f"cannot listen: {exc}") from None
    frozen = freeze_heap()  # the restored state leaves the collector's full passes
    pauses = PauseMonitor(metrics.registry)
    pauses.start()
    node.start()
    peers.start()
    await servers.set_serving(True)
    events.info(
        "started",
        client_port=me.port,
        peer_port=me.peer_link_port,
        session_port=me.session_port,
        grpc_sessions=grpc_sessions,
        tls=p.tls is not None,
        recovering=node.replica.recovering,
        primary=node.replica.primary,
        loop=type(asyncio.get_running_loop()).__module__.split(".")[0],
        gc_frozen_objects=frozen,
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    assert node.failed is not None
    failed = node.failed
    failed.add_done_callback(lambda _: stop.set())
    await stop.wait()
    code = 1 if failed.done() else 0
    t0 = time.perf_counter()
    await _bounded(servers.set_serving(False), 1.0, "health", events)
    node.stop()  # no more input to the core; the log is flushed
    await _bounded(servers.stop(SHUTDOWN_GRACE), SHUTDOWN_GRACE + 2.0, "servers", events)
    await _bounded(peers.close(), 2.0, "peer_links", events)
    if metrics_server is not None:
        metrics_server.close()
    p.log.close()
    await pauses.stop()
    events.info("stopped", seconds=f"{time.perf_counter() - t0:.3f}", exit_code=code)
    return code


async def _bounded(step: Coroutine[Any, Any, object], seconds: float, what: str, events: EventLog) -> None:
    """One shutdown step, given up after ``seconds``: the log is already flushed, and a transport
    that does not close in time must not keep the process from exiting."""
    try:
        await asyncio.wait_for(step, seconds)
    except TimeoutError:
        events.warning("shutdown_step_timeout", step=what, seconds=seconds)
    except Exception as exc:
        events.warning("shutdown_step_failed", step=what, error=f"{type(exc).__name__}: {exc}")


def run_loop(main: Coroutine[Any, Any, int], loop: str = "auto") -> int:
    """Run the replica on uvloop when it is installed (``auto``), else on asyncio's own loop.

    uvloop implements the event loop and its TCP and TLS transports in C; at n = 7 that saves the
    replicas 8-14 % of their CPU per committed op (docs/NOTEBOOK.md, "Event loop: uvloop").
    ``--loop asyncio`` is the fallback if it ever misbehaves.
    """
    if loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if loop == "uvloop":
                raise UsageError("--loop uvloop: uvloop is not installed") from None
        else:
            return uvloop.run(main)
    return asyncio.run(main)


# ---------------------------------------------------------------- verify-log


def build_verify_log_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bftchat-replica verify-log",
        description="Verify a replica's log with public keys only (read-only) and print a summary.",
    )
    add_version_argument(parser)
    parser.add_argument("path", help="a data dir, its log/ dir, or one segment file")
    add_config_argument(parser)
    parser.add_argument(
        "--id", type=int, default=None, help="the replica the log must belong to (default: any)"
    )
    return parser


def verify_log_main(argv: Sequence[str]) -> int:
    args = build_verify_log_parser().parse_args(argv)
    from bft.clusterconf import ConfigError, load_config
    from bft.storage.log import verify_log

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = verify_log(Path(args.path), config.info(), args.id)
    print(summary.render())
    return 0 if summary.ok else 1


# ---------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bftchat-replica",
        description="Run one replica of a bftchat cluster. "
        "'bftchat-replica verify-log PATH --config CONFIG' checks a log offline.",
    )
    add_version_argument(parser)
    add_config_argument(parser)
    parser.add_argument("--id", type=int, required=True, help="this replica's id")
    parser.add_argument("--key", required=True, help="this replica's key file (mode 0600)")
    parser.add_argument("--data", required=True, help="this replica's data directory")
    parser.add_argument("--insecure", action="store_true", help="no TLS on either port (tests only)")
    parser.add_argument(
        "--recover", action="store_true", help="discard the local state and rebuild it from peers"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus /metrics on this port (default: the config's metrics_port, if any)",
    )
    defaults = ClientLimits()
    parser.add_argument(
        "--max-client-connections",
        type=int,
        default=defaults.max_connections,
        help="client-port connections at once (default %(default)s; lowered to fit RLIMIT_NOFILE "
        "with descriptors kept for the log and the peers)",
    )
    parser.add_argument(
        "--max-sessions",
        type=int,
        default=defaults.max_sessions,
        help="client session streams at once (default %(default)s)",
    )
    parser.add_argument(
        "--max-sessions-per-address",
        type=int,
        default=defaults.max_sessions_per_address,
        help="client session streams from one source address (default %(default)s)",
    )
    parser.add_argument(
        "--grpc-sessions",
        action="store_true",
        help="also serve client sessions on the gRPC port when the config gives this replica a "
        "session_port (without one they are always served there); each gRPC session message costs "
        "the replica several times a framed one (docs/SECURITY.md)",
    )
    parser.add_argument(
        "--allow-fault-injection",
        action="store_true",
        help="serve the Admin endpoint: admin-signed commands make this replica Byzantine (demos, tests)",
    )
    parser.add_argument(
        "--loop",
        default="auto",
        choices=["auto", "uvloop", "asyncio"],
        help="event loop: uvloop if installed (auto), or asyncio's own (default %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="least severe log events written to stderr (default %(default)s)",
    )
    parser.add_argument(
        "--log-format",
        default="text",
        choices=logs.FORMATS,
        help="log lines as key=value text or as one JSON object each (default %(default)s)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "verify-log":
        return verify_log_main(argv[1:])
    args = build_parser().parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    try:
        prepared = prepare(args)
        return run_loop(serve(prepared), args.loop)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except StartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except Exception as exc:  # a bug or an unforeseen environment problem: one line, details at DEBUG
        logging.getLogger(logs.LOGGER_NAME).debug("startup failure", exc_info=True)
        print(f"error: replica {args.id} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        logging.shutdown()


if __name__ == "__main__":
    sys.exit(main())
