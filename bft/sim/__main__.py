"""``python -m bft.sim``: run random Byzantine scenarios and report violations.

Scenario k of a run with ``--seed S`` has seed S + k, so ``--scenarios 1 --seed S+k`` (with the
same ``--replicas`` and ``--mutate``) reproduces it alone.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from bft.sim.scenario import MUTATIONS, TRANSFER_ATTACKS, Scenario, generate, shrink_candidates
from bft.sim.world import run_scenario
from bft.version import add_version_argument


@dataclass(frozen=True)
class Outcome:
    seed: int
    n: int
    violations: list[str]
    events: int
    strategies: frozenset[str]  # Byzantine behaviours in the scenario, and "production"
    transfers: int  # state transfers completed by honest replicas
    latency: tuple[float, int, float]  # honest ordered requests: total seconds, count, max


def _run_one(args: tuple[int, int | None, str | None, str]) -> Outcome:
    seed, n, mutation, app = args
    sc = generate(seed, n, mutation, app)
    res = run_scenario(sc)
    strategies = {b for spec in sc.byzantine for b in spec.behaviours}
    strategies.update(f"client:{a}" for a in (sc.client_attacks or ["garbage"]) if sc.byz_clients)
    if sc.production:
        strategies.add("production")
    return Outcome(
        seed,
        sc.n,
        res.violations,
        res.stats.events,
        frozenset(strategies),
        res.stats.state_transfers,
        (res.stats.latency_sum, res.stats.latency_count, res.stats.latency_max),
    )


def _latencies(outcomes: list[Outcome]) -> str:
    """What a slow primary forces (Aardvark's pre-prepare delay): the honest clients' mean and
    largest ordered-request latency (simulated seconds; closed loop, so throughput is its inverse)
    in scenarios with a ``slow-primary`` replica next to the others. Other faults in the same
    scenarios add to both."""

    def line(name: str, group: list[Outcome]) -> str:
        total = sum(o.latency[0] for o in group)
        count = sum(o.latency[1] for o in group)
        worst = max((o.latency[2] for o in group), default=0.0)
        mean = total / count if count else 0.0
        return f"{name} {mean:.3f} s mean, {worst:.1f} s max ({len(group)} scenarios)"

    slow = [o for o in outcomes if "slow-primary" in o.strategies]
    rest = [o for o in outcomes if "slow-primary" not in o.strategies]
    return "ordered request latency: " + "; ".join((line("with slow-primary", slow), line("without", rest)))


def reproduce_command(seed: int, n: int | None, mutation: str | None, app: str) -> str:
    cmd = f"python -m bft.sim --scenarios 1 --seed {seed}"
    if n is not None:
        cmd += f" --replicas {n}"
    if mutation:
        cmd += f" --mutate {mutation}"
    if app != "kv":
        cmd += f" --app {app}"
    return cmd


def shrink(sc: Scenario) -> Scenario:
    """Greedily remove components while the scenario still fails."""
    current = sc
    improved = True
    while improved:
        improved = False
        for cand in shrink_candidates(current):
            if run_scenario(cand).violations:
                current = cand
                improved = True
                break
    return current


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m bft.sim", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_version_argument(ap)
    ap.add_argument("--scenarios", type=int, default=100, help="scenarios to run (default %(default)s)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the first scenario (default %(default)s)")
    ap.add_argument(
        "--replicas",
        type=int,
        choices=(4, 7, 10),
        default=None,
        help="n for every scenario (default: drawn per scenario)",
    )
    ap.add_argument(
        "--mutate",
        choices=MUTATIONS,
        default=None,
        help="break the protocol on purpose, to check the checkers catch it (default: none)",
    )
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (default %(default)s)")
    ap.add_argument(
        "--app", choices=("kv", "chat"), default="kv", help="replicated application (default %(default)s)"
    )
    ap.add_argument("--shrink", action="store_true", help="shrink each failing scenario and print it as JSON")
    ap.add_argument("--scenario-json", help="run one scenario given as JSON (from --shrink)")
    ap.add_argument("--verbose", action="store_true", help="print every violation, not only the first")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    if args.scenario_json:
        sc = Scenario.from_json(args.scenario_json)
        res = run_scenario(sc)
        for v in res.violations:
            print(f"  {v}")
        print(f"scenarios: 1, violations: {1 if res.violations else 0}")
        return 1 if res.violations else 0

    started = time.monotonic()
    work = [(args.seed + k, args.replicas, args.mutate, args.app) for k in range(args.scenarios)]
    failures = 0
    events = 0
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            outcomes = list(pool.map(_run_one, work, chunksize=8))
    else:
        outcomes = [_run_one(w) for w in work]
    for o in outcomes:
        events += o.events
        if o.violations:
            failures += 1
            print(
                f"FAIL n={o.n} seed={o.seed}: {o.violations[0]}  "
                f"reproduce: {reproduce_command(o.seed, args.replicas, args.mutate, args.app)}"
            )
            if args.verbose:
                for v in o.violations[1:]:
                    print(f"    {v}")
            if args.shrink:
                small = shrink(generate(o.seed, args.replicas, args.mutate, args.app))
                print(f"  shrunk: {small.to_json()}")
    elapsed = time.monotonic() - started
    shares = []
    for name in (*TRANSFER_ATTACKS, "production"):
        hit = [o for o in outcomes if name in o.strategies]
        moved = sum(1 for o in hit if o.transfers)
        shares.append(f"{name} {100 * len(hit) / max(len(outcomes), 1):.1f}% ({moved} with a state transfer)")
    print(f"# scenarios with: {', '.join(shares)}", file=sys.stderr)
    counts: dict[str, int] = {}
    for o in outcomes:
        for name in o.strategies:
            counts[name] = counts.get(name, 0) + 1
    every = ", ".join(f"{k} {100 * v / max(len(outcomes), 1):.1f}%" for k, v in sorted(counts.items()))
    print(f"# every strategy: {every}", file=sys.stderr)
    print(f"# {_latencies(outcomes)}", file=sys.stderr)
    print(
        f"# {args.scenarios} scenarios in {elapsed:.1f}s ({args.scenarios / max(elapsed, 1e-9):.1f}/s), "
        f"{events} events",
        file=sys.stderr,
    )
    print(f"scenarios: {args.scenarios}, violations: {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
