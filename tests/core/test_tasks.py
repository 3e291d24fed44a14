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


async def test_close_cancels_again_a_task_that_swallowed_its_cancellation() -> None:
    tasks = Tasks()
    started = asyncio.Event()

    async def swallows_once() -> None:
        # As a client library may do while it reconnects: the first cancellation is lost.
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass
        await asyncio.sleep(3600)

    task = tasks.spawn(swallows_once())
    await asyncio.wait_for(started.wait(), 5)
    await asyncio.wait_for(tasks.close(), 5)
    assert task.cancelled()


async def test_close_gives_up_after_its_deadline_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    tasks = Tasks()
    started = asyncio.Event()
    stop = asyncio.Event()

    async def never_ends() -> None:
        started.set()
        while not stop.is_set():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                pass

    task = tasks.spawn(never_ends())
    await asyncio.wait_for(started.wait(), 5)
    with caplog.at_level(logging.WARNING, logger="core.tasks"):
        await asyncio.wait_for(tasks.close(deadline_s=0.3), 5)
    assert any("still running after close" in r.getMessage() for r in caplog.records)
    stop.set()
    task.cancel()
    await asyncio.sleep(0)
