"""What ``bftchat`` prints, shared by the one-shot commands (``client.cli``) and the interactive
chat (``client.chat_ui``): text lines for people, or one JSON object per line (``Out``), and the
formats of messages, history entries and outbox rows. Its own module so that neither front end
imports the other."""

from __future__ import annotations

import json
import sys
import time
import unicodedata
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bft.keys import fingerprint_of
from client.history import FAILED, PENDING, QUEUED, UNKNOWN, HistoryEntry, OutboxRow

if TYPE_CHECKING:
    from client.chat import Message, Sent

SENT, DROPPED, WAITING = "sent", "dropped", "waiting"  # outbox outcomes besides the row states

_ESCAPE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


def clean(text: str) -> str:
    """``text`` safe for a terminal: control, format (bidi overrides) and line-separator characters
    shown as escapes, so a message cannot move the cursor, recolour or disguise the screen."""
    out = []
    for ch in text:
        if ch not in "\n\t" and unicodedata.category(ch) in _ESCAPE_CATEGORIES:
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)


def when(timestamp_us: int, full: bool = True) -> str:
    """Local time of an ordered timestamp."""
    fmt = "%Y-%m-%d %H:%M:%S" if full else "%H:%M"
    return time.strftime(fmt, time.localtime(timestamp_us / 1e6))


def message_line(sender: str, text: str, timestamp_us: int, full: bool = True) -> str:
    """``[time] sender: text``, continuation lines indented under the text."""
    head = f"[{when(timestamp_us, full)}] {sender}: "
    return head + clean(text).replace("\n", "\n" + " " * len(head))


def message_json(m: Message, key_changed: bool = False) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "id": m.id,
        "from": m.sender,
        "to": m.recipient,
        "text": m.text,
        "seq": m.seq,
        "timestamp_us": m.timestamp_us,
        "sender_key": m.sender_key.hex(),
    }
    if m.problem is not None:
        obj["error"] = m.problem
    if key_changed:
        obj["key_changed"] = True
    return obj


CHANGED_MARK = " [key changed]"  # after the sender's name: signed by a key other than the pinned one


def message_text(m: Message, full: bool = True, key_changed: bool = False) -> str:
    if m.problem is not None:
        return f"[{when(m.timestamp_us, full)}] message {m.id} could not be opened: {m.problem}"
    return message_line(m.sender + (CHANGED_MARK if key_changed else ""), m.text, m.timestamp_us, full)


def key_changed_note(name: str) -> str:
    return (
        f"! '{name}' signed this with a key other than the one you first saw for that name: the name may "
        f"belong to someone else now (compare fingerprints out of band; --accept-new-key {name} trusts it)"
    )


class Out:
    """Everything the CLI prints goes through here: text for people, or one JSON object per line."""

    def __init__(self, json_mode: bool) -> None:
        self.json = json_mode

    def emit(self, obj: dict[str, Any], text: str | None) -> None:
        if self.json:
            print(json.dumps(obj, ensure_ascii=False), flush=True)
        elif text is not None:
            print(text, flush=True)

    def note(self, text: str) -> None:
        """Information for a person only (stderr, text mode)."""
        if not self.json:
            print(text, file=sys.stderr, flush=True)

    def fail(self, code: str, message: str, exit_code: int) -> int:
        line = " ".join(message.split())  # one line, whatever the message holds
        if self.json:
            print(json.dumps({"error": code, "message": line}), flush=True)
        print(f"bftchat: error: {line}", file=sys.stderr, flush=True)
        return exit_code


STATE_NOTES = {
    QUEUED: "queued: not sent yet",
    PENDING: "pending: not known to be delivered yet, will be resent",
    UNKNOWN: "unknown: may or may not have been delivered",
    FAILED: "failed: not delivered",
}


def history_state(e: HistoryEntry) -> str:
    """What the history says of an entry: received, sent, or the outbox state of one not delivered."""
    return e.state or ("sent" if e.direction == "out" else "received")


def history_line(account: str, e: HistoryEntry, full: bool = True) -> str:
    sender = account if e.direction == "out" else e.peer + (CHANGED_MARK if e.key_changed else "")
    line = message_line(sender, e.text, e.timestamp_us, full)
    return f"{line}  ({STATE_NOTES[e.state]})" if e.state else line


def history_json(account: str, e: HistoryEntry) -> dict[str, Any]:
    sender, to = (account, e.peer) if e.direction == "out" else (e.peer, account)
    return {
        "direction": e.direction,
        "from": sender,
        "to": to,
        "text": e.text,
        "id": e.message_id,
        "seq": e.seq,
        "timestamp_us": e.timestamp_us,
        "state": history_state(e),
        "peer_key": e.peer_key.hex() if e.peer_key else None,
        "key_changed": e.key_changed,
    }


def history_lines(
    account: str, entries: Sequence[HistoryEntry], full: bool = True
) -> list[tuple[dict[str, Any], str]]:
    """(JSON, text) per entry, with a text line wherever the peer's key differs from the one before."""
    out: list[tuple[dict[str, Any], str]] = []
    last: bytes | None = None
    for e in entries:
        if e.peer_key and last and e.peer_key != last:
            fp = fingerprint_of(e.peer_key, e.peer_box) if e.peer_box else e.peer_key.hex()[:16]
            out.append(({}, f"-- {e.peer}'s key changed here (now {fp}): possibly another person"))
        last = e.peer_key or last
        out.append((history_json(account, e), history_line(account, e, full)))
    return out


def outbox_json(row: OutboxRow, state: str | None = None, sent: Sent | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "outbox": row.id,
        "to": row.peer,
        "text": row.text,
        "state": state or row.state,
        "created_us": row.created_us,
    }
    if row.detail:
        obj["detail"] = row.detail
    if sent is not None:
        obj |= {"id": sent.id, "seq": sent.seq, "timestamp_us": sent.timestamp_us}
    return obj


def outbox_text(row: OutboxRow, state: str | None = None, sent: Sent | None = None, why: str = "") -> str:
    state = state or row.state
    head = f"outbox #{row.id} to {row.peer} [{when(row.created_us)}]"
    if state == SENT and sent is not None:
        return f"{head}: sent (message {sent.id}): {clean(row.text)}"
    if state == DROPPED:
        return f"{head}: not sent ({why}): {clean(row.text)}"
    note = STATE_NOTES.get(state, state)
    detail = why or row.detail
    return f"{head}: {note}{f' ({detail})' if detail else ''}: {clean(row.text)}"
