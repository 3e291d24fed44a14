import asyncio

from core.lifecycle import Lifecycle, Phase


async def test_first_signal_drains_until_live_work_ends() -> None:
    live = [2]
    lifecycle = Lifecycle(live_count=[lambda: live[0]])
    lifecycle.signal()
    assert lifecycle.phase is Phase.DRAINING and not lifecycle.accepting
    waiter = asyncio.ensure_future(lifecycle.wait_drained(timeout=10, poll=0.01))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    live[0] = 0
    await asyncio.wait_for(waiter, 2)
    assert lifecycle.phase is Phase.STOPPING


async def test_second_signal_stops_at_once() -> None:
    lifecycle = Lifecycle(live_count=[lambda: 1])
    lifecycle.signal()
    waiter = asyncio.ensure_future(lifecycle.wait_drained(timeout=60))
    await asyncio.sleep(0.01)
    lifecycle.signal()
    await asyncio.wait_for(waiter, 2)
    assert lifecycle.phase is Phase.STOPPING


async def test_drain_timeout() -> None:
    lifecycle = Lifecycle(live_count=[lambda: 1])
    lifecycle.signal()
    await asyncio.wait_for(lifecycle.wait_drained(timeout=0.1, poll=0.01), 2)
    assert lifecycle.phase is Phase.STOPPING
