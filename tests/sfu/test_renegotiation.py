"""A session's sections changing under way: one removed by a re-offer, a publisher's SSRC changing
mid-stream (an encoder restarted). Real aiortc peers on loopback."""

from __future__ import annotations

import re
import struct
from typing import Any

import aiohttp
import pytest
from aiortc import RTCRtpTransceiver, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack

from media.aiortc_internals import request_keyframe, rewrite_sent_rtp, route_rtcp_for_ssrc, sender_ssrc
from sfu.appkeys import SFU
from sfu.events import RoomEventType
from sfu.keyframes import vp8_keyframe_start
from sfu.rtp import parse_header, ts_newer
from tests.sfu.clients import FlatVideoTrack, client_pc, play, publish, record_received, sending_ssrcs
from tests.support import wait_for

pytestmark = pytest.mark.timeout(60)


def _removed_the_browser_way(offer: str, mid: str) -> str:
    """``offer`` with section ``mid`` removed as JSEP does after ``transceiver.stop()``: port 0,
    out of the BUNDLE group (aiortc keeps the port and writes the direction only)."""
    offer = re.sub(r"(a=group:BUNDLE[^\r\n]*)", lambda m: " ".join(x for x in m.group(1).split(" ") if x != mid),
                   offer)
    head, *sections = re.split(r"(?=^m=)", offer, flags=re.M)
    return head + "".join(re.sub(r"^(m=\w+) \d+", r"\1 0", s) if f"\r\na=mid:{mid}\r\n" in s else s
                          for s in sections)


def _session_id(location: str) -> str:
    return location.rsplit("/", 1)[1]


async def test_removing_a_section_by_reoffer_ends_only_its_publication_or_subscription(server):
    sfu = server.app[SFU]
    tokens = server.tokens
    room = "reoffer"
    events: list[Any] = []
    sfu.on_room_event(room, events.append)
    publisher = tokens.verify_room(tokens.issue_room(room, "cabin", role="nurse", publish=["camera", "microphone"]),
                                   room)
    viewer_token = tokens.issue_room(room, "doc", role="physician", subscribe=True)
    pc = client_pc()
    sessions = []
    try:
        camera = pc.addTransceiver(FlatVideoTrack(160, 120), direction="sendonly")
        microphone = pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        negotiation = await sfu.negotiate(publisher, pc.localDescription.sdp,
                                          publish={camera.mid: "camera", microphone.mid: "microphone"})
        await pc.setRemoteDescription(RTCSessionDescription(sdp=negotiation.answer_sdp, type="answer"))
        participant = sfu.session(negotiation.session_id)
        by_source = {p.info.source: p for p in participant.publications.values()}
        await wait_for(lambda: all(p.counts.packets_in > 10 for p in by_source.values()), what="both publishing")
        async with aiohttp.ClientSession() as http:
            viewer = await play(http, server.url, room, viewer_token, ["video", "audio"])
            other = await play(http, server.url, room, viewer_token, ["audio"])
        sessions += [viewer, other]
        got = record_received(viewer.pc)
        got_other = record_received(other.pc)
        ssrcs = sending_ssrcs(viewer.answer)
        video_ssrc, audio_ssrc = (ssrcs[t.mid] for t in viewer.transceivers)

        def count(ssrc: int) -> int:
            return sum(1 for r in got if r.ssrc == ssrc)

        await wait_for(lambda: count(video_ssrc) and count(audio_ssrc) and got_other, timeout=15,
                       what="video and audio at the viewers")

        # 1. The publisher removes its camera section (port 0, out of BUNDLE).
        camera.direction = "inactive"
        await pc.setLocalDescription(await pc.createOffer())
        assert camera.mid is not None
        reoffer = _removed_the_browser_way(pc.localDescription.sdp, camera.mid)
        answer = (await sfu.negotiate(publisher, reoffer, session_id=negotiation.session_id)).answer_sdp
        assert re.search(r"^m=video 0 ", answer, flags=re.M), "the removed section is answered rejected"
        bundle = re.search(r"a=group:BUNDLE([^\r\n]*)", answer)
        assert bundle is not None
        assert camera.mid not in bundle.group(1).split()
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        removed = [e.publication.id for e in events if e.type is RoomEventType.PUBLICATION_REMOVED]
        assert removed == [by_source["camera"].id]
        assert [p.source for p in sfu.publications(room)] == ["microphone"]
        assert by_source["camera"].closed and not by_source["microphone"].closed
        before = count(audio_ssrc)
        await wait_for(lambda: count(audio_ssrc) > before + 25, what="audio still flowing to the viewer")
        video_after = count(video_ssrc)
        (video_sub,) = [s for s in sfu.session(_session_id(viewer.location)).subscriptions.values()
                        if s.kind == "video"]
        assert not video_sub.closed  # waits, idle, for the camera to come back

        # 2. The first viewer stops receiving audio by re-offer (direction inactive).
        viewer_session = sfu.session(_session_id(viewer.location))
        audio_t = next(t for t in viewer.pc.getTransceivers() if t.kind == "audio")
        audio_sub = viewer_session.subscriptions[audio_t.mid]
        audio_t.direction = "inactive"
        await viewer.pc.setLocalDescription(await viewer.pc.createOffer())
        answer = (await sfu.negotiate(tokens.verify_room(viewer_token, room), viewer.pc.localDescription.sdp,
                                      session_id=viewer_session.id)).answer_sdp
        await viewer.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        assert audio_sub.closed and audio_t.mid not in viewer_session.subscriptions
        assert audio_sub not in by_source["microphone"].forwarder.subscriptions
        assert len(by_source["microphone"].forwarder.subscriptions) == 1  # the other viewer's
        before_other = len(got_other)
        await wait_for(lambda: len(got_other) > before_other + 25, what="audio still flowing to the other viewer")
        assert count(video_ssrc) == video_after
        assert [e.type for e in events].count(RoomEventType.PUBLICATION_REMOVED) == 1
    finally:
        for s in sessions:
            await s.close()
        await pc.close()


class SsrcSwitch:
    """Makes a client's sender restart its stream as an encoder restart does: from the next
    packet that starts a keyframe (any packet for audio) a new SSRC, sequence numbers and
    timestamps continue from unrelated random origins."""

    def __init__(self, transceiver: RTCRtpTransceiver, new_ssrc: int, video: bool) -> None:
        self.sender = transceiver.sender
        self.old_ssrc = sender_ssrc(self.sender)
        self.new_ssrc = new_ssrc
        self.video = video
        self.pending = False
        self.active = False
        self.first_new: tuple[int, int] | None = None
        transport = self.sender.transport
        rewrite_sent_rtp(transport, self.rewrite)
        route_rtcp_for_ssrc(transport, self.sender, new_ssrc)  # PLIs for the new ssrc reach it

    def start(self) -> None:
        self.pending = True
        if self.video:
            request_keyframe(self.sender)

    def rewrite(self, data: bytes) -> bytes:
        if len(data) < 12 or 192 <= data[1] <= 223:
            return data  # RTCP
        header = parse_header(data)
        if header.ssrc != self.old_ssrc:
            return data
        if self.pending and not self.active:
            if self.video and not vp8_keyframe_start(data[header.payload_start:header.payload_end]):
                return data
            self.active = True
        if not self.active:
            return data
        seq = (header.sequence_number + 31000) % 65536
        ts = (header.timestamp + 1_500_000_000) % (1 << 32)
        if self.first_new is None:
            self.first_new = (seq, ts)
        return data[:2] + struct.pack("!HII", seq, ts, self.new_ssrc) + data[12:]


@pytest.mark.parametrize("kind", ["video", "audio"])
async def test_a_publisher_changing_ssrc_mid_stream_keeps_subscribers_continuous(server, kind):
    sfu = server.app[SFU]
    tokens = server.tokens
    room = f"ssrc-{kind}"
    source = "camera" if kind == "video" else "microphone"
    track = FlatVideoTrack(160, 120) if kind == "video" else AudioStreamTrack()
    async with aiohttp.ClientSession() as http:
        pub = await publish(http, server.url, room, tokens.issue_room(room, "cabin", role="nurse", publish=[source]),
                            [track])
        sub = None
        try:
            await wait_for(lambda: sfu.publications(room), what="publication")
            sub = await play(http, server.url, room, tokens.issue_room(room, "doc", role="physician",
                                                                       subscribe=True), [kind])
            got = record_received(sub.pc)
            await wait_for(lambda: len(got) > 30, timeout=15, what="packets before the switch")
            (publication,) = sfu._rooms[room].publications.values()
            switch = SsrcSwitch(pub.transceivers[0], 0x5EED1234, kind == "video")
            switch.start()
            await wait_for(lambda: switch.active, timeout=10, what="the client's new ssrc")
            await wait_for(lambda: publication.forwarder.ssrc == switch.new_ssrc, what="the SFU following it")
            at_switch = len(got)
            await wait_for(lambda: len(got) > at_switch + 40, timeout=15, what="packets after the switch")
            media_pt = got[0].payload_type
            media = [r for r in got if r.payload_type == media_pt]
            assert len({r.ssrc for r in media}) == 1, "the subscriber's SSRC changed"
            seqs = [r.sequence_number for r in media]
            steps = [(b - a) % 65536 for a, b in zip(seqs, seqs[1:])]
            assert all(1 <= s <= 3 for s in steps), sorted(set(steps))
            stamps = [r.timestamp for r in media]
            assert all(b == a or ts_newer(b, a) for a, b in zip(stamps, stamps[1:])), "timestamps went back"
            jumps = [(b - a) % (1 << 32) for a, b in zip(stamps, stamps[1:])]
            assert max(jumps) < 90000 * 2, "a timestamp jump of more than 2 s at the switch"
            assert publication.counts.lost < 5, f"new numbering counted as loss: {publication.counts.lost}"
            # the subscriber still decodes
            await sub.transceivers[0].receiver.track.recv()
        finally:
            if sub:
                await sub.close()
            await pub.close()


async def test_sections_of_ended_publications_keep_distinct_msids(server):
    """Two cameras (two parties) end while a viewer holds them: its next answer must not repeat one
    ``a=msid`` (aiortc labels every unlabelled section "<connection stream> camera"), or a browser
    refuses the whole answer ("Duplicate a=msid lines") and can subscribe to nothing more."""
    sfu = server.app[SFU]
    tokens = server.tokens
    room = "two-left"
    async with aiohttp.ClientSession() as http:
        pubs = [await publish(http, server.url, room, tokens.issue_room(room, who, role="nurse", publish=["camera"]),
                              [FlatVideoTrack(160, 120)]) for who in ("guest-a", "guest-b")]
        await wait_for(lambda: len(sfu.publications(room)) == 2, what="both cameras")
        viewer = tokens.verify_room(tokens.issue_room(room, "doc", role="physician", subscribe=True), room)
        pc = client_pc()
        try:
            for _ in pubs:
                pc.addTransceiver("video", direction="recvonly")
            await pc.setLocalDescription(await pc.createOffer())
            ids = [p.id for p in sfu.publications(room)]
            mids = [t.mid for t in pc.getTransceivers()]
            first = await sfu.negotiate(viewer, pc.localDescription.sdp, subscribe=dict(zip(mids, ids)))
            await pc.setRemoteDescription(RTCSessionDescription(sdp=first.answer_sdp, type="answer"))
            for p in pubs:
                await p.close()
            for info in list(sfu.publications(room)):
                await sfu.leave(info.session_id)
            await wait_for(lambda: not sfu.publications(room), what="both cameras gone")
            pc.addTransceiver("audio", direction="recvonly")  # the page re-offers for something new
            await pc.setLocalDescription(await pc.createOffer())
            answer = (await sfu.negotiate(viewer, pc.localDescription.sdp, session_id=first.session_id)).answer_sdp
            msids = re.findall(r"^a=msid:(.*)$", answer, flags=re.M)
            assert len(msids) == len(set(msids)) >= 2, msids
        finally:
            await pc.close()
