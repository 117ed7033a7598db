"""The cluster config file: who the replicas are, where they listen, and the protocol's tunables.

One TOML file (format in docs/OPERATIONS.md, "Cluster config"), written once by ``bftchat-keygen``
and copied unchanged to every machine. It holds only public facts, so it can be shared freely; every
replica must load byte-for-byte the same membership, or they disagree on quorums and keys.

Loading is strict: an unknown key (a typo such as ``chekpoint_interval``) is an error, not a
silently ignored default, and every error is a single :class:`ConfigError` line naming the file,
the key and the problem.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import tomllib
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import nacl.bindings
import tomli_w

from bft.app.chat import ChatLimits
from bft.core.config import ClusterInfo, Params
from bft.crypto import CLUSTER_ID_LEN, KEY_LEN

_CLUSTER_KEYS = frozenset({"name", "n", "f", "cluster_id", "tls_ca", "admin_public_key"})
_REPLICA_KEYS = frozenset({"id", "host", "port", "peer_port", "session_port", "public_key", "metrics_port"})
DEFAULT_PEER_PORT_OFFSET = 1000  # peer links listen on port + this unless peer_port says otherwise
SESSION_PORT_OFFSET = 3000  # bftchat-keygen puts session_port here by default (no default when unset)
_TOP_KEYS = frozenset({"cluster", "protocol", "chat", "replica"})
_PARAM_TYPES: dict[str, type] = {
    f.name: typing.get_type_hints(Params)[f.name] for f in dataclasses.fields(Params)
}


class ConfigError(ValueError):
    """A cluster config that cannot be used; the message is one line: file, key, what is wrong."""


@dataclass(frozen=True)
class ReplicaAddress:
    """Where replica ``id`` listens and the Ed25519 key its protocol messages are signed with.

    ``port`` serves clients over gRPC; peer links (mutual TLS) use ``peer_link_port``: ``peer_port``
    if set, else ``port + DEFAULT_PEER_PORT_OFFSET``. ``session_port``, if set, serves the same
    client sessions as length-prefixed frames (``bft.runtime.session_port``), which clients prefer.
    """

    id: int
    host: str
    port: int
    public_key: bytes
    metrics_port: int | None = None
    peer_port: int | None = None
    session_port: int | None = None

    @property
    def peer_link_port(self) -> int:
        return self.peer_port if self.peer_port is not None else self.port + DEFAULT_PEER_PORT_OFFSET

    @property
    def endpoint(self) -> str:
        """``host:port`` for gRPC (IPv6 literals bracketed)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def session_endpoint(self) -> str | None:
        """``host:port`` of the session port, if this replica has one."""
        if self.session_port is None:
            return None
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.session_port}"


@dataclass(frozen=True)
class ClusterConfig:
    """A validated cluster config. Construction checks every cross-field rule (n = 3f + 1, ids ...)."""

    path: Path  # the file it was loaded from (absolute); relative paths inside it are relative to it
    name: str
    n: int
    f: int
    cluster_id: bytes
    replicas: tuple[ReplicaAddress, ...]  # replicas[i].id == i
    params: Params = field(default_factory=Params)
    tls_ca: Path | None = None  # absolute, normalised
    chat: ChatLimits = field(default_factory=ChatLimits)  # the replicated app's limits and quotas
    admin_public_key: bytes | None = None

    def __post_init__(self) -> None:
        # Normalise paths so that a config built in code equals the same config loaded from disk.
        path = Path(os.path.normpath(Path(self.path).absolute()))
        object.__setattr__(self, "path", path)
        if self.tls_ca is not None:
            object.__setattr__(self, "tls_ca", Path(os.path.normpath(path.parent / self.tls_ca)))
        _check(self)

    def info(self) -> ClusterInfo:
        """What the replica core needs: the public keys in id order, the cluster id and the params."""
        return ClusterInfo(tuple(r.public_key for r in self.replicas), self.cluster_id, self.params)

    def address(self, replica_id: int) -> ReplicaAddress:
        if not 0 <= replica_id < self.n:
            raise ConfigError(f"{self.path}: no replica with id {replica_id} (ids are 0..{self.n - 1})")
        return self.replicas[replica_id]


# ---- loading -----------------------------------------------------------------------------------


CONFIG_ENV = "BFTCHAT_CONFIG"  # the config path, as for ``bftchat`` (docs/CLI.md)


def add_config_argument(parser: argparse.ArgumentParser, what: str = "the cluster config (TOML)") -> None:
    """``--config PATH``: required unless ``$BFTCHAT_CONFIG`` names one, the variable ``bftchat``
    honours too, so one ``export`` serves the client and the operator tools alike."""
    env = os.environ.get(CONFIG_ENV) or None
    where = f"default {env}, from ${CONFIG_ENV}" if env else f"required unless ${CONFIG_ENV} is set"
    parser.add_argument(
        "--config", metavar="PATH", required=env is None, default=env, help=f"{what} ({where})"
    )


def protocol_table(settings: Sequence[str], where: str = "--protocol") -> dict[str, Any]:
    """``KEY=VALUE`` strings (TOML values) as a ``[protocol]`` table, not yet checked."""
    table: dict[str, Any] = {}
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep:
            raise ConfigError(f"{where}: {setting!r}: expected KEY=VALUE")
        try:
            table.update(tomllib.loads(f"{key.strip()} = {value.strip()}"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{where}: {setting!r}: {exc}") from None
    return table


def parse_protocol(settings: Sequence[str], where: str = "--protocol") -> Params:
    """Protocol parameters from ``KEY=VALUE`` strings, checked as the ``[protocol]`` table of a
    config is (the bench's ``--protocol``)."""
    return _Parser(Path(where))._params(protocol_table(settings, where))


def load_config(path: str | Path) -> ClusterConfig:
    """Read and validate a cluster config; every problem is a :class:`ConfigError`."""
    path = Path(os.path.normpath(Path(path).absolute()))
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config: {getattr(e, 'strerror', None) or e}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return _Parser(path).parse(doc)


class _Parser:
    """Turns the TOML document into a ClusterConfig, naming the offending key in every error."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, key: str, problem: str) -> NoReturn:
        raise ConfigError(f"{self.path}: {key}: {problem}")

    def parse(self, doc: dict[str, Any]) -> ClusterConfig:
        self._no_unknown(doc, _TOP_KEYS, "")
        cluster = doc.get("cluster")
        if not isinstance(cluster, dict):
            self.fail("[cluster]", "missing table")
        self._no_unknown(cluster, _CLUSTER_KEYS, "cluster.")
        name = cluster.get("name", "")
        if not isinstance(name, str):
            self.fail("cluster.name", "must be a string")
        n = self._int(cluster, "n", "cluster.n", required=True)
        f = self._int(cluster, "f", "cluster.f", required=True)
        cluster_id = self._hex(cluster, "cluster_id", "cluster.cluster_id", CLUSTER_ID_LEN)
        tls_ca = None
        if "tls_ca" in cluster:
            raw_ca = cluster["tls_ca"]
            if not isinstance(raw_ca, str) or not raw_ca:
                self.fail("cluster.tls_ca", "must be a non-empty path string")
            tls_ca = Path(raw_ca)  # relative to the config file: ClusterConfig resolves it
        admin = None
        if "admin_public_key" in cluster:
            admin = self._public_key(cluster, "admin_public_key", "cluster.admin_public_key")

        params = self._params(doc.get("protocol", {}))
        chat = self._chat(doc.get("chat", {}))

        raw_replicas = doc.get("replica", [])
        if not isinstance(raw_replicas, list) or not all(isinstance(r, dict) for r in raw_replicas):
            self.fail("[[replica]]", "must be an array of tables ([[replica]] sections)")
        replicas = [self._replica(i, r) for i, r in enumerate(raw_replicas)]
        replicas.sort(key=lambda r: r.id)
        return ClusterConfig(
            path=self.path,
            name=name,
            n=n,
            f=f,
            cluster_id=cluster_id,
            replicas=tuple(replicas),
            params=params,
            tls_ca=tls_ca,
            admin_public_key=admin,
            chat=chat,
        )

    def _replica(self, index: int, table: dict[str, Any]) -> ReplicaAddress:
        where = f"replica[{index}]"  # index in the file's [[replica]] array: ids may be wrong, this is not
        self._no_unknown(table, _REPLICA_KEYS, where + ".")
        rid = self._int(table, "id", where + ".id", required=True)
        host = table.get("host")
        if not isinstance(host, str):
            self.fail(where + ".host", "missing or not a string")
        port = self._int(table, "port", where + ".port", required=True)
        metrics = self._int(table, "metrics_port", where + ".metrics_port", required=False)
        peer = self._int(table, "peer_port", where + ".peer_port", required=False)
        session = self._int(table, "session_port", where + ".session_port", required=False)
        key = self._public_key(table, "public_key", where + ".public_key")
        return ReplicaAddress(
            id=rid,
            host=host,
            port=port,
            public_key=key,
            metrics_port=metrics,
            peer_port=peer,
            session_port=session,
        )

    def _params(self, table: Any) -> Params:
        if not isinstance(table, dict):
            self.fail("[protocol]", "must be a table")
        values: dict[str, int | float | bool] = {}
        for key, value in table.items():
            kind = _PARAM_TYPES.get(key)
            if kind is None:
                known = ", ".join(sorted(_PARAM_TYPES))
                self.fail(f"protocol.{key}", f"unknown protocol parameter (known: {known})")
            if kind is bool:
                if not isinstance(value, bool):
                    self.fail(f"protocol.{key}", f"must be true or false, got {value!r}")
                values[key] = value
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                self.fail(f"protocol.{key}", f"must be a number, got {value!r}")
            if kind is int and not isinstance(value, int):
                self.fail(f"protocol.{key}", f"must be an integer, got {value!r}")
            if not value > 0:
                self.fail(f"protocol.{key}", f"must be positive, got {value!r}")
            values[key] = float(value) if kind is float else value
        try:
            return Params(**values)  # type: ignore[arg-type]
        except (TypeError, ValueError) as e:
            self.fail("[protocol]", str(e))

    def _chat(self, table: Any) -> ChatLimits:
        if not isinstance(table, dict):
            self.fail("[chat]", "must be a table")
        known = {f.name for f in dataclasses.fields(ChatLimits)}
        for key, value in table.items():
            if key not in known:
                self.fail(f"chat.{key}", f"unknown chat limit (known: {', '.join(sorted(known))})")
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                self.fail(f"chat.{key}", f"must be a positive integer, got {value!r}")
        try:
            return ChatLimits(**table)
        except ValueError as e:
            self.fail("[chat]", str(e))

    def _no_unknown(self, table: dict[str, Any], known: frozenset[str], prefix: str) -> None:
        for key in table:
            if key not in known:
                hint = ", ".join(sorted(known))
                self.fail(f"{prefix}{key}", f"unknown key (allowed here: {hint})")

    def _int(self, table: dict[str, Any], key: str, where: str, *, required: bool) -> Any:
        if key not in table:
            if required:
                self.fail(where, "missing")
            return None
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(where, f"must be an integer, got {value!r}")
        return value

    def _hex(self, table: dict[str, Any], key: str, where: str, length: int) -> bytes:
        value = table.get(key)
        if value is None:
            self.fail(where, "missing")
        if not isinstance(value, str):
            self.fail(where, "must be a hex string")
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            self.fail(where, "not valid hex")
        if len(raw) != length:
            self.fail(where, f"must be {length} bytes ({2 * length} hex digits), got {len(raw)} bytes")
        return raw

    def _public_key(self, table: dict[str, Any], key: str, where: str) -> bytes:
        raw = self._hex(table, key, where, KEY_LEN)
        if not nacl.bindings.crypto_core_ed25519_is_valid_point(raw):
            self.fail(where, "not a valid Ed25519 public key")
        return raw


# ---- cross-field rules -------------------------------------------------------------------------


def _check(cfg: ClusterConfig) -> None:
    """Every rule that involves more than one field; run on construction, so a dumped config is valid."""

    def fail(key: str, problem: str) -> NoReturn:
        raise ConfigError(f"{cfg.path}: {key}: {problem}")

    if cfg.f < 1:
        fail("cluster.f", f"must be >= 1, got {cfg.f}")
    if cfg.n != 3 * cfg.f + 1:
        fail("cluster.n", f"must be 3f + 1 = {3 * cfg.f + 1} for f = {cfg.f}, got {cfg.n}")
    if len(cfg.cluster_id) != CLUSTER_ID_LEN:
        fail("cluster.cluster_id", f"must be {CLUSTER_ID_LEN} bytes")
    if cfg.admin_public_key is not None and len(cfg.admin_public_key) != KEY_LEN:
        fail("cluster.admin_public_key", f"must be {KEY_LEN} bytes")
    if len(cfg.replicas) != cfg.n:
        fail("[[replica]]", f"n = {cfg.n} but there are {len(cfg.replicas)} [[replica]] entries")
    seen_ids: set[int] = set()
    endpoints: dict[tuple[str, int], str] = {}
    keys: dict[bytes, int] = {}
    for r in cfg.replicas:
        where = f"replica[id={r.id}]"
        if r.id in seen_ids:
            fail(f"{where}", "duplicate replica id")
        seen_ids.add(r.id)
        bad_host = host_problem(r.host)
        if bad_host:
            fail(f"{where}.host", bad_host)
        peer_label = (
            "peer_port"
            if r.peer_port is not None
            else f"peer_port (default port + {DEFAULT_PEER_PORT_OFFSET})"
        )
        ports = (
            ("port", r.port),
            (peer_label, r.peer_link_port),
            ("session_port", r.session_port),
            ("metrics_port", r.metrics_port),
        )
        for label, port in ports:
            if port is None:
                continue
            if not 1 <= port <= 65535:
                fail(f"{where}.{label}", f"must be 1..65535, got {port}")
            other = endpoints.get((r.host.lower(), port))
            if other is not None:
                fail(f"{where}.{label}", f"{r.host}:{port} is already used by {other}")
            endpoints[(r.host.lower(), port)] = f"{where}.{label}"
        if len(r.public_key) != KEY_LEN:
            fail(f"{where}.public_key", f"must be {KEY_LEN} bytes")
        if r.public_key in keys:
            fail(f"{where}.public_key", f"same key as replica {keys[r.public_key]}")
        if r.public_key == cfg.admin_public_key:
            fail(f"{where}.public_key", "same key as cluster.admin_public_key")
        keys[r.public_key] = r.id
    if [r.id for r in cfg.replicas] != list(range(cfg.n)):
        ids = sorted(seen_ids)
        fail("[[replica]]", f"ids must be exactly 0..{cfg.n - 1}, got {ids}")


def host_problem(host: str) -> str | None:
    """Why ``host`` is not a hostname or IP literal (no ports, schemes, spaces; IPv6 written bare)."""
    if not host:
        return "must not be empty"
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    ok = len(host) <= 253 and all(
        0 < len(label) <= 63
        and label[0] != "-"
        and label[-1] != "-"
        and all(c.isalnum() or c in "-_" for c in label)
        for label in labels
    )
    if not ok or not host.isascii():
        return f"not a valid hostname or IP address: {host!r}"
    return None


# ---- writing -----------------------------------------------------------------------------------


def dump_config(cfg: ClusterConfig) -> str:
    """The TOML text of ``cfg``; written next to ``cfg.path``, ``load_config`` gives back ``cfg``.

    Only protocol parameters that differ from the defaults are written, so that a later change of a
    default reaches configs that never chose a value.
    """
    cluster: dict[str, object] = {
        "name": cfg.name,
        "n": cfg.n,
        "f": cfg.f,
        "cluster_id": cfg.cluster_id.hex(),
    }
    if cfg.tls_ca is not None:
        cluster["tls_ca"] = _relative_to_config(cfg.tls_ca, cfg.path)
    if cfg.admin_public_key is not None:
        cluster["admin_public_key"] = cfg.admin_public_key.hex()
    doc: dict[str, object] = {"cluster": cluster}
    for table, values in (("protocol", cfg.params), ("chat", cfg.chat)):
        changed = _non_default(values)
        if changed:
            doc[table] = dict(changed)
    replicas = []
    for r in cfg.replicas:
        replica: dict[str, object] = {"id": r.id, "host": r.host, "port": r.port}
        if r.peer_port is not None:
            replica["peer_port"] = r.peer_port
        if r.session_port is not None:
            replica["session_port"] = r.session_port
        replica["public_key"] = r.public_key.hex()
        if r.metrics_port is not None:
            replica["metrics_port"] = r.metrics_port
        replicas.append(replica)
    doc["replica"] = replicas
    header = (
        "# bftchat cluster config, written by bftchat-keygen. Public: copy it unchanged to every\n"
        '# machine. Format: docs/OPERATIONS.md, section "Cluster config".\n\n'
    )
    return header + tomli_w.dumps(doc)


def _non_default(values: Params | ChatLimits) -> list[tuple[str, object]]:
    """The fields of a parameter dataclass that differ from its defaults, in declaration order."""
    defaults = type(values)()
    return [
        (f.name, getattr(values, f.name))
        for f in dataclasses.fields(values)
        if getattr(values, f.name) != getattr(defaults, f.name)
    ]


def _relative_to_config(target: Path, config_path: Path) -> str:
    base = config_path.parent
    if target.is_absolute() and base.is_absolute():
        rel = os.path.relpath(target, base)
        return Path(rel).as_posix()
    return target.as_posix()
