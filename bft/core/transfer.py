"""State transfer: fetching a certified checkpoint's pages, each chunk checked on arrival.

A lagging replica that holds 2f+1 CHECKPOINTs for (seq, digest) checks each chunk, from any
sender, against that digest alone (``bft/core/pages.py``): the manifest fields hash to the digest,
and the chunk's pages, part or page hashes lead to the page root along their path. Junk is dropped
on arrival, verified pages are kept across retries and source changes, and only a source that
makes no progress for ``state_transfer_timeout`` is replaced.

It first fetches the target's page hashes (16,384 of them fit one 1 MiB chunk) and takes every
page it already holds with that hash (its own last checkpoint's, a superseded target's, empty
pages) without fetching it: a replica that fell behind fetches only the pages that changed, and a
transfer whose target is superseded under load keeps what it fetched (PBFT's hierarchical state
transfer, one level deep).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from bft import merkle
from bft.core.pages import HASH_LEN, Manifest, page_hash, page_node, part_count
from bft.pb.bftchat.v1 import protocol_pb2 as pb

MAX_PATH = 64


def _aligned(index: int, level: int, count: int) -> bool:
    """A run of 2^level pages from ``index`` is a subtree of a tree of ``count`` pages."""
    return (
        level <= 32 and (1 << level) <= count and not index % (1 << level) and index + (1 << level) <= count
    )


def _run_proved(
    hashes: list[bytes], index: int, level: int, count: int, chunk: pb.StateChunk, m: Manifest
) -> bool:
    """The page hashes of an aligned run build the subtree whose audit path leads to the root."""
    sub = merkle.levels(hashes)[-1][0]
    return merkle.verify(sub, index >> level, count >> level, list(chunk.path), m.root)


@dataclass
class Transfer:
    """A state transfer in progress towards the certified checkpoint (seq, digest).

    Holds only verified pages and parts (at most ``max_bytes``). ``source`` is asked for windows of
    chunks; chunks from anyone are taken if they verify.
    """

    seq: int
    digest: bytes
    proof: list[pb.Envelope]
    source: int
    chunk_bytes: int
    max_bytes: int
    page_count: int
    manifest: Manifest | None = None
    pages: dict[int, bytes] = field(default_factory=dict)
    hashes: dict[int, bytes] = field(default_factory=dict)  # of the verified pages: the tree, for free
    parts: dict[int, dict[int, bytes]] = field(default_factory=dict)  # verified parts of large pages
    held: int = 0  # bytes of pages and parts held
    leaves: dict[int, bytes] = field(default_factory=dict)  # verified page hashes of the target
    # Pages we hold already, by index, with their hashes: our last checkpoint's, a superseded
    # target's. A page whose hash matches the target's is taken without fetching it.
    candidates: list[tuple[Mapping[int, bytes], Mapping[int, bytes]]] = field(default_factory=list)
    reused: int = 0  # pages taken from the candidates
    asked: int = 0  # chunks asked for by the last request
    arrived: int = 0  # chunks accepted since then
    answered: bool = False  # a verified chunk marked last of its answer arrived since then
    last_progress: float | None = None  # None until the first status tick sees it
    progress_mark: int = -1  # chunks accepted at the previous status tick
    accepted: int = 0
    rejected: int = 0  # chunks that failed verification
    _first_missing: int = 0

    def offer(self, chunk: pb.StateChunk) -> bool:
        """Keep ``chunk`` if it brings new, verified pages or parts of our target; False otherwise."""
        if chunk.seq != self.seq:
            return False
        m = self.manifest
        if m is None:
            cand = Manifest(chunk.seq, chunk.state_digest, chunk.page_count, chunk.chunk_root)
            if (
                len(cand.state_digest) != HASH_LEN
                or len(cand.root) != HASH_LEN
                or cand.page_count != self.page_count
                or cand.digest != self.digest
            ):
                self.rejected += 1
                return False
            m = cand
        if len(chunk.path) > MAX_PATH or len(chunk.part_path) > MAX_PATH:
            self.rejected += 1
            return False
        if chunk.page_hashes:
            kept = self._offer_hashes(chunk, m)
        elif chunk.parts:
            kept = self._offer_part(chunk, m)
        else:
            kept = self._offer_pages(chunk, m)
        if kept:
            self.manifest = m
            self.arrived += 1
            self.accepted += 1
            self.answered = self.answered or chunk.last
        return kept

    def _offer_hashes(self, chunk: pb.StateChunk, m: Manifest) -> bool:
        index, level, count = chunk.index, chunk.level, m.page_count
        if not _aligned(index, level, count):
            self.rejected += 1
            return False
        if all(i in self.leaves for i in range(index, index + (1 << level))):
            return False
        hashes = list(chunk.page_hashes)
        if len(hashes) != 1 << level or chunk.pages or chunk.data or any(len(h) != HASH_LEN for h in hashes):
            self.rejected += 1
            return False
        if not _run_proved(hashes, index, level, count, chunk, m):
            self.rejected += 1
            return False
        empty = page_hash(b"", self.chunk_bytes)
        for i, h in enumerate(hashes, index):
            self.leaves[i] = h
            if i in self.pages:
                continue
            if h == empty:
                self._take(i, b"", h)
                continue
            for pages, known in self.candidates:
                if known.get(i) == h and (page := pages.get(i)) is not None:
                    self._take(i, page, h)
                    self.reused += 1
                    break
        return True

    def _take(self, i: int, data: bytes, digest: bytes) -> None:
        if self.held + len(data) > self.max_bytes:
            return  # beyond the snapshot limit: this target cannot be installed here
        self.held += len(data) - sum(map(len, self.parts.pop(i, {}).values()))
        self.pages[i], self.hashes[i] = data, digest

    def _offer_pages(self, chunk: pb.StateChunk, m: Manifest) -> bool:
        index, level, count = chunk.index, chunk.level, m.page_count
        if not _aligned(index, level, count):
            self.rejected += 1
            return False
        fresh = [i for i in range(index, index + (1 << level)) if i not in self.pages]
        if not fresh:
            return False
        pages = list(chunk.pages)
        if len(pages) != 1 << level or chunk.data:
            self.rejected += 1
            return False
        hashes = [page_hash(p, self.chunk_bytes) for p in pages]
        if not _run_proved(hashes, index, level, count, chunk, m):
            self.rejected += 1
            return False
        for i in fresh:
            self._take(i, pages[i - index], hashes[i - index])
        return True

    def _offer_part(self, chunk: pb.StateChunk, m: Manifest) -> bool:
        index, part, parts, size, limit = (
            chunk.index,
            chunk.part,
            chunk.parts,
            chunk.page_bytes,
            self.chunk_bytes,
        )
        if index >= m.page_count or chunk.level or chunk.pages or size > self.max_bytes:
            self.rejected += 1
            return False
        if index in self.pages or part in self.parts.get(index, {}):
            return False
        if parts < 2 or parts != part_count(size, limit) or part >= parts:
            self.rejected += 1
            return False
        data = chunk.data
        root = None
        if len(data) == min(limit, size - part * limit):
            root = merkle.root_of(merkle.leaf_hash(data), part, parts, list(chunk.part_path))
        if root is None or not merkle.verify(
            page_node(size, root), index, m.page_count, list(chunk.path), m.root
        ):
            self.rejected += 1
            return False
        if self.held + len(data) > self.max_bytes:
            return False
        held = self.parts.setdefault(index, {})
        held[part] = data
        self.held += len(data)
        if len(held) == parts:
            self.pages[index] = b"".join(held[i] for i in range(parts))
            self.hashes[index] = page_node(size, root)
            del self.parts[index]
        return True

    @property
    def complete(self) -> bool:
        return self.manifest is not None and len(self.pages) == self.page_count

    def window(self) -> tuple[int, int, bool, int]:
        """(first page, first part, hashes?, end): where the next chunks to ask for start, and the
        first page after it that we hold (0: none), so a sender skips it; page hashes come first."""
        if len(self.leaves) < self.page_count:
            first = 0
            while first in self.leaves:
                first += 1
            return first, 0, True, 0
        while self._first_missing in self.pages:
            self._first_missing += 1
        first = self._first_missing
        held = self.parts.get(first)
        part = 0
        if held:
            while part in held:
                part += 1
        end = first + 1
        while end < self.page_count and end not in self.pages:
            end += 1
        return first, part, False, end if end < self.page_count else 0

    def window_done(self) -> bool:
        """Every chunk asked for last time has arrived (or as many verified ones from anyone), or
        the answer said it was complete."""
        return self.arrived >= self.asked or self.answered

    def assemble(self) -> list[bytes]:
        assert self.complete
        return [self.pages[i] for i in range(self.page_count)]


class UncheckedTransfer(Transfer):
    """The ``unauthenticated-chunks`` mutation: takes the first chunk's manifest on trust and any
    later pages or parts unchecked, as the code before hash trees did. Unsafe on purpose: one
    sender's junk chunk spoils the assembly, and the transfer starts over, forever."""

    def offer(self, chunk: pb.StateChunk) -> bool:
        if chunk.seq != self.seq:
            return False
        if self.manifest is None:
            self.manifest = Manifest(chunk.seq, chunk.state_digest, self.page_count, chunk.chunk_root)
        index = chunk.index  # the last chunk for a page wins, as the last for an index did
        if index >= self.page_count:
            return False
        if chunk.page_hashes:
            for offset, digest in enumerate(chunk.page_hashes):
                if index + offset < self.page_count:
                    self.leaves[index + offset] = digest
        elif chunk.parts:
            held = self.parts.setdefault(index, {})
            held[chunk.part] = chunk.data
            if len(held) >= chunk.parts:
                self.pages[index] = b"".join(held[i] for i in sorted(held))
        else:
            for offset, data in enumerate(chunk.pages):
                if index + offset < self.page_count:
                    self.pages[index + offset] = data
        self.arrived += 1
        self.accepted += 1
        return True
