import asyncio
import logging

import pytest

from core.tasks import Tasks


async def test_close_cancels_what_runs_and_failures_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    tasks = Tasks()
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.sleep(3600)

    async def fails() -> None:
        raise RuntimeError("boom")

    long = tasks.spawn(forever())
    with caplog.at_level(logging.ERROR, logger="core.tasks"):
        await asyncio.wait_for(asyncio.gather(tasks.spawn(fails()), return_exceptions=True), 5)
        await asyncio.sleep(0)
    assert any("background task failed" in r.getMessage() for r in caplog.records)
    await asyncio.wait_for(started.wait(), 5)
    await asyncio.wait_for(tasks.close(), 5)
    assert long.cancelled()
