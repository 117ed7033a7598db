"""What may be forgotten once a stable checkpoint is durable (shared by every storage backend)."""

from __future__ import annotations

from bft.core.events import (
    CheckpointRecord,
    CommitRecord,
    NewViewRecord,
    PreparedRecord,
    PrePrepareRecord,
    Record,
    ViewRecord,
)


def compact(records: list[Record]) -> list[Record]:
    """Drop what the latest checkpoint supersedes; keep the newest view records and everything later.

    Kept: the latest full CheckpointRecord and the delta ones after it (each holds only the pages
    changed since the one before); per-slot records above the latest checkpoint; the highest
    ViewRecord and NewViewRecord (a restarted replica must not forget which view it promised to
    move to).
    """
    ckpt = max((r.seq for r in records if isinstance(r, CheckpointRecord)), default=0)
    full = max((r.seq for r in records if isinstance(r, CheckpointRecord) and not r.delta_of), default=0)
    top_view = max((r.view for r in records if isinstance(r, ViewRecord)), default=-1)
    top_nv = max((r.view for r in records if isinstance(r, NewViewRecord)), default=-1)
    out: list[Record] = []
    for r in records:
        if isinstance(r, CheckpointRecord):
            keep = r.seq == full if not r.delta_of else r.seq > full
        elif isinstance(r, (CommitRecord, PrePrepareRecord, PreparedRecord)):
            keep = r.seq > ckpt
        elif isinstance(r, ViewRecord):
            keep = r.view == top_view
        elif isinstance(r, NewViewRecord):
            keep = r.view == top_nv
        else:
            keep = True
        if keep:
            out.append(r)
    return out
