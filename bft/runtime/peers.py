"""Outgoing replica-to-replica links: one long-lived ``Link`` call per peer, reconnected with backoff.

Sending never blocks the node: ``PeerLinks.send`` appends to the peer's bounded queue and returns.
Each peer has its own writer task that takes everything queued (one loop turn's worth, since the
node carries out a whole burst of outputs synchronously) and writes it as one frame. A slow or dead
peer only fills its own queue; past the bound the oldest messages are dropped, which is safe because
the protocol retransmits (status ticks, vote resends, commit-proof catch-up).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from collections.abc import Callable

import grpc
import grpc.aio

from bft.faults import LinkPolicy
from bft.pb.bftchat.v1 import service_pb2 as spb
from bft.runtime.logs import EventLog
from bft.runtime.metrics import Metrics
from bft.wire import MAX_MESSAGE_BYTES, WireError, parse

LINK_METHOD = "/bftchat.v1.ReplicaLink/Link"
FRAME_BYTES = MAX_MESSAGE_BYTES  # a frame holds at least one message, and stops growing past this
MAX_FRAME_WIRE = MAX_MESSAGE_BYTES + 64 * 1024  # largest LinkUp on the wire: the receive limit
QUEUE_MESSAGES = 8192
QUEUE_BYTES = 32 * 1024 * 1024
QUEUE_MESSAGES_DOWN = 512  # while the link is down: what is queued then is mostly stale
BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0
HANDSHAKE_TIMEOUT = 5.0
CLOSE_PHASE_SECONDS = 0.5

_MESSAGES_TAG = b"\x12"  # LinkUp.messages: field 2, length-delimited


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def channel_options(max_receive: int) -> list[tuple[str, int]]:
    """Channel arguments for long-lived streams: quick reconnects, keepalive to notice dead peers."""
    return [
        ("grpc.max_receive_message_length", max_receive),
        ("grpc.max_send_message_length", MAX_FRAME_WIRE),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2000),
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]


class PeerLink:
    """The link to one peer: a bounded queue and the task that drains it into frames."""

    def __init__(
        self,
        peer_id: int,
        target: str,
        credentials: grpc.ChannelCredentials | None,
        hello: Callable[[bytes], spb.LinkHello],
        metrics: Metrics,
        log: EventLog,
        on_state: Callable[[], None],
    ) -> None:
        self.peer_id = peer_id
        self.target = target
        self._hello = hello
        self._metrics = metrics
        self._log = log
        self._on_state = on_state
        opts = channel_options(64 * 1024)
        self._channel = (
            grpc.aio.secure_channel(target, credentials, options=opts)
            if credentials is not None
            else grpc.aio.insecure_channel(target, options=opts)
        )
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._call: grpc.aio.StreamStreamCall | None = None
        self.connected = False
        self.dropped = 0
        self._label = str(peer_id)

    # ---- called by the node (synchronous, never blocks)

    def enqueue(self, data: bytes) -> None:
        if len(data) > MAX_MESSAGE_BYTES:
            self._drop(1)
            return
        self._queue.append(data)
        self._queued_bytes += len(data)
        cap = QUEUE_MESSAGES if self.connected else QUEUE_MESSAGES_DOWN
        while len(self._queue) > cap or self._queued_bytes > QUEUE_BYTES:
            self._queued_bytes -= len(self._queue.popleft())
            self._drop(1)
        self._wake.set()

    def _drop(self, count: int) -> None:
        self.dropped += count
        self._metrics.peer_dropped.labels(self._label).inc(count)

    # ---- the writer task

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"peer-link-{self.peer_id}")

    async def close(self) -> None:
        """Stop the writer and the channel, each phase bounded: closing all links once took over 2 s
        at shutdown under load (likely a write stalled on a departing peer's flow control)."""
        phase = "writer"
        try:
            if self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait_for(self._task, CLOSE_PHASE_SECONDS)
            phase = "channel"
            if self._call is not None:
                self._call.cancel()
            await asyncio.wait_for(self._channel.close(grace=None), CLOSE_PHASE_SECONDS)
        except TimeoutError:
            self._log.debug("peer_close_slow", peer=self.peer_id, phase=phase)
        except Exception as exc:  # closing: nothing left to protect
            self._log.debug("peer_close_failed", peer=self.peer_id, phase=phase, error=str(exc))

    async def _run(self) -> None:
        backoff = BACKOFF_MIN
        failures = 0
        while True:
            reason = "stream ended"
            refused = False
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                reason = f"{exc.code().name}: {exc.details()}"
                refused = exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
            except (WireError, TimeoutError, asyncio.InvalidStateError, grpc.aio.UsageError) as exc:
                reason = str(exc) or type(exc).__name__
            except Exception as exc:  # a transport failure must never end the link for good
                reason = f"{type(exc).__name__}: {exc}"
            if self.connected:
                self.connected = False
                self._on_state()
                self._log.info("peer_down", peer=self.peer_id, reason=reason)
                backoff, failures = BACKOFF_MIN, 0
            else:
                failures += 1
                if refused and failures == 1:  # a configuration problem (keys, certificates), not a crash
                    self._log.warning("peer_refused_link", peer=self.peer_id, reason=reason)
                elif failures in (1, 10) or failures % 100 == 0:
                    self._log.debug(
                        "peer_connect_failed", peer=self.peer_id, attempts=failures, reason=reason
                    )
            self._call = None
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _session(self) -> None:
        call = self._channel.stream_stream(LINK_METHOD)()
        self._call = call
        first = await asyncio.wait_for(call.read(), HANDSHAKE_TIMEOUT)
        if first is grpc.aio.EOF:
            raise WireError("link closed during the handshake")
        assert isinstance(first, bytes)
        down = parse(spb.LinkDown, first)
        await call.write(spb.LinkUp(hello=self._hello(down.nonce)).SerializeToString())
        self.connected = True
        self._on_state()
        self._log.info("peer_up", peer=self.peer_id, target=self.target)
        call.add_done_callback(lambda _: self._wake.set())
        frames = self._metrics.peer_frames.labels(self._label)
        sent = self._metrics.peer_messages.labels(self._label)
        while not call.done():
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            frame, count = self._take_frame()
            await call.write(frame)
            frames.inc()
            sent.inc(count)
        code = await call.code()
        raise WireError(f"link closed by peer ({code.name})")

    def _take_frame(self) -> tuple[bytes, int]:
        """Everything queued, up to FRAME_BYTES, encoded as one LinkUp without re-parsing anything."""
        parts: list[bytes] = []
        size = 0
        count = 0
        q = self._queue
        while q:
            data = q[0]
            head = _MESSAGES_TAG + _varint(len(data))
            if parts and size + len(head) + len(data) > FRAME_BYTES:
                break
            q.popleft()
            self._queued_bytes -= len(data)
            parts.append(head)
            parts.append(data)
            size += len(head) + len(data)
            count += 1
        return b"".join(parts), count


class PeerLinks:
    """All outgoing links of one replica, with the link-fault seam (``policy``) the fault tool sets."""

    def __init__(self, my_id: int, metrics: Metrics, policy: LinkPolicy | None = None) -> None:
        self.my_id = my_id
        self.links: dict[int, PeerLink] = {}
        self.policy = policy or LinkPolicy()
        self._metrics = metrics

    def add(self, link: PeerLink) -> None:
        self.links[link.peer_id] = link

    def start(self) -> None:
        for link in self.links.values():
            link.start()

    async def close(self) -> None:
        await asyncio.gather(*(link.close() for link in self.links.values()), return_exceptions=True)

    @property
    def connected(self) -> int:
        return sum(1 for link in self.links.values() if link.connected)

    def update_gauge(self) -> None:
        self._metrics.peers_connected.set(self.connected)

    def send(self, to: int | None, data: bytes) -> None:
        """Queue ``data`` for peer ``to`` (every peer when None), as the link policy allows."""
        targets = self.links.values() if to is None else [self.links[to]] if to in self.links else []
        policy = self.policy
        for link in targets:
            if not policy.allows(link.peer_id):
                continue
            if policy.delay > 0:
                asyncio.get_running_loop().call_later(policy.delay, link.enqueue, data)
            else:
                link.enqueue(data)
