"""LtHash: a homomorphic multiset hash (Bellare–Micciancio; Facebook's LtHash16 parameters).

The digest of a set is the lane-wise sum (mod 2**16, 1024 lanes) of an extendable-output hash of
each element, so adding or removing one element costs one hash and one big-integer addition,
independent of the set's size. Equal multisets give equal digests whatever the insertion order.

The 1024 lanes are packed into one Python integer with 16 spare bits between lanes, so one
integer addition adds all lanes at once; a mask drops the carries.
"""

from __future__ import annotations

import hashlib

LANES = 1024
_LANE_BYTES = 2
_SLOT_BYTES = 4
_MASK = int.from_bytes(b"\xff\xff\x00\x00" * LANES, "little")
_MODULUS = int.from_bytes(b"\x00\x00\x01\x00" * LANES, "little")  # 2**16 in every lane


def _expand(element: bytes) -> int:
    raw = hashlib.shake_128(b"bftchat-lthash\0" + element).digest(LANES * _LANE_BYTES)
    spread = bytearray(LANES * _SLOT_BYTES)
    spread[0::4] = raw[0::2]
    spread[1::4] = raw[1::2]
    return int.from_bytes(spread, "little")


class LtHash:
    """A mutable multiset digest: ``add``/``remove`` elements, read ``digest()``."""

    __slots__ = ("_acc",)

    def __init__(self, acc: int = 0) -> None:
        self._acc = acc

    def add(self, element: bytes) -> None:
        self._acc = (self._acc + _expand(element)) & _MASK

    def remove(self, element: bytes) -> None:
        self._acc = (self._acc + _MODULUS - _expand(element)) & _MASK

    def copy(self) -> LtHash:
        return LtHash(self._acc)

    def digest(self) -> bytes:
        """32-byte summary of the 2048-byte lane vector."""
        return hashlib.sha256(self.state()).digest()

    def state(self) -> bytes:
        """The full lane vector (2048 bytes), for tests and debugging."""
        packed = self._acc.to_bytes(LANES * _SLOT_BYTES, "little")
        out = bytearray(LANES * _LANE_BYTES)
        out[0::2] = packed[0::4]
        out[1::2] = packed[1::4]
        return bytes(out)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LtHash) and self._acc == other._acc

    def __hash__(self) -> int:
        return hash(self._acc)
