"""Storage as a crash sees it: appended records are volatile until synced; a crash loses them."""

from __future__ import annotations

from bft.core.events import CheckpointRecord, Record
from bft.storage.records import compact


class SimStorage:
    def __init__(self, fsync_works: bool = True) -> None:
        self.durable: list[Record] = []
        self.volatile: list[Record] = []
        self.needed = False  # a volatile record a reply must wait for (not ``Persist.lazy``)
        self.fsync_works = fsync_works  # False = the ``no-fsync`` mutation: syncs report success, do nothing
        self.syncs = 0

    @property
    def dirty(self) -> bool:
        return bool(self.volatile)

    def append(self, record: Record, lazy: bool = False) -> None:
        self.volatile.append(record)
        self.needed = self.needed or not lazy

    def sync(self) -> None:
        self.syncs += 1
        self.needed = False
        if not self.fsync_works:
            return
        compact_now = any(isinstance(r, CheckpointRecord) for r in self.volatile)
        self.durable.extend(self.volatile)
        self.volatile.clear()
        if compact_now:
            self.durable = compact(self.durable)

    def crash(self) -> None:
        self.volatile.clear()
        self.needed = False

    def wipe(self) -> None:
        self.durable.clear()
        self.volatile.clear()
        self.needed = False
