"""Structured logs: one event per line, ``key=value`` pairs, always with replica id, view and seq.

Quiet by default at INFO: start, stop, view changes, state transfers, peer links going up or down,
evidence and errors. Per-batch events are DEBUG. Lines look like::

    2025-01-02T03:04:05.678Z INFO replica=2 view=1 seq=130 event=view_entered primary=1

With ``--log-format json`` the same fields are one JSON object per line (for log shippers)::

    {"time": "2025-01-02T03:04:05.678Z", "level": "INFO", "replica": 2, "view": 1, "seq": 130,
     "event": "view_entered", "primary": 1}
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

LOGGER_NAME = "bftchat"
FORMATS = ("text", "json")
_FIELDS = "bft_fields"  # LogRecord attribute: the event's fields, for the JSON formatter


def _quote(value: object) -> str:
    text = value.hex() if isinstance(value, bytes) else str(value)
    if text and not any(c in text for c in ' "=\n\r\t\\'):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def _stamp(record: logging.LogRecord) -> str:
    t = time.gmtime(record.created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z"


class _Formatter(logging.Formatter):
    """UTC timestamp, level, then the message (already ``key=value``); exceptions on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_stamp(record)} {record.levelname} {record.getMessage()}"
        if record.exc_info:
            line += " traceback=" + _quote(self.formatException(record.exc_info))
        return line


def _json_value(value: object) -> object:
    if isinstance(value, bool | int | float) or value is None:
        return value
    return value.hex() if isinstance(value, bytes) else str(value)


class _JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, then the event's fields as in the text format (numbers
    stay numbers, bytes are hex); a record not from ``EventLog`` has its text under ``message``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {"time": _stamp(record), "level": record.levelname}
        fields = getattr(record, _FIELDS, None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                out.setdefault(key, _json_value(value))  # time and level cannot be overwritten
        else:
            out["message"] = record.getMessage()
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, separators=(", ", ": "))


def setup(level: str = "INFO", fmt: str = "text") -> None:
    """Send this process's ``bftchat`` logs to stderr, as ``key=value`` text or JSON lines (``fmt``);
    gRPC's own chatter only from WARNING up."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {FORMATS}, not {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _Formatter())
    root = logging.getLogger(LOGGER_NAME)
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    logging.getLogger("grpc").setLevel(logging.WARNING)


class EventLog:
    """Writes events tagged with the replica's id and its current view and sequence number."""

    def __init__(self, replica_id: int, where: Callable[[], tuple[int, int]] | None = None) -> None:
        self._log = logging.getLogger(LOGGER_NAME)
        self._replica = replica_id
        self._where = where  # -> (view, last executed seq); set once the core exists

    def bind(self, where: Callable[[], tuple[int, int]]) -> None:
        self._where = where

    def enabled(self, level: int) -> bool:
        return self._log.isEnabledFor(level)

    def _emit(
        self, level: int, event: str, fields: dict[str, object], exc: bool | BaseException = False
    ) -> None:
        if not self._log.isEnabledFor(level):
            return
        tagged: dict[str, object] = {"replica": self._replica}
        if self._where is not None:
            tagged["view"], tagged["seq"] = self._where()
        tagged["event"] = event
        for key, value in fields.items():
            tagged.setdefault(key, value)
        text = " ".join(f"{k}={_quote(v)}" for k, v in tagged.items())
        self._log.log(level, text, exc_info=exc, extra={_FIELDS: tagged})

    def debug(self, event: str, **fields: object) -> None:
        self._emit(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: object) -> None:
        self._emit(logging.INFO, event, fields)

    def warning(self, event: str, **fields: object) -> None:
        self._emit(logging.WARNING, event, fields)

    def error(self, event: str, exc: bool | BaseException = False, **fields: object) -> None:
        """``exc``: True for the exception being handled, or an exception object."""
        self._emit(logging.ERROR, event, fields, exc)

    def loop_exception_handler(self) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
        """For ``loop.set_exception_handler``: what reaches asyncio's handler (an exception nobody
        awaited, a failing callback) is logged as one ``event=asyncio_error`` line like the rest,
        not as asyncio's multi-line default."""

        def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            exc = context.get("exception")
            fields: dict[str, object] = {"message": context.get("message", "")}
            for key in ("task", "future", "handle"):
                if key in context:
                    fields[key] = repr(context[key])[:200]
            self.error("asyncio_error", exc=exc if isinstance(exc, BaseException) else False, **fields)

        return handle


class RateLimit:
    """At most one event per ``interval`` seconds per key (for input that peers or clients control)."""

    def __init__(self, interval: float = 5.0) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self.suppressed: dict[str, int] = {}

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        if now - self._last.get(key, -1e9) < self.interval:
            self.suppressed[key] = self.suppressed.get(key, 0) + 1
            return False
        if len(self._last) > 1024:
            self._last.clear()
        self._last[key] = now
        return True

    def take_suppressed(self, key: str) -> int:
        return self.suppressed.pop(key, 0)
