"""Replica logs stay one event per line, even for what reaches asyncio's exception handler."""

from __future__ import annotations

import asyncio
import gc

import pytest

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
