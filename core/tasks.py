"""Background tasks a component owns: spawned, logged when they fail, cancelled on close."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Mapping

logger = logging.getLogger(__name__)


class Tasks:
    """This process's background tasks: spawned, logged when they fail, cancelled on close."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self.closing = False

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def spawn_within(self, work: Awaitable[Any], deadline_s: float, what: str,
                     ids: Mapping[str, str]) -> asyncio.Task[Any]:
        """Spawn ``work`` (a coroutine or a running task), cancelled if it is still running
        after ``deadline_s``; that is logged as ``what`` with ``ids``."""
        return self.spawn(_within(work, deadline_s, what, ids))

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and not self.closing:
            logger.error("background task failed", exc_info=task.exception())

    async def close(self, deadline_s: float = 10.0) -> None:
        """Cancel every task and wait for them, at most ``deadline_s``.

        A cancellation can be swallowed by library code (a client that catches
        ``CancelledError`` while reconnecting), leaving a loop that sleeps on: each
        round cancels again whatever still runs. Past the deadline the rest is
        abandoned and logged, so closing never hangs."""
        self.closing = True
        loop = asyncio.get_running_loop()
        until = loop.time() + deadline_s
        while self._tasks:
            pending = list(self._tasks)
            for task in pending:
                task.cancel()
            left = until - loop.time()
            if left <= 0:
                logger.warning("tasks still running after close", extra={"tasks": len(pending)})
                return
            done, _ = await asyncio.wait(pending, timeout=min(left, 0.5))
            for task in done:
                self._tasks.discard(task)


async def _within(work: Awaitable[Any], deadline_s: float, what: str, ids: Mapping[str, str]) -> Any:
    try:
        return await asyncio.wait_for(work, deadline_s)
    except asyncio.TimeoutError:
        logger.warning("%s: cancelled after %.0f s", what, deadline_s, extra={**ids, "deadline_s": deadline_s})
        return None
