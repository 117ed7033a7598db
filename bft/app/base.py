"""The interface between the PBFT core and the replicated application.

The application is a deterministic state machine like the core: no clocks, no randomness, no
unordered iteration. Time comes only from ``ExecContext.timestamp_us``, the primary's batch time
that backups bound-checked and that the core makes monotone. The core authenticates every request
(the signature matches ``client_key``); the application authorises (what that key may do).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Request:
    """A client request whose signature the core has verified."""

    client_key: bytes  # Ed25519 public key (32 bytes) that signed ``signed``
    session: int
    timestamp: int
    op: bytes  # application operation
    signed: bytes  # the exact signed bytes (domain tag + key + body), e.g. for end-to-end delivery
    signature: bytes


@dataclass(frozen=True, slots=True)
class ExecContext:
    """Where an operation sits in the total order."""

    seq: int  # sequence number of its batch
    index: int  # position inside the batch
    timestamp_us: int  # ordered batch time, microseconds since the epoch; monotone over batches


@dataclass(frozen=True, slots=True)
class ExecResult:
    """The deterministic result the client receives, and side notices for the runtime."""

    result: bytes
    events: tuple[object, ...] = field(default=())


class Application(Protocol):
    @property
    def max_op_bytes(self) -> int:
        """Longer operations never execute (the application refuses them by itself); replicas refuse
        them at the door too, so an honest primary never orders one."""
        ...

    def execute(self, request: Request, ctx: ExecContext) -> ExecResult:
        """Apply one ordered operation. Bad input returns a typed error result, never raises."""
        ...

    def query(self, request: Request) -> bytes:
        """Answer a read-only operation from the current state without changing it."""
        ...

    def digest(self) -> bytes:
        """32-byte digest of the whole state; equal states give equal digests. Cheap to read."""
        ...

    # Checkpoint pages (bft/core/pages.py, bft/app/paging.py): the state is filed under a fixed
    # number of pages so a checkpoint re-encodes only what changed.

    def set_page_count(self, count: int) -> None:
        """File the state under ``count`` pages (a power of two) from now on; all pages changed."""
        ...

    def take_dirty_pages(self) -> set[int]:
        """The pages changed since the last call (execution, ``set_page_count``)."""
        ...

    def page(self, index: int) -> bytes:
        """Deterministic encoding of page ``index``: equal states give equal pages."""
        ...

    def restore(self, data: bytes) -> None:
        """Replace the state with a whole-state snapshot (what logs held before checkpoint pages).
        Raises ValueError on malformed data."""
        ...

    def restore_pages(self, pages: Sequence[bytes]) -> None:
        """Replace the state with the one these pages (one per page) encode; none changed after.
        Raises ValueError, state untouched, on malformed pages."""
        ...


AppFactory = Callable[[], Application]
