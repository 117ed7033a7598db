"""The one home of the bftchat version string and of the ``--version`` flag of every command.

The version is the installed distribution's (``importlib.metadata``), so it follows pyproject.toml
on install; from a source tree that was never installed it is read from pyproject.toml itself.
"""

from __future__ import annotations

import argparse
import tomllib
from functools import cache
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version
from pathlib import Path

DIST_NAME = "bftchat"
UNKNOWN = "0+unknown"


@cache
def version() -> str:
    """The bftchat version, e.g. ``0.1.0`` (``0+unknown`` when neither source is available)."""
    try:
        return _dist_version(DIST_NAME)
    except PackageNotFoundError:
        return source_tree_version()


def source_tree_version(root: Path | None = None) -> str:
    """The version in ``pyproject.toml`` of the source tree this module lives in (not installed)."""
    path = (root or Path(__file__).resolve().parent.parent) / "pyproject.toml"
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        return UNKNOWN
    project = data.get("project", {})
    found = project.get("version") if project.get("name") == DIST_NAME else None
    return found if isinstance(found, str) else UNKNOWN


def add_version_argument(parser: argparse.ArgumentParser) -> None:
    """``--version``: print ``PROG VERSION`` and exit 0 (before any required option is checked)."""
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {version()}", help="print the version and exit"
    )
