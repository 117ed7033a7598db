"""Every bug the simulator found, as the shrunk scenario that exposed it (see scenarios.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bft.sim.scenario import Scenario
from bft.sim.world import run_scenario

CASES = json.loads((Path(__file__).parent / "regressions" / "scenarios.json").read_text())


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_regression_scenario_passes(case: dict[str, object]) -> None:
    sc = Scenario.from_json(json.dumps(case["scenario"]))
    assert run_scenario(sc).violations == []
