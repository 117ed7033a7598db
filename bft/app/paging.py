"""Which checkpoint page each item of the replicated state lives on, and which pages changed.

A checkpoint (``bft/core/pages.py``) hashes only the pages changed since the previous one. Each
stateful part (the chat app, the KV app, the client table) files its items under the page its key
hashes to and reports the pages it touched; page 0 also holds its few global fields. The hash is
fixed (BLAKE2b of the key), so every replica files every item under the same page.

A client can choose keys that land on one page (14 bits of grinding per key at the default 16,384
pages): that page then grows and costs its full size at each checkpoint that touches it. The global
state budget bounds it, and it is no worse than the whole-state snapshot every checkpoint this
replaced.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def page_of(key: bytes, count: int) -> int:
    """The page of ``key`` among ``count`` pages (a power of two)."""
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") & (count - 1)


class PageIndex(Generic[K, V]):
    """Per page, the items filed under it; and the set of pages changed since ``take_dirty``.

    Starts with one page (an app used on its own); the core sets the cluster's page count."""

    __slots__ = ("_dirty", "_members", "count")

    def __init__(self, count: int = 1) -> None:
        self.count = count
        self._members: dict[int, dict[K, V]] = {}
        self._dirty: set[int] = {0}

    def reset(self, count: int, items: Iterable[tuple[K, int, V]]) -> None:
        """Refile everything under ``count`` pages; every non-empty page (and page 0) is changed."""
        if count < 1 or count & (count - 1):
            raise ValueError("the page count must be a power of two")
        self.count = count
        self._members = {}
        for key, page, value in items:
            self._members.setdefault(page, {})[key] = value
        self._dirty = set(self._members) | {0}

    def add(self, key: K, page: int, value: V) -> None:
        self._members.setdefault(page, {})[key] = value
        self._dirty.add(page)

    def remove(self, key: K, page: int) -> None:
        members = self._members[page]
        del members[key]
        if not members:
            del self._members[page]
        self._dirty.add(page)

    def touch(self, page: int) -> None:
        self._dirty.add(page)

    def members(self, page: int) -> dict[K, V]:
        return self._members.get(page, {})

    def take_dirty(self) -> set[int]:
        dirty, self._dirty = self._dirty, set()
        return dirty

    def clean(self) -> None:
        """Forget the changes: the state was just built from exactly these pages."""
        self._dirty = set()
