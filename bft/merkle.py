"""A binary hash tree, so a replica signs one root per batch instead of one reply per request."""

from __future__ import annotations

import hashlib

_LEAF = b"\x00"
_NODE = b"\x01"


def leaf_hash(data: bytes | memoryview) -> bytes:
    h = hashlib.sha256(_LEAF)
    h.update(data)
    return h.digest()


def node(left: bytes, right: bytes) -> bytes:
    """An inner node over two children."""
    return hashlib.sha256(_NODE + left + right).digest()


_node = node


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


def levels(leaves: list[bytes]) -> list[list[bytes]]:
    """Every level of the tree ``build`` makes (leaves first, root last), to cut paths on demand."""
    if not leaves:
        return [[hashlib.sha256(b"empty").digest()]]
    out = [list(leaves)]
    while len(out[-1]) > 1:
        level = out[-1]
        out.append(
            [
                _node(level[i], level[i + 1]) if i + 1 < len(level) else level[i]
                for i in range(0, len(level), 2)
            ]
        )
    return out


def path(tree: list[list[bytes]], index: int) -> list[bytes]:
    """The audit path of leaf ``index`` in ``tree`` (from ``levels``), as ``build`` gives it."""
    out: list[bytes] = []
    for level in tree[:-1]:
        sibling = index ^ 1
        out.append(level[sibling] if sibling < len(level) else b"")
        index //= 2
    return out


def root_of(leaf: bytes, index: int, count: int, audit: list[bytes]) -> bytes | None:
    """The root ``audit`` leads to from ``leaf`` as leaf ``index`` of a tree of ``count`` leaves, or
    None if the path does not have that tree's shape.

    The path's shape (its length, and which levels promote the node unchanged) is derived from
    ``count`` and ``index``, never taken from the path: otherwise a path with an extra promoted
    level would move a genuine leaf to another index.
    """
    if not 0 <= index < count:
        return None
    node, width, pos, used = leaf, count, index, 0
    while width > 1:
        if used >= len(audit):
            return None
        sibling = audit[used]
        used += 1
        if pos ^ 1 < width:
            if len(sibling) != 32:
                return None
            node = _node(sibling, node) if pos & 1 else _node(node, sibling)
        elif sibling:
            return None
        pos //= 2
        width = (width + 1) // 2
    return node if used == len(audit) else None


def verify(leaf: bytes, index: int, count: int, audit: list[bytes], root: bytes) -> bool:
    """True if ``audit`` proves ``leaf`` is leaf ``index`` of a tree of ``count`` leaves with ``root``
    (see ``root_of``)."""
    return root_of(leaf, index, count, audit) == root
