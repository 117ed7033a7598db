"""Event-loop lag and garbage-collection pauses of a replica process, as Prometheus histograms.

A replica's event loop serves every peer and client; anything that holds it (a long core
transition, a snapshot serialised on the loop, a full garbage collection over millions of objects)
delays every vote and reply, and a primary that stalls long enough invites a view change. This
module makes those stalls visible (``bft_event_loop_lag_seconds``, ``bft_gc_pause_seconds``) and
takes the largest avoidable one off the table: after the log is loaded, and again after a state
transfer installs a checkpoint, :func:`freeze_heap` moves the restored state into CPython's permanent
generation, so full collections no longer walk it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from typing import Any

from prometheus_client import CollectorRegistry, Histogram

LAG_INTERVAL = 0.05  # seconds between probes: the lag is how late each wake-up comes
_PAUSE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class PauseMonitor:
    """Records how late the loop wakes a sleeping task, and how long each GC collection takes."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.lag = Histogram(
            "bft_event_loop_lag_seconds",
            f"How late the event loop ran a task due every {LAG_INTERVAL} s (its stalls)",
            buckets=_PAUSE_BUCKETS,
            registry=registry,
        )
        self.gc_pause = Histogram(
            "bft_gc_pause_seconds",
            "Duration of one garbage collection, by generation",
            ["generation"],
            buckets=_PAUSE_BUCKETS,
            registry=registry,
        )
        for generation in ("0", "1", "2"):
            self.gc_pause.labels(generation)  # series exist (at zero) before the first collection
        self._gc_started = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        gc.callbacks.append(self._on_gc)
        self._task = asyncio.get_running_loop().create_task(self._probe())

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._on_gc)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _probe(self) -> None:
        while True:
            due = time.perf_counter() + LAG_INTERVAL
            await asyncio.sleep(LAG_INTERVAL)
            self.lag.observe(max(0.0, time.perf_counter() - due))

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_started:
            self.gc_pause.labels(str(info.get("generation", "?"))).observe(
                time.perf_counter() - self._gc_started
            )
            self._gc_started = 0.0


def freeze_heap() -> int:
    """Collect once, then freeze every object alive now (the restored state, imported modules) into
    the permanent generation; returns how many objects were frozen.

    Full collections then walk only what was allocated since, which keeps their pauses independent
    of the state's size. The frozen objects are still freed by reference counting when released.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
