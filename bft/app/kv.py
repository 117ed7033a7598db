"""A tiny deterministic key-value application, so the core and its simulator run without chat.

Operations are plain bytes, split on single spaces (keys contain no space; values may):

* ``set k v`` -> ``OK``
* ``get k``   -> the value, or ``NOTFOUND``
* ``add k n`` -> the new value; adds the signed decimal ``n`` to the key's integer value (0 if
  absent); ``ERR not an integer`` if either is not one
* anything else -> ``ERR ...``

Results are deterministic bytes. The digest is an LtHash over one element per key, so it costs
O(1) per write; the snapshot (and each checkpoint page) lists the entries sorted by key with length
prefixes.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from bft.app.base import ExecContext, ExecResult, Request
from bft.app.paging import PageIndex, page_of
from bft.lthash import LtHash

MAX_KEY = 256
MAX_VALUE = 64 * 1024
MAX_INT_DIGITS = 64  # bounds the work of int() on adversarial input

_U32 = struct.Struct(">I")
_SNAPSHOT_MAGIC = b"KV1\0"


def _element(key: bytes, value: bytes) -> bytes:
    return b"kv\0" + _U32.pack(len(key)) + key + value


def _parse_int(data: bytes) -> int | None:
    if not 0 < len(data) <= MAX_INT_DIGITS:
        return None
    body = data[1:] if data[:1] in (b"-", b"+") else data
    if not body or not body.isdigit():
        return None
    return int(data)


class KVApp:
    """A dict of bytes to bytes with an incremental LtHash digest."""

    # "set", a space, the longest key, a space, the largest value: no longer operation executes.
    max_op_bytes = 4 + MAX_KEY + 1 + MAX_VALUE

    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}
        self._hash = LtHash()
        self._pages: PageIndex[bytes, None] = PageIndex()

    @classmethod
    def preloaded(cls, total_bytes: int) -> KVApp:
        """A state of about ``total_bytes`` of deterministic filler (keys ``fill00000``, ...), so
        the simulator's snapshots span many chunks without ordering megabytes of requests."""
        app = cls()
        for i in range(-(-total_bytes // MAX_VALUE)):
            key = b"fill%05d" % i
            size = min(MAX_VALUE, total_bytes - i * MAX_VALUE)
            app._put(key, (key * (size // len(key) + 1))[:size])
        return app

    # ---- Application protocol ---------------------------------------------------------------

    def execute(self, request: Request, ctx: ExecContext) -> ExecResult:
        return ExecResult(self._apply(request.op, write=True))

    def query(self, request: Request) -> bytes:
        return self._apply(request.op, write=False)

    def digest(self) -> bytes:
        return self._hash.digest()

    def snapshot(self) -> bytes:
        return self._encode(sorted(self._data))

    def _encode(self, keys: list[bytes]) -> bytes:
        parts = [_SNAPSHOT_MAGIC, _U32.pack(len(keys))]
        for key in keys:
            value = self._data[key]
            parts += [_U32.pack(len(key)), key, _U32.pack(len(value)), value]
        return b"".join(parts)

    def set_page_count(self, count: int) -> None:
        self._pages.reset(count, ((key, page_of(key, count), None) for key in self._data))

    def take_dirty_pages(self) -> set[int]:
        return self._pages.take_dirty()

    def page(self, index: int) -> bytes:
        keys = sorted(self._pages.members(index))
        return self._encode(keys) if keys else b""

    def restore_pages(self, pages: Sequence[bytes]) -> None:
        entries: dict[bytes, bytes] = {}
        for index, data in enumerate(pages):
            if data:
                page = _decode(data)
                if any(page_of(key, len(pages)) != index for key in page):
                    raise ValueError(f"KV page {index} holds another page's key")
                entries.update(page)
        self._install(entries)
        self._pages.reset(len(pages), ((key, page_of(key, len(pages)), None) for key in entries))
        self._pages.clean()

    def restore(self, data: bytes) -> None:
        """Replace the state; ValueError (state untouched) if ``data`` is not a valid snapshot."""
        self._install(_decode(data))
        self.set_page_count(self._pages.count)

    def _install(self, entries: dict[bytes, bytes]) -> None:
        lthash = LtHash()
        for key, value in entries.items():
            lthash.add(_element(key, value))
        self._data, self._hash = entries, lthash

    # ---- operations ------------------------------------------------------------------------

    def _apply(self, op: bytes, *, write: bool) -> bytes:
        parts = op.split(b" ", 2)
        verb = parts[0]
        if verb == b"get" and len(parts) == 2:
            return self._data.get(parts[1], b"NOTFOUND")
        if verb not in (b"set", b"add") or len(parts) != 3:
            return b"ERR bad op"
        if not write:
            return b"ERR read-only"
        key, arg = parts[1], parts[2]
        if not key or len(key) > MAX_KEY:
            return b"ERR bad key"
        if verb == b"set":
            if len(arg) > MAX_VALUE:
                return b"ERR value too large"
            self._put(key, arg)
            return b"OK"
        delta = _parse_int(arg)
        current = _parse_int(self._data.get(key, b"0"))
        if delta is None or current is None:
            return b"ERR not an integer"
        new = str(current + delta).encode()
        if len(new) > MAX_INT_DIGITS:
            return b"ERR overflow"
        self._put(key, new)
        return new

    def _put(self, key: bytes, value: bytes) -> None:
        old = self._data.get(key)
        if old is not None:
            self._hash.remove(_element(key, old))
        self._data[key] = value
        self._hash.add(_element(key, value))
        self._pages.add(key, page_of(key, self._pages.count), None)


def _decode(data: bytes) -> dict[bytes, bytes]:
    if data[:4] != _SNAPSHOT_MAGIC:
        raise ValueError("not a KV snapshot")
    pos = 4

    def take(n: int) -> bytes:
        nonlocal pos
        if n < 0 or pos + n > len(data):
            raise ValueError("truncated KV snapshot")
        chunk = data[pos : pos + n]
        pos += n
        return chunk

    (count,) = _U32.unpack(take(4))
    entries: dict[bytes, bytes] = {}
    previous: bytes | None = None
    for _ in range(count):
        (klen,) = _U32.unpack(take(4))
        key = take(klen)
        (vlen,) = _U32.unpack(take(4))
        value = take(vlen)
        if previous is not None and key <= previous:
            raise ValueError("KV snapshot keys not strictly sorted")
        if not key or len(key) > MAX_KEY or b" " in key or len(value) > MAX_VALUE:
            raise ValueError("invalid KV snapshot entry")
        previous = key
        entries[key] = value
    if pos != len(data):
        raise ValueError("trailing bytes in KV snapshot")
    return entries
