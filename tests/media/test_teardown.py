"""Closing a peer connection within a deadline (media/teardown.py), on real peers over loopback."""

from __future__ import annotations

import asyncio
import logging

import pytest

from media import aiortc_internals
from media.teardown import RELEASE_STEP_S, close_peer_connection
from tests.media.test_aiortc_internals import a_receiver_whose_rtcp_task_died, peers

pytestmark = pytest.mark.timeout(60)


async def test_a_close_that_finishes_is_just_a_close(caplog) -> None:
    caplog.set_level(logging.INFO)
    async with peers(lambda p: None) as pair:
        assert await close_peer_connection(pair.b, 5.0, {"session": "SE_1"})
        assert pair.b.connectionState == "closed"
    assert not [r for r in caplog.records if r.name == "media.teardown"]


async def test_a_close_that_hangs_is_cut_short_released_and_logged(caplog) -> None:
    caplog.set_level(logging.INFO)
    async with peers(lambda p: None) as pair:
        await a_receiver_whose_rtcp_task_died(pair)
        dtls = pair.receiver.transport
        sockets = [p.transport for p in aiortc_internals.ice_connection(dtls.transport)._protocols]
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert not await close_peer_connection(pair.b, 1.0, {"session": "SE_1", "room": "R"})
        assert loop.time() - started < 1.0 + 3 * RELEASE_STEP_S + 0.5
        assert sockets and all(s.is_closing() for s in sockets)
        (timed_out,) = [r for r in caplog.records if r.getMessage() == "peer connection close timed out"]
        assert (timed_out.session, timed_out.room, timed_out.deadline_s) == ("SE_1", "R", 1.0)
        (released,) = [r for r in caplog.records if r.getMessage() == "peer connection released"]
        assert released.session == "SE_1"


async def test_a_close_that_fails_is_released_too(caplog) -> None:
    """aiortc's close raises when an offer failed at answer time with a data channel (its SCTP
    transport has no DTLS transport yet): what it holds is released all the same, and a later
    close returns."""
    caplog.set_level(logging.INFO)
    async with peers(lambda p: None) as pair:
        pc = pair.b

        async def broken() -> None:
            raise AttributeError("'NoneType' object has no attribute '_unregister_data_receiver'")

        pair.b.getTransceivers()[0].stop = broken  # type: ignore[method-assign]
        assert not await close_peer_connection(pc, 5.0, {"check": "c1"})
        (failed,) = [r for r in caplog.records if r.getMessage() == "peer connection close failed"]
        assert (failed.check, failed.error) == ("c1", "AttributeError")
        assert pair.receiver.transport.state == "closed"
        await asyncio.wait_for(pc.close(), 1)
