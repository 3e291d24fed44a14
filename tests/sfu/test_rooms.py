"""Rooms through WHIP/WHEP and the Python API: labels, grants, bad input, replacement, data."""

from __future__ import annotations

import asyncio
import json
import re

import aiohttp
import pytest
from aiortc import RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack

from core import appkeys
from media.ice import ScopedPeerConnection
from sfu.appkeys import SFU
from sfu.events import RoomEvent, RoomEventType
from sfu.keyframes import vp8_keyframe_start
from sfu.sdp import msids
from tests.sfu.clients import FlatVideoTrack, play, post_offer, publish, record_received
from tests.support import wait_for

pytestmark = pytest.mark.timeout(60)


async def test_late_subscriber_gets_a_keyframe_promptly(server):
    """aiortc's VP8 encoder has a 3000-frame GOP: the keyframe comes from the SFU's PLI."""
    tokens = server.tokens
    sfu = server.app[SFU]
    async with aiohttp.ClientSession() as http:
        pub = await publish(http, server.url, "late", tokens.issue_room("late", "cabin", role="nurse",
                                                                          publish=["camera"]), [FlatVideoTrack()])
        try:
            await wait_for(lambda: sfu.metrics.totals().packets_in > 60, what="2 s of video at the SFU")
            loop = asyncio.get_running_loop()
            started = loop.time()
            sub = await play(http, server.url, "late", tokens.issue_room("late", "doc", role="physician",
                                                                         subscribe=True), ["video"])
            received = record_received(sub.pc)
            try:
                await wait_for(lambda: received, timeout=5, what="first packet")
                first = received[0]
                assert vp8_keyframe_start(first.payload)
                assert first.at - started < 0.3, f"first keyframe after {1000 * (first.at - started):.0f} ms"
            finally:
                await sub.close()
        finally:
            await pub.close()


async def test_cabin_and_physician_see_each_others_labelled_tracks(server):
    tokens = server.tokens
    room = "consult"
    cabin = tokens.issue_room(room, "cabin", role="nurse",
                              publish=["camera", "microphone", "stethoscope", "dermatoscope"], subscribe=True)
    doctor = tokens.issue_room(room, "dr-martin", role="physician", publish=["camera", "microphone"], subscribe=True)
    sessions = []
    async with aiohttp.ClientSession() as http:
        try:
            sessions.append(await publish(http, server.url, room, cabin, [FlatVideoTrack(160, 120),
                                          AudioStreamTrack()], sources=["camera", "microphone"]))
            sessions.append(await publish(http, server.url, room, cabin, [FlatVideoTrack(160, 120),
                                          AudioStreamTrack()], sources=["dermatoscope", "stethoscope"]))
            sessions.append(await publish(http, server.url, room, doctor, [FlatVideoTrack(160, 120),
                                          AudioStreamTrack()]))
            sfu = server.app[SFU]
            await wait_for(lambda: len(sfu.publications(room)) == 6, what="6 publications")
            doctor_view = await play(http, server.url, room, doctor, ["video", "video", "audio", "audio"])
            cabin_view = await play(http, server.url, room, cabin, ["video", "audio"])
            sessions += [doctor_view, cabin_view]
            labels = msids(doctor_view.answer)
            got = [labels[t.mid] for t in doctor_view.transceivers]
            assert got == ["cabin camera", "cabin dermatoscope", "cabin microphone", "cabin stethoscope"]
            labels = msids(cabin_view.answer)
            assert [labels[t.mid] for t in cabin_view.transceivers] == ["dr-martin camera", "dr-martin microphone"]
            for view in (doctor_view, cabin_view):
                for t in view.transceivers:
                    await asyncio.wait_for(t.receiver.track.recv(), 10)  # media flows on each
        finally:
            for s in sessions:
                await s.close()


async def test_grants_and_bad_input_are_refused_and_the_server_keeps_serving(server):
    tokens = server.tokens
    sfu = server.app[SFU]
    pc = ScopedPeerConnection()
    pc.addTransceiver("video", direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    offer = pc.localDescription.sdp
    await pc.close()
    camera_only = tokens.issue_room("g", "cabin", role="nurse", publish=["camera"])
    async with aiohttp.ClientSession() as http:
        async def post(path, token, body, content_type="application/sdp"):
            r = await http.post(server.url + path, data=body, headers={"Authorization": f"Bearer {token}",
                                                                       "Content-Type": content_type})
            return r.status, (await r.json() if r.content_type == "application/json" else await r.text())

        status, body = await post("/whip/g?source=dermatoscope", camera_only, offer)
        assert status == 403 and body["error"] == "forbidden"
        status, body = await post("/whip/other", camera_only, offer)
        assert status == 401
        status, body = await post("/whep/g", camera_only, offer)
        assert status == 403
        status, body = await post("/whip/g", camera_only, offer, "text/plain")
        assert status == 415
        hostile = [
            "", "hello", "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/abc\r\n",
            "v=0\r\n" + "a=x\r\n" * 20000, "v=0\r\nm=video 70000 RTP 96\r\n\x00",
            offer.replace("a=rtcp-mux\r\n", ""), offer.replace("VP8/90000", "VP9/90000").replace("H264/90000", "X/1"),
            # header extension ids no packet can carry (RFC 8285), a mid no header extension can carry
            re.sub(r"a=extmap:\d+ ", "a=extmap:300 ", offer, count=1),
            re.sub(r"a=extmap:\d+ ", "a=extmap:0 ", offer, count=1),
            offer.replace("a=mid:0", "a=mid:" + "m" * 300).replace("BUNDLE 0", "BUNDLE " + "m" * 300),
        ]
        assert "a=extmap:" in offer and "a=mid:0" in offer
        viewer = tokens.issue_room("g", "doc", role="physician", subscribe=True)
        for bad in hostile:
            for path, token in (("/whip/g", camera_only), ("/whep/g", viewer)):
                status, body = await post(path, token, bad)
                assert 400 <= status < 500 and isinstance(body, dict) and body["reason"], (path, bad[:40], status, body)
        assert sfu.publications("g") == []
        # still serving
        session = await publish(http, server.url, "g", camera_only, [FlatVideoTrack(160, 120)])
        try:
            await wait_for(lambda: sfu.publications("g"), what="a publication")
            r = await http.delete(server.url + session.location, headers={"Authorization": f"Bearer {camera_only}"})
            assert r.status == 204
            assert sfu.publications("g") == []
            r = await http.patch(server.url + session.location, headers={"Authorization": f"Bearer {camera_only}"})
            assert r.status == 405
        finally:
            await session.close()


async def test_replacing_a_publication_keeps_the_subscriber_stream_continuous(server):
    tokens = server.tokens
    sfu = server.app[SFU]
    events: list[RoomEvent] = []
    sfu.on_room_event("rep", events.append)
    token = tokens.issue_room("rep", "cabin", role="nurse", publish=["camera"])
    async with aiohttp.ClientSession() as http:
        first = await publish(http, server.url, "rep", token, [FlatVideoTrack(160, 120)])
        sub = second = None
        try:
            await wait_for(lambda: sfu.publications("rep"), what="publication")
            old_id = sfu.publications("rep")[0].id
            sub = await play(http, server.url, "rep", tokens.issue_room("rep", "doc", role="physician",
                                                                        subscribe=True), ["video"])
            received = record_received(sub.pc)
            await wait_for(lambda: len(received) > 20, what="packets before replacement")
            second = await publish(http, server.url, "rep", token, [FlatVideoTrack(160, 120)])
            (info,) = sfu.publications("rep")
            assert info.replaces == old_id
            before = len(received)
            await wait_for(lambda: len(received) > before + 20, what="packets after replacement")
            media = [r for r in received if r.payload_type == received[0].payload_type]
            assert len({r.ssrc for r in media}) == 1
            seqs = [r.sequence_number for r in media]
            steps = {(b - a) % 65536 for a, b in zip(seqs, seqs[1:])}
            assert steps <= {1, 2, 3}, steps  # continuous (a reordered or lost packet at most)
            kinds = [e.type for e in events]
            assert RoomEventType.PUBLICATION_REMOVED in kinds and kinds.count(RoomEventType.PUBLICATION_ADDED) == 2
        finally:
            for s in (sub, second, first):
                if s:
                    await s.close()


async def _data_peer(sfu, grant, publish_video: bool):
    pc = ScopedPeerConnection()
    channel = pc.createDataChannel("room")
    inbox: list = []
    channel.on("message", lambda m: inbox.append(json.loads(m)))
    publish = {}
    if publish_video:
        pc.addTransceiver(FlatVideoTrack(160, 120), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    if publish_video:
        publish = {pc.getTransceivers()[0].mid: "camera"}
    negotiation = await sfu.negotiate(grant, pc.localDescription.sdp, publish=publish)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=negotiation.answer_sdp, type="answer"))
    await wait_for(lambda: channel.readyState == "open", what="data channel open")
    return pc, channel, inbox, negotiation.session_id


async def test_data_channel_relay_and_renegotiation_through_the_python_api(server):
    tokens = server.tokens
    sfu = server.app[SFU]
    nurse = tokens.verify_room(tokens.issue_room("d", "cabin", role="nurse", publish=["camera"], subscribe=True), "d")
    doctor = tokens.verify_room(tokens.issue_room("d", "dr", role="physician", subscribe=True, command=True), "d")
    npc, nch, ninbox, _ = await _data_peer(sfu, nurse, publish_video=True)
    dpc, dch, dinbox, dsession = await _data_peer(sfu, doctor, publish_video=False)
    try:
        nch.send(json.dumps({"type": "chat", "text": "bonjour"}))
        await wait_for(lambda: dinbox, what="relayed message")
        assert dinbox[0] == {"from": "cabin", "role": "nurse", "data": {"type": "chat", "text": "bonjour"}}
        nch.send(json.dumps({"type": "command", "device": "stethoscope", "mode": "bell"}))
        await wait_for(lambda: ninbox, what="refusal")
        assert ninbox[0]["from"] == "sfu" and ninbox[0]["data"]["type"] == "error"
        dch.send(json.dumps({"type": "command", "device": "stethoscope", "mode": "bell"}))
        await wait_for(lambda: len(ninbox) == 2, what="command relayed")
        assert ninbox[1]["from"] == "dr" and ninbox[1]["data"]["mode"] == "bell"
        assert len(dinbox) == 1  # the refused command went nowhere
        nch.send("x" * 20000)
        await wait_for(lambda: len(ninbox) == 3, what="size refusal")
        assert sfu.send_data("d", {"type": "notice"}) == 2
        # renegotiation: the physician now subscribes to the nurse's camera on the same connection
        (info,) = sfu.publications("d")
        t = dpc.addTransceiver("video", direction="recvonly")
        await dpc.setLocalDescription(await dpc.createOffer())
        negotiation = await sfu.negotiate(doctor, dpc.localDescription.sdp, session_id=dsession,
                                          subscribe={t.mid: info.id})
        assert negotiation.session_id == dsession
        assert msids(negotiation.answer_sdp)[t.mid] == "cabin camera"
        await dpc.setRemoteDescription(RTCSessionDescription(sdp=negotiation.answer_sdp, type="answer"))
        frame = await asyncio.wait_for(t.receiver.track.recv(), 10)
        assert frame.width == 160
    finally:
        await npc.close()
        await dpc.close()


async def test_metrics_ready_probe_and_close(server):
    tokens = server.tokens
    sfu = server.app[SFU]
    async with aiohttp.ClientSession() as http:
        pub = await publish(http, server.url, "m", tokens.issue_room("m", "cabin", role="nurse", publish=["camera"]),
                            [FlatVideoTrack(160, 120)])
        sub = await play(http, server.url, "m", tokens.issue_room("m", "doc", role="physician", subscribe=True),
                         ["video"])
        try:
            await asyncio.wait_for(sub.transceivers[0].receiver.track.recv(), 10)
            text = await (await http.get(server.url + "/metrics")).text()
            assert 'teleconsult_sfu_media_transcode_total{op="decode"} 0.0' in text
            assert 'teleconsult_sfu_media_transcode_total{op="encode"} 0.0' in text
            assert 'teleconsult_sfu_packets_total{direction="out",kind="video",source="camera"}' in text
            assert "teleconsult_sfu_rooms 1.0" in text
            ready = await (await http.get(server.url + "/readyz")).json()
            assert ready["checks"]["sfu"] is True
            server.app[appkeys.LIFECYCLE].signal()  # draining
            r = await post_offer(http, server.url + "/whip/new-room",
                                 tokens.issue_room("new-room", "x", role="nurse", publish=["camera"]), pub.answer)
            assert r.status == 503
            await sfu.close_room("m")
            await sfu.close_room("m")
            assert sfu.rooms() == []
        finally:
            await sub.close()
            await pub.close()


async def test_the_device_agent_hears_its_share_of_the_site_uplink_when_the_nurse_camera_starts_and_stops(server):
    """sfu/congestion.py, agent site share: the nurse's camera is held to ``nurse_site_share`` of the
    site's estimate; the agent hears the rest on its channel, at once (and on joining after it)."""
    tokens = server.tokens
    sfu = server.app[SFU]
    share = round(1.0 - server.app[appkeys.SETTINGS].media.nurse_site_share, 3)
    agent = tokens.verify_room(tokens.issue_room("s", "agent", role="agent", publish=["dermatoscope"]), "s")
    nurse = tokens.verify_room(tokens.issue_room("s", "cabin", role="nurse", publish=["camera"]), "s")

    def shares(inbox: list) -> list:
        return [m["data"]["share"] for m in inbox if m["from"] == "sfu" and m["data"].get("type") == "site_share"]

    apc, _, ainbox, _ = await _data_peer(sfu, agent, publish_video=False)
    npc = None
    try:
        await wait_for(lambda: shares(ainbox) == [1.0], what="the agent's share on its channel's opening")
        npc, _, ninbox, nsession = await _data_peer(sfu, nurse, publish_video=True)
        await wait_for(lambda: shares(ainbox) == [1.0, share], what="the share once the nurse's camera publishes")
        assert not shares(ninbox)  # the nurse's browser is held by its REMB instead
        # An agent joining after the camera hears the share at once.
        late_pc, _, late_inbox, _ = await _data_peer(sfu, agent, publish_video=False)
        try:
            await wait_for(lambda: shares(late_inbox) == [share], what="the late agent's share")
        finally:
            await late_pc.close()
        assert await sfu.leave(nsession)
        await wait_for(lambda: shares(ainbox)[-1] == 1.0, what="the whole uplink back once the camera stopped")
    finally:
        await apc.close()
        if npc is not None:
            await npc.close()
