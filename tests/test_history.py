"""The CLI's local history store: 0600, deduplicated, ordered conversations."""

from __future__ import annotations

import stat
from pathlib import Path

from client.history import History, HistoryEntry, history_path_for


def test_history_roundtrip_and_permissions(tmp_path: Path) -> None:
    path = history_path_for(tmp_path / "alice.key")
    h = History(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert h.add("alice", HistoryEntry("out", "bob", "hi bob", None, 5, 100))
    assert h.add("alice", HistoryEntry("in", "bob", "hi alice", 7, 6, 200))
    assert not h.add("alice", HistoryEntry("in", "bob", "hi alice", 7, 6, 200))  # seen twice: stored once
    h.add("alice", HistoryEntry("in", "carol", "other", 8, 7, 300))
    conv = h.conversation("alice", "bob")
    assert [e.text for e in conv] == ["hi bob", "hi alice"]
    assert [e.text for e in h.conversation("alice", "bob", limit=1)] == ["hi alice"]
    h.close()
    again = History(path)
    assert len(again.conversation("alice", "bob")) == 2
    again.close()
