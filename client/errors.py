"""Typed errors of the chat client: each names what happened, in one line a user can act on.

The CLI prints ``str(error)`` on stderr and exits with ``error.exit_code``; with ``--json`` it also
prints ``{"error": error.code, "message": ...}``. Scripts using the library catch the classes.
Exit codes: 1 the request was refused or a local file is wrong (retrying will not help), 3 the
cluster could not give an agreed answer (retrying later may help). 2 is left to argument errors.
"""

from __future__ import annotations

import re
from collections.abc import Mapping


class ChatClientError(Exception):
    """Base class: anything the chat client reports to its user."""

    code = "error"  # stable machine-readable kind (the CLI's --json output)
    exit_code = 1


class UsageError(ChatClientError):
    """A local mistake found before anything was sent (bad name, no account chosen, ...)."""

    code = "usage"


class NotFound(ChatClientError):
    """Nothing stored locally under that id (e.g. no receipt of that message)."""

    code = "not_found"


class InvalidReceipt(ChatClientError):
    """``verify-receipt``: the receipt does not prove that f+1 replicas of the cluster signed it."""

    code = "invalid_receipt"


class RejectedError(ChatClientError):
    """The replicas agreed to refuse the operation (a ``ChatError`` from the app)."""

    code = "rejected"

    def __init__(self, message: str, app_code: str = "") -> None:
        super().__init__(message)
        self.app_code = app_code  # the ChatError.Code name, e.g. "INBOX_FULL"


class NoSuchUser(RejectedError):
    """The recipient (or looked-up account) does not exist."""

    code = "no_such_user"


class NoSuchAccount(RejectedError):
    """The account we act as does not exist (never registered, or deleted)."""

    code = "no_such_account"


class NameTaken(RejectedError):
    """Register: another key already holds this name."""

    code = "name_taken"


class NotOwner(RejectedError):
    """The account we act as belongs to another signing key: this key cannot act as it."""

    code = "not_owner"


class ClusterUnreachable(ChatClientError):
    """Too few replicas could be reached to get an agreed answer; ``failures`` says which and why.
    ``purpose`` explains the ``needed`` count (f+1 for any agreed answer, 2f+1 to order requests)."""

    code = "cluster_unreachable"
    exit_code = 3

    def __init__(
        self, failures: Mapping[int, str], needed: int, reachable: int, total: int, purpose: str = ""
    ) -> None:
        self.failures = {i: why for i, why in failures.items() if why.strip()}
        self.needed = needed
        self.reachable = reachable
        self.total = total
        self.purpose = purpose
        parts = "; ".join(_causes(self.failures, total))
        super().__init__(f"{self.head}; {parts}" if parts else self.head)

    @property
    def head(self) -> str:
        """The count alone: ``cluster unreachable: 2 of 4 replicas reachable, 3 needed to ...``."""
        why = f" {self.purpose}" if self.purpose else ""
        count = f"{self.reachable} of {self.total} replicas reachable, {self.needed} needed{why}"
        return f"cluster unreachable: {count}"

    @property
    def short(self) -> str:
        """One short line for a screen that repeats it (chat): the count and who is down, no reasons."""
        down = sorted(self.failures)
        if not down:
            return self.head
        who = f"replica {down[0]}" if len(down) == 1 else "replicas " + ", ".join(map(str, down))
        return f"{self.head} ({who} down)"


# "127.0.0.1:7102: " or "[::1]:7102: " (how a cause names the replica's endpoint, client.chat._probe)
_ENDPOINT = re.compile(r"(\[[^\]]*\]|[^\s:\[\]]+):\d+: ")


def _causes(failures: Mapping[int, str], total: int) -> list[str]:
    """One part per distinct cause: ``replica 2: 10.0.0.3:7102: unavailable: ...`` alone, or
    ``replicas 2, 3: unavailable: ...`` / ``all 7 replicas: ...`` (endpoints dropped: they are the
    config's) when several replicas fail the same way, so a whole cluster down is one short line."""
    groups: dict[str, list[int]] = {}
    for i, why in sorted(failures.items()):
        m = _ENDPOINT.match(why)
        groups.setdefault(why[m.end() :] if m else why, []).append(i)
    parts = []
    for cause, ids in groups.items():
        if len(ids) == 1:
            parts.append(f"replica {ids[0]}: {failures[ids[0]]}")
        else:
            who = f"all {total} replicas" if len(ids) == total else "replicas " + ", ".join(map(str, ids))
            parts.append(f"{who}: {cause}")
    return parts


class NoAgreement(ChatClientError):
    """Replicas answered, but not enough of them matched in time (``detail`` lists who said what)."""

    code = "no_agreement"
    exit_code = 3

    def __init__(self, detail: str) -> None:
        super().__init__(f"not enough matching replies: {detail}")
        self.detail = detail


class StaleTimestamp(ChatClientError):
    """The replicas kept calling this session's request timestamps stale (not above the last one
    they executed for it, or below the floor of sessions they forgot), even after it re-signed the
    request with the larger timestamps they asked for. The operation was not executed."""

    code = "stale_timestamp"
    exit_code = 3

    def __init__(self, session: int, timestamp: int, wanted: int, attempts: int) -> None:
        super().__init__(
            f"stale timestamp: the replicas refused timestamp {timestamp} of session {session:x} "
            f"after {attempts} attempts (they want at least {wanted})"
        )
        self.session = session
        self.timestamp = timestamp
        self.wanted = wanted
        self.attempts = attempts


class KeyChanged(ChatClientError):
    """The name's keys differ from the ones pinned when this user first talked to it (trust on first
    use): the name may have changed hands. Nothing was sent; accept the new key to send anyway."""

    code = "key_changed"

    def __init__(self, name: str, pinned: str, now: str) -> None:
        super().__init__(
            f"the key of '{name}' changed since you first talked (pinned fingerprint {pinned}, now {now}): "
            f"the name may belong to someone else now. Nothing was sent. Compare the fingerprint with "
            f"{name} out of band, then pass --accept-new-key {name} (in chat: /accept-new-key {name})"
        )
        self.name = name
        self.pinned = pinned
        self.now = now


class FateUnknown(ChatClientError):
    """A request was refused as stale after it was sent: its session was forgotten by the replicas
    (evicted), or has run a later request. It can never execute now, but it may have executed
    before: whether the operation (a message's delivery) took effect is unknown."""

    code = "unknown"
    exit_code = 3
