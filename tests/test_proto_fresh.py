"""The committed generated code in bft/pb/ matches proto/ (regenerate with ./scripts/genproto)."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "genproto"), str(tmp_path)],
        check=True,
        cwd=ROOT,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
    )
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py*"))
    assert fresh, "genproto produced nothing"
    stale = [str(p) for p in fresh if not filecmp.cmp(tmp_path / p, ROOT / "bft" / "pb" / p, shallow=False)]
    assert not stale, f"stale generated code, run ./scripts/genproto: {stale}"
