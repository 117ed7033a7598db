"""The CLI's local store: 0600, deduplicated by message identity (not by cluster message id),
ordered conversations, pinned keys, the outbox, and the in-place migration of a version-1 file."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

from client.history import PENDING, QUEUED, History, HistoryEntry, StoredReceipt, history_path_for

CLUSTER = b"c" * 32


def entry(direction: str, peer: str, text: str, msg_id: int, ts: int, ref: bytes) -> HistoryEntry:
    return HistoryEntry(direction, peer, text, msg_id, msg_id, ts, ref, CLUSTER)


def test_history_roundtrip_and_permissions(tmp_path: Path) -> None:
    path = history_path_for(tmp_path / "alice.key")
    h = History(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert h.add("alice", entry("out", "bob", "hi bob", 5, 100, b"r1"))
    assert h.add("alice", entry("in", "bob", "hi alice", 7, 200, b"r2"))
    assert not h.add("alice", entry("in", "bob", "hi alice", 7, 200, b"r2"))  # seen twice: stored once
    h.add("alice", entry("in", "carol", "other", 8, 300, b"r3"))
    conv = h.conversation("alice", "bob")
    assert [e.text for e in conv] == ["hi bob", "hi alice"]
    assert [e.text for e in h.conversation("alice", "bob", limit=1)] == ["hi alice"]
    h.close()
    again = History(path)
    assert len(again.conversation("alice", "bob")) == 2
    again.close()


def test_same_message_id_from_a_reset_cluster_is_kept(tmp_path: Path) -> None:
    """Issue 12 item 13: ids restart after a cluster reset (or on another cluster); two different
    messages with one id are both kept, because a message is identified by its signed bytes."""
    h = History(tmp_path / "h.sqlite")
    assert h.add("bob", entry("in", "alice", "before the reset", 1, 100, b"sig-a"))
    assert h.add("bob", entry("in", "alice", "after the reset", 1, 200, b"sig-b"))
    assert [e.text for e in h.conversation("bob", "alice")] == ["before the reset", "after the reset"]


def test_version_1_file_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE messages (
            account TEXT NOT NULL, direction TEXT NOT NULL CHECK (direction IN ('in', 'out')),
            peer TEXT NOT NULL, text TEXT NOT NULL, message_id INTEGER, seq INTEGER,
            timestamp_us INTEGER NOT NULL, UNIQUE (account, direction, message_id));
        CREATE INDEX by_peer ON messages (account, peer, timestamp_us);
        INSERT INTO messages VALUES ('bob', 'in', 'alice', 'old one', 1, 3, 100);
        INSERT INTO messages VALUES ('bob', 'out', 'alice', 'old reply', 2, 4, 150);
        """
    )
    db.commit()
    db.close()
    h = History(path)
    assert [e.text for e in h.conversation("bob", "alice")] == ["old one", "old reply"]
    assert h.add("bob", entry("in", "alice", "same id, new cluster", 1, 200, b"sig"))  # v1 would drop it
    assert len(h.conversation("bob", "alice")) == 3
    h.close()
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == 3
    assert [r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")] == [
        "messages",
        "peers",
        "outbox",
        "sqlite_sequence",
        "receipts",
    ]
    raw.close()
    History(path).close()  # opening again changes nothing


def test_pins_and_outbox(tmp_path: Path) -> None:
    h = History(tmp_path / "h.sqlite")
    assert h.pinned(CLUSTER, "carol") is None
    h.pin(CLUSTER, "carol", b"k1", b"b1", 10)
    pin = h.pinned(CLUSTER, "carol")
    assert pin is not None and (pin.signing_key, pin.box_key, pin.pinned_us) == (b"k1", b"b1", 10)
    assert h.pinned(b"d" * 32, "carol") is None  # per cluster
    first = h.queue("alice", "carol", "  spaces kept  ", CLUSTER, 100, owner=1, lease_us=1000)
    second = h.queue("alice", "carol", "second", CLUSTER, 101, owner=1, lease_us=1000)
    assert [r.id for r in h.outbox("alice", CLUSTER)] == [first, second]
    assert not h.claim(first, 2, now_us=500, lease_us=2000)  # process 1 is sending it
    assert h.claim(first, 1, now_us=500, lease_us=2000)  # its own: renewed
    assert h.claim(second, 2, now_us=1500, lease_us=3000)  # process 1's claim ran out (it crashed)
    h.release(2)
    assert h.claim(second, 3, now_us=1600, lease_us=3000)  # released: free at once
    assert h.signed(first, b"raw1", 7, 1000, b"k1", b"b1", None)
    assert not h.signed(first, b"raw-other", 8, 1001, b"k1", b"b1", None)  # another process: refused
    assert h.signed(first, b"raw2", 7, 1002, b"k1", b"b1", b"raw1")  # re-signed after proven stale
    row = h.outbox_row(first)
    assert (
        row is not None and row.state == PENDING and row.request == b"raw2" and row.text == "  spaces kept  "
    )
    conv = h.conversation("alice", "carol")
    assert [(e.text, e.state) for e in conv] == [("  spaces kept  ", PENDING), ("second", QUEUED)]
    h.delivered(first, "alice", entry("out", "carol", row.text, 9, 100, b"sha"))
    assert [r.id for r in h.outbox("alice")] == [second]
    assert [(e.text, e.state) for e in h.conversation("alice", "carol")] == [
        ("  spaces kept  ", ""),
        ("second", QUEUED),
    ]


def test_version_2_file_gets_the_receipts_table_and_keeps_everything(tmp_path: Path) -> None:
    """Issue 14: version 3 adds ``receipts``; a version-2 file keeps its messages (with their
    identities) and outbox as they are."""
    path = tmp_path / "v2.sqlite"
    h = History(path)
    assert h.add("bob", entry("in", "alice", "kept", 1, 100, b"ref-1"))
    h.close()
    raw = sqlite3.connect(path)  # what a version-2 file is: this schema without the receipts table
    raw.executescript("DROP TABLE receipts; PRAGMA user_version = 2;")
    raw.close()
    h = History(path)
    [kept] = h.conversation("bob", "alice")
    assert (kept.text, kept.ref, kept.cluster_id) == ("kept", b"ref-1", CLUSTER)
    assert not h.add("bob", entry("in", "alice", "kept", 1, 100, b"ref-1"))  # still unique on ref
    stored = StoredReceipt("send", "alice", 9, CLUSTER, 12, 100, b"receipt bytes")
    h.add_receipt("bob", stored, b"ref-2")
    assert h.receipt("bob", "send", CLUSTER, message_id=9) == stored
    assert h.receipt("bob", "send", CLUSTER, message_id=8) is None
    assert h.receipt("bob", "send", b"d" * 32, message_id=9) is None  # ids are per cluster
    h.close()
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == 3
    raw.close()
