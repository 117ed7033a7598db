"""Account-name rules and wildcard patterns, shared by the chat app and its clients.

Names are ASCII only, so that case folding, sorting and matching are byte-simple and identical on
every replica and every Python build (no Unicode normalisation or locale question can arise).

* allowed characters: ``a-z``, ``0-9``, ``_``, ``-``; length 1..32; must start with a letter;
* input is case-insensitive: ASCII upper case is folded to lower case, and the lower-case form is
  the canonical name that is stored, returned, sorted (byte order) and compared.

Patterns use the same characters plus ``*`` (any run, possibly empty) and ``?`` (exactly one
character); nothing else is special. A pattern is at most 64 characters; the empty pattern means
``*``.
"""

from __future__ import annotations

MAX_NAME_LEN = 32
MAX_PATTERN_LEN = 64

_FIRST = frozenset("abcdefghijklmnopqrstuvwxyz")
_CHARS = _FIRST | frozenset("0123456789_-")
_PATTERN_CHARS = _CHARS | frozenset("*?")


def normalize_name(raw: str) -> str | None:
    """The canonical form of ``raw``, or None if it is not a valid account name."""
    if not 0 < len(raw) <= MAX_NAME_LEN or not raw.isascii():
        return None
    name = raw.lower()
    if name[0] not in _FIRST or not _CHARS.issuperset(name):
        return None
    return name


def normalize_pattern(raw: str) -> str | None:
    """The canonical form of a wildcard pattern, or None if it is invalid."""
    if not raw:
        return "*"
    if len(raw) > MAX_PATTERN_LEN or not raw.isascii():
        return None
    pattern = raw.lower()
    if not _PATTERN_CHARS.issuperset(pattern):
        return None
    return pattern


def literal_prefix(pattern: str) -> str:
    """The part before the first wildcard: every match starts with it (used to seek a sorted list)."""
    for i, ch in enumerate(pattern):
        if ch in "*?":
            return pattern[:i]
    return pattern


def matches(pattern: str, name: str) -> bool:
    """Glob match with ``*`` and ``?`` only: greedy with one backtrack point, O(len(pattern) * len(name))."""
    p = n = 0
    star = -1
    star_n = 0
    while n < len(name):
        if p < len(pattern) and (pattern[p] == "?" or pattern[p] == name[n]):
            p += 1
            n += 1
        elif p < len(pattern) and pattern[p] == "*":
            star, star_n = p, n
            p += 1
        elif star >= 0:
            p = star + 1
            star_n += 1
            n = star_n
        else:
            return False
    while p < len(pattern) and pattern[p] == "*":
        p += 1
    return p == len(pattern)
