"""scripts/demo end to end: every narrated check must hold on real processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(400)
def test_demo_runs_green() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "bft.tools.demo"],
        capture_output=True,
        text=True,
        timeout=380,
        cwd=ROOT,
        check=False,
    )
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert "All 12 checks held." in res.stdout
    assert "✘" not in res.stdout
    assert "Traceback" not in res.stderr
