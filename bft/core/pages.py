"""A checkpoint's state as pages under a hash tree kept up to date as pages change.

The replicated state (clock clamp, client table, application) is cut into ``Params.state_pages``
pages, a power of two fixed for the cluster: each client session and each application item lives on
the page its key hashes to (``bft/app/paging.py``), page 0 also holds the global fields. A checkpoint
encodes and hashes only the pages changed since the previous one and recomputes the perfect binary
tree over the page hashes along their paths, so its cost follows the changes, not the state size
(PBFT's partition tree). The checkpoint digest commits to the tree::

    checkpoint digest = sha256(tag || seq || page count || state digest || page root)

where the state digest is the incremental digest of application state, client table and clock
clamp (``replica.state_digest``). A page's hash commits to its length and to the root of a hash
tree over its parts of ``part_bytes`` (one part for any page up to a chunk), so a page larger than
one message is still sent and checked part by part.

A chunk of a state transfer is an aligned run of 2^level whole pages with the audit path of their
subtree, or one part of a large page with its path in the page's part tree and the page's path: a
lagging replica checks every chunk, from any sender, against the certified digest alone.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from itertools import pairwise

from bft import merkle
from bft.crypto import sha256
from bft.pb.bftchat.v1 import protocol_pb2 as pb
from bft.wire import len_field_head, uint_field, varint

_CHECKPOINT_TAG = b"bftchat checkpoint pages\0"
_PAGE_TAG = b"bftchat page\0"
_U64 = struct.Struct(">Q")
HASH_LEN = 32
PAGE_FRAME = 6
"""Bytes a page adds to a chunk beyond its content at most (field tag and length, pages < 2^32)."""
HASH_FRAME = 2 + HASH_LEN
"""Bytes a page hash takes in a chunk (field tag, length, hash)."""


def part_count(size: int, part_bytes: int) -> int:
    """Parts of a page of ``size`` bytes (an empty page is one empty part)."""
    return max(1, -(-size // part_bytes))


def page_node(size: int, part_root: bytes) -> bytes:
    return sha256(_PAGE_TAG + _U64.pack(size) + part_root)


def part_tree(data: bytes, part_bytes: int) -> list[list[bytes]]:
    view = memoryview(data)
    return merkle.levels(
        [
            merkle.leaf_hash(view[i * part_bytes : (i + 1) * part_bytes])
            for i in range(part_count(len(data), part_bytes))
        ]
    )


def page_hash(data: bytes, part_bytes: int) -> bytes:
    """What the page tree holds for a page: its length and the root over its parts."""
    if len(data) <= part_bytes:
        return page_node(len(data), merkle.leaf_hash(data))
    return page_node(len(data), part_tree(data, part_bytes)[-1][0])


class PageTree:
    """A perfect binary tree over a power of two of page hashes, every level kept.

    ``updated`` copies the levels (two pointers per page) and rehashes the changed pages' paths, so
    the snapshots a replica still serves keep their own tree."""

    __slots__ = ("levels",)

    def __init__(self, levels: list[list[bytes]]) -> None:
        self.levels = levels

    @classmethod
    def build(cls, hashes: list[bytes]) -> PageTree:
        count = len(hashes)
        if count < 1 or count & (count - 1):
            raise ValueError("the page count must be a power of two")
        return cls(merkle.levels(hashes))

    @classmethod
    def uniform(cls, count: int, leaf: bytes) -> PageTree:
        """``count`` equal pages (an empty state): one hash per level."""
        levels, node = [], leaf
        while True:
            levels.append([node] * count)
            if count == 1:
                return cls(levels)
            node, count = merkle.node(node, node), count // 2

    @property
    def root(self) -> bytes:
        return self.levels[-1][0]

    @property
    def count(self) -> int:
        return len(self.levels[0])

    def updated(self, changed: dict[int, bytes]) -> PageTree:
        levels = [list(level) for level in self.levels]
        touched = set()
        leaves = levels[0]
        for index, digest in changed.items():
            leaves[index] = digest
            touched.add(index >> 1)
        node = merkle.node
        for below, level in pairwise(levels):
            for j in touched:
                level[j] = node(below[2 * j], below[2 * j + 1])
            touched = {j >> 1 for j in touched}
        return PageTree(levels)

    def path(self, level: int, index: int) -> list[bytes]:
        """The audit path of the node ``index`` of ``level`` (0: the pages) to the root."""
        return merkle.path(self.levels[level:], index)


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a checkpoint digest is the hash of."""

    seq: int
    state_digest: bytes
    page_count: int
    root: bytes

    @property
    def digest(self) -> bytes:
        return sha256(
            _CHECKPOINT_TAG + struct.pack(">QQ", self.seq, self.page_count) + self.state_digest + self.root
        )


class Snapshot:
    """A checkpoint's pages and their tree: what its digest commits to, and the chunks served."""

    __slots__ = ("_part_trees", "manifest", "pages", "part_bytes", "tree")

    def __init__(
        self, seq: int, state_digest: bytes, pages: list[bytes], tree: PageTree, part_bytes: int
    ) -> None:
        self.pages = pages
        self.tree = tree
        self.part_bytes = part_bytes
        self.manifest = Manifest(seq, state_digest, len(pages), tree.root)
        self._part_trees: dict[int, list[list[bytes]]] = {}

    @classmethod
    def of_pages(cls, seq: int, state_digest: bytes, pages: list[bytes], part_bytes: int) -> Snapshot:
        """Hash every page (a restart, an install without hashes, a tool)."""
        tree = PageTree.build([page_hash(p, part_bytes) for p in pages])
        return cls(seq, state_digest, pages, tree, part_bytes)

    @property
    def seq(self) -> int:
        return self.manifest.seq

    @property
    def digest(self) -> bytes:
        return self.manifest.digest

    @property
    def size(self) -> int:
        return sum(map(len, self.pages))

    def chunks(
        self, first: int, part: int, count: int, hashes: bool = False, end: int = 0
    ) -> list[pb.StateChunk]:
        """At most ``count`` chunks from page ``first`` (part ``part`` if it is a large page) up to
        page ``end`` (0: the last), or of page hashes from ``first`` on; the last one says so."""
        out = self._hash_chunks(first, count) if hashes else self._page_chunks(first, part, count, end)
        if out:
            out[-1].last = True
        return out

    def _page_chunks(self, first: int, part: int, count: int, end: int) -> list[pb.StateChunk]:
        out: list[pb.StateChunk] = []
        pages, limit = self.pages, self.part_bytes
        end = min(end or len(pages), len(pages))
        index = first
        while len(out) < count and index < end:
            size = len(pages[index])
            if size > limit:
                parts = part_count(size, limit)
                if part < parts:
                    out.append(self._part_chunk(index, part))
                    part += 1
                if part >= parts:
                    index, part = index + 1, 0
                continue
            level = self._run(index, end)
            out.append(self._pages_chunk(index, level))
            index, part = index + (1 << level), 0
        return out

    def _hash_chunks(self, first: int, count: int) -> list[pb.StateChunk]:
        """Aligned runs of page hashes, as many per chunk as fit (all 16,384 in one 1 MiB chunk)."""
        out: list[pb.StateChunk] = []
        fit = max(1, self.part_bytes // HASH_FRAME).bit_length() - 1  # the largest 2^k that fits
        leaves, index = self.tree.levels[0], first
        while len(out) < count and index < len(leaves):
            level = min(fit, (index & -index).bit_length() - 1 if index else fit)
            while index + (1 << level) > len(leaves):
                level -= 1
            chunk = self._head(index, level)
            chunk.page_hashes.extend(leaves[index : index + (1 << level)])
            out.append(chunk)
            index += 1 << level
        return out

    def _run(self, first: int, end: int) -> int:
        """The level of the largest aligned run of whole pages from ``first`` that fits a chunk
        and ends by ``end``."""
        pages, limit = self.pages, self.part_bytes
        level, total = 0, len(pages[first]) + PAGE_FRAME
        while first % (2 << level) == 0 and first + (2 << level) <= end:
            extra = sum(len(p) + PAGE_FRAME for p in pages[first + (1 << level) : first + (2 << level)])
            if total + extra > limit:
                break
            total += extra
            level += 1
        return level

    def _head(self, index: int, level: int) -> pb.StateChunk:
        m = self.manifest
        return pb.StateChunk(
            seq=m.seq,
            index=index,
            state_digest=m.state_digest,
            chunk_root=m.root,
            path=self.tree.path(level, index >> level),
            level=level,
            page_count=m.page_count,
        )

    def _pages_chunk(self, index: int, level: int) -> pb.StateChunk:
        chunk = self._head(index, level)
        chunk.pages.extend(self.pages[index : index + (1 << level)])
        return chunk

    def _part_chunk(self, index: int, part: int) -> pb.StateChunk:
        data, limit = self.pages[index], self.part_bytes
        tree = self._part_trees.get(index)
        if tree is None:
            tree = self._part_trees[index] = part_tree(data, limit)
        chunk = self._head(index, 0)
        chunk.data = data[part * limit : (part + 1) * limit]
        chunk.part = part
        chunk.parts = len(tree[0])
        chunk.page_bytes = len(data)
        chunk.part_path.extend(merkle.path(tree, part))
        return chunk


def legacy_digest(seq: int, state_digest: bytes, snapshot: bytes, chunk_bytes: int) -> bytes:
    """The checkpoint digest before pages (a chunk tree over the serialised ``StateSnapshot``): what
    the CheckpointRecord of a log written by an older version is certified under."""
    root = part_tree(snapshot, chunk_bytes)[-1][0]
    return sha256(b"bftchat checkpoint\0" + struct.pack(">QQ", seq, len(snapshot)) + state_digest + root)


def encode_pages(pages: list[bytes], indexes: list[int] | None = None) -> bytes:
    """The ``StatePages`` serialisation (what the log keeps), joined by hand: every page, or the
    pages at ``indexes``."""
    out = b"".join(part for p in pages for part in (len_field_head(1, len(p)), p))
    if indexes:
        packed = b"".join(map(varint, indexes))
        out += len_field_head(2, len(packed)) + packed  # proto3 packs repeated scalars
    return out


def encode_page(index: int, seq: int, last_ts: int, clients: bytes, app: bytes) -> bytes:
    """A ``StatePage``'s deterministic serialisation, joined by hand around the pieces' bytes (a
    protobuf object would copy them in and out again). tests/test_transfer.py checks it equals
    the protobuf's."""
    return b"".join(
        (
            uint_field(1, seq) + uint_field(2, last_ts) if index == 0 else b"",
            len_field_head(3, len(clients)) if clients else b"",  # proto3 leaves empty bytes out
            clients,
            len_field_head(4, len(app)) if app else b"",
            app,
        )
    )
