"""What the CLI and the chat do with the local store (``client.history``) around the network.

* **Pinned keys** (trust on first use, like SSH's known_hosts): the first keys seen behind a name,
  when sending to it or receiving from it, are pinned per cluster. A send to a name whose keys
  differ from the pin is refused (``KeyChanged``) before anything is encrypted, unless the user
  accepted the new key (``--accept-new-key NAME``, ``/accept-new-key NAME``), which re-pins it. A
  message received from a name whose signing key differs from the pin is stored and shown flagged.
* **Received messages** are recorded (keyed by the hash of their signed bytes) before the caller
  acknowledges them.
* **The outbox**: a message is stored before it is signed, its exact signed request before its first
  transmission; ``deliver`` sends an account's waiting messages in order (a signed one resent as
  is, over its own session id), stopping at the first that gets no agreed answer. With the cluster
  unreachable, ``sign_unsent`` signs a new row at once to its recipient's pinned keys, so it is kept
  pending (the exact bytes to resend) rather than merely queued.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from bft.keys import fingerprint_of
from client.chat import Account, ChatClient, Message, Sent
from client.errors import ChatClientError, FateUnknown, KeyChanged, RejectedError, UsageError
from client.history import (
    FAILED,
    PENDING,
    QUEUED,
    UNKNOWN,
    History,
    HistoryEntry,
    OutboxRow,
    StoredReceipt,
)

# What happened to an outbox row in one delivery attempt.
SENT, WAITING, DROPPED, TAKEN = "sent", "waiting", "dropped", "taken"


def now_us() -> int:
    return time.time_ns() // 1000


class Taken(Exception):
    """Another process (same key file) signed this outbox row first: it is theirs to send."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """One outbox row after a delivery attempt: ``state`` is SENT, WAITING (no agreed answer yet:
    it stays, queued or pending), FAILED (the replicas agreed to refuse it), UNKNOWN (refused as
    stale when resent: it may or may not have been delivered), DROPPED (refused before it was
    signed: nothing left this machine) or TAKEN (another process signed it first)."""

    row: OutboxRow
    state: str
    sent: Sent | None = None
    error: ChatClientError | None = None


class Local:
    """The local store as one account on one cluster sees it."""

    def __init__(self, store: History, client: ChatClient, accept: frozenset[str] = frozenset()) -> None:
        self.store = store
        self.client = client
        self.account = client.me()
        self.cluster_id = client.cluster.cluster_id
        self.accept = set(accept)  # names whose new keys the user accepted (re-pinned on sight)
        self.owner = int.from_bytes(os.urandom(7), "big")  # this process, as the outbox's rows' claimant
        # A claim outlasts one delivery attempt (connect, a resend's own streams, the timeout), so
        # another process does not send a row this one is sending; a crashed one's expires.
        self.lease = int((2 * client.timeout + 30) * 1e6)

    def close(self) -> None:
        """Release this process's claims on outbox rows (the next process may send them at once)."""
        self.store.release(self.owner)

    # ---- pinned keys

    def accept_key(self, name: str) -> None:
        self.accept.add(name)

    def check(self, acct: Account) -> None:
        """Before encrypting to ``acct``: pin on first use; refuse a changed key unless accepted."""
        pin = self.store.pinned(self.cluster_id, acct.name)
        if pin is not None and (pin.signing_key, pin.box_key) == (acct.signing_key, acct.box_key):
            return
        if pin is not None and acct.name not in self.accept:
            raise KeyChanged(acct.name, fingerprint_of(pin.signing_key, pin.box_key), acct.fingerprint)
        self.store.pin(self.cluster_id, acct.name, acct.signing_key, acct.box_key, now_us())

    def key_changed(self, acct: Account) -> bool:
        """Whether ``acct``'s keys differ from the pin (nothing pinned: no), without pinning."""
        pin = self.store.pinned(self.cluster_id, acct.name)
        return pin is not None and (pin.signing_key, pin.box_key) != (acct.signing_key, acct.box_key)

    # ---- received messages

    def record_in(self, m: Message) -> bool:
        """Keep a received message (before it is acknowledged). True if it comes from a key other
        than the one pinned for its sender's name (it is stored flagged). Messages that failed
        verification carry no text and are not stored."""
        if m.problem is not None:
            return False
        pin = self.store.pinned(self.cluster_id, m.sender)
        changed = pin is not None and pin.signing_key != m.sender_key
        if pin is None or (changed and m.sender in self.accept):
            self.store.pin(self.cluster_id, m.sender, m.sender_key, m.sender_box_key, now_us())
            changed = False
        entry = HistoryEntry(
            "in",
            m.sender,
            m.text,
            m.id,
            m.seq,
            m.timestamp_us,
            m.ref,
            self.cluster_id,
            m.sender_key,
            m.sender_box_key,
            changed,
        )
        self.store.add(self.account, entry)
        return changed

    # ---- the outbox

    def queue(self, peer: str, text: str) -> int:
        """Keep a message to send; claimed by this process, so no other one sends it meanwhile."""
        now = now_us()
        return self.store.queue(self.account, peer, text, self.cluster_id, now, self.owner, now + self.lease)

    def sign_unsent(self, row_id: int) -> str:
        """The cluster cannot be reached: sign a queued row now, to its recipient's pinned keys, and
        store that exact request (PENDING), to be resent as is, never re-signed, when the cluster
        answers. Without pinned keys it stays QUEUED (they must be looked up first). Returns the
        row's state; TAKEN if another process signed it first."""
        row = self.store.outbox_row(row_id)
        if row is None or row.state != QUEUED:
            return row.state if row is not None else TAKEN
        pin = self.store.pinned(self.cluster_id, row.peer)
        if pin is None:
            return QUEUED
        acct = Account(row.peer, pin.signing_key, pin.box_key)
        raw, session, timestamp = self.client.sign_send(acct, row.text)
        if not self.store.signed(row.id, raw, session, timestamp, pin.signing_key, pin.box_key, None):
            return TAKEN
        return PENDING

    def waiting(self) -> list[OutboxRow]:
        return self.store.outbox(self.account, self.cluster_id)

    async def deliver(self, report: Callable[[Outcome], None] | None = None) -> Outcome | None:
        """Send this account's waiting outbox rows for this cluster, oldest first, reporting each;
        stop at the first that gets no agreed answer and return its outcome (None: all settled).
        Rows another live process is sending (same key file) are left to it."""
        for row in self.waiting():
            now = now_us()
            if not self.store.claim(row.id, self.owner, now, now + self.lease):
                continue  # another process is on it (or it was settled meanwhile)
            fresh = self.store.outbox_row(row.id)
            if fresh is None or fresh.state not in (QUEUED, PENDING):
                continue
            outcome = await self.deliver_one(fresh)
            if outcome.state == TAKEN:
                continue
            if report is not None:
                report(outcome)
            if outcome.state == WAITING:
                return outcome
        return None

    async def deliver_one(self, row: OutboxRow) -> Outcome:
        if row.state == PENDING:
            return await self._resend(row)
        return await self._first_send(row)

    async def _resend(self, row: OutboxRow) -> Outcome:
        assert row.request is not None and row.session is not None and row.timestamp is not None
        try:
            sent = await self.client.resend(row.request, row.session, row.timestamp, row.peer)
        except FateUnknown as exc:
            self.store.settle(row.id, UNKNOWN, str(exc))
            return Outcome(row, UNKNOWN, error=exc)
        except RejectedError as exc:
            self.store.settle(row.id, FAILED, str(exc))
            return Outcome(row, FAILED, error=exc)
        except ChatClientError as exc:
            return Outcome(row, WAITING, error=exc)
        self._delivered(row, sent, row.peer_key, row.peer_box)
        return Outcome(row, SENT, sent)

    async def _first_send(self, row: OutboxRow) -> Outcome:
        stored: list[bytes] = []  # the signed requests stored for this row (the last is current)

        def signed(raw: bytes, session: int, timestamp: int, acct: Account) -> None:
            prev = stored[-1] if stored else None
            if not self.store.signed(row.id, raw, session, timestamp, acct.signing_key, acct.box_key, prev):
                raise Taken(row.id)
            stored.append(raw)

        try:
            pin = self.store.pinned(self.cluster_id, row.peer)
            known = Account(row.peer, pin.signing_key, pin.box_key) if pin is not None else None
            sent = await self.client.send(row.peer, row.text, check=self.check, on_signed=signed, known=known)
        except Taken:
            return Outcome(row, TAKEN)  # another process signed it first: theirs to send
        except KeyChanged as exc:  # nothing encrypted to the new keys; an earlier attempt (to the
            self.store.drop(row.id, signed=True)  # pinned keys) was refused as a key mismatch
            return Outcome(row, DROPPED, error=exc)
        except FateUnknown as exc:  # refused as stale once its session was forgotten: may have run
            self.store.settle(row.id, UNKNOWN, str(exc))
            return Outcome(row, UNKNOWN, error=exc)
        except (RejectedError, UsageError) as exc:
            if stored:  # transmitted, and the replicas agreed to refuse it: it will never execute
                self.store.settle(row.id, FAILED, str(exc))
                return Outcome(row, FAILED, error=exc)
            self.store.drop(row.id)
            return Outcome(row, DROPPED, error=exc)
        except ChatClientError as exc:
            return Outcome(row, WAITING, error=exc)
        self._delivered(row, sent, sent.recipient_key, sent.recipient_box)
        return Outcome(row, SENT, sent)

    def _delivered(self, row: OutboxRow, sent: Sent, peer_key: bytes | None, peer_box: bytes | None) -> None:
        entry = HistoryEntry(
            "out",
            sent.recipient,
            row.text,
            sent.id,
            sent.seq,
            sent.timestamp_us,
            sent.ref,
            self.cluster_id,
            peer_key,
            peer_box,
        )
        receipt = None
        if sent.receipt:
            receipt = StoredReceipt(
                "send", sent.recipient, sent.id, self.cluster_id, sent.seq, now_us(), sent.receipt
            )
        self.store.delivered(row.id, self.account, entry, receipt)


def give_up(store: History, row: OutboxRow) -> str:
    """Stop sending a row: a queued one is dropped (it never left this machine), a pending one
    becomes UNKNOWN (it may have been delivered, and its signed bytes could still be executed if
    someone replays them)."""
    if row.state == QUEUED:
        store.drop(row.id)
        return DROPPED
    store.settle(row.id, UNKNOWN, "given up while pending")
    return UNKNOWN
