"""Conventions every command shares: ``--version``, help text on every option, real defaults shown."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bft.version import UNKNOWN, source_tree_version, version

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]

# Every parser of every command: the console scripts' entry modules, the replica's verify-log
# subcommand, and the simulator (python -m bft.sim).
PARSERS: dict[str, tuple[str, str]] = {
    "bftchat-replica": ("bft.runtime.main", "build_parser"),
    "bftchat-replica verify-log": ("bft.runtime.main", "build_verify_log_parser"),
    "bftchat-keygen": ("bft.tools.keygen", "build_parser"),
    "bftchat": ("client.cli", "build_parser"),
    "bftchat-cluster": ("bft.tools.cluster", "build_parser"),
    "bftchat-bench": ("bft.tools.bench", "build_parser"),
    "bftchat-fault": ("bft.tools.faultctl", "build_parser"),
    "bftchat-attack": ("bft.tools.attack", "build_parser"),
    "python -m bft.sim": ("bft.sim.__main__", "build_parser"),
    "scripts/demo": ("bft.tools.demo", "build_parser"),
}
# Commands that are not console scripts, with their entry points.
OTHER_MAINS = {"python -m bft.sim": "bft.sim.__main__:main", "scripts/demo": "bft.tools.demo:main"}


def _entry(target: str) -> Callable[..., object]:
    module, _, name = target.partition(":")
    fn = getattr(importlib.import_module(module), name)
    assert callable(fn)
    return fn


def _parser(name: str) -> argparse.ArgumentParser:
    module, builder = PARSERS[name]
    parser = getattr(importlib.import_module(module), builder)()
    assert isinstance(parser, argparse.ArgumentParser)
    return parser


def _walk(parser: argparse.ArgumentParser) -> Iterator[tuple[argparse.ArgumentParser, argparse.Action]]:
    """Every action of a parser and of its subcommands' parsers."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _walk(sub)
        else:
            yield parser, action


def _shown(default: object) -> str:
    if isinstance(default, list):
        return ",".join(map(str, default))
    if isinstance(default, float):
        return f"{default:g}"
    return str(default)


def test_every_console_script_has_a_parser_listed_here() -> None:
    modules = {target.partition(":")[0] for target in SCRIPTS.values()}
    assert modules <= {module for module, _ in PARSERS.values()}
    assert set(SCRIPTS) <= set(PARSERS)


@pytest.mark.parametrize("script", [*sorted(SCRIPTS), *sorted(OTHER_MAINS)])
def test_version_flag(script: str, capsys: pytest.CaptureFixture[str]) -> None:
    main = _entry(SCRIPTS[script]) if script in SCRIPTS else _entry(OTHER_MAINS[script])
    try:
        code = main(["--version"])
    except SystemExit as exc:
        code = exc.code
    assert code in (0, None)
    out = capsys.readouterr().out.strip()
    assert out == f"{script} {version()}"
    assert version() != UNKNOWN


def test_version_is_the_projects() -> None:
    assert (
        source_tree_version(ROOT)
        == version()
        == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    )


def test_version_without_install_reads_pyproject(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "bftchat"\nversion = "9.8.7"\n')
    assert source_tree_version(tmp_path) == "9.8.7"
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "other"\nversion = "1.0"\n')
    assert source_tree_version(tmp_path) == UNKNOWN
    assert source_tree_version(tmp_path / "missing") == UNKNOWN


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_every_option_has_help_and_shows_its_real_default(name: str) -> None:
    parser = _parser(name)
    for owner, action in _walk(parser):
        if isinstance(action, argparse._HelpAction):
            continue
        what = f"{owner.prog} {'/'.join(action.option_strings) or action.dest}"
        assert action.help and action.help != argparse.SUPPRESS, f"{what}: no help text"
        shown = owner._get_formatter()._expand_help(action)
        assert "%(" not in shown, what
        assert "default: see" not in shown, f"{what}: help {shown!r} points elsewhere for its default"
        default = action.default
        if default in (None, False, argparse.SUPPRESS) or isinstance(action, argparse._VersionAction):
            continue
        assert f"default {_shown(default)}" in shown, f"{what}: help {shown!r} does not show {default!r}"
    assert parser.format_help()  # every help string formats


def test_pyproject_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    import trove_classifiers
    from setuptools.config.pyprojecttoml import read_configuration

    monkeypatch.setenv("VALIDATE_PYPROJECT_NO_NETWORK", "1")
    project = read_configuration(ROOT / "pyproject.toml")["project"]  # setuptools' schema check
    assert project["authors"] and all(a.get("name") for a in project["authors"])
    unknown = [c for c in project["classifiers"] if c not in trove_classifiers.classifiers]
    assert not unknown, f"not trove classifiers: {unknown}"
    assert not any(c.startswith("License ::") for c in project["classifiers"])  # license = SPDX
    floor = project["requires-python"].removeprefix(">=")
    assert f"Programming Language :: Python :: {floor}" in project["classifiers"]
    urls = project["urls"]
    assert {"Homepage", "Documentation", "Source"} <= set(urls)
    for name, url in urls.items():  # each names a path of this repository
        path = url.split("/main/", 1)[1] if "/main/" in url else ""
        assert (ROOT / path).exists(), f"{name}: {url} names no file of the repository"
    assert urls["Documentation"].endswith("/docs")


@pytest.mark.parametrize("name", ["bftchat-replica", "bftchat-replica verify-log", "bftchat-fault"])
def test_operator_tools_take_the_config_from_bftchat_config(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 14: the operator tools honour $BFTCHAT_CONFIG as bftchat does (--config still wins)."""
    rest = {
        "bftchat-replica": ["--id", "0", "--key", "k", "--data", "d"],
        "bftchat-replica verify-log": ["data"],
        "bftchat-fault": ["--replica", "0", "heal"],
    }[name]
    monkeypatch.delenv("BFTCHAT_CONFIG", raising=False)
    with pytest.raises(SystemExit):  # required without the variable
        _parser(name).parse_args(rest)
    assert "--config" in capsys.readouterr().err
    monkeypatch.setenv("BFTCHAT_CONFIG", str(tmp_path / "env.toml"))
    assert _parser(name).parse_args(rest).config == str(tmp_path / "env.toml")
    assert _parser(name).parse_args([*rest, "--config", "flag.toml"]).config == "flag.toml"


def test_bftchat_fault_loads_the_config_named_by_bftchat_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bft.runtime import faultctl
    from bft.tools import keygen

    cfg, signers, admin = keygen.plan_cluster(
        tmp_path, name="env", replicas=4, hosts=["127.0.0.1"], base_port=27100, metrics_base_port=None
    )
    keygen.write_cluster(cfg, signers, admin, force=False)
    monkeypatch.setenv("BFTCHAT_CONFIG", str(cfg.path))
    assert faultctl.main(["--replica", "9", "heal"]) == 1
    assert "no replica 9 in a cluster of 4" in capsys.readouterr().err  # it read that config


def _imported_by(module: str) -> set[str]:
    """The modules a fresh interpreter has loaded after importing ``module``."""
    import subprocess
    import sys

    code = f"import sys, {module}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return set(out.stdout.split())


def test_the_chat_front_ends_do_not_import_each_other_and_the_client_not_the_daemon() -> None:
    """Issue 14: chat_ui takes what it prints from client.output, not from client.cli (which imports
    chat_ui for ``chat``); the client takes its handshake proofs from the shared bft.handshake,
    which bft.runtime.handshake re-exports unchanged."""
    assert "client.cli" not in _imported_by("client.chat_ui")
    client_side = _imported_by("client.cli") | _imported_by("client.chat")
    assert "bft.handshake" in client_side and "bft.runtime.handshake" not in client_side
    import bft.handshake
    import bft.runtime.handshake

    for name in bft.runtime.handshake.__all__:
        assert getattr(bft.runtime.handshake, name) is getattr(bft.handshake, name)


@pytest.mark.parametrize("name", ["attack", "bench", "cluster", "demo", "keygen", "preload"])
def test_a_moved_operator_tool_is_the_same_module_under_its_old_runtime_name(name: str) -> None:
    """Issue 14: the operator tools moved to bft/tools/, and ``bft.runtime.X`` is a contract: the old
    name must give the very same module object (so its globals, patched or read, are the tool's)."""
    tool = importlib.import_module(f"bft.tools.{name}")
    assert importlib.import_module(f"bft.runtime.{name}") is tool
    assert importlib.import_module("bft.runtime.clusterconf") is importlib.import_module("bft.clusterconf")


def test_bftchat_fault_names_stay_importable_from_the_runtime_module() -> None:
    """bftchat-fault's CLI lives in bft.tools.faultctl; bft.runtime.faultctl keeps the replica's side
    and still gives the moved names (the same objects), and ``python -m bft.runtime.faultctl`` runs it."""
    import bft.runtime.faultctl as runtime_side
    import bft.tools.faultctl as tool

    for name in ("parse_faults", "send_fault", "build_parser", "main"):
        assert getattr(runtime_side, name) is getattr(tool, name)
    assert tool.sign_command is runtime_side.sign_command
    with pytest.raises(AttributeError):
        runtime_side.no_such_name  # noqa: B018
    out = subprocess.run(
        [sys.executable, "-m", "bft.runtime.faultctl", "--version"], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0 and out.stdout.strip() == f"bftchat-fault {version()}", out


def test_bftchat_config_and_key_help_show_the_real_lookup_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Their default is None (looked up at run time), so the help names the lookup itself: the
    environment variable, then the candidates bftchat really tries, in its order."""
    from client import cli

    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    home = str(Path.home())
    actions = {a.dest: a for a in cli.build_parser()._actions}
    for dest, env, candidates in (
        ("config", "BFTCHAT_CONFIG", cli.default_configs()),
        ("key", "BFTCHAT_KEY", cli.default_keys()),
    ):
        shown = " ".join((actions[dest].help or "").split())
        tried = [str(c).replace(home, "~", 1) for c in candidates]
        expect = f"(default: ${env}, else the first that exists of {tried[0]} and {tried[1]};"
        assert expect in shown and "$XDG_CONFIG_HOME is honoured" in shown, shown


@pytest.mark.parametrize(
    ("script", "shown"),
    [
        (
            "bench_chat.py",
            [
                "--messages MESSAGES undelivered messages in the large state",
                "default 100000)",
                "--body BODY ciphertext bytes per message (default 256)",
                "--recipients RECIPIENTS accounts that send and receive those messages, round robin",
                "(default 100)",
            ],
        ),
        (
            "bench_restart.py",
            ["--messages MESSAGES undelivered chat messages in the checkpoint", "(default 100000)"],
        ),
    ],
)
def test_bench_scripts_help_every_option(script: str, shown: list[str]) -> None:
    """scripts/bench_*.py are not console scripts (no parser builder to import): their --help, run,
    shows each option with its help text and default."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0, out
    text = " ".join(out.stdout.split())
    for item in shown:
        assert item in text, (item, text)
