"""Congestion control through the real SFU on loopback, with real aiortc peers: the publisher is
sent REMB from the SFU's own estimate of its uplink, a subscriber's low REMB lowers it, and a
packet lost from the publisher is asked for a bounded number of times (sfu/congestion.py,
sfu/nack.py)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp
import av
import numpy as np
import pytest
from aiortc import RTCSessionDescription
from aiortc.mediastreams import VideoStreamTrack
from aiortc.rtp import RTCP_RTPFB_NACK, RtcpRtpfbPacket

from config.settings import MediaSettings
from media import aiortc_internals
from sfu.appkeys import SFU
from sfu.congestion import MIN_REMB_BPS
from tests.sfu.clients import client_pc, post_offer, publish, sending_ssrcs
from tests.support import wait_for

pytestmark = pytest.mark.timeout(90)


class NoisyVideoTrack(VideoStreamTrack):
    """Random pictures: the encoder has to spend its whole target bitrate on them."""

    def __init__(self) -> None:
        super().__init__()
        self._rng = np.random.default_rng(5)

    async def recv(self) -> Any:
        pts, time_base = await self.next_timestamp()
        frame = av.VideoFrame.from_ndarray(self._rng.integers(0, 255, (240, 320, 3), dtype=np.uint8), format="bgr24")
        frame.pts, frame.time_base = pts, time_base
        return frame


def rembs_received(sender: Any) -> list[tuple[int, list[int]]]:
    out: list[tuple[int, list[int]]] = []

    def seen(packet: Any) -> None:
        remb = aiortc_internals.remb_of(packet)
        if remb is not None:
            out.append(remb)

    aiortc_internals.watch_sender_rtcp(sender, seen)
    return out


async def test_the_publisher_is_sent_remb_and_a_subscribers_low_remb_lowers_it(server):
    sfu = server.app[SFU]
    tokens = server.tokens
    async with aiohttp.ClientSession() as http:
        pub = await publish(http, server.url, "remb", tokens.issue_room("remb", "cabin", role="agent",
                                                                        publish=["dermatoscope"]),
                            [NoisyVideoTrack()])
        sender = pub.transceivers[0].sender
        rembs = rembs_received(sender)
        sessions = [pub]
        try:
            # (a) the SFU's own estimate of the publisher's uplink, as REMB for its SSRC
            await wait_for(lambda: len(rembs) >= 2, timeout=20, what="REMB from the SFU")
            bitrate, ssrcs = rembs[-1]
            assert aiortc_internals.sender_ssrc(sender) in ssrcs
            assert 150_000 <= bitrate <= 10_000_000, bitrate
            (publication,) = sfu._rooms["remb"].publications.values()
            assert publication.feedback.uplink_bps is not None
            assert publication.feedback.remb_bps == pytest.approx(bitrate, rel=1e-3)  # REMB's 18-bit mantissa
            metrics = await (await http.get(server.url + "/metrics")).text()
            gauges = dict(re.findall(r'^(teleconsult_sfu_(?:remb|uplink_estimate)_bps)\{kind="video",'
                                     r'source="dermatoscope"\} (\S+)$', metrics, re.M))
            assert float(gauges["teleconsult_sfu_remb_bps"]) >= MIN_REMB_BPS
            assert float(gauges["teleconsult_sfu_uplink_estimate_bps"]) >= MIN_REMB_BPS
            assert 'teleconsult_sfu_nack_given_up_total{kind="video",source="dermatoscope"}' in metrics

            # (b) a subscriber whose estimate is 100 kbit/s: its leg negotiates no abs-send-time,
            # so its aiortc receiver sends no REMB of its own, and the test sends one instead.
            viewer = client_pc()
            sessions.append(viewer)  # type: ignore[arg-type]
            transceiver = viewer.addTransceiver("video", direction="recvonly")
            await viewer.setLocalDescription(await viewer.createOffer())
            offer = re.sub(r"a=extmap:\d+ http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time\r\n", "",
                           viewer.localDescription.sdp)
            response = await post_offer(http, f"{server.url}/whep/remb",
                                        tokens.issue_room("remb", "doc", role="physician", subscribe=True), offer)
            answer = await response.text()
            assert response.status == 201, answer
            await viewer.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
            leg_ssrcs = list(sending_ssrcs(answer).values())
            low = 100_000

            async def keep_sending_low_remb() -> None:
                while True:
                    await aiortc_internals.send_remb(transceiver.receiver, low, leg_ssrcs)
                    await asyncio.sleep(0.3)

            task = asyncio.ensure_future(keep_sending_low_remb())
            try:
                before = len(rembs)
                await wait_for(lambda: any(b <= low for b, _ in rembs[before:]), timeout=15,
                               what="a REMB to the publisher capped by the subscriber's")
                assert all(b >= MIN_REMB_BPS for b, _ in rembs)
                feedback = sfu.feedback("remb")[publication.id]
                assert feedback.subscribers_cap_bps == pytest.approx(low)
            finally:
                task.cancel()
        finally:
            for s in sessions:
                await s.close()


class DropOnePacketAndEveryRetransmission:
    """A datagram hook on the publisher: drops one media packet (the 100th) and every RTX
    packet, so that the SFU can never repair it (the RTP header is clear in SRTP)."""

    def __init__(self) -> None:
        self.media_ssrc: int | None = None
        self.seen = 0
        self.target: int | None = None

    def __call__(self, data: bytes, addr: Any) -> bool:
        if self.media_ssrc is None or len(data) < 12 or not 128 <= data[0] <= 191 or 192 <= data[1] <= 223:
            return True  # not media RTP (ICE, DTLS, RTCP either way)
        if int.from_bytes(data[8:12], "big") != self.media_ssrc:
            return False  # RTX
        self.seen += 1
        seq = int.from_bytes(data[2:4], "big")
        if self.target is None and self.seen == 100:
            self.target = seq
        return seq != self.target


async def test_a_lost_packet_is_asked_for_at_most_nack_max_retries_times(server):
    sfu = server.app[SFU]
    retries = MediaSettings().nack_max_retries
    hook = DropOnePacketAndEveryRetransmission()
    pc = client_pc(hook)
    try:
        transceiver = pc.addTransceiver(NoisyVideoTrack(), direction="sendonly")
        hook.media_ssrc = aiortc_internals.sender_ssrc(transceiver.sender)
        asked: list[int] = []

        def seen(packet: Any) -> None:
            if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
                asked.extend(packet.lost)

        aiortc_internals.watch_sender_rtcp(transceiver.sender, seen)
        await pc.setLocalDescription(await pc.createOffer())
        async with aiohttp.ClientSession() as http:
            response = await post_offer(http, f"{server.url}/whip/nack", server.tokens.issue_room(
                "nack", "cabin", role="agent", publish=["otoscope"]), pc.localDescription.sdp)
            answer = await response.text()
            assert response.status == 201, answer
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await wait_for(lambda: hook.target is not None and asked.count(hook.target) >= 1, timeout=20,
                       what="the dropped packet NACKed")
        (publication,) = sfu._rooms["nack"].publications.values()
        await wait_for(lambda: publication.counts.nack_given_up >= 1, timeout=5, what="the SFU giving up")
        await asyncio.sleep(1.0)  # any further NACK for it would come within this
        target = hook.target
        assert target is not None
        assert asked.count(target) == retries, asked  # asked again at each round trip, then no more
        assert publication.nack is not None and target not in publication.nack.missing
    finally:
        await pc.close()


async def test_the_nurse_camera_is_held_to_its_share_of_the_site_estimate(server):
    """The nurse's browser and the device agent share the site's uplink: while the agent
    publishes, the nurse's REMB is at most ``nurse_site_share`` of both their estimates."""
    sfu = server.app[SFU]
    tokens = server.tokens
    share = MediaSettings().nurse_site_share
    async with aiohttp.ClientSession() as http:
        agent = await publish(http, server.url, "site", tokens.issue_room("site", "agent", role="agent",
                                                                          publish=["dermatoscope"]),
                              [NoisyVideoTrack()])
        nurse = await publish(http, server.url, "site", tokens.issue_room("site", "nurse", role="nurse",
                                                                          publish=["camera"]),
                              [NoisyVideoTrack()])
        rembs = rembs_received(nurse.transceivers[0].sender)
        try:
            room = sfu._rooms["site"]
            by_source = {p.info.source: p for p in room.publications.values()}

            def held() -> bool:
                feedback = by_source["camera"].feedback
                return bool(rembs) and feedback.site_cap_bps is not None and rembs[-1][0] <= feedback.site_cap_bps
            await wait_for(held, timeout=20, what="the nurse's REMB held to the site share")
            camera, dermatoscope = by_source["camera"].feedback, by_source["dermatoscope"].feedback
            assert camera.site_cap_bps is not None and dermatoscope.site_cap_bps is None
            assert camera.uplink_bps is not None and dermatoscope.uplink_bps is not None
            # share x the two estimates when it was worked out (each has moved on by a step since)
            assert camera.site_cap_bps < 2 * share * (camera.uplink_bps + dermatoscope.uplink_bps)
        finally:
            await nurse.close()
            await agent.close()
