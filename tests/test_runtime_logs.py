"""Replica logs stay one event per line, even for what reaches asyncio's exception handler."""

from __future__ import annotations

import asyncio
import gc
import json
import re
import time
from pathlib import Path

import pytest
from cluster_helper import Cluster

from bft.runtime import logs


def test_an_exception_nobody_awaited_is_one_structured_line(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup("INFO")
    events = logs.EventLog(3)

    async def scenario() -> None:
        asyncio.get_running_loop().set_exception_handler(events.loop_exception_handler())

        async def fails() -> None:
            raise RuntimeError("boom\nsecond line")

        task = asyncio.get_running_loop().create_task(fails())
        await asyncio.sleep(0.01)
        del task  # never awaited: asyncio reports it when the task is collected
        gc.collect()
        await asyncio.sleep(0)

    asyncio.run(scenario())
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line]
    assert len(lines) == 1, err
    assert "ERROR replica=3 event=asyncio_error" in lines[0]
    assert "Task exception was never retrieved" in lines[0] and "traceback=" in lines[0]
    assert "RuntimeError: boom\\nsecond line" in lines[0]  # the newline escaped, not a new line


def _emit_sample(fmt: str, capsys: pytest.CaptureFixture[str]) -> list[str]:
    logs.setup("DEBUG", fmt)
    events = logs.EventLog(2, lambda: (1, 130))
    events.info("view_entered", primary=1, digest=b"\x01\xff", reason='disk "full"\nagain', ok=True)
    try:
        raise OSError("no space")
    except OSError:
        events.error("fatal", exc=True, reason="log sync failed")
    events.debug("committed", batch_seq=131)
    logs.setup("INFO")  # back to the default for the other tests
    return [line for line in capsys.readouterr().err.splitlines() if line]


def test_text_and_json_logs_carry_the_same_fields(capsys: pytest.CaptureFixture[str]) -> None:
    text = _emit_sample("text", capsys)
    assert len(text) == 3
    assert re.fullmatch(
        r"\S+Z INFO replica=2 view=1 seq=130 event=view_entered primary=1 digest=01ff "
        r'reason="disk \\"full\\"\\nagain" ok=True',
        text[0],
    ), text[0]
    assert ' ERROR replica=2 view=1 seq=130 event=fatal reason="log sync failed" traceback=' in text[1]

    lines = _emit_sample("json", capsys)
    assert len(lines) == 3  # one object per line, the traceback's newlines escaped inside it
    first, fatal, debug = (json.loads(line) for line in lines)
    assert list(first) == [
        "time",
        "level",
        "replica",
        "view",
        "seq",
        "event",
        "primary",
        "digest",
        "reason",
        "ok",
    ]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"]), first["time"]
    assert (first["level"], first["replica"], first["view"], first["seq"]) == ("INFO", 2, 1, 130)
    assert (first["event"], first["primary"], first["digest"]) == ("view_entered", 1, "01ff")
    assert first["reason"] == 'disk "full"\nagain' and first["ok"] is True
    assert fatal["level"] == "ERROR" and fatal["event"] == "fatal" and fatal["reason"] == "log sync failed"
    assert "OSError: no space" in fatal["traceback"]
    assert debug["event"] == "committed" and debug["batch_seq"] == 131


def test_a_record_not_from_eventlog_is_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup("INFO", "json")
    import logging

    logging.getLogger(logs.LOGGER_NAME).warning("plain %s", "words")
    logs.setup("INFO")
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line]
    assert json.loads(line)["message"] == "plain words"
    with pytest.raises(ValueError):
        logs.setup("INFO", "xml")


@pytest.mark.timeout(60)
def test_a_replica_started_with_log_format_json_writes_json_lines(tmp_path: Path) -> None:
    with Cluster(tmp_path, 4) as cluster:
        cluster.start(0, "--log-format", "json")
        deadline = time.monotonic() + 30
        while '"event": "started"' not in cluster.log_file(0).read_text():
            assert cluster.alive(0) and time.monotonic() < deadline, cluster.tail(0)
            time.sleep(0.1)
        assert cluster.stop(0) == 0
        records = [json.loads(line) for line in cluster.log_file(0).read_text().splitlines() if line]
    events = [r.get("event") for r in records]
    assert {"log_loaded", "started", "stopped"} <= set(events), events
    assert all(r.get("replica", 0) == 0 and r["level"] in ("INFO", "WARNING", "ERROR") for r in records)
    started = records[events.index("started")]
    assert isinstance(started["client_port"], int) and started["tls"] is True


def test_the_operations_metrics_table_names_every_metric() -> None:
    """docs/OPERATIONS.md's metrics table lists every metric family a replica exports (with the
    name Prometheus shows: ``_total`` on counters, ``_info`` on info)."""
    from bft.runtime.metrics import Metrics
    from bft.runtime.pauses import PauseMonitor

    metrics = Metrics(0, 4)
    PauseMonitor(metrics.registry)
    doc = (Path(__file__).resolve().parent.parent / "docs" / "OPERATIONS.md").read_text()
    table = doc[doc.index("## Metrics") : doc.index("Useful alerts:")]
    shown = {"counter": "_total", "info": "_info"}
    names = {f.name + shown.get(f.type, "") for f in metrics.registry.collect()}
    assert len(names) >= 30
    assert sorted(n for n in names if f"`{n}" not in table) == []
