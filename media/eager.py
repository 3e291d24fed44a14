"""Running a coroutine eagerly from a synchronous callback (a datagram callback, per packet).

A task per packet costs a loop iteration and a wake-up; most handlers on the media path
finish without ever suspending. :func:`run_now` runs the coroutine at once and only hands it
to a task if it does suspend.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Coroutine

logger = logging.getLogger(__name__)


def run_now(coro: Coroutine[Any, Any, None], pending: set["asyncio.Task[None]"]) -> None:
    """Run ``coro`` up to its first suspension now; if it suspends, a task (kept in
    ``pending`` until done) finishes it. Exceptions are logged, never raised into the
    datagram callback."""
    try:
        yielded = coro.send(None)
    except StopIteration:
        return
    except Exception:  # noqa: BLE001 - a packet must not break the transport
        logger.exception("RTP handler failed")
        return
    task = asyncio.ensure_future(_finish(coro, yielded))
    pending.add(task)
    task.add_done_callback(pending.discard)


async def _finish(coro: Coroutine[Any, Any, None], yielded: Any) -> None:
    """Drive a coroutine that suspended on ``yielded`` (a future, or None for a bare yield)
    as a task would."""
    while True:
        if yielded is None:
            await asyncio.sleep(0)
        else:
            yielded._asyncio_future_blocking = False  # taken over, as Task.__step does
            try:
                await yielded
            except BaseException:  # noqa: BLE001 - the coroutine sees it when resumed
                pass
        try:
            yielded = coro.send(None)
        except StopIteration:
            return
        except Exception:  # noqa: BLE001
            logger.exception("RTP handler failed")
            return
