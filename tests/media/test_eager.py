"""run_now: a coroutine run eagerly from a callback, finished by a task only if it suspends."""

import asyncio

from media.eager import run_now


async def test_run_now_finishes_what_suspends():
    done = []

    async def quick() -> None:
        done.append("quick")

    async def slow() -> None:
        await asyncio.sleep(0.01)
        done.append("slow")

    async def broken() -> None:
        raise ValueError("boom")

    pending: set = set()
    run_now(quick(), pending)
    assert done == ["quick"] and not pending
    run_now(slow(), pending)
    assert done == ["quick"] and len(pending) == 1
    run_now(broken(), pending)  # logged, not raised
    for _ in range(100):
        if not pending:
            break
        await asyncio.sleep(0.01)
    assert done == ["quick", "slow"] and not pending
