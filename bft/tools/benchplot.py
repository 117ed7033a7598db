"""The figures of ``bftchat-bench --plot`` (matplotlib, the ``bench`` extra), drawn from the JSON rows
that ``--json``/``--save`` print, so ``--plot-from FILE`` redraws a campaign without running it.

* FILE: committed sends/s and latency against clients, one line per n, the baseline of the same
  runs beside it and issue 13's targets as ratios to that baseline (absolute figures on a shared
  machine move by a third from day to day; the ratio to a baseline measured in the same run does not).
* FILE-failover: commits/s over the window of each ``--failover`` point, the fault and the outage.
* FILE-state: CPU per op, p50 and event-loop lag against the preloaded state size, RSS annotated.

Rows measured more than once (the ABAB method repeats each point) are drawn as the median with a
bar from the lowest to the highest run. Rows from older runs may lack the newer keys: they are
left out of the figure that needs them, never guessed.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes

# Issue 13's targets, as ratios to the unreplicated baseline of the same run (throughput at
# THROUGHPUT_AT clients) and as p50 at one client (absolute, and at most a multiple of the baseline's).
THROUGHPUT_AT = 50
THROUGHPUT_TARGET = {4: 0.45, 7: 0.30}
THROUGHPUT_STRETCH = {7: 0.45}
P50_TARGET_MS = 12.0
P50_BASELINE_FACTOR = 10.0
FAILOVER_SLACK_S = 1.5  # outage target: view_change_timeout + this
LOOP_LAG_TARGET_MS = 50.0
STATE_CPU_SLACK = 0.10  # CPU per op with a big state within 10 % of the empty state's


def figure_paths(path: Path) -> dict[str, Path]:
    """FILE and the extra figures next to it: FILE-failover.png, FILE-state.png."""
    return {
        "clients": path,
        "failover": path.with_name(f"{path.stem}-failover{path.suffix or '.png'}"),
        "state": path.with_name(f"{path.stem}-state{path.suffix or '.png'}"),
    }


def is_plain(row: dict[str, Any]) -> bool:
    """A healthy point on an empty state: what the throughput/latency figure draws."""
    return not row.get("failover") and not row.get("preload_accounts") and not row.get("preload_messages")


def spread(values: Iterable[float | None]) -> tuple[float, float, float] | None:
    """(median, lowest, highest) of the values that are present, or None when none is."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return None
    return statistics.median(xs), min(xs), max(xs)


def failover_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The failover points that kept their timeline (rows from before it existed cannot be drawn)."""
    return [r for r in rows if r.get("failover") and r.get("timeline")]


def state_groups(rows: Sequence[dict[str, Any]]) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    """Healthy points grouped by everything but the preload size; only groups with two sizes or more
    make a curve."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("failover"):
            continue
        key = (r["replicas"], r["clients"], r.get("size"), r.get("seconds"), r.get("client_processes"))
        groups.setdefault(key, []).append(r)
    sizes = {
        k: {(r.get("preload_accounts", 0), r.get("preload_messages", 0)) for r in v}
        for k, v in groups.items()
    }
    return {k: v for k, v in groups.items() if len(sizes[k]) >= 2}


def throughput_goal(
    rows: Iterable[dict[str, Any]], n: int, targets: dict[int, float] = THROUGHPUT_TARGET
) -> tuple[float, float, float] | None:
    """The throughput target of n replicas as sends/s: its ratio times the baseline of each run at
    THROUGHPUT_AT clients (``rows`` are those points), as (median, lowest, highest) over the runs."""
    if n not in targets:
        return None
    return spread(targets[n] * r["baseline_ops"] for r in rows if r.get("baseline_ops"))


def _errorbar(
    ax: Axes, xs: list[float], stats: list[tuple[float, float, float]], fmt: str, **kw: Any
) -> None:
    meds = [s[0] for s in stats]
    err = [[s[0] - s[1] for s in stats], [s[2] - s[0] for s in stats]]
    ax.errorbar(xs, meds, yerr=err, fmt=fmt, capsize=3, **kw)


def _by(rows: Iterable[dict[str, Any]], key: str) -> dict[Any, list[dict[str, Any]]]:
    out: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r[key], []).append(r)
    return dict(sorted(out.items()))


def plot_clients(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Throughput and latency against clients, one line per n, the baseline beside them, the targets."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11.5, 4.4))
    for k, (n, rs) in enumerate(_by(rows, "replicas").items()):
        color = f"C{k}"
        by_c = _by(rs, "clients")
        xs = list(by_c)
        thr = [spread(r["throughput_ops"] for r in g) for g in by_c.values()]
        p50 = [spread(r["p50_ms"] for r in g) for g in by_c.values()]
        p99 = [spread(r["p99_ms"] for r in g) for g in by_c.values()]
        _errorbar(ax1, xs, [s for s in thr if s], "o-", color=color, label=f"BFT n={n}")
        _errorbar(ax2, xs, [s for s in p50 if s], "o-", color=color, label=f"n={n} p50")
        _errorbar(ax2, xs, [s for s in p99 if s], "x--", color=color, label=f"n={n} p99", alpha=0.6)
        for c, g, s in zip(xs, by_c.values(), thr, strict=True):
            ratio = spread(r["throughput_ops"] / r["baseline_ops"] for r in g if r.get("baseline_ops"))
            if s and ratio:
                ax1.annotate(
                    f"{ratio[0]:.0%}",
                    (c, s[0]),
                    textcoords="offset points",
                    xytext=(4, -11),
                    fontsize=7,
                    color=color,
                )
        for targets, what in ((THROUGHPUT_TARGET, "target"), (THROUGHPUT_STRETCH, "stretch")):
            goal = throughput_goal(by_c.get(THROUGHPUT_AT, []), n, targets)
            if goal:
                _errorbar(
                    ax1,
                    [THROUGHPUT_AT],
                    [goal],
                    "*",
                    color=color,
                    markersize=13,
                    mfc=color if what == "target" else "none",
                    label=f"{what} n={n}: {targets[n]:.0%} × baseline at {THROUGHPUT_AT}",
                )
    base_by_c = _by((r for r in rows if r.get("baseline_ops")), "clients")
    if base_by_c:
        xs = list(base_by_c)
        ops = [spread(r["baseline_ops"] for r in g) for g in base_by_c.values()]
        _errorbar(ax1, xs, [s for s in ops if s], "s:", color="gray", label="baseline (no replication)")
        p50s = [spread(r.get("baseline_p50_ms") for r in g) for g in base_by_c.values()]
        pairs = [(x, s) for x, s in zip(xs, p50s, strict=True) if s]
        if pairs:
            _errorbar(
                ax2, [x for x, _ in pairs], [s for _, s in pairs], "s:", color="gray", label="baseline p50"
            )
        one = spread(r.get("baseline_p50_ms") for r in base_by_c.get(1, []))
        if one:
            ax2.plot(
                [1],
                [P50_BASELINE_FACTOR * one[0]],
                "*",
                color="gray",
                markersize=12,
                mfc="none",
                label=f"target p50 at 1: ≤ {P50_BASELINE_FACTOR:g} × baseline",
            )
    ax2.axhline(
        P50_TARGET_MS, color="red", ls="-.", lw=1, label=f"target p50 at 1 client: {P50_TARGET_MS:g} ms"
    )
    ax1.set(xlabel="concurrent clients", ylabel="committed sends/s", title="Throughput (% = of the baseline)")
    ax2.set(xlabel="concurrent clients", ylabel="latency (ms)", title="Latency", yscale="log")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    runs = max(
        (len(g) for rs in _by(rows, "replicas").values() for g in _by(rs, "clients").values()), default=0
    )
    fig.suptitle(
        f"bftchat on one {_cores(rows)}-core machine (replicas and clients together), TLS, fsync; "
        f"median of up to {runs} runs per point, bars from lowest to highest",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_failover(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """One panel per failover point: commits/s per bucket over the window, the fault, the outage."""
    count = len(rows)
    cols = 1 if count <= 3 else 2
    lines = (count + cols - 1) // cols
    fig, axes = plt.subplots(lines, cols, figsize=(6.5 * cols, 2.6 * lines), squeeze=False)
    bucket = 0.1
    for ax, r in zip(axes.flat, rows, strict=False):
        bucket = float(r.get("timeline_bucket_s") or bucket)
        counts = r["timeline"]
        xs = [k * bucket for k in range(len(counts))]
        ax.step(xs, [c / bucket for c in counts], where="post", color="C0", lw=1, label="commits/s")
        fault = r.get("fault_at_s")
        what = "kill -9" if r["failover"] == "kill" else "SIGSTOP"
        if fault is not None:
            ax.axvline(fault, color="red", lw=1.2, label=f"{what} of the primary")
            timeout = r.get("view_change_timeout_s")
            if timeout is not None:
                ax.axvline(
                    fault + timeout + FAILOVER_SLACK_S,
                    color="red",
                    ls=":",
                    lw=1,
                    label=f"target: outage ≤ view-change timeout {timeout:g} s + {FAILOVER_SLACK_S:g} s",
                )
        if r.get("outage_from_s") is not None and r.get("outage_s") is not None:
            lo = r["outage_from_s"]
            ax.axvspan(lo, lo + r["outage_s"], color="red", alpha=0.15, label=f"outage {r['outage_s']:.2f} s")
        view = r.get("view_after")
        out = r.get("outage_s")
        ax.set_title(
            f"n={r['replicas']}, {r['clients']} clients, {what}: outage "
            f"{'?' if out is None else f'{out:.2f}'} s, p99 {r['p99_ms']:.0f} ms (window), "
            f"view after {view if view is None else int(view)}",
            fontsize=8,
        )
        ax.set(xlabel="seconds into the window", ylabel="commits/s", xlim=(0, len(counts) * bucket))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="best")
    for ax in list(axes.flat)[count:]:
        ax.set_visible(False)
    fig.suptitle(
        f"Failover on one {_cores(rows)}-core machine: completed sends per {bucket * 1000:.0f} ms", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _size_label(accounts: int, messages: int) -> str:
    def short(v: int) -> str:
        return f"{v / 1e6:g}M" if v >= 1_000_000 else f"{v / 1e3:g}k" if v >= 1000 else str(v)

    return f"{short(accounts)}\n{short(messages)} msgs"


def plot_state(groups: dict[tuple[Any, ...], list[dict[str, Any]]], path: Path) -> None:
    """CPU per op, p50 and event-loop lag p99.9 against the preloaded accounts, one line per group."""
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(14, 4.4))
    sizes: set[tuple[int, int]] = set()
    for k, ((n, clients, *_), rs) in enumerate(groups.items()):
        color = f"C{k}"
        by_size: dict[tuple[int, int], list[dict[str, Any]]] = {}
        for r in rs:
            by_size.setdefault((r.get("preload_accounts", 0), r.get("preload_messages", 0)), []).append(r)
        points = sorted(by_size.items())
        sizes |= set(by_size)
        xs = [float(a) for (a, _), _ in points]
        label = f"n={n}, {clients} clients"
        for ax, key in ((ax1, "cpu_per_op_ms"), (ax2, "p50_ms"), (ax3, "loop_lag_p999_ms")):
            got = [(x, spread(r.get(key) for r in g)) for x, (_, g) in zip(xs, points, strict=True)]
            present = [(x, s) for x, s in got if s]
            if present:
                _errorbar(
                    ax, [x for x, _ in present], [s for _, s in present], "o-", color=color, label=label
                )
        cpu = [spread(r.get("cpu_per_op_ms") for r in g) for _, g in points]
        for x, s, (_, g) in zip(xs, cpu, points, strict=True):
            rss = spread(r.get("replica_rss_mb") for r in g)
            if s and rss:
                ax1.annotate(
                    f"RSS {rss[0]:.0f} MiB",
                    (x, s[0]),
                    textcoords="offset points",
                    xytext=(4, 6),
                    fontsize=7,
                    color=color,
                )
        empty = by_size.get((0, 0))
        cpu0 = spread(r.get("cpu_per_op_ms") for r in empty) if empty else None
        if cpu0:
            ax1.axhline(
                cpu0[0] * (1 + STATE_CPU_SLACK),
                color=color,
                ls=":",
                lw=1,
                label=f"target: empty state + {STATE_CPU_SLACK:.0%}",
            )
        base = spread(r.get("baseline_cpu_per_op_ms") for r in rs)
        if base:
            ax1.axhline(
                base[0], color="gray", ls="--", lw=1, label=f"baseline, {clients} clients (empty state)"
            )
        bp50 = spread(r.get("baseline_p50_ms") for r in rs)
        if bp50:
            ax2.axhline(
                bp50[0], color="gray", ls="--", lw=1, label=f"baseline p50, {clients} clients (empty state)"
            )
    ax3.axhline(LOOP_LAG_TARGET_MS, color="red", ls="-.", lw=1, label=f"target ≤ {LOOP_LAG_TARGET_MS:g} ms")
    accounts = sorted({a for a, _ in sizes})
    positive = [a for a in accounts if a > 0]
    for ax, (ylabel, title) in zip(
        (ax1, ax2, ax3),
        (
            ("ms of CPU per committed send", "CPU per op (replicas + clients)"),
            ("p50 latency (ms)", "Latency"),
            ("ms (histogram bucket bound)", "Replicas' event-loop lag p99.9 (GC included)"),
        ),
        strict=True,
    ):
        if positive and (0 in accounts or max(positive) / min(positive) >= 10):
            if 0 in accounts:  # 0 on a log axis: linear up to the smallest size, log above it
                ax.set_xscale("symlog", linthresh=min(positive))
                ax.set_xlim(-0.3 * min(positive), 2 * max(positive))
            else:
                ax.set_xscale("log")
                ax.set_xlim(min(positive) / 2, 2 * max(positive))
        labels = {a: _size_label(a, m) for a, m in sorted(sizes)}
        ax.set_xticks([float(a) for a in labels], list(labels.values()), fontsize=7)
        ax.minorticks_off()
        ax.set(xlabel="preloaded accounts (and queued messages)", ylabel=ylabel, title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(
        f"Cost against the state size on one {_cores(groups_rows(groups))}-core machine; median of the runs, "
        "bars from lowest to highest",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def groups_rows(groups: dict[tuple[Any, ...], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [r for rs in groups.values() for r in rs]


def _cores(rows: Sequence[dict[str, Any]]) -> Any:
    return rows[0].get("cores", "?") if rows else "?"


def plot_all(rows: Sequence[dict[str, Any]], path: Path) -> list[Path]:
    """Every figure the rows allow; returns the files written. FILE is drawn from the healthy
    empty-state points (all points when there are none of those and no other figure applies)."""
    paths = figure_paths(path)
    written: list[Path] = []
    failovers = failover_rows(rows)
    if failovers:
        plot_failover(failovers, paths["failover"])
        written.append(paths["failover"])
    groups = state_groups(rows)
    if groups:
        plot_state(groups, paths["state"])
        written.append(paths["state"])
    plain = [r for r in rows if is_plain(r)]
    if plain or not written:
        plot_clients(plain or list(rows), paths["clients"])
        written.insert(0, paths["clients"])
    return written
