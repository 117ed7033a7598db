"""Per-owner accounting for network-fed tables, with the deterministic "largest owner first" drop rule.

Anyone can make keys, so a table fed by clients is bounded in total; when it is full, the owner holding
the most loses an entry first (ties: the smallest owner), never the newcomer that holds less. That
keeps one key's flood from locking the others out, at O(log owners) per change.
"""

from __future__ import annotations

import heapq
from typing import Generic, TypeVar

Owner = TypeVar("Owner", bytes, tuple[bytes, int])


class LargestFirst(Generic[Owner]):
    """How much each owner holds (entries or bytes), and which owner holds the most."""

    def __init__(self) -> None:
        self.held: dict[Owner, int] = {}
        self._heap: list[tuple[int, Owner]] = []  # (-held, owner), lazily cleaned

    def add(self, owner: Owner, amount: int) -> None:
        left = self.held.get(owner, 0) + amount
        if left > 0:
            self.held[owner] = left
            heapq.heappush(self._heap, (-left, owner))
        else:
            self.held.pop(owner, None)
        if len(self._heap) > 4 * len(self.held) + 1024:
            self._heap = [(-v, o) for o, v in self.held.items()]
            heapq.heapify(self._heap)

    def largest(self) -> Owner | None:
        heap = self._heap
        while heap:
            neg, owner = heap[0]
            if self.held.get(owner) == -neg:
                return owner
            heapq.heappop(heap)
        return None
