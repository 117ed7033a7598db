"""Rate limits for answers much larger than their questions (anti-amplification).

A ~100-byte STATUS or FETCH can ask for a NEW-VIEW of megabytes, a run of commit proofs or
snapshot chunks. Each peer gets a byte budget that refills at ``answer_bytes_per_s`` per second
of the core's ``now`` up to ``answer_burst_bytes``; an answer is sent while the budget is
positive and its size is then taken off (so one answer may overdraw by at most one message),
otherwise it is dropped and counted. The same answer to the same question (e.g. the NEW-VIEW for
view v to a peer that keeps saying it is behind) is repeated at most once per
``answer_repeat_interval``. Everything is a function of the inputs: deterministic.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

from bft.core.config import Params


@dataclass
class _Peer:
    tokens: float
    at: float | None = None
    recent: dict[str, tuple[Hashable, float]] = field(default_factory=dict)  # what -> (key, sent at)


class AnswerLimiter:
    """Per-peer byte budget and repeat suppression. Table size: one entry per replica id, and per
    peer one entry per kind of answer (a fixed, small set of names)."""

    def __init__(self, n: int, p: Params) -> None:
        self._rate = float(p.answer_bytes_per_s)
        self._burst = float(p.answer_burst_bytes)
        self._repeat = p.answer_repeat_interval
        self._peers = [_Peer(self._burst) for _ in range(n)]
        self.dropped = 0  # answers refused for budget
        self.repeats = 0  # answers suppressed as repeats

    def allow(self, peer: int, size: int, now: float, what: str = "", key: Hashable = None) -> bool:
        """May we send ``size`` bytes to ``peer`` now? If ``what`` is given, the same ``key`` for
        it within the repeat interval is refused. A True answer is charged (and remembered)."""
        st = self._peers[peer]
        if what:
            last = st.recent.get(what)
            if last is not None and last[0] == key and now - last[1] < self._repeat:
                self.repeats += 1
                return False
        if st.at is not None and now > st.at:
            st.tokens = min(self._burst, st.tokens + (now - st.at) * self._rate)
        st.at = now if st.at is None else max(st.at, now)
        if st.tokens <= 0:
            self.dropped += 1
            return False
        st.tokens -= size
        if what:
            st.recent[what] = (key, now)
        return True

    def forget(self, peer: int, what: str) -> None:
        """The peer moved on: its next identical question deserves an answer again."""
        self._peers[peer].recent.pop(what, None)
