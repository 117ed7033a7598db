"""What a replica core needs to know about its cluster, and the protocol's tunables."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from bft.quorums import Quorums
from bft.wire import MAX_MESSAGE_BYTES, SizeCaps


@dataclass(frozen=True)
class Params:
    """Protocol parameters. Times are seconds of the driver's clock."""

    batch_max_requests: int = 512
    batch_max_bytes: int = 64 * 1024
    max_in_flight: int = 1  # batches proposed but not yet executed
    checkpoint_interval: int = 64  # K: a checkpoint every K sequence numbers
    watermark_window: int = 256  # L: sequence numbers accepted above the stable checkpoint
    view_change_timeout: float = 2.0  # initial; doubles per view change without progress
    max_view_change_timeout: float = 60.0
    status_interval: float = 0.2  # periodic status and retransmission
    # A backup with requests waiting and nothing of the current view in flight expects a PRE-PREPARE
    # this soon; past it, a re-forward, past it again a view change (bounds a slow primary).
    propose_timeout: float = 0.5
    # Backups send their PREPAREs and COMMITs to the primary alone, which passes the votes of its
    # own quorum on to every backup, one frame per backup per phase (instead of n-1 frames from
    # every replica); a backup whose vote needed the all-to-all resend of a status tick sends
    # directly for the next ``vote_relay_backoff`` sequence numbers, doubling per failure within a
    # view (docs/PROTOCOL.md, *Votes through the primary*).
    vote_relay: bool = True
    vote_relay_backoff: int = 64
    clock_skew_us: int = 10_000_000  # a PRE-PREPARE's timestamp may differ this much from ours
    max_pending_per_client: int = 64
    max_pending_total: int = 50_000
    max_pending_bytes: int = 256 * 1024 * 1024  # queued requests' bytes, all clients together
    client_table_capacity: int = 100_000
    max_pending_reads: int = 10_000
    max_pending_reads_per_client: int = 16  # parked one-round reads of one client key
    max_pending_read_bytes: int = 64 * 1024 * 1024
    read_wait_timeout: float = 10.0  # a parked read not answerable by then is dropped
    max_request_ahead_us: int = 600_000_000  # a request timestamp this far past its batch's time is refused
    state_chunk_bytes: int = 1024 * 1024
    # Pages of the checkpoint state (a power of two; bft/core/pages.py): a checkpoint re-encodes
    # and rehashes only the pages changed since the previous one.
    state_pages: int = 16384
    # A stable checkpoint is logged as the pages changed since the log's previous one until the log
    # has grown by the state's size, and by at least this much, since the last full one; then in
    # full, and the log compacts (docs/STORAGE.md). 0: as soon as it has grown by the state's size.
    full_checkpoint_log_bytes: int = 4 * 1024 * 1024
    max_snapshot_bytes: int = 4 * 1024 * 1024 * 1024
    catchup_slots_per_status: int = 16
    # State transfer (bft/core/transfer.py) and answers to STATUS/FETCH (bft/core/answers.py).
    state_chunks_per_fetch: int = 4  # chunks asked for and served per FETCH
    state_transfer_timeout: float = 2.0  # no new verified chunk this long: ask another replica
    snapshots_kept: int = 2  # stable checkpoints whose snapshots a replica keeps serving
    answer_bytes_per_s: int = 8 * 1024 * 1024  # per peer, for answers to STATUS/FETCH/old VIEW-CHANGEs
    answer_burst_bytes: int = 16 * 1024 * 1024
    answer_repeat_interval: float = 1.0  # the same answer to the same peer at most this often
    # Empty batches the primary of an idle cluster orders per status tick while a peer reports a
    # pending recovery (STATUS.recovery_target above the primary's stable checkpoint): what gets a
    # wiped replica's bound H stable without client traffic, and all that f replicas claiming
    # recovery for ever can make the cluster do (docs/SECURITY.md).
    recovery_null_batches: int = 32
    recovery_rearm_interval: float = 30.0  # per peer, at most 2W + K such empty batches this often

    def __post_init__(self) -> None:
        if self.checkpoint_interval < 1 or self.watermark_window < 2 * self.checkpoint_interval:
            raise ValueError("need checkpoint_interval >= 1 and watermark_window >= 2 * checkpoint_interval")
        if self.vote_relay_backoff < 1:
            raise ValueError("vote_relay_backoff must be positive")
        if self.max_in_flight < 1 or self.batch_max_requests < 1:
            raise ValueError("max_in_flight and batch_max_requests must be positive")
        if self.max_request_ahead_us < 1 or self.read_wait_timeout <= 0:
            raise ValueError("max_request_ahead_us and read_wait_timeout must be positive")
        if not 1 <= self.max_pending_reads_per_client <= self.max_pending_reads:
            raise ValueError("need 1 <= max_pending_reads_per_client <= max_pending_reads")
        if not 32 <= self.state_chunk_bytes <= 4 * 1024 * 1024:
            raise ValueError("state_chunk_bytes must be between 32 bytes and 4 MiB (one message)")
        if self.max_snapshot_bytes // self.state_chunk_bytes >= 2**32 - 1:
            raise ValueError("max_snapshot_bytes / state_chunk_bytes must fit in 32 bits")
        if not 1 <= self.state_pages <= 1 << 20 or self.state_pages & (self.state_pages - 1):
            raise ValueError("state_pages must be a power of two between 1 and 2^20")
        if self.state_chunks_per_fetch < 1 or self.snapshots_kept < 1:
            raise ValueError("state_chunks_per_fetch and snapshots_kept must be positive")
        if self.propose_timeout <= 0:
            raise ValueError("propose_timeout must be positive")
        if self.state_transfer_timeout <= 0 or self.answer_repeat_interval < 0:
            raise ValueError("state_transfer_timeout must be positive, answer_repeat_interval not negative")
        if self.recovery_rearm_interval < 0:
            raise ValueError("recovery_rearm_interval must not be negative")
        if self.recovery_null_batches < 1:
            raise ValueError("recovery_null_batches must be positive (a wiped replica waits for them)")
        if self.answer_bytes_per_s < 1 or self.answer_burst_bytes < 1:
            raise ValueError("answer_bytes_per_s and answer_burst_bytes must be positive")


@dataclass(frozen=True)
class ClusterInfo:
    """The public facts every member agrees on: replica keys, f, and the cluster id."""

    public_keys: tuple[bytes, ...]
    cluster_id: bytes
    params: Params = field(default_factory=Params)

    def __post_init__(self) -> None:
        if len(self.public_keys) >= 4 and self.caps.peer_message() > MAX_MESSAGE_BYTES:
            raise ValueError(
                f"at n = {self.n} the largest protocol message ({self.caps.peer_message()} bytes: "
                f"watermark_window, batch_max_bytes, state_chunk_bytes) exceeds the {MAX_MESSAGE_BYTES}-byte "
                "message cap"
            )

    @property
    def n(self) -> int:
        return len(self.public_keys)

    @cached_property
    def caps(self) -> SizeCaps:
        """Size caps of every signed kind and certificate at these parameters (bft.wire.SizeCaps)."""
        p = self.params
        return SizeCaps.compute(
            self.n,
            (self.n - 1) // 3,
            p.watermark_window,
            p.batch_max_bytes,
            p.batch_max_requests,
            p.state_chunk_bytes,
        )

    @property
    def quorums(self) -> Quorums:
        return Quorums.for_n(self.n)

    def primary(self, view: int) -> int:
        return view % self.n
