"""Loss on one subscriber leg: video is repaired on that leg (NACK -> RTX from the subscription's
own history), while another leg stays clean and the publisher is never asked; Opus, which has no
NACK, reaches the lossy leg with its in-band FEC untouched. Loss is injected in process by a
datagram hook on the lossy subscriber's peer connection (media.ice.RandomLoss)."""

from __future__ import annotations

import asyncio
import struct

import aiohttp
import numpy as np
import pytest
from aiortc import RTCSessionDescription
from aiortc import sdp as aiortc_sdp
from aiortc.mediastreams import AudioStreamTrack
from av import AudioFrame

from devices.opus_encoder import OpusConfig, use_stethoscope_encoder
from media.ice import RandomLoss
from sfu.appkeys import SFU
from tests.sfu.clients import (
    FlatVideoTrack,
    Recorded,
    client_pc,
    play,
    post_offer,
    publish,
    record_received,
    record_sent,
)
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
    sfu = server.app[SFU]
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


class ToneTrack(AudioStreamTrack):
    """aiortc's paced audio track, with a 440 Hz tone instead of silence."""

    def __init__(self) -> None:
        super().__init__()
        self._samples = 0

    async def recv(self):  # type: ignore[no-untyped-def]
        frame = await super().recv()
        assert isinstance(frame, AudioFrame)
        n = frame.samples
        t = (np.arange(n) + self._samples) / frame.sample_rate
        self._samples += n
        frame.planes[0].update((np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16).tobytes())
        return frame


async def test_opus_in_band_fec_crosses_a_lossy_leg_untouched(server):
    """Opus legs have no NACK/RTX (aiortc negotiates none): loss on a leg is left to the Opus
    decoder's in-band FEC, so every packet must reach it as the encoder made it."""
    sfu = server.app[SFU]
    tokens = server.tokens
    loss = RandomLoss(0.1, seed=3)
    pc = client_pc()
    sessions = []
    try:
        transceiver = pc.addTransceiver(ToneTrack(), direction="sendonly")
        # In-band FEC exists in SILK and hybrid packets only. libopus keeps a tone (music to its
        # classifier) out of CELT for FEC only above ~8 % expected loss (at 5 %, the stethoscope
        # default, it goes CELT within half a second, and FEC with it).
        use_stethoscope_encoder(transceiver.sender, OpusConfig(expected_loss_pct=10))
        sent = record_sent(pc)
        await pc.setLocalDescription(await pc.createOffer())
        async with aiohttp.ClientSession() as http:
            response = await post_offer(http, f"{server.url}/whip/fec", tokens.issue_room(
                "fec", "cabin", role="nurse", publish=["stethoscope"]), pc.localDescription.sdp)
            answer = await response.text()
            assert response.status == 201, answer
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
            await wait_for(lambda: sfu.publications("fec"), what="publication")
            viewer = tokens.issue_room("fec", "doc", role="physician", subscribe=True)
            lossy = await play(http, server.url, "fec", viewer, ["audio"], hook=loss)
            clean = await play(http, server.url, "fec", viewer, ["audio"])
        sessions += [lossy, clean]
        got_lossy, got_clean = record_received(lossy.pc), record_received(clean.pc)
        await wait_for(lambda: loss.dropped >= 10 and len(got_lossy) > 80, timeout=30, what="loss on the audio leg")
        for session in (lossy, clean):
            (media,) = aiortc_sdp.SessionDescription.parse(session.answer).media
            # RED (offered by aiortc's defaults, after Opus) is answered too; this publisher sends Opus.
            assert [c.mimeType for c in media.rtp.codecs] == ["audio/opus", "audio/red"]
            assert not any(fb.type == "nack" for c in media.rtp.codecs for fb in c.rtcpFeedback)
        payloads = {p.payload for p in sent}
        assert all(r.payload in payloads for r in got_lossy + got_clean), "an Opus payload was altered"
        assert all((r.payload[0] >> 3) < 16 for r in got_lossy), "not SILK/hybrid: no in-band FEC to recover with"
        lossy_seqs = {r.sequence_number for r in got_lossy}
        assert len(span(lossy_seqs)) - len(lossy_seqs) >= 3, "no audio lost on the lossy leg"
        assert len({r.ssrc for r in got_lossy}) == 1, "an audio retransmission (Opus has no NACK here)"
        clean_seqs = {r.sequence_number for r in got_clean}
        assert len(span(clean_seqs)) == len(clean_seqs)
        (publication,) = sfu._rooms["fec"].publications.values()
        assert publication.counts.retransmits == 0 and publication.counts.nack_sent == 0
    finally:
        for session in sessions:
            await session.close()
        await pc.close()


async def test_packets_lost_for_good_upstream_make_the_sfu_ask_the_publisher_for_a_keyframe(server, caplog):
    """Every subscriber of a publication holds a frame it cannot complete once the SFU gives up
    on a lost packet (bounded NACK): the SFU asks the publisher for a keyframe then, instead of
    leaving each subscriber to find out (an aiortc receiver asks only when its jitter buffer
    overflows: seconds of frozen video on a thin uplink, bench.network 4g-weak)."""
    sfu = server.app[SFU]
    tokens = server.tokens
    cut = RandomLoss(0.0, seed=1)  # the publisher's link, cut
    caplog.set_level("DEBUG", logger="sfu.forwarder")
    async with aiohttp.ClientSession() as http:
        pub = await publish(http, server.url, "cut", tokens.issue_room("cut", "cabin", role="nurse",
                                                                      publish=["camera"]), [FlatVideoTrack()], hook=cut)
        sessions = [pub]
        try:
            await wait_for(lambda: sfu.publications("cut"), what="publication")
            viewer = await play(http, server.url, "cut", tokens.issue_room("cut", "doc", role="physician",
                                                                           subscribe=True), ["video"])
            sessions.append(viewer)
            got = record_received(viewer.pc)
            await wait_for(lambda: len(got) > 30, what="video through the SFU")
            (publication,) = sfu._rooms["cut"].publications.values()
            cut.probability = 1.0
            # Longer than the publisher keeps packets to resend (aiortc: 128, ~1 a frame here):
            # the oldest of the gap can never be repaired.
            await asyncio.sleep(5.0)
            cut.probability = 0.0
            await wait_for(lambda: publication.counts.nack_given_up > 0, timeout=10, what="NACKs given up")
            await wait_for(lambda: any(getattr(r, "why", None) == "lost upstream" for r in caplog.records),
                           timeout=5, what="a keyframe asked for because of the loss upstream")
        finally:
            for s in sessions:
                await s.close()
