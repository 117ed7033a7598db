"""Cluster config: load(dump(x)) == x, and every kind of bad file is one clear ConfigError line."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from bft.app.chat import ChatLimits
from bft.clusterconf import ClusterConfig, ConfigError, ReplicaAddress, dump_config, load_config
from bft.core.config import Params
from bft.crypto import Ed25519Signer

KEYS = [Ed25519Signer(bytes([i + 1]) * 32).public_key for i in range(8)]
ADMIN = KEYS[7]


def make_config(path: Path, n: int = 4, **changes: Any) -> ClusterConfig:
    replicas = tuple(ReplicaAddress(i, "127.0.0.1", 7100 + i, KEYS[i]) for i in range(n))
    cfg = ClusterConfig(
        path=path,
        name="local",
        n=n,
        f=(n - 1) // 3,
        cluster_id=bytes(range(16)),
        replicas=replicas,
        tls_ca=Path("tls/ca.pem"),
        admin_public_key=ADMIN,
    )
    return dataclasses.replace(cfg, **changes) if changes else cfg


def base_doc() -> dict[str, Any]:
    """A valid config as plain data, for tests that break one field of it."""
    return {
        "cluster": {
            "name": "local",
            "n": 4,
            "f": 1,
            "cluster_id": bytes(range(16)).hex(),
            "tls_ca": "tls/ca.pem",
            "admin_public_key": ADMIN.hex(),
        },
        "protocol": {"checkpoint_interval": 32},
        "replica": [
            {"id": i, "host": "127.0.0.1", "port": 7100 + i, "public_key": KEYS[i].hex()} for i in range(4)
        ],
    }


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return repr(v)


def render(doc: dict[str, Any]) -> str:
    lines: list[str] = []

    def is_tables(value: Any) -> bool:
        return isinstance(value, list) and bool(value) and all(isinstance(x, dict) for x in value)

    for key, value in doc.items():
        if not isinstance(value, dict) and not is_tables(value):
            lines.append(f"{key} = {toml_value(value)}")
    for key, value in doc.items():
        if isinstance(value, dict):
            lines.append(f"[{key}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in value.items()]
        elif is_tables(value):
            for table in value:
                lines.append(f"[[{key}]]")
                lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def write(tmp_path: Path, doc: dict[str, Any] | str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(doc if isinstance(doc, str) else render(doc))
    return path


# ---- round trips -------------------------------------------------------------------------------


def test_load_dump_round_trip(tmp_path: Path) -> None:
    cfg = make_config(tmp_path / "config.toml")
    (tmp_path / "config.toml").write_text(dump_config(cfg))
    assert load_config(tmp_path / "config.toml") == cfg


def test_round_trip_with_every_optional_field(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "config.toml"
    path.parent.mkdir()
    replicas = tuple(
        ReplicaAddress(
            i,
            host,
            7000 + i,
            KEYS[i],
            metrics_port=9000 + i if i % 2 else None,
            peer_port=7500 + i if i > 2 else None,
        )
        for i, host in enumerate(["10.0.0.1", "::1", "replica-2.example.com", "10.0.0.1", "a", "b", "c"])
    )
    cfg = ClusterConfig(
        path=path,
        name='odd "name" \\ with ünïcode',
        n=7,
        f=2,
        cluster_id=b"\xff" * 16,
        replicas=replicas,
        params=Params(
            checkpoint_interval=16,
            watermark_window=64,
            view_change_timeout=0.5,
            max_in_flight=2,
            vote_relay=False,
        ),
        tls_ca=tmp_path / "elsewhere" / "ca.pem",
        admin_public_key=None,
        chat=ChatLimits(max_inbox=50, register_max=10),
    )
    text = dump_config(cfg)
    assert 'tls_ca = "../elsewhere/ca.pem"' in text
    assert "[protocol]" in text and "batch_max_requests" not in text  # only non-default params
    assert "vote_relay = false" in text  # a boolean parameter is written as one
    assert "[chat]\nmax_inbox = 50\nregister_max = 10\n" in text and "max_state_bytes" not in text
    path.write_text(text)
    loaded = load_config(path)
    assert loaded == cfg
    assert loaded.replicas[1].endpoint == "[::1]:7001"
    assert loaded.replicas[1].peer_link_port == 8001  # default: port + 1000
    assert loaded.replicas[3].peer_link_port == 7503


def test_minimal_config_defaults(tmp_path: Path) -> None:
    doc = base_doc()
    del doc["protocol"]
    del doc["cluster"]["tls_ca"]
    del doc["cluster"]["admin_public_key"]
    cfg = load_config(write(tmp_path, doc))
    assert cfg.params == Params()
    assert cfg.tls_ca is None and cfg.admin_public_key is None
    assert cfg.replicas[0].metrics_port is None


def test_paths_info_and_address(tmp_path: Path) -> None:
    doc = base_doc()
    doc["replica"].reverse()  # order in the file does not matter; ids do
    cfg = load_config(write(tmp_path, doc))
    assert cfg.path == (tmp_path / "config.toml").absolute()
    assert cfg.tls_ca == tmp_path / "tls" / "ca.pem"
    assert cfg.params.checkpoint_interval == 32
    info = cfg.info()
    assert info.public_keys == tuple(KEYS[:4]) and info.cluster_id == bytes(range(16))
    assert info.params is cfg.params and info.n == 4
    assert cfg.address(2) == ReplicaAddress(2, "127.0.0.1", 7102, KEYS[2])
    assert [r.id for r in cfg.replicas] == [0, 1, 2, 3]
    with pytest.raises(ConfigError, match="no replica with id 4"):
        cfg.address(4)


def test_relative_path_is_resolved_against_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, base_doc())
    monkeypatch.chdir(tmp_path)
    cfg = load_config("config.toml")
    assert cfg.path == tmp_path / "config.toml"
    assert cfg.tls_ca == tmp_path / "tls" / "ca.pem"


def test_int_accepted_for_float_param(tmp_path: Path) -> None:
    doc = base_doc()
    doc["protocol"] = {"view_change_timeout": 3}
    cfg = load_config(write(tmp_path, doc))
    assert cfg.params.view_change_timeout == 3.0 and isinstance(cfg.params.view_change_timeout, float)


# ---- errors ------------------------------------------------------------------------------------


def cluster(**kv: Any) -> Any:
    def edit(doc: dict[str, Any]) -> None:
        for k, v in kv.items():
            if v is None:
                del doc["cluster"][k]
            else:
                doc["cluster"][k] = v

    return edit


def replica(index: int, **kv: Any) -> Any:
    def edit(doc: dict[str, Any]) -> None:
        for k, v in kv.items():
            if v is None:
                del doc["replica"][index][k]
            else:
                doc["replica"][index][k] = v

    return edit


def protocol(**kv: Any) -> Any:
    def edit(doc: dict[str, Any]) -> None:
        doc["protocol"] = kv

    return edit


def top(**kv: Any) -> Any:
    def edit(doc: dict[str, Any]) -> None:
        doc.update(kv)

    return edit


def drop_replica(doc: dict[str, Any]) -> None:
    doc["replica"].pop()


def seven_replicas_for_n4(doc: dict[str, Any]) -> None:
    doc["cluster"].update(n=7, f=2)


@pytest.mark.parametrize(
    ("edit", "key", "message"),
    [
        (top(extra=1), "extra", "unknown key"),
        (cluster(nmae="x"), "cluster.nmae", "unknown key"),
        (replica(1, hots="x"), "replica[1].hots", "unknown key"),
        (cluster(n=5), "cluster.n", "must be 3f + 1 = 4 for f = 1, got 5"),
        (cluster(n=1, f=0), "cluster.f", "must be >= 1"),
        (cluster(n="4"), "cluster.n", "must be an integer"),
        (cluster(n=True), "cluster.n", "must be an integer"),
        (cluster(f=None), "cluster.f", "missing"),
        (cluster(name=3), "cluster.name", "must be a string"),
        (drop_replica, "[[replica]]", "n = 4 but there are 3 [[replica]] entries"),
        (seven_replicas_for_n4, "[[replica]]", "n = 7 but there are 4"),
        (replica(3, id=4), "[[replica]]", "ids must be exactly 0..3, got [0, 1, 2, 4]"),
        (replica(3, id=2), "replica[id=2]", "duplicate replica id"),
        (replica(3, id=None), "replica[3].id", "missing"),
        (replica(2, port=7100), "replica[id=2].port", "127.0.0.1:7100 is already used by replica[id=0].port"),
        (replica(2, metrics_port=7101), "replica[id=2].metrics_port", "already used by replica[id=1].port"),
        (
            replica(2, peer_port=7101),
            "replica[id=2].peer_port",
            "127.0.0.1:7101 is already used by replica[id=1].port",
        ),
        (
            replica(2, metrics_port=8101),
            "replica[id=2].metrics_port",
            "127.0.0.1:8101 is already used by replica[id=1].peer_port (default port + 1000)",
        ),
        (
            replica(0, port=65000),
            "replica[id=0].peer_port (default port + 1000)",
            "must be 1..65535, got 66000",
        ),
        (replica(0, peer_port=0), "replica[id=0].peer_port", "must be 1..65535, got 0"),
        (replica(0, peer_port="x"), "replica[0].peer_port", "must be an integer"),
        (replica(0, port=0), "replica[id=0].port", "must be 1..65535, got 0"),
        (replica(0, port=70000), "replica[id=0].port", "must be 1..65535, got 70000"),
        (replica(0, port="7100"), "replica[0].port", "must be an integer"),
        (replica(0, host="127.0.0.1:7100"), "replica[id=0].host", "not a valid hostname or IP address"),
        (replica(0, host=""), "replica[id=0].host", "must not be empty"),
        (replica(0, host=None), "replica[0].host", "missing or not a string"),
        (replica(1, public_key="zz" * 32), "replica[1].public_key", "not valid hex"),
        (
            replica(1, public_key="ab" * 31),
            "replica[1].public_key",
            "must be 32 bytes (64 hex digits), got 31",
        ),
        (replica(1, public_key="00" * 32), "replica[1].public_key", "not a valid Ed25519 public key"),
        (replica(1, public_key=KEYS[0].hex()), "replica[id=1].public_key", "same key as replica 0"),
        (
            replica(1, public_key=ADMIN.hex()),
            "replica[id=1].public_key",
            "same key as cluster.admin_public_key",
        ),
        (replica(1, public_key=None), "replica[1].public_key", "missing"),
        (cluster(cluster_id="00" * 15), "cluster.cluster_id", "must be 16 bytes (32 hex digits)"),
        (cluster(cluster_id=None), "cluster.cluster_id", "missing"),
        (cluster(admin_public_key="xyz"), "cluster.admin_public_key", "not valid hex"),
        (cluster(tls_ca=""), "cluster.tls_ca", "must be a non-empty path string"),
        (protocol(chekpoint_interval=8), "protocol.chekpoint_interval", "unknown protocol parameter"),
        (protocol(checkpoint_interval=200), "[protocol]", "watermark_window >= 2 * checkpoint_interval"),
        (protocol(checkpoint_interval=1.5), "protocol.checkpoint_interval", "must be an integer"),
        (protocol(checkpoint_interval=True), "protocol.checkpoint_interval", "must be a number"),
        (protocol(view_change_timeout="2s"), "protocol.view_change_timeout", "must be a number"),
        (protocol(vote_relay=1), "protocol.vote_relay", "must be true or false"),
        (protocol(vote_relay="no"), "protocol.vote_relay", "must be true or false"),
        (protocol(vote_relay_backoff=0), "protocol.vote_relay_backoff", "must be positive"),
        (protocol(view_change_timeout=0), "protocol.view_change_timeout", "must be positive"),
        (protocol(max_pending_total=-1), "protocol.max_pending_total", "must be positive"),
        (top(protocol=3), "[protocol]", "must be a table"),
        (top(chat={"max_inbx": 5}), "chat.max_inbx", "unknown chat limit"),
        (top(chat={"max_inbox": 0}), "chat.max_inbox", "must be a positive integer"),
        (top(chat={"max_inbox": 2.5}), "chat.max_inbox", "must be a positive integer"),
        (top(chat={"max_state_bytes": 2**31}), "[chat]", "max_state_bytes at most"),
        (top(chat=3), "[chat]", "must be a table"),
        (top(replica=[1, 2]), "[[replica]]", "must be an array of tables"),
    ],
)
def test_bad_config(tmp_path: Path, edit: Any, key: str, message: str) -> None:
    doc = base_doc()
    edit(doc)
    path = write(tmp_path, doc)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    text = str(e.value)
    assert text.startswith(f"{path}: {key}: "), text
    assert message in text
    assert "\n" not in text


def test_missing_cluster_table(tmp_path: Path) -> None:
    doc = base_doc()
    del doc["cluster"]
    with pytest.raises(ConfigError, match=r"\[cluster\]: missing table"):
        load_config(write(tmp_path, doc))


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[cluster\nn = 4"))
    with pytest.raises(ConfigError, match="config file does not exist"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path)


def test_construction_validates_too(tmp_path: Path) -> None:
    cfg = make_config(tmp_path / "c.toml")
    with pytest.raises(ConfigError, match=r"ids must be exactly 0\.\.3"):
        dataclasses.replace(cfg, replicas=tuple(reversed(cfg.replicas)))
    with pytest.raises(ConfigError, match="must be 3f"):
        dataclasses.replace(cfg, f=2)


def test_protocol_settings_from_the_command_line_are_checked_like_the_config_table() -> None:
    """``bftchat-bench --protocol KEY=VALUE``: the same names, types and checks as ``[protocol]``."""
    from bft.clusterconf import parse_protocol

    p = parse_protocol(["state_pages=131072", "vote_relay = false", "view_change_timeout=1.5"])
    assert (p.state_pages, p.vote_relay, p.view_change_timeout) == (131072, False, 1.5)
    for bad, says in [
        (["state_page=4"], "unknown protocol parameter"),
        (["state_pages"], "expected KEY=VALUE"),
        (["state_pages=3"], "power of two"),
        (["batch_max_bytes=1.5"], "must be an integer"),
        (["vote_relay=yes"], "--protocol"),
    ]:
        with pytest.raises(ConfigError, match=says):
            parse_protocol(bad)
