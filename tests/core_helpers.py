"""A tiny lossless network for driving replica cores directly in tests."""

from __future__ import annotations

from bft.core.events import Send, ToClient
from bft.core.replica import Replica


def deliver(replicas: list[Replica], outputs: dict[int, list[object]], now: float) -> list[ToClient]:
    """Deliver every Send (and what it causes) until quiet; return the client replies."""
    replies: list[ToClient] = []
    queue = [(i, o) for i, outs in outputs.items() for o in outs]
    while queue:
        i, out = queue.pop(0)
        if isinstance(out, ToClient):
            replies.append(out)
        if not isinstance(out, Send):
            continue
        for j in [out.to] if out.to is not None else [k for k in range(len(replicas)) if k != i]:
            replicas[j].on_message(out.data, now)
            queue += [(j, o) for o in replicas[j].take_outputs()]
    return replies
