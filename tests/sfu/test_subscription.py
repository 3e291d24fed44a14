"""A subscriber flooding the SFU with NACKs (issue 17, finding 9: 1,334 NACKs caused about
24k retransmissions). Its retransmissions stay within its budget (``[media]
retransmit_packets_per_s`` / ``retransmit_bytes_per_s``); the rest is counted, not resent."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from media import aiortc_internals
from sfu.appkeys import SFU
from tests.sfu.clients import FlatVideoTrack, play, publish, record_received
from tests.sfu.test_loss import video_ssrcs
from tests.support import loopback_settings, wait_for

pytestmark = pytest.mark.timeout(60)

PACKETS_PER_S = 50.0
NACKS = 1334


@pytest.fixture
def settings(tmp_path):
    return loopback_settings(tmp_path / "data", media={"retransmit_packets_per_s": PACKETS_PER_S},
                             sfu={"standalone_rooms": True})


async def test_a_nack_flood_gets_no_more_retransmissions_than_the_budget(server):
    sfu = server.app[SFU]
    tokens = server.tokens
    async with aiohttp.ClientSession() as http:
        pub = await publish(http, server.url, "flood", tokens.issue_room(
            "flood", "cabin", role="nurse", publish=["camera"]), [FlatVideoTrack()])
        await wait_for(lambda: sfu.publications("flood"), what="publication")
        sub = await play(http, server.url, "flood", tokens.issue_room(
            "flood", "doc", role="physician", subscribe=True), ["video"])
        try:
            received = record_received(sub.pc)
            media_ssrc, rtx_ssrc = video_ssrcs(sub.answer)
            await wait_for(lambda: len([r for r in received if r.ssrc == media_ssrc]) > 40, what="video")
            (publication,) = sfu._rooms["flood"].publications.values()
            counts = publication.counts
            receiver = sub.transceivers[0].receiver
            loop = asyncio.get_running_loop()
            before = counts.retransmits
            started = loop.time()
            for i in range(NACKS):
                recent = sorted({r.sequence_number for r in received if r.ssrc == media_ssrc})[-17:]
                await aiortc_internals.send_nack(receiver, media_ssrc, recent)
                if i % 25 == 24:
                    await asyncio.sleep(0.01)
            sent_in = loop.time() - started
            settled = [counts.nack_received, loop.time()]
            while counts.nack_received < NACKS and loop.time() - settled[1] < 1.0:  # until no more arrive
                await asyncio.sleep(0.1)
                if counts.nack_received != settled[0]:
                    settled[:] = [counts.nack_received, loop.time()]
            elapsed = loop.time() - started
            await asyncio.sleep(0.3)
            resent = counts.retransmits - before
            allowed = PACKETS_PER_S * (1 + elapsed) + 1
            assert resent <= allowed, (f"{resent} retransmissions for {counts.nack_received} NACKs in "
                                       f"{elapsed:.1f} s (sent in {sent_in:.1f} s)")
            # Loopback may drop some of the flood when the machine is busy; enough must arrive.
            assert counts.nack_received >= NACKS // 2, "most NACKs lost on the way"
            assert resent >= PACKETS_PER_S / 2, "the budget let nothing through"
            assert counts.retransmits_refused >= counts.nack_received * 17 - allowed
            repaired = [r for r in received if r.ssrc == rtx_ssrc and r.at >= started]
            assert len(repaired) <= allowed
            async with http.get(server.url + "/metrics") as r:
                scrape = await r.text()
            assert 'teleconsult_sfu_retransmits_refused_total{kind="video",source="camera"}' in scrape
            # The flood costs the flooder only: media keeps flowing to it.
            count = len(received)
            await wait_for(lambda: len(received) > count + 30, what="media after the flood")
        finally:
            await pub.close()
            await sub.close()
