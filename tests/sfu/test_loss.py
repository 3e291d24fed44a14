"""Loss on one subscriber leg is repaired on that leg (NACK -> RTX from the subscription's own
history), while another leg stays clean and the publisher is never asked. Loss is injected in
process by a datagram hook on the lossy subscriber's peer connection (media.ice.RandomLoss)."""

from __future__ import annotations

import asyncio
import struct

import aiohttp
import pytest
from aiortc import sdp as aiortc_sdp

from media.ice import RandomLoss
from teleconsult import appkeys
from tests.sfu.clients import FlatVideoTrack, Recorded, play, publish, record_received
from tests.support import wait_for

pytestmark = pytest.mark.timeout(60)


def video_ssrcs(answer: str) -> tuple[int, int]:
    """(media ssrc, rtx ssrc) the SFU declares for the answer's video section."""
    media = next(m for m in aiortc_sdp.SessionDescription.parse(answer).media if m.kind == "video")
    (fid,) = [g for g in media.ssrc_group if g.semantic == "FID"]
    return int(fid.items[0]), int(fid.items[1])


def sequence_numbers(received: list[Recorded], ssrc: int, rtx_ssrc: int) -> tuple[set[int], set[int]]:
    """(media sequence numbers received directly, those received as retransmissions)."""
    direct = {r.sequence_number for r in received if r.ssrc == ssrc}
    repaired = {struct.unpack("!H", r.payload[:2])[0] for r in received if r.ssrc == rtx_ssrc and len(r.payload) > 2}
    return direct, repaired


def span(seqs: set[int]) -> list[int]:
    """The sequence numbers from the first received to the last (16-bit wraparound unlikely in a test:
    the SFU's output numbering starts below 2^15)."""
    return list(range(min(seqs), max(seqs) + 1))


async def test_nack_rtx_repairs_loss_on_the_lossy_leg_only(server):
    sfu = server.app[appkeys.SFU]
    tokens = server.tokens
    loss = RandomLoss(0.1, seed=7)
    async with aiohttp.ClientSession() as http:
        pub = await publish(http, server.url, "lossy", tokens.issue_room("lossy", "cabin", role="nurse",
                                                                          publish=["camera"]), [FlatVideoTrack()])
        viewer = tokens.issue_room("lossy", "doc", role="physician", subscribe=True)
        sessions = [pub]
        try:
            await wait_for(lambda: sfu.publications("lossy"), what="publication")
            lossy = await play(http, server.url, "lossy", viewer, ["video"], hook=loss)
            clean = await play(http, server.url, "lossy", viewer, ["video"])
            sessions += [lossy, clean]
            got_lossy, got_clean = record_received(lossy.pc), record_received(clean.pc)
            lossy_ssrc, lossy_rtx = video_ssrcs(lossy.answer)
            clean_ssrc, clean_rtx = video_ssrcs(clean.answer)
            await wait_for(lambda: loss.dropped >= 20 and len(got_lossy) > 200, timeout=30,
                           what="some loss on the lossy leg")
            await asyncio.sleep(0.3)  # the last retransmissions of the window being checked
            direct, repaired = sequence_numbers(got_lossy, lossy_ssrc, lossy_rtx)
            window = span(direct)[:-30]  # the tail may still be on its way
            missing_direct = [s for s in window if s not in direct]
            missing_after = [s for s in missing_direct if s not in repaired]
            assert len(missing_direct) >= 10, "the hook dropped too little media to test repair"
            assert len(missing_after) <= len(missing_direct) // 10, (
                f"{len(missing_after)} of {len(missing_direct)} lost packets never repaired")
            clean_direct, clean_repaired = sequence_numbers(got_clean, clean_ssrc, clean_rtx)
            assert not clean_repaired and not [s for s in span(clean_direct) if s not in clean_direct]
            (publication,) = sfu._rooms["lossy"].publications.values()
            assert publication.counts.nack_sent == 0, "loss on a subscriber leg reached the publisher"
            assert publication.counts.retransmits >= len(repaired) > 0
            assert (await asyncio.wait_for(lossy.transceivers[0].receiver.track.recv(), 10)).width == 320
        finally:
            for s in sessions:
                await s.close()
