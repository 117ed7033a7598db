"""LtHash: a homomorphic multiset hash (Bellare–Micciancio; Facebook's LtHash16 parameters).

The digest of a set is the lane-wise sum (mod 2**16, 1024 lanes) of an extendable-output hash of
each element, so adding or removing one element costs one hash and one big-integer addition,
independent of the set's size. Equal multisets give equal digests whatever the insertion order.

The 1024 lanes live in two Python integers (even and odd lanes) with 16 spare bits above each
lane, so an integer addition adds 512 lanes at once; a mask drops the carries.
"""

from __future__ import annotations

import hashlib

LANES = 1024
_BYTES = LANES * 2
# 16-bit lanes at even positions (0, 2, 4, ...) of a 2048-byte little-endian integer; the odd
# lanes are shifted down onto the same positions. Each half keeps a 16-bit gap above every lane,
# so one integer addition adds 512 lanes at once and a mask drops the carries.
_EVEN = int.from_bytes(b"\xff\xff\x00\x00" * (LANES // 2), "little")
_MODULUS = int.from_bytes(b"\x00\x00\x01\x00" * (LANES // 2), "little")  # 2**16 in every lane


def _expand(element: bytes) -> tuple[int, int]:
    x = int.from_bytes(hashlib.shake_128(b"bftchat-lthash\0" + element).digest(_BYTES), "little")
    return x & _EVEN, (x >> 16) & _EVEN


class LtHash:
    """A mutable multiset digest: ``add``/``remove`` elements, read ``digest()``."""

    __slots__ = ("_even", "_odd")

    def __init__(self, even: int = 0, odd: int = 0) -> None:
        self._even = even
        self._odd = odd

    def add(self, element: bytes) -> None:
        e, o = _expand(element)
        self._even = (self._even + e) & _EVEN
        self._odd = (self._odd + o) & _EVEN

    def add_many(self, elements: list[bytes]) -> None:
        """Add several elements with one carry mask (sums of < 2**16 elements cannot overflow)."""
        for i in range(0, len(elements), 60000):
            se = so = 0
            for element in elements[i : i + 60000]:
                e, o = _expand(element)
                se += e
                so += o
            self._even = (self._even + se) & _EVEN
            self._odd = (self._odd + so) & _EVEN

    def remove(self, element: bytes) -> None:
        e, o = _expand(element)
        self._even = (self._even + _MODULUS - e) & _EVEN
        self._odd = (self._odd + _MODULUS - o) & _EVEN

    def copy(self) -> LtHash:
        return LtHash(self._even, self._odd)

    def digest(self) -> bytes:
        """32-byte summary of the 2048-byte lane vector."""
        return hashlib.sha256(self.state()).digest()

    def state(self) -> bytes:
        """The full lane vector (2048 bytes, lane i little-endian at bytes 2i..2i+1)."""
        return (self._even | (self._odd << 16)).to_bytes(_BYTES, "little")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LtHash) and (self._even, self._odd) == (other._even, other._odd)

    def __hash__(self) -> int:
        return hash((self._even, self._odd))
