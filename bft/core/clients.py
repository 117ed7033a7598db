"""The replicated client table: last timestamp and last reply per client session.

It gives exactly-once execution per (client key, session, timestamp) and answers retransmissions.
It is part of the replicated state and of the checkpoint digest. Anyone can make keys, so it is
bounded: past ``capacity`` the least recently executed session is evicted (deterministic order:
by last sequence number, then key, then session), and ``floor`` remembers the highest timestamp
ever evicted. A session the table does not know must use a timestamp above the floor, so a request
of an evicted session can never be executed a second time.

It also holds each replica's epoch (incarnation number, docs/PROTOCOL.md "Epochs"): a few integers
of replicated state that travel with the client table in the snapshot and its digest. A zero epoch
is absent, so a state with no epoch set has the digest and snapshot it had before epochs existed.
"""

from __future__ import annotations

import heapq
import struct
from dataclasses import dataclass

from bft.app.paging import PageIndex, page_of
from bft.lthash import LtHash
from bft.pb.bftchat.v1 import protocol_pb2 as pb
from bft.wire import WireError, parse

ClientId = tuple[bytes, int]  # (public key, session)
MAX_U64 = 2**64 - 1
"""Timestamps are uint64 on the wire: counters derived from them saturate here, never overflow."""


@dataclass(slots=True)
class ClientEntry:
    last_timestamp: int
    last_seq: int
    status: int
    result: bytes

    def element(self, cid: ClientId) -> bytes:
        """The bytes this entry contributes to the table's multiset digest."""
        return (
            cid[0]
            + struct.pack(">QQQI", cid[1], self.last_timestamp, self.last_seq, self.status)
            + self.result
        )


def _page_key(cid: ClientId) -> bytes:
    return cid[0] + struct.pack(">Q", cid[1])


class ClientTable:
    def __init__(self, capacity: int, page_count: int = 1) -> None:
        self.capacity = capacity
        self.floor = 0
        self._pages: PageIndex[ClientId, None] = PageIndex()
        self._pages.reset(page_count, ())
        self._entries: dict[ClientId, ClientEntry] = {}
        self._hash = LtHash()
        self._hashed: dict[ClientId, bytes] = {}  # element as of the last digest()
        self._dirty: set[ClientId] = set()
        self._lru: list[tuple[int, bytes, int]] = []  # (last_seq, key, session), lazily cleaned
        self.epochs: dict[int, int] = {}  # replica id -> epoch, non-zero only (n entries at most)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, cid: ClientId) -> ClientEntry | None:
        return self._entries.get(cid)

    def min_timestamp(self, cid: ClientId) -> int:
        """The smallest timestamp a new request of ``cid`` may carry."""
        entry = self._entries.get(cid)
        return min((entry.last_timestamp if entry else self.floor) + 1, MAX_U64)

    def epoch(self, replica: int) -> int:
        return self.epochs.get(replica, 0)

    def set_epoch(self, replica: int, epoch: int) -> None:
        if epoch > 0:
            self.epochs[replica] = epoch
            self._pages.touch(0)

    def record(self, cid: ClientId, timestamp: int, seq: int, status: int, result: bytes) -> None:
        self._entries[cid] = ClientEntry(timestamp, seq, status, result)
        self._dirty.add(cid)
        self._pages.add(cid, page_of(_page_key(cid), self._pages.count), None)
        heapq.heappush(self._lru, (seq, cid[0], cid[1]))

    def evict_overflow(self) -> None:
        """Drop least recently executed sessions until within capacity (called once per batch)."""
        while len(self._entries) > self.capacity and self._lru:
            seq, key, session = heapq.heappop(self._lru)
            cid = (key, session)
            entry = self._entries.get(cid)
            if entry is None or entry.last_seq != seq:
                continue  # stale heap item: the session ran again later
            del self._entries[cid]
            self._dirty.add(cid)
            self._pages.remove(cid, page_of(_page_key(cid), self._pages.count))
            if entry.last_timestamp > self.floor:
                self.floor = entry.last_timestamp
                self._pages.touch(0)
        if len(self._lru) > 4 * max(len(self._entries), 1024):
            self._lru = [(e.last_seq, k, s) for (k, s), e in self._entries.items()]
            heapq.heapify(self._lru)

    def digest(self) -> bytes:
        """Multiset hash of the entries plus the floor; costs only the sessions changed since last time."""
        for cid in self._dirty:
            old = self._hashed.pop(cid, None)
            if old is not None:
                self._hash.remove(old)
            entry = self._entries.get(cid)
            if entry is not None:
                elem = entry.element(cid)
                self._hash.add(elem)
                self._hashed[cid] = elem
        self._dirty.clear()
        digest = self._hash.digest() + struct.pack(">Q", self.floor)
        if self.epochs:
            digest += b"epochs" + b"".join(struct.pack(">IQ", r, e) for r, e in sorted(self.epochs.items()))
        return digest

    def take_dirty_pages(self) -> set[int]:
        return self._pages.take_dirty()

    def page(self, index: int) -> bytes:
        """The ``ClientTableSnapshot`` of the sessions on page ``index`` (page 0: also the floor and
        the epochs); empty for a page with nothing on it."""
        snap = pb.ClientTableSnapshot(floor=self.floor) if index == 0 else pb.ClientTableSnapshot()
        if index == 0:
            for replica, epoch in sorted(self.epochs.items()):
                snap.epochs.add(replica=replica, epoch=epoch)
        entries = self._entries
        for cid in sorted(self._pages.members(index)):
            e = entries[cid]
            snap.entries.add(
                client_key=cid[0],
                session=cid[1],
                last_timestamp=e.last_timestamp,
                last_seq=e.last_seq,
                status=e.status,
                result=e.result,
            )
        return snap.SerializeToString(deterministic=True)

    @classmethod
    def restore_pages(cls, pages: list[bytes], capacity: int, page_count: int) -> ClientTable:
        """The table these pages encode; ValueError if a page holds what is not its own."""
        table = cls(capacity, page_count)
        for index, data in enumerate(pages):
            try:
                snap = parse(pb.ClientTableSnapshot, data)
            except WireError:
                raise ValueError(f"client table page {index} does not parse") from None
            if index == 0:
                table.floor = snap.floor
                for ep in snap.epochs:
                    table.set_epoch(ep.replica, max(ep.epoch, table.epoch(ep.replica)))
            elif snap.floor or len(snap.epochs):
                raise ValueError(f"client table page {index} holds global fields")
            for e in snap.entries:
                cid = (e.client_key, e.session)
                if page_of(_page_key(cid), page_count) != index or cid in table._entries:
                    raise ValueError(f"client table page {index} holds another page's session")
                table.record(cid, e.last_timestamp, e.last_seq, e.status, e.result)
        table._pages.clean()
        return table

    def snapshot(self) -> pb.ClientTableSnapshot:
        snap = pb.ClientTableSnapshot(floor=self.floor)
        for replica, epoch in sorted(self.epochs.items()):
            snap.epochs.add(replica=replica, epoch=epoch)
        for (key, session), e in sorted(self._entries.items()):
            snap.entries.add(
                client_key=key,
                session=session,
                last_timestamp=e.last_timestamp,
                last_seq=e.last_seq,
                status=e.status,
                result=e.result,
            )
        return snap

    @classmethod
    def restore(cls, snap: pb.ClientTableSnapshot, capacity: int, page_count: int = 1) -> ClientTable:
        table = cls(capacity, page_count)
        table.floor = snap.floor
        for ep in snap.epochs:
            table.set_epoch(ep.replica, max(ep.epoch, table.epoch(ep.replica)))
        for e in snap.entries:
            table.record((e.client_key, e.session), e.last_timestamp, e.last_seq, e.status, e.result)
        return table
