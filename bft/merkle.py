"""A binary hash tree, so a replica signs one root per batch instead of one reply per request."""

from __future__ import annotations

import hashlib

_LEAF = b"\x00"
_NODE = b"\x01"


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(_LEAF + data).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_NODE + left + right).digest()


def build(leaves: list[bytes]) -> tuple[bytes, list[list[bytes]]]:
    """Root over leaf hashes, and the audit path for each leaf. An odd node is promoted unchanged."""
    if not leaves:
        return hashlib.sha256(b"empty").digest(), []
    paths: list[list[bytes]] = [[] for _ in leaves]
    positions = list(range(len(leaves)))  # index of each leaf's ancestor in the current level
    level = list(leaves)
    while len(level) > 1:
        nxt: list[bytes] = []
        for i in range(0, len(level), 2):
            if i + 1 < len(level):
                nxt.append(_node(level[i], level[i + 1]))
            else:
                nxt.append(level[i])
        for leaf, pos in enumerate(positions):
            sibling = pos ^ 1
            if sibling < len(level):
                paths[leaf].append(level[sibling])
            else:
                paths[leaf].append(b"")
            positions[leaf] = pos // 2
        level = nxt
    return level[0], paths


def root_from_path(leaf: bytes, index: int, path: list[bytes]) -> bytes:
    """Recompute the root from one leaf hash and its path (empty entries mark promoted nodes)."""
    node = leaf
    for sibling in path:
        if sibling:
            node = _node(sibling, node) if index & 1 else _node(node, sibling)
        index //= 2
    return node
