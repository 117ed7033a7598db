"""Every threshold of n = 3f + 1 replicas, named once. Off-by-one errors here break everything."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass


@dataclass(frozen=True)
class Quorums:
    n: int
    f: int

    def __post_init__(self) -> None:
        if self.f < 1 or self.n != 3 * self.f + 1:
            raise ValueError(f"need n = 3f + 1 with f >= 1, got n={self.n} f={self.f}")

    @classmethod
    def for_n(cls, n: int) -> Quorums:
        if n < 4 or (n - 1) % 3:
            raise ValueError(f"n must be 3f + 1 with f >= 1 (4, 7, 10, ...), got {n}")
        return cls(n, (n - 1) // 3)

    @property
    def prepare(self) -> int:
        """PREPAREs from distinct backups that, with the PRE-PREPARE, make a slot prepared."""
        return 2 * self.f

    @property
    def commit(self) -> int:
        """Matching COMMITs (own included) that make a prepared slot committed."""
        return 2 * self.f + 1

    @property
    def checkpoint(self) -> int:
        """Matching CHECKPOINTs that make a checkpoint stable."""
        return 2 * self.f + 1

    @property
    def view_change(self) -> int:
        """VIEW-CHANGEs a NEW-VIEW must carry, and that start the new view's timer."""
        return 2 * self.f + 1

    @property
    def join(self) -> int:
        """Distinct senders of VIEW-CHANGEs for higher views that make a replica join them."""
        return self.f + 1

    @property
    def reply(self) -> int:
        """Matching replies a client needs to accept an ordered result."""
        return self.f + 1

    @property
    def read(self) -> int:
        """Matching replies a client needs to accept a one-round read."""
        return 2 * self.f + 1

    def repliers(self, key: bytes, session: int, timestamp: int) -> tuple[int, ...]:
        """The f+1 replicas that answer an ordered request on its first execution (the others
        answer only if the client sent them the request itself: docs/PROTOCOL.md, *Designated
        repliers*). Consecutive ids from a start that a hash of the request's identity picks, so
        the load spreads over the replicas and the replicas and the client agree without talking.
        The identity, not the request bytes: a re-signed copy of the same (key, session, timestamp)
        has the same repliers. A client may steer its own requests' repliers; it gains nothing."""
        h = hashlib.sha256(b"bftchat repliers\0" + key + struct.pack(">QQ", session, timestamp)).digest()
        start = int.from_bytes(h[:8], "big") % self.n
        return tuple((start + i) % self.n for i in range(self.reply))


@dataclass(frozen=True)
class WeakCommitQuorums(Quorums):
    """The ``weak-commit-quorum`` mutation: commits with f+1 COMMITs. Unsafe on purpose."""

    @property
    def commit(self) -> int:
        return self.f + 1
