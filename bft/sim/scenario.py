"""Scenarios: everything a simulation run does, derived from one seed, as plain data.

A scenario is JSON-serialisable so a failing one can be shrunk (components removed while it still
fails) and kept as a regression test.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field

# Behaviours a Byzantine replica may run in the simulator (names from bft.faults), plus "twin":
# a second honest instance with the same key, and "crash": stops at a random time for good.
REPLICA_ATTACKS = (
    "silent",
    "crash",
    "equivocate",
    "wrong-digest",
    "forge",
    "lie-to-clients",
    "bad-checkpoint",
    "bad-new-view",
    "replay",
    "mutate",
    "flood",
    "twin",
    "targeted",
    "junk-chunks",
    "slow-transfer",
    "status-flood",
    "absurd-view",
    "recovery-lie",
)
# Attacks on resources (issue 11): added to a Byzantine replica's behaviours with probability
# RESOURCE_SHARE, on top of the draw above so the older attacks keep their frequencies (a padding
# replica next to a targeted one would only neutralise it).
RESOURCE_ATTACKS = ("pad", "checkpoint-flood", "reply-lie")
RESOURCE_SHARE = 0.3
# What a Byzantine client does (several may be combined): "garbage" = bad signatures, random bytes,
# oversized requests and replays of other clients' requests; "extreme-timestamps" = validly signed
# requests with timestamps near 2^64; "session-churn" = many new sessions to force evictions from
# the client table; "read-flood" = one-round reads with absurd or just-ahead min_seq; "padded" =
# requests padded with unknown fields, in the signed body and around it; "quota" = fill a session's
# quota at the primary, then send one more request to the backups only (Aardvark).
CLIENT_ATTACKS = ("garbage", "extreme-timestamps", "session-churn", "read-flood", "padded", "quota")
MUTATIONS = (
    "weak-commit-quorum",
    "skip-signature-check",
    "no-fsync",
    "accept-unknown-fields",
    "unbounded-timestamps",
    "unauthenticated-chunks",
    "ignore-epochs",
    "no-op-door",
)
# A primary that holds each PRE-PREPARE for most of the request timer (Aardvark's slow primary):
# added to a Byzantine replica's behaviours with this probability, from a side random stream so
# that the draws of older scenarios (and the pinned seeds) stay as they were.
SLOW_PRIMARY_SHARE = 0.15
# Behaviours aimed at state transfer and recovery; production scenarios favour them.
TRANSFER_ATTACKS = ("junk-chunks", "slow-transfer", "status-flood", "absurd-view", "recovery-lie")
PRODUCTION_SHARE = 0.02  # scenarios run with the production Params and a many-chunk snapshot
# A replica that votes but never answers clients (a silent designated replier): added to a
# Byzantine replica's behaviours with this probability, drawn from a generator of its own so that
# the draws above (and the pinned seeds) stay as they were.
MUTE_SHARE = 0.25
# A Byzantine client that also sends "big-ops": operations just under the application's cap (each
# fills a batch of its own) and just over it (refused at the door), from fresh keys, to mixed
# replicas. Drawn from a generator of its own (the pinned seeds keep their draws).
BIG_OPS_SHARE = 0.3
# A replica that keeps the VIEW-CHANGEs it sees and, as a later view's primary, builds a NEW-VIEW
# on the lowest-epoch ones (a wiped replica's pre-wipe ones, docs/PROTOCOL.md, Epochs): added to a
# Byzantine replica's behaviours with these probabilities (more often when an honest replica is
# wiped), from a generator of its own so that the draws above (and the pinned seeds) stay.
STALE_VC_SHARE = 0.1
STALE_VC_SHARE_WIPED = 0.8
# Votes relayed through the primary (Params.vote_relay) in this share of the scenarios that do not
# run the production Params (which relay, as deployed), and in those a Byzantine replica withholds
# relays ("no-relay") with NO_RELAY_SHARE; both drawn from generators of their own, so the draws
# above stay as they were. Scenarios stored before (regressions) keep all-to-all votes.
VOTE_RELAY_SHARE = 0.5
NO_RELAY_SHARE = 0.4


@dataclass
class ByzSpec:
    replica: int
    behaviours: list[str]
    crash_at: float = 0.0  # for "crash"
    victim: int = -1  # for "targeted"
    cut_until: float = 0.0  # for "targeted": honest peers of the victim cannot talk until then


@dataclass
class CrashSpec:
    replica: int  # -1: every replica at once
    at: float
    down_for: float
    wipe: bool = False  # lose the data directory too (recovers by state transfer)


@dataclass
class Partition:
    start: float
    end: float
    group: list[int]  # cut off from the rest while active


@dataclass
class Scenario:
    seed: int
    n: int
    clients: int = 2
    requests: int = 4
    read_share: float = 0.2
    byz_clients: int = 0
    client_attacks: list[str] = field(default_factory=list)  # empty: "garbage" (older scenarios)
    byzantine: list[ByzSpec] = field(default_factory=list)
    crashes: list[CrashSpec] = field(default_factory=list)
    partitions: list[Partition] = field(default_factory=list)
    gst: float = 2.0
    drop: float = 0.0
    dup: float = 0.0
    max_delay: float = 0.05
    real_crypto: bool = False
    checkpoint_interval: int = 4
    batch_max_requests: int = 4
    max_in_flight: int = 2
    app: str = "kv"
    mutation: str | None = None
    state_chunk_bytes: int = 0  # 0: the default (production) chunk size
    production: bool = False  # production Params (checkpoint interval, window, status, batch, chunk)
    preload_bytes: int = 0  # initial application state (kv filler), identical on every replica
    vote_relay: bool = False  # backups' votes through the primary (Params.vote_relay)

    @property
    def f(self) -> int:
        return (self.n - 1) // 3

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Scenario:
        d = json.loads(text)
        d["byzantine"] = [ByzSpec(**b) for b in d.get("byzantine", [])]
        d["crashes"] = [CrashSpec(**c) for c in d.get("crashes", [])]
        d["partitions"] = [Partition(**p) for p in d.get("partitions", [])]
        return cls(**d)


def generate(seed: int, n: int | None = None, mutation: str | None = None, app: str = "kv") -> Scenario:
    """A random scenario. Weighted towards the attacks that break implementations."""
    rng = random.Random(seed)
    mute_rng = random.Random(f"mute-to-clients {seed}")
    production = rng.random() < PRODUCTION_SHARE and app == "kv"
    if n is None:
        n = rng.choice((4, 4, 7)) if production else rng.choice((4, 4, 7, 7, 10))
    f = (n - 1) // 3
    sc = Scenario(seed=seed, n=n, mutation=mutation, app=app)
    sc.clients = rng.randint(1, 3)
    sc.requests = rng.randint(2, 6)
    sc.read_share = rng.choice((0.0, 0.2, 0.5))
    sc.byz_clients = 1 if rng.random() < 0.3 else 0
    if sc.byz_clients:
        sc.client_attacks = sorted(rng.sample(CLIENT_ATTACKS, rng.randint(1, 3)))
    sc.gst = rng.uniform(0.5, 6.0)
    sc.drop = rng.choice((0.0, 0.0, 0.05, 0.2, 0.4))
    sc.dup = rng.choice((0.0, 0.05, 0.2))
    sc.max_delay = rng.choice((0.005, 0.05, 0.3, 1.0))
    sc.real_crypto = rng.random() < 0.05
    sc.checkpoint_interval = rng.choice((2, 4, 8))
    sc.batch_max_requests = rng.choice((1, 2, 4, 16))
    sc.max_in_flight = rng.choice((1, 2, 4))
    sc.state_chunk_bytes = rng.choice((64, 256, 4096))
    sc.preload_bytes = rng.choice((0, 0, 0, 2048))
    if production:
        _production(sc, rng)

    n_byz = rng.choice([0] + [f] * 3 + list(range(1, f + 1)))
    byz_ids: list[int] = []
    if n_byz:
        candidates = list(range(n))
        if rng.random() < 0.6:
            byz_ids.append(0)  # the first primary, often
            candidates.remove(0)
        rng.shuffle(candidates)
        byz_ids += candidates[: n_byz - len(byz_ids)]
    honest = [r for r in range(n) if r not in byz_ids]
    for r in byz_ids:
        k = rng.choice((1, 1, 2))
        behaviours = rng.sample(REPLICA_ATTACKS, k)
        extra = rng.choice(RESOURCE_ATTACKS)
        if rng.random() < RESOURCE_SHARE and "targeted" not in behaviours:
            behaviours.append(extra)
        if sc.production and rng.random() < 0.7:
            behaviours = sorted({*behaviours[:1], rng.choice(TRANSFER_ATTACKS)})
        if mute_rng.random() < MUTE_SHARE and "silent" not in behaviours:
            behaviours.append("mute-to-clients")
        spec = ByzSpec(r, sorted(behaviours))
        if "crash" in behaviours:
            spec.crash_at = rng.uniform(0.0, sc.gst + 2.0)
        if "targeted" in behaviours:
            spec.victim = rng.choice(honest)
            spec.cut_until = rng.uniform(sc.gst / 2, sc.gst)
        sc.byzantine.append(spec)

    big = random.Random(f"big-ops/{seed}")
    if mutation == "no-op-door" or (sc.byz_clients and big.random() < BIG_OPS_SHARE):
        # The door's mutation shows only with a client that sends such operations.
        sc.byz_clients = 1
        sc.client_attacks = sorted({*(sc.client_attacks or ["garbage"]), "big-ops"})

    side = random.Random(f"slow-primary/{seed}")
    for spec in sc.byzantine:
        if side.random() < SLOW_PRIMARY_SHARE:
            spec.behaviours = sorted({*spec.behaviours, "slow-primary"})

    # Crashes of honest replicas: one, several up to the remaining budget, or all at once.
    budget = f - n_byz
    roll = rng.random()
    if roll < 0.12:
        at = rng.uniform(0.2, sc.gst)
        sc.crashes.append(CrashSpec(-1, at, rng.uniform(0.05, 1.0)))
        if rng.random() < 0.5:
            at2 = rng.uniform(at + 1.2, sc.gst + 2.0)
            sc.crashes.append(CrashSpec(-1, at2, rng.uniform(0.05, 1.0)))
    elif roll < 0.5 and honest:
        for _ in range(rng.randint(1, 3)):
            r = rng.choice(honest)
            at = rng.uniform(0.1, sc.gst + 3.0)
            long = rng.random() < 0.3
            down = rng.uniform(3.0, 8.0) if long else rng.uniform(0.05, 1.5)
            # A wiped replica forgot what it signed: it counts against f until it has recovered.
            wipe = budget > 0 and rng.random() < 0.15
            budget -= wipe
            sc.crashes.append(CrashSpec(r, at, down, wipe))
    if sc.crashes:
        # Honest crashes (even of more than f replicas) happen before GST: safety must hold through
        # them, and liveness is required once every honest replica is back.
        sc.gst = max(sc.gst, max(c.at + c.down_for for c in sc.crashes) + 0.1)
    if sc.production and honest:
        # One honest replica is cut off until GST while the others pass the first checkpoint:
        # it then needs the many-chunk snapshot.
        sc.partitions.append(Partition(0.0, sc.gst, [rng.choice(honest)]))
    elif rng.random() < 0.25:
        start = rng.uniform(0.0, sc.gst)
        group = rng.sample(range(n), rng.randint(1, max(1, n // 2)))
        sc.partitions.append(Partition(start, rng.uniform(start, sc.gst), sorted(group)))
    stale = random.Random(f"stale-view-changes/{seed}")
    share = STALE_VC_SHARE_WIPED if any(c.wipe for c in sc.crashes) else STALE_VC_SHARE
    for spec in sc.byzantine:
        if stale.random() < share and "silent" not in spec.behaviours:
            spec.behaviours = sorted({*spec.behaviours, "stale-view-changes"})
    relay = random.Random(f"vote-relay/{seed}")
    sc.vote_relay = sc.production or relay.random() < VOTE_RELAY_SHARE
    if sc.vote_relay:
        for spec in sc.byzantine:
            if relay.random() < NO_RELAY_SHARE and "silent" not in spec.behaviours:
                spec.behaviours = sorted({*spec.behaviours, "no-relay"})
    return sc


def _production(sc: Scenario, rng: random.Random) -> None:
    """Production Params (the world leaves them at their defaults) and enough ordered requests to
    pass a checkpoint at 64, over a kv state spanning several 1 MiB chunks."""
    sc.production = True
    sc.app = "kv"
    sc.state_chunk_bytes = 0
    sc.preload_bytes = rng.randint(3, 6) * 1024 * 1024 + rng.randrange(1024)
    sc.clients = 1  # one request per batch: the checkpoint at 64 comes after 64 requests
    sc.requests = rng.randint(70, 80)
    sc.read_share = 0.0
    sc.gst = rng.uniform(4.0, 6.0)
    sc.max_delay = rng.choice((0.005, 0.02))
    sc.drop = rng.choice((0.0, 0.05))
    sc.dup = 0.0


def shrink_candidates(sc: Scenario) -> list[Scenario]:
    """Smaller variants of a scenario: one component removed or reduced each."""
    out: list[Scenario] = []

    def variant(**changes: object) -> None:
        d = Scenario.from_json(sc.to_json())
        for k, v in changes.items():
            setattr(d, k, v)
        out.append(d)

    for i in range(len(sc.byzantine)):
        variant(byzantine=[b for j, b in enumerate(sc.byzantine) if j != i])
        b = sc.byzantine[i]
        if len(b.behaviours) > 1:
            for beh in b.behaviours:
                nb = [
                    ByzSpec(x.replica, list(x.behaviours), x.crash_at, x.victim, x.cut_until)
                    for x in sc.byzantine
                ]
                nb[i].behaviours = [x for x in b.behaviours if x != beh]
                variant(byzantine=nb)
    for i in range(len(sc.crashes)):
        variant(crashes=[c for j, c in enumerate(sc.crashes) if j != i])
    for i in range(len(sc.partitions)):
        variant(partitions=[p for j, p in enumerate(sc.partitions) if j != i])
    if sc.clients > 1:
        variant(clients=sc.clients - 1)
    if sc.requests > 1:
        variant(requests=sc.requests - 1)
    if sc.byz_clients:
        variant(byz_clients=0)
        for attack in sc.client_attacks if len(sc.client_attacks) > 1 else []:
            variant(client_attacks=[a for a in sc.client_attacks if a != attack])
    if sc.read_share:
        variant(read_share=0.0)
    if sc.drop:
        variant(drop=0.0)
    if sc.dup:
        variant(dup=0.0)
    if sc.max_delay > 0.005:
        variant(max_delay=0.005)
    return out
