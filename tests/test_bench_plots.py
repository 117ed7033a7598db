"""bftchat-bench's figures and the data they need (issue 13), without any cluster: the failover
timeline and the outage's place in it, the state-size list options and how they pair, the three
figures drawn from synthetic rows, and the JSON keys of a point (a contract: extend, don't rename)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from bft.tools import bench

# The keys a --json row had before the figures' additions; none may disappear or change meaning.
EXISTING_KEYS = {
    "mode", "replicas", "clients", "client_processes", "seconds", "size", "ops", "errors",
    "throughput_ops", "p50_ms", "p99_ms", "max_ms", "mean_ms", "cpu_server_s", "cpu_clients_s",
    "cpu_per_op_ms", "batch_mean", "verifications_per_op", "loadavg_before", "failover", "fault_at_s",
    "outage_s", "view_after", "replica_rss_mb", "replica_peak_rss_mb", "loop_lag_p999_ms",
    "gc_pause_max_ms", "preload_accounts", "preload_messages", "baseline_ops", "baseline_p50_ms",
    "baseline_p99_ms", "baseline_cpu_per_op_ms", "sign_us", "verify_us", "floor_cpu_us", "floor_ops",
    "floor_ratio", "cpu_ratio", "cores",
}  # fmt: skip
NEW_KEYS = {
    "outage_from_s",
    "timeline",
    "timeline_bucket_s",
    "view_change_timeout_s",
    "transport",
    "protocol",
}

needs_matplotlib = pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None,
    reason="matplotlib is the bench extra (pip install -e '.[bench]'); --plot needs it, nothing else does",
)


def test_timeline_counts_commits_per_bucket_and_shows_the_gap() -> None:
    start = 1000.0
    done = [start + t for t in (0.01, 0.05, 0.15, 0.99, 1.0, 1.55, 1.599)]  # nothing in 0.2..0.99
    done += [start - 0.5, start + 2.5]  # outside the window: left out
    counts = bench.timeline(done, start, start + 1.65, bucket=0.1)
    assert len(counts) == 17  # the last bucket (1.6..1.65) is shorter
    assert counts[:3] == [2, 1, 0] and counts[3:9] == [0] * 6
    assert counts[9] == 1 and counts[10] == 1  # 0.99 and 1.0 fall either side of the boundary
    assert counts[15] == 2 and sum(counts) == 7
    assert bench.timeline([start + 1.65], start, start + 1.65, bucket=0.1)[-1] == 1  # the end is in


def test_outage_span_is_where_the_longest_gap_starts() -> None:
    done = [1.0, 10.1, 10.2, 12.0, 13.5]
    assert bench.outage_span(done, fault_time=10.0, end=14.0) == pytest.approx((10.2, 1.8))
    assert bench.outage_span([1.0, 2.0], fault_time=10.0, end=14.0) == pytest.approx((10.0, 4.0))
    assert bench.outage_span([10.5, 10.6], fault_time=10.0, end=14.0) == pytest.approx((10.6, 3.4))
    assert bench.outage(done, 10.0, 14.0) == pytest.approx(1.8)  # outage_s is the span's length


def test_preload_lists_pair_by_position() -> None:
    parser = bench.build_parser()
    args = parser.parse_args(
        ["--preload-accounts", "0,100000,1000000", "--preload-messages", "0,20000,200000"]
    )
    assert bench.preload_sizes(args.preload_accounts, args.preload_messages) == [
        (0, 0),
        (100_000, 20_000),
        (1_000_000, 200_000),
    ]
    single = parser.parse_args(["--preload-accounts", "40", "--preload-messages", "10"])
    assert bench.preload_sizes(single.preload_accounts, single.preload_messages) == [(40, 10)]
    default = parser.parse_args([])
    assert bench.preload_sizes(default.preload_accounts, default.preload_messages) == [(0, 0)]
    assert bench.preload_sizes([1000, 5000], [0]) == [(1000, 0), (5000, 0)]  # one value goes with all
    with pytest.raises(bench.UsageError, match="needs --preload-accounts 2 or more"):
        bench.preload_sizes([0, 100], [10])  # 10 messages with no account to hold them


def test_mismatched_preload_lists_are_refused_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--preload-accounts", "0,100000,1000000", "--preload-messages", "0,200000", "--no-baseline"]
    assert bench.main(argv) == 2  # before anything starts
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: --preload-accounts has 3 sizes")
    with pytest.raises(SystemExit):
        bench.build_parser().parse_args(["--preload-accounts", "0,-5"])


def _point(n: int, clients: int, ops: float, base_ops: float | None, **kw: object) -> dict[str, object]:
    p = bench.Point("bft", n, clients, 2, 10.0, 256, ops=int(ops * 10), throughput_ops=ops)
    p.p50_ms, p.p99_ms, p.cpu_per_op_ms = 1000 * clients / ops, 3000 * clients / ops, 4.0
    p.replica_rss_mb, p.loop_lag_p999_ms = 120.0, 10.0
    for k, v in kw.items():
        setattr(p, k, v)
    base = None
    if base_ops is not None:
        base = bench.Point("baseline", 1, clients, 2, 10.0, 256, throughput_ops=base_ops)
        base.p50_ms, base.cpu_per_op_ms = 1000 * clients / base_ops, 0.8
    return bench.as_json(p, base, bench.CryptoCost(40.0, 90.0), 2)


def _rows() -> list[dict[str, object]]:
    rows = []
    for run, jitter in enumerate((0.9, 1.0, 1.1)):  # three runs of each point, as the method repeats them
        for c in (1, 20, 50):
            base = 2400.0 * jitter * min(1.0, c / 10)
            rows += [_point(4, c, 0.4 * base, base), _point(7, c, 0.2 * base, base)]
        for accounts, messages, cpu, rss in ((0, 0, 4.0, 120.0), (100_000, 20_000, 4.2, 400.0)):
            rows.append(
                _point(
                    7, 50, 400.0, None, preload_accounts=accounts, preload_messages=messages,
                    cpu_per_op_ms=cpu * jitter, replica_rss_mb=rss, loop_lag_p999_ms=25.0 * (run + 1),
                )
            )  # fmt: skip
        rows.append(
            _point(
                7, 50, 380.0, None, preload_accounts=1_000_000, preload_messages=200_000,
                cpu_per_op_ms=5.0, replica_rss_mb=2500.0, loop_lag_p999_ms=250.0,
            )
        )  # fmt: skip
    start, fault = 0.0, 3.0
    done = [k * 0.01 for k in range(300)] + [5.6 + k * 0.01 for k in range(400)]
    gap_from, length = bench.outage_span(done, fault, 10.0)
    for kind in ("kill", "stop"):
        rows.append(
            _point(
                7, 50, 70.0, None, failover=kind, fault_at_s=fault, outage_s=length, outage_from_s=gap_from,
                timeline=bench.timeline(done, start, 10.0), timeline_bucket_s=bench.TIMELINE_BUCKET,
                view_change_timeout_s=2.0, view_after=1.0,
            )
        )  # fmt: skip
    return rows


def test_json_rows_keep_every_existing_key() -> None:
    healthy = _point(7, 50, 456.0, 2465.0)
    assert set(healthy) >= EXISTING_KEYS and set(healthy) <= EXISTING_KEYS | NEW_KEYS
    assert healthy["baseline_ops"] == 2465.0 and healthy["timeline"] is None  # only failover points have one
    failover = next(r for r in _rows() if r["failover"] == "kill")
    assert set(failover) == EXISTING_KEYS | NEW_KEYS
    assert failover["outage_s"] == pytest.approx(2.6) and failover["outage_from_s"] == pytest.approx(3.0)
    json.dumps(failover)  # still one JSON line


@needs_matplotlib
def test_throughput_target_is_a_ratio_of_each_runs_baseline() -> None:
    from bft.tools import benchplot

    at50 = [r for r in _rows() if r["clients"] == 50 and r["replicas"] == 7 and r.get("baseline_ops")]
    assert benchplot.throughput_goal(at50, 7) == pytest.approx((0.30 * 2400, 0.30 * 2160, 0.30 * 2640))
    at50_4 = [r for r in _rows() if r["clients"] == 50 and r["replicas"] == 4 and r.get("baseline_ops")]
    assert benchplot.throughput_goal(at50_4, 4) == pytest.approx((0.45 * 2400, 0.45 * 2160, 0.45 * 2640))
    assert benchplot.throughput_goal(at50, 10) is None  # no target stated for n = 10


@needs_matplotlib
def test_plot_from_writes_the_three_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = _rows()
    saved = tmp_path / "runs.jsonl"
    saved.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "performance.png"
    assert bench.main(["--plot-from", str(saved), "--plot", str(out)]) == 0
    written = [tmp_path / f"performance{s}.png" for s in ("", "-failover", "-state")]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    err = capsys.readouterr().err
    assert all(f"wrote {p}" in err for p in written)
    from bft.tools import benchplot

    assert len(benchplot.failover_rows(rows)) == 2
    groups = benchplot.state_groups(rows)  # n = 7 at 50 clients over three sizes, nothing else
    assert [(k[0], k[1]) for k in groups] == [(7, 50)]
    assert {r["preload_accounts"] for r in groups[7, 50, 256, 10.0, 2]} == {0, 100_000, 1_000_000}


@needs_matplotlib
def test_plot_without_failover_or_state_writes_only_the_main_figure(tmp_path: Path) -> None:
    rows = [r for r in _rows() if not r["failover"] and not r["preload_accounts"]]
    written = bench.plot(rows, tmp_path / "p.png")
    assert written == [tmp_path / "p.png"] and not (tmp_path / "p-failover.png").exists()
    only_failover = [r for r in _rows() if r["failover"]]
    assert bench.plot(only_failover, tmp_path / "f.png") == [tmp_path / "f-failover.png"]
