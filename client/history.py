"""The CLI's local store: message history, pinned peer keys and the outbox, in one SQLite file.

Replicas forget a message once its recipient acknowledges it, so each user keeps their own sent
and received messages in a SQLite file under the XDG data directory, one per key (mode 0600;
``history_path``). It is the only place a
conversation survives; nothing in it is trusted by the replicas. Three tables:

* ``messages``: every message sent and received. A message is identified by the SHA-256 of its
  signed request bytes (``ref``), which name the cluster id, the sender's key, the session and
  timestamp and carry a random-nonce ciphertext; so two different messages never collide, even when
  a reset cluster or another cluster hands out the same message ids again (ids are kept only for
  display). A received message must be stored here before it is acknowledged: acknowledged
  messages are gone from the replicas for good.
* ``peers``: the signing and box key first seen behind each name, per cluster (trust on first use,
  like SSH's known_hosts). A name whose key differs from its pin has changed hands (or its owner
  made a new key): sends to it are refused until the user accepts the new key, and messages from
  it are flagged.
* ``outbox``: messages not known to be delivered. A row is stored before anything is sent; once
  signed, it holds the exact signed request, which is resent as is (never re-signed, so it executes
  at most once) until its fate is known. Delivered rows move to ``messages``.
* ``receipts``: the receipt (``client.receipts``) of every send, register and delete this account
  made: the f+1 replica-signed replies that prove the cluster committed it, checkable offline.

Schema version 3 (``PRAGMA user_version``), migrated in place when opened: a version-1 file
(messages unique on account, direction and cluster message id) gets the version-2 messages table;
a version-2 file gets the ``receipts`` table (version 3), nothing else changes.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 3

MESSAGES = """
CREATE TABLE IF NOT EXISTS messages (
    account     TEXT NOT NULL,     -- whose history this is (our account name)
    direction   TEXT NOT NULL CHECK (direction IN ('in', 'out')),
    peer        TEXT NOT NULL,     -- the other party
    text        TEXT NOT NULL,
    message_id  INTEGER,           -- the cluster's message id (display only: not unique across clusters)
    seq         INTEGER,           -- commit sequence number
    timestamp_us INTEGER NOT NULL, -- the batch's ordered time
    cluster_id  BLOB,              -- the cluster it went through (NULL: migrated from version 1)
    ref         BLOB,              -- SHA-256 of the signed request bytes (NULL: migrated from version 1)
    peer_key    BLOB,              -- the peer's signing key (sender of 'in', recipient of 'out')
    peer_box    BLOB,              -- the peer's box key
    key_changed INTEGER NOT NULL DEFAULT 0,  -- received from a key other than the pinned one
    UNIQUE (account, direction, ref)
);
CREATE INDEX IF NOT EXISTS by_peer ON messages (account, peer, timestamp_us);
"""

REST = """
CREATE TABLE IF NOT EXISTS peers (
    cluster_id  BLOB NOT NULL,
    name        TEXT NOT NULL,
    signing_key BLOB NOT NULL,
    box_key     BLOB NOT NULL,
    pinned_us   INTEGER NOT NULL,  -- when this key was pinned (first use, or accepted)
    PRIMARY KEY (cluster_id, name)
);
CREATE TABLE IF NOT EXISTS outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,  -- order of sending
    account     TEXT NOT NULL,
    peer        TEXT NOT NULL,
    text        TEXT NOT NULL,
    cluster_id  BLOB NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('queued', 'pending', 'unknown', 'failed')),
    request     BLOB,              -- the exact signed request (NULL while queued: never signed)
    session     INTEGER,
    timestamp   INTEGER,
    peer_key    BLOB,
    peer_box    BLOB,
    created_us  INTEGER NOT NULL,
    detail      TEXT NOT NULL DEFAULT '',
    owner       INTEGER,           -- the process delivering it (random id), NULL: nobody
    lease_us    INTEGER NOT NULL DEFAULT 0  -- the owner's claim ends then (a crashed owner's too)
);
CREATE TABLE IF NOT EXISTS receipts (
    account     TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('send', 'register', 'delete')),
    name        TEXT NOT NULL,     -- the recipient of a send, or the account registered or deleted
    message_id  INTEGER,           -- the cluster's message id of a send (NULL otherwise)
    cluster_id  BLOB NOT NULL,
    ref         BLOB,              -- a send's message identity (as in ``messages``)
    seq         INTEGER NOT NULL,
    created_us  INTEGER NOT NULL,
    receipt     BLOB NOT NULL      -- a serialised Receipt (proto/bftchat/v1/protocol.proto)
);
CREATE INDEX IF NOT EXISTS receipt_by_id ON receipts (account, kind, message_id);
"""

# Outbox states. queued: stored, not signed yet (nothing left this machine). pending: signed and
# maybe transmitted, fate not known; resent as is. unknown: given up while pending; it may or may
# not have been delivered. failed: the replicas agreed to refuse it; it was not delivered.
QUEUED, PENDING, UNKNOWN, FAILED = "queued", "pending", "unknown", "failed"
UNSETTLED = (QUEUED, PENDING)


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    direction: str  # "in" or "out"
    peer: str
    text: str
    message_id: int | None
    seq: int | None
    timestamp_us: int
    ref: bytes | None = None  # SHA-256 of the signed request bytes: the message's identity
    cluster_id: bytes | None = None
    peer_key: bytes | None = None
    peer_box: bytes | None = None
    key_changed: bool = False
    state: str = ""  # "" for a delivered message; an outbox state otherwise


@dataclass(frozen=True, slots=True)
class Pin:
    signing_key: bytes
    box_key: bytes
    pinned_us: int


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    account: str
    peer: str
    text: str
    cluster_id: bytes
    state: str
    request: bytes | None
    session: int | None
    timestamp: int | None
    peer_key: bytes | None
    peer_box: bytes | None
    created_us: int
    detail: str


_OUTBOX_COLUMNS = (
    "id, account, peer, text, cluster_id, state, request, session, timestamp, peer_key, peer_box, "
    "created_us, detail"
)


DATA_DIR_ENV = "BFTCHAT_DATA_DIR"


def history_path_for(key_file: Path) -> Path:
    """Where bftchat before 0.2 kept the store: ``alice.key`` -> ``alice.key.history.sqlite``
    beside the key. Still used when it exists (``history_path``)."""
    return key_file.with_name(key_file.name + ".history.sqlite")


def data_dir(explicit: str | Path | None = None) -> Path:
    """The directory of local stores: ``explicit`` (``--data-dir``), else ``$BFTCHAT_DATA_DIR``,
    else ``$XDG_DATA_HOME/bftchat``, else ``~/.local/share/bftchat`` (the XDG base directory spec:
    user data, unlike ``~/.config``, which holds what a user writes by hand)."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "bftchat"


def history_path(key_file: Path, fingerprint: str, explicit_dir: str | Path | None = None) -> Path:
    """The store of the key with this fingerprint: ``<data dir>/<fingerprint>.history.sqlite``, named
    by the key (not the key file's path, so a moved or copied key keeps its history). A store an
    earlier bftchat left beside the key file keeps being used, unless a data directory is given
    explicitly (``--data-dir`` or ``$BFTCHAT_DATA_DIR``): it is not moved, because another bftchat
    process of the same key may have it open (docs/CLI.md says how to move it by hand)."""
    beside = history_path_for(key_file)
    if not explicit_dir and not os.environ.get(DATA_DIR_ENV) and beside.exists():
        return beside
    return data_dir(explicit_dir) / f"{fingerprint}.history.sqlite"


@dataclass(frozen=True, slots=True)
class StoredReceipt:
    kind: str  # "send", "register" or "delete"
    name: str
    message_id: int | None
    cluster_id: bytes
    seq: int
    created_us: int
    receipt: bytes


class History:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
        else:
            os.chmod(path, 0o600)
        # Autocommit: each write below is its own transaction, or an explicit one (``_tx``).
        self._db = sqlite3.connect(path, isolation_level=None, timeout=10.0)
        self._migrate()

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _migrate(self) -> None:
        with self._tx() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(
                    f"{self.path} has schema version {version}, newer than this bftchat"
                )
            if version < SCHEMA_VERSION:
                old = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'messages'")
                # version 1: messages unique on (account, direction, message_id)
                if version < 2 and old.fetchone() is not None:
                    db.execute("ALTER TABLE messages RENAME TO messages_v1")
                    db.execute("DROP INDEX IF EXISTS by_peer")
                    self._script(db, MESSAGES)
                    db.execute(
                        "INSERT INTO messages (account, direction, peer, text, message_id, seq, "
                        "timestamp_us) SELECT account, direction, peer, text, message_id, seq, timestamp_us "
                        "FROM messages_v1 ORDER BY rowid"
                    )
                    db.execute("DROP TABLE messages_v1")
                self._script(db, MESSAGES + REST)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @staticmethod
    def _script(db: sqlite3.Connection, script: str) -> None:
        """Run DDL statements inside the current transaction (``executescript`` would commit)."""
        for stmt in script.split(";"):
            if stmt.strip():
                db.execute(stmt)

    # ---- messages

    def add(self, account: str, entry: HistoryEntry) -> bool:
        """Store a message; False if it was already there (the same signed message seen twice)."""
        cur = self._db.execute(
            "INSERT OR IGNORE INTO messages (account, direction, peer, text, message_id, seq, timestamp_us, "
            "cluster_id, ref, peer_key, peer_box, key_changed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                account,
                entry.direction,
                entry.peer,
                entry.text,
                entry.message_id,
                entry.seq,
                entry.timestamp_us,
                entry.cluster_id,
                entry.ref,
                entry.peer_key,
                entry.peer_box,
                int(entry.key_changed),
            ),
        )
        return cur.rowcount == 1

    def conversation(self, account: str, peer: str, limit: int = 50) -> list[HistoryEntry]:
        """The last ``limit`` messages between ``account`` and ``peer``, oldest first, including our
        outbox rows (queued, pending, unknown, failed) at the time they were written."""
        rows = self._db.execute(
            "SELECT * FROM ("
            " SELECT direction, peer, text, message_id, seq, timestamp_us, ref, cluster_id, peer_key,"
            "  peer_box, key_changed, '' AS state, 0 AS src, rowid AS n FROM messages"
            "  WHERE account = ? AND peer = ?"
            " UNION ALL"
            " SELECT 'out', peer, text, NULL, NULL, created_us, NULL, cluster_id, peer_key, peer_box, 0,"
            "  state, 1, id FROM outbox WHERE account = ? AND peer = ?"
            ") ORDER BY timestamp_us DESC, src DESC, n DESC LIMIT ?",
            (account, peer, account, peer, limit),
        ).fetchall()
        return [
            HistoryEntry(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], bool(r[10]), r[11])
            for r in reversed(rows)
        ]

    # ---- receipts

    def add_receipt(self, account: str, r: StoredReceipt, ref: bytes | None = None) -> None:
        self._db.execute(
            "INSERT INTO receipts (account, kind, name, message_id, cluster_id, ref, seq, created_us, "
            "receipt) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (account, r.kind, r.name, r.message_id, r.cluster_id, ref, r.seq, r.created_us, r.receipt),
        )

    def receipt(
        self,
        account: str,
        kind: str,
        cluster_id: bytes,
        *,
        message_id: int | None = None,
        name: str | None = None,
    ) -> StoredReceipt | None:
        """The latest receipt of ``account`` on that cluster for a send (by message id) or a
        register/delete (by name, or the latest of that kind)."""
        sql = (
            "SELECT kind, name, message_id, cluster_id, seq, created_us, receipt FROM receipts "
            "WHERE account = ? AND kind = ? AND cluster_id = ?"
        )
        args: list[object] = [account, kind, cluster_id]
        if message_id is not None:
            sql += " AND message_id = ?"
            args.append(message_id)
        if name is not None:
            sql += " AND name = ?"
            args.append(name)
        row = self._db.execute(sql + " ORDER BY rowid DESC LIMIT 1", args).fetchone()
        return StoredReceipt(*row) if row is not None else None

    # ---- pinned keys

    def pinned(self, cluster_id: bytes, name: str) -> Pin | None:
        row = self._db.execute(
            "SELECT signing_key, box_key, pinned_us FROM peers WHERE cluster_id = ? AND name = ?",
            (cluster_id, name),
        ).fetchone()
        return Pin(*row) if row is not None else None

    def pin(self, cluster_id: bytes, name: str, signing_key: bytes, box_key: bytes, now_us: int) -> None:
        """Trust this key for ``name`` from now on (first use, or the user accepted a new key)."""
        self._db.execute(
            "INSERT OR REPLACE INTO peers VALUES (?, ?, ?, ?, ?)",
            (cluster_id, name, signing_key, box_key, now_us),
        )

    # ---- outbox

    def queue(
        self, account: str, peer: str, text: str, cluster_id: bytes, now_us: int, owner: int, lease_us: int
    ) -> int:
        """Keep a message to send (durable before anything is signed or sent), claimed by ``owner``
        until ``lease_us``; its outbox id."""
        cur = self._db.execute(
            "INSERT INTO outbox (account, peer, text, cluster_id, state, created_us, owner, lease_us) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (account, peer, text, cluster_id, QUEUED, now_us, owner, lease_us),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def outbox(
        self, account: str, cluster_id: bytes | None = None, states: tuple[str, ...] = UNSETTLED
    ) -> list[OutboxRow]:
        """Outbox rows of ``account`` in sending order (of one cluster, if given) in ``states``."""
        marks = ", ".join("?" for _ in states)
        sql = f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE account = ? AND state IN ({marks})"
        args: list[object] = [account, *states]
        if cluster_id is not None:
            sql += " AND cluster_id = ?"
            args.append(cluster_id)
        return [OutboxRow(*r) for r in self._db.execute(sql + " ORDER BY id", args).fetchall()]

    def claim(self, row_id: int, owner: int, now_us: int, lease_us: int) -> bool:
        """Take a waiting row for delivery by ``owner`` until ``lease_us``, unless another process
        holds an unexpired claim on it (several processes may use one key file at once)."""
        cur = self._db.execute(
            "UPDATE outbox SET owner = ?, lease_us = ? WHERE id = ? AND state IN (?, ?) "
            "AND (owner IS NULL OR owner = ? OR lease_us < ?)",
            (owner, lease_us, row_id, QUEUED, PENDING, owner, now_us),
        )
        return cur.rowcount == 1

    def release(self, owner: int) -> None:
        """``owner`` delivers nothing more now: its rows are free for the next process."""
        self._db.execute("UPDATE outbox SET owner = NULL, lease_us = 0 WHERE owner = ?", (owner,))

    def outbox_row(self, row_id: int) -> OutboxRow | None:
        row = self._db.execute(f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE id = ?", (row_id,)).fetchone()
        return OutboxRow(*row) if row is not None else None

    def signed(
        self,
        row_id: int,
        request: bytes,
        session: int,
        timestamp: int,
        peer_key: bytes,
        peer_box: bytes,
        previous: bytes | None,
    ) -> bool:
        """The row's exact signed request, stored (durably) before its transmission. Only a queued
        row, or one whose stored request is ``previous`` (ours, which the replicas proved will never
        execute), is taken: False if another process with this key file signed it first."""
        cur = self._db.execute(
            "UPDATE outbox SET state = ?, request = ?, session = ?, timestamp = ?, peer_key = ?, "
            "peer_box = ? WHERE id = ? AND (state = ? OR (state = ? AND request = ?))",
            (PENDING, request, session, timestamp, peer_key, peer_box, row_id, QUEUED, PENDING, previous),
        )
        return cur.rowcount == 1

    def settle(self, row_id: int, state: str, detail: str) -> None:
        """The row's fate: ``FAILED`` (refused, not delivered) or ``UNKNOWN`` (given up)."""
        self._db.execute("UPDATE outbox SET state = ?, detail = ? WHERE id = ?", (state, detail, row_id))

    def drop(self, row_id: int, signed: bool = False) -> None:
        """Forget a row that never left this machine (refused before it was signed), or with
        ``signed`` one whose request the replicas agreed to refuse (it can never execute)."""
        states = (QUEUED, PENDING) if signed else (QUEUED, QUEUED)
        self._db.execute("DELETE FROM outbox WHERE id = ? AND state IN (?, ?)", (row_id, *states))

    def delivered(
        self, row_id: int, account: str, entry: HistoryEntry, receipt: StoredReceipt | None = None
    ) -> None:
        """The row was delivered: into the history (with its receipt) and out of the outbox, in one
        transaction."""
        with self._tx():
            self.add(account, entry)
            if receipt is not None:
                self.add_receipt(account, receipt, entry.ref)
            self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
