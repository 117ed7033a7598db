"""The CLI's local message history.

Replicas forget a message once its recipient acknowledges it, so each user keeps their own sent
and received messages in a SQLite file beside their key file (mode 0600). It is the only place a
conversation survives; nothing in it is trusted by the replicas.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    account     TEXT NOT NULL,     -- whose history this is (our account name)
    direction   TEXT NOT NULL CHECK (direction IN ('in', 'out')),
    peer        TEXT NOT NULL,     -- the other party
    text        TEXT NOT NULL,
    message_id  INTEGER,           -- the cluster's message id (received) or NULL until known
    seq         INTEGER,           -- commit sequence number
    timestamp_us INTEGER NOT NULL, -- the batch's ordered time
    UNIQUE (account, direction, message_id)
);
CREATE INDEX IF NOT EXISTS by_peer ON messages (account, peer, timestamp_us);
"""


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    direction: str  # "in" or "out"
    peer: str
    text: str
    message_id: int | None
    seq: int | None
    timestamp_us: int


def history_path_for(key_file: Path) -> Path:
    """``alice.key`` -> ``alice.key.history.sqlite`` in the same directory."""
    return key_file.with_name(key_file.name + ".history.sqlite")


class History:
    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
        else:
            os.chmod(path, 0o600)
        self._db = sqlite3.connect(path)
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def add(self, account: str, entry: HistoryEntry) -> bool:
        """Store a message; False if it was already there (a received message seen twice)."""
        cur = self._db.execute(
            "INSERT OR IGNORE INTO messages VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                account,
                entry.direction,
                entry.peer,
                entry.text,
                entry.message_id,
                entry.seq,
                entry.timestamp_us,
            ),
        )
        self._db.commit()
        return cur.rowcount == 1

    def conversation(self, account: str, peer: str, limit: int = 50) -> list[HistoryEntry]:
        """The last ``limit`` messages between ``account`` and ``peer``, oldest first."""
        rows = self._db.execute(
            "SELECT direction, peer, text, message_id, seq, timestamp_us FROM messages "
            "WHERE account = ? AND peer = ? ORDER BY timestamp_us DESC, rowid DESC LIMIT ?",
            (account, peer, limit),
        ).fetchall()
        return [HistoryEntry(*r) for r in reversed(rows)]
