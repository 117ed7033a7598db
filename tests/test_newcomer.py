"""The README's first command on a fresh checkout: ``git clone`` the repo, run ``./scripts/cluster``
in the clone, and chat with the cluster it brings up; then stop it with SIGTERM.

To keep CI time sane the clone borrows this test run's virtual environment (``BFTCHAT_VENV``, which
``scripts/cluster`` honours by installing nothing and running the clone's own source via
PYTHONPATH) instead of creating and pip-installing a new one. The clone is of the committed HEAD,
so this checks what a newcomer would get, not uncommitted edits.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cluster_helper import free_range, run
from test_cluster_script import REPO, Launcher, User, gone, round_trip


@pytest.mark.timeout(180)
def test_fresh_clone_runs_scripts_cluster(tmp_path: Path) -> None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs git and a git checkout")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=60)
    assert (clone / "scripts" / "cluster").exists(), "scripts/cluster is not committed"
    assert not (clone / ".venv").exists() and not (clone / "keys" / "cluster").exists()
    env = dict(os.environ, BFTCHAT_VENV=sys.prefix)
    env.pop("PYTHONPATH", None)
    taken: set[int] = set()
    directory = tmp_path / "newcomer-cluster"
    cmd = [
        "./scripts/cluster",
        "--dir",
        str(directory),
        "--replicas",
        "4",
        "--base-port",
        str(free_range(4, taken)),
        "--peer-base-port",
        str(free_range(4, taken)),
        "--session-base-port",
        str(free_range(4, taken)),
    ]
    launcher = Launcher(cmd, tmp_path / "cluster.out", cwd=clone, env=env)
    try:
        launcher.wait_for(r"all 4 replicas up", timeout=90)
        pids = launcher.replica_pids()
        run(round_trip(directory / "config.toml", User("newcomer"), User("friend"), b"hello"), timeout=90)
        assert launcher.terminate() == 0, launcher.text()
        assert all(gone(pid) for pid in pids)
    finally:
        launcher.kill()
    assert not (clone / ".venv").exists()  # borrowed, not built
