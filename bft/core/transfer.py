"""State transfer: checkpoint snapshots cut into chunks that are each checkable on their own.

A checkpoint digest commits to the snapshot bytes through a hash tree over fixed-size chunks::

    checkpoint digest = sha256(tag || seq || snapshot length || state digest || chunk root)

where the state digest is the cheap incremental digest of application state, client table and
clock clamp (``replica.state_digest``) and the chunk root is the root of ``bft.merkle`` over the
chunks of the serialised ``StateSnapshot`` (``state_chunk_bytes`` each, the last one shorter).
A lagging replica that holds 2f+1 CHECKPOINTs for (seq, digest) checks each chunk, from any
sender, against that digest alone: the manifest fields hash to the digest, and the chunk's path
leads to the root. Junk is dropped on arrival, verified chunks are kept across retries and source
changes, and only a source that makes no progress for ``state_transfer_timeout`` is replaced.

Cost kept from before: every replica serialises its whole snapshot at each checkpoint (it did
already, to serve and persist it); hashing the chunks adds one SHA-256 pass over it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from bft import merkle
from bft.crypto import sha256
from bft.pb.bftchat.v1 import protocol_pb2 as pb

_CHECKPOINT_TAG = b"bftchat checkpoint\0"
HASH_LEN = 32


def chunk_count(size: int, chunk_bytes: int) -> int:
    """Chunks of a snapshot of ``size`` bytes (an empty snapshot is one empty chunk)."""
    return max(1, -(-size // chunk_bytes))


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a checkpoint digest is the hash of."""

    seq: int
    state_digest: bytes
    size: int
    root: bytes

    @property
    def digest(self) -> bytes:
        return sha256(
            _CHECKPOINT_TAG + struct.pack(">QQ", self.seq, self.size) + self.state_digest + self.root
        )


class Snapshot:
    """A checkpoint's serialised state with the chunk tree its checkpoint digest commits to."""

    __slots__ = ("chunk_bytes", "data", "manifest", "tree")

    def __init__(self, seq: int, state_digest: bytes, data: bytes, chunk_bytes: int) -> None:
        self.data = data
        self.chunk_bytes = chunk_bytes
        view = memoryview(data)
        leaves = [
            merkle.leaf_hash(view[i * chunk_bytes : (i + 1) * chunk_bytes])
            for i in range(chunk_count(len(data), chunk_bytes))
        ]
        self.tree = merkle.levels(leaves)
        self.manifest = Manifest(seq, state_digest, len(data), self.tree[-1][0])

    @property
    def seq(self) -> int:
        return self.manifest.seq

    @property
    def digest(self) -> bytes:
        return self.manifest.digest

    @property
    def total(self) -> int:
        return len(self.tree[0])

    def chunk(self, index: int) -> pb.StateChunk:
        m = self.manifest
        return pb.StateChunk(
            seq=m.seq,
            index=index,
            total=self.total,
            data=self.data[index * self.chunk_bytes : (index + 1) * self.chunk_bytes],
            state_digest=m.state_digest,
            snapshot_bytes=m.size,
            chunk_root=m.root,
            path=merkle.path(self.tree, index),
        )


@dataclass
class Transfer:
    """A state transfer in progress towards the certified checkpoint (seq, digest).

    Holds only verified chunks (at most the certified snapshot's size). ``source`` is asked for
    windows of chunks; chunks from anyone are taken if they verify.
    """

    seq: int
    digest: bytes
    proof: list[pb.Envelope]
    source: int
    chunk_bytes: int
    max_bytes: int
    manifest: Manifest | None = None
    chunks: dict[int, bytes] = field(default_factory=dict)
    asked: tuple[int, int] = (0, 0)  # [first, end) of the last window asked for
    last_progress: float | None = None  # None until the first status tick sees it
    progress_mark: int = -1  # len(chunks) at the previous status tick
    newer: tuple[int, bytes, list[pb.Envelope]] | None = None  # a later certified checkpoint
    rejected: int = 0  # chunks that failed verification
    _first_missing: int = 0

    @property
    def total(self) -> int | None:
        return None if self.manifest is None else chunk_count(self.manifest.size, self.chunk_bytes)

    def offer(self, chunk: pb.StateChunk) -> bool:
        """Keep ``chunk`` if it is a new, verified chunk of our target; False otherwise."""
        if chunk.seq != self.seq:
            return False
        m = self.manifest
        if m is None:
            cand = Manifest(chunk.seq, chunk.state_digest, chunk.snapshot_bytes, chunk.chunk_root)
            if (
                len(cand.state_digest) != HASH_LEN
                or len(cand.root) != HASH_LEN
                or cand.size > self.max_bytes
                or cand.digest != self.digest
            ):
                self.rejected += 1
                return False
            m = cand
        total = chunk_count(m.size, self.chunk_bytes)
        index = chunk.index
        if index >= total or index in self.chunks:
            return False
        expected = min(self.chunk_bytes, m.size - index * self.chunk_bytes)
        if (
            len(chunk.data) != expected
            or len(chunk.path) > 64
            or not merkle.verify(merkle.leaf_hash(chunk.data), index, total, list(chunk.path), m.root)
        ):
            self.rejected += 1
            return False
        self.manifest = m
        self.chunks[index] = chunk.data
        return True

    @property
    def complete(self) -> bool:
        total = self.total
        return total is not None and len(self.chunks) == total

    def window(self, size: int) -> tuple[int, int]:
        """(first, count): the next chunks to ask for, from the first one missing."""
        while self._first_missing in self.chunks:
            self._first_missing += 1
        first = self._first_missing
        total = self.total
        count = size if total is None else max(1, min(size, total - first))
        return first, count

    def window_done(self) -> bool:
        """Every chunk of the last window asked for has arrived: time to ask for the next one."""
        first, end = self.asked
        total = self.total
        if total is not None:
            end = min(end, total)
        return all(i in self.chunks for i in range(first, end))

    def assemble(self) -> bytes:
        assert self.complete
        return b"".join(self.chunks[i] for i in range(len(self.chunks)))


class UncheckedTransfer(Transfer):
    """The ``unauthenticated-chunks`` mutation: takes the first chunk's manifest on trust and any
    later chunk with the right seq and index, as the code before hash trees did. Unsafe on purpose:
    one sender's junk chunk spoils the assembly, and the transfer starts over, forever."""

    def offer(self, chunk: pb.StateChunk) -> bool:
        if chunk.seq != self.seq:
            return False
        if self.manifest is None:
            size = min(chunk.snapshot_bytes, self.max_bytes)
            self.manifest = Manifest(chunk.seq, chunk.state_digest, size, chunk.chunk_root)
        total = self.total
        if total is None or chunk.index >= total:
            return False
        self.chunks[chunk.index] = chunk.data
        return True

    def assemble(self) -> bytes:
        return b"".join(self.chunks[i] for i in range(len(self.chunks)))
