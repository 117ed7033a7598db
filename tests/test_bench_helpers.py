"""The benchmark's small helpers, on the well-kept libraries (issue 14): percentiles
(``statistics.quantiles``), the replicas' /metrics pages (``prometheus_client.parser``), per-process
CPU and replica discovery (``psutil``)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from bft.tools import bench


def test_percentiles() -> None:
    values = [float(x) for x in range(1, 101)]  # 1..100
    assert bench._percentile(values, 0.50) == pytest.approx(50.5)
    assert bench._percentile(values, 0.99) == pytest.approx(99.01)
    assert bench._percentile([7.0], 0.99) == 7.0
    assert str(bench._percentile([], 0.5)) == "nan"


def test_metrics_pages_are_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the replicas serve (prometheus_client's own text format), read back per port."""
    pages = {}
    for port, k in ((1, 1.0), (2, 2.0)):
        reg = CollectorRegistry()
        Counter("bft_committed_requests", "", registry=reg).inc(10 * k)
        Gauge("bft_view", "", registry=reg).set(3 * k)
        h = Histogram("bft_gc_pause_seconds", "", ["generation"], buckets=(0.01, 0.1), registry=reg)
        h.labels("2").observe(0.05 * k)
        h.labels("0").observe(0.005)
        pages[port] = generate_latest(reg).decode()
    monkeypatch.setattr(bench, "metrics_text", lambda port: pages.get(port, ""))
    assert bench.scrape([1, 2])["bft_committed_requests_total"] == 30.0
    assert bench.metric(2, "bft_view") == 6.0 and bench.metric(3, "bft_view") is None
    gc = bench.histogram([1, 2], "bft_gc_pause_seconds", {"generation": "2"})
    assert gc == {0.01: 0.0, 0.1: 2.0, float("inf"): 2.0}


def test_cpu_and_replica_discovery(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("")
    fake = subprocess.Popen(  # looks like a replica of this config (argv only)
        [sys.executable, "-c", "import time; time.sleep(60)", "bft.runtime.main", "--config", str(config)]
    )
    try:
        deadline = time.monotonic() + 10
        while fake.pid not in bench.pids_running(config) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert bench.pids_running(config) == [fake.pid]
        assert bench.pids_running(tmp_path / "other.toml") == []
    finally:
        fake.kill()
        fake.wait()
    before = bench.proc_cpu(os.getpid())
    assert before is not None
    sum(i * i for i in range(2_000_000))
    after = bench.cpu_of([os.getpid(), fake.pid])
    assert list(after) == [os.getpid()] and after[os.getpid()] > before  # the dead one is left out
