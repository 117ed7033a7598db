"""``bftchat-keygen``: create a user's key file, or a whole cluster's keys, certificates and config.

    bftchat-keygen user --out FILE [--name NAME] [--force]
    bftchat-keygen cluster [--dir keys/cluster] [--replicas 7] [--hosts H1,H2,...] [--base-port 7100]
                           [--peer-base-port P] [--metrics-base-port P] [--name NAME] [--force]

Placement with ``--hosts``: replica ``i`` runs on ``hosts[i % len(hosts)]``, serves clients on
``base_port + i``, peer links on ``peer_base_port + i`` (default ``base_port + 1000 + i``), framed
client sessions on ``session_base_port + i`` (default ``base_port + 3000 + i``) and,
if asked, metrics on ``metrics_base_port + i``. Ports are unique cluster-wide, so the same scheme
works when several replicas share a machine, and a replica's port names it.

Exit status: 0 done, 2 bad usage, 1 anything else the user can fix (an existing file, a directory
that cannot be written), reported as one ``error: ...`` line on stderr.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from bft.app.names import normalize_name
from bft.clusterconf import (
    DEFAULT_PEER_PORT_OFFSET,
    SESSION_PORT_OFFSET,
    ClusterConfig,
    ConfigError,
    ReplicaAddress,
    dump_config,
    host_problem,
)
from bft.core.config import Params
from bft.crypto import Ed25519Signer, cluster_id_from
from bft.keys import (
    KeyFileError,
    generate_user_key,
    write_admin_key,
    write_public_file,
    write_replica_key,
    write_user_key,
)
from bft.runtime.tls import (
    CA_CERT_FILE,
    CA_KEY_FILE,
    TlsError,
    make_ca,
    make_replica_cert,
    replica_cert_paths,
    write_cert_and_key,
)
from bft.version import add_version_argument

DEFAULT_DIR = Path("keys/cluster")
CONFIG_FILE = "config.toml"
ADMIN_KEY_FILE = "admin.key"
TLS_DIR = "tls"


class UsageError(Exception):
    """Bad arguments: exit status 2."""


def replica_key_path(directory: Path, replica_id: int) -> Path:
    return directory / f"replica-{replica_id}.key"


# ---- user --------------------------------------------------------------------------------------


def cmd_user(args: argparse.Namespace) -> int:
    name = None
    if args.name is not None:
        name = normalize_name(args.name)
        if name is None:
            raise UsageError(
                f"--name {args.name!r}: an account name is 1-32 of a-z 0-9 _ -, starting with a letter"
            )
    out = Path(args.out)
    _make_private_dir(out.parent)
    key = generate_user_key(name)
    write_user_key(out, key, force=args.force)
    print(f"wrote user key {out} (secret: mode 0600, never share it)")
    if name:
        print(f"name: {name}")
    print(f"signing key: {key.signing_public.hex()}")
    print(f"box key: {key.box_public.hex()}")
    print(f"fingerprint: {key.fingerprint()}")
    return 0


# ---- cluster -----------------------------------------------------------------------------------


def plan_cluster(
    directory: Path,
    *,
    name: str,
    replicas: int,
    hosts: list[str],
    base_port: int,
    metrics_base_port: int | None,
    peer_base_port: int | None = None,
    params: Params | None = None,
    session_base_port: int | None = None,
) -> tuple[ClusterConfig, list[Ed25519Signer], Ed25519Signer]:
    """The config and fresh signing keys of a new cluster (nothing written yet; validated)."""
    if replicas < 4 or (replicas - 1) % 3:
        raise UsageError(f"--replicas must be 3f + 1 with f >= 1 (4, 7, 10, ...), got {replicas}")
    if not hosts:
        raise UsageError("--hosts needs at least one host")
    for host in hosts:
        problem = host_problem(host)
        if problem:
            raise UsageError(f"--hosts: {problem}")
    if peer_base_port is None:
        peer_base_port = base_port + DEFAULT_PEER_PORT_OFFSET
    if session_base_port is None:
        session_base_port = base_port + SESSION_PORT_OFFSET
    bases = (
        ("--base-port", base_port),
        ("--peer-base-port", peer_base_port),
        ("--session-base-port", session_base_port),
        ("--metrics-base-port", metrics_base_port),
    )
    for label, base in bases:
        if base is not None and not (base >= 1 and base + replicas - 1 <= 65535):
            raise UsageError(f"{label} {base}: ports {base}..{base + replicas - 1} must lie in 1..65535")
    signers = [Ed25519Signer.generate() for _ in range(replicas)]
    admin = Ed25519Signer.generate()
    # Random nonce, so two clusters generated from the same inputs never share an id (no replays).
    cluster_id = cluster_id_from(b"bftchat-keygen\0" + os.urandom(32) + name.encode("utf-8"))
    addresses = tuple(
        ReplicaAddress(
            id=i,
            host=hosts[i % len(hosts)],
            port=base_port + i,
            public_key=signers[i].public_key,
            metrics_port=None if metrics_base_port is None else metrics_base_port + i,
            peer_port=peer_base_port + i,
            session_port=session_base_port + i,
        )
        for i in range(replicas)
    )
    try:
        cfg = ClusterConfig(
            path=directory / CONFIG_FILE,
            name=name,
            n=replicas,
            f=(replicas - 1) // 3,
            cluster_id=cluster_id,
            replicas=addresses,
            params=params or Params(),
            tls_ca=Path(TLS_DIR) / CA_CERT_FILE,
            admin_public_key=admin.public_key,
        )
    except ConfigError as e:  # e.g. metrics ports colliding with replica ports: bad arguments
        raise UsageError(str(e).split(": ", 1)[-1]) from None
    return cfg, signers, admin


def cluster_files(directory: Path, n: int) -> list[Path]:
    """Every file a cluster of ``n`` replicas consists of (config last: it marks a complete cluster)."""
    tls = directory / TLS_DIR
    files = [replica_key_path(directory, i) for i in range(n)]
    files += [directory / ADMIN_KEY_FILE, tls / CA_CERT_FILE, tls / CA_KEY_FILE]
    for i in range(n):
        files += replica_cert_paths(tls, i)
    return [*files, directory / CONFIG_FILE]


def write_cluster(
    cfg: ClusterConfig, signers: list[Ed25519Signer], admin: Ed25519Signer, *, force: bool
) -> list[Path]:
    """Write every file of the cluster; returns stale files of a previous, larger cluster it removed."""
    directory = cfg.path.parent
    tls = directory / TLS_DIR
    config_path = directory / CONFIG_FILE
    if not force:
        if config_path.exists():
            raise KeyFileError(f"'{config_path}' exists: a cluster is already there (--force replaces it)")
        for path in cluster_files(directory, cfg.n):
            if path.exists():
                raise KeyFileError(
                    f"'{path}' already exists (left from an earlier run?); --force replaces it"
                )
    _make_private_dir(directory)
    _make_private_dir(tls)
    for i, signer in enumerate(signers):
        write_replica_key(replica_key_path(directory, i), i, signer, force=force)
    write_admin_key(directory / ADMIN_KEY_FILE, admin, force=force)
    ca = make_ca(tls, name=cfg.name or "cluster", force=force)
    for r in cfg.replicas:
        cert_pem, key_pem = make_replica_cert(ca, r.id, [r.host])
        cert_path, key_path = replica_cert_paths(tls, r.id)
        write_cert_and_key(cert_path, key_path, cert_pem, key_pem, force)
    removed = _remove_stale(directory, cfg.n) if force else []
    write_public_file(config_path, dump_config(cfg).encode("utf-8"), force=force)
    return removed


def _remove_stale(directory: Path, n: int) -> list[Path]:
    """With --force over a bigger cluster, drop replica-<i> files with i >= n so no orphan key lingers."""
    removed = []
    pattern = re.compile(r"replica-(\d+)\.(key|pem)")
    for folder in (directory, directory / TLS_DIR):
        for path in sorted(folder.glob("replica-*")):
            m = pattern.fullmatch(path.name)
            if m and int(m.group(1)) >= n and (folder != directory or m.group(2) == "key"):
                path.unlink()
                removed.append(path)
    return removed


def cmd_cluster(args: argparse.Namespace) -> int:
    hosts = [h.strip() for h in args.hosts.split(",")] if args.hosts is not None else ["127.0.0.1"]
    if any(not h for h in hosts):
        raise UsageError(f"--hosts {args.hosts!r}: empty host name")
    directory = Path(args.dir)
    name = args.name if args.name is not None else ("local" if args.hosts is None else directory.name)
    cfg, signers, admin = plan_cluster(
        directory,
        name=name,
        replicas=args.replicas,
        hosts=hosts,
        base_port=args.base_port,
        metrics_base_port=args.metrics_base_port,
        peer_base_port=args.peer_base_port,
        session_base_port=args.session_base_port,
    )
    removed = write_cluster(cfg, signers, admin, force=args.force)
    _report_cluster(directory, cfg, removed)
    return 0


def _report_cluster(directory: Path, cfg: ClusterConfig, removed: list[Path]) -> None:
    d = directory
    last = cfg.n - 1
    print(f'wrote cluster "{cfg.name}": n={cfg.n}, f={cfg.f}, cluster id {cfg.cluster_id.hex()}')
    print(f"  {d / CONFIG_FILE}  public: every replica and client needs it")
    print(f"  {d}/replica-{{0..{last}}}.key  secret (0600): replica i's signing key, for its machine only")
    print(f"  {d / ADMIN_KEY_FILE}  secret (0600): the operator's key (signs fault injection)")
    print(f"  {d / TLS_DIR / CA_CERT_FILE}  public: the cluster's TLS CA, trusted by replicas and clients")
    print(
        f"  {d / TLS_DIR / CA_KEY_FILE}  secret (0600): only to issue certificates; keep it off the replicas"
    )
    print(f"  {d / TLS_DIR}/replica-{{0..{last}}}.pem/.key  replica i's TLS certificate and key (0600)")
    for path in removed:
        print(f"  removed {path} (from the cluster this one replaces)")
    print("replicas:")
    for r in cfg.replicas:
        metrics = f", metrics :{r.metrics_port}" if r.metrics_port is not None else ""
        sessions = f", sessions :{r.session_port}" if r.session_port is not None else ""
        print(f"  {r.id}  {r.endpoint}  (peers :{r.peer_link_port}{sessions}{metrics})")
    hosts = sorted(
        {r.host for r in cfg.replicas}, key=lambda h: min(r.id for r in cfg.replicas if r.host == h)
    )
    print("next steps:")
    if len(hosts) > 1:
        print("  copy to each machine only its own replicas' files (private keys never leave it):")
        for host in hosts:
            ids = [str(r.id) for r in cfg.replicas if r.host == host]
            i = ids[0] if len(ids) == 1 else "{" + ",".join(ids) + "}"
            print(
                f"    {host} (replica {', '.join(ids)}): {CONFIG_FILE} tls/{CA_CERT_FILE} "
                f"replica-{i}.key tls/replica-{i}.{{pem,key}}"
            )
    config = d / CONFIG_FILE
    print(f"  start replica i: bftchat-replica --config {config} --id i --key {d}/replica-i.key --data DIR")
    print(f"  give clients {d / CONFIG_FILE} and {d / TLS_DIR / CA_CERT_FILE}")
    print("  details: docs/OPERATIONS.md")


# ---- entry point -------------------------------------------------------------------------------


def _make_private_dir(path: Path) -> None:
    """Create a directory for secrets (0700 when we create it; an existing one is left as it is)."""
    if str(path) in ("", "."):
        return
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise KeyFileError(f"cannot create directory '{path}': {e.strerror}") from None
    if not path.is_dir():
        raise KeyFileError(f"'{path}' is not a directory")


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 1..65535, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bftchat-keygen",
        description="Create bftchat user keys, or a cluster's keys, TLS certificates and config.",
    )
    add_version_argument(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{user,cluster}")

    user = sub.add_parser("user", help="a chat user's key file (Ed25519 signing + X25519 box key)")
    user.add_argument("--out", required=True, metavar="FILE", help="key file to create (mode 0600)")
    user.add_argument("--name", help="account name to remember in the file (optional)")
    user.add_argument("--force", action="store_true", help="replace an existing key file")
    user.set_defaults(run=cmd_user, parser=user)

    cluster = sub.add_parser("cluster", help="keys, TLS certificates and config.toml for a new cluster")
    cluster.add_argument("--dir", default=str(DEFAULT_DIR), help="output directory (default %(default)s)")
    cluster.add_argument("--replicas", type=int, default=7, help="n = 3f + 1 replicas (default %(default)s)")
    cluster.add_argument(
        "--hosts", help="comma-separated hosts; replica i runs on hosts[i %% len] (default 127.0.0.1)"
    )
    cluster.add_argument(
        "--base-port",
        type=port_number,
        default=7100,
        help="replica i listens on base + i (default %(default)s)",
    )
    cluster.add_argument(
        "--peer-base-port",
        type=port_number,
        help="replica i serves peer links on base + i (default base-port + 1000)",
    )
    cluster.add_argument(
        "--session-base-port",
        type=port_number,
        help="replica i serves framed client sessions on base + i (default base-port + 3000)",
    )
    cluster.add_argument(
        "--metrics-base-port", type=port_number, help="replica i serves metrics on base + i (default none)"
    )
    cluster.add_argument(
        "--name", help="cluster name, free text (default: local, or the directory name with --hosts)"
    )
    cluster.add_argument("--force", action="store_true", help="replace an existing cluster and all its keys")
    cluster.set_defaults(run=cmd_cluster, parser=cluster)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or bad usage (2), message already printed
        return e.code if isinstance(e.code, int) else 2
    try:
        result: int = args.run(args)
        return result
    except UsageError as e:
        args.parser.print_usage(sys.stderr)
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (KeyFileError, TlsError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {e.strerror or e}{f': {e.filename}' if e.filename else ''}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
