"""Packet forwarding through the real server with real aiortc peers (loopback)."""

from __future__ import annotations

import asyncio
import re

import aiohttp
import pytest
from aiortc.mediastreams import AudioStreamTrack

from media.aiortc_internals import sender_report_counts
from sfu.appkeys import SFU
from sfu.keyframes import keyframe_start
from tests.sfu.clients import FlatVideoTrack, play, publish, record_received, record_sent
from tests.support import wait_for

pytestmark = pytest.mark.timeout(60)


def _match(sent, received, kind_pt):
    """Every received media packet's payload is byte-identical to a sent one, in order."""
    by_payload: dict[bytes, int] = {}
    for i, p in enumerate(sent):
        by_payload.setdefault(p.payload, i)
    positions = []
    for r in received:
        if r.payload_type != kind_pt:
            continue
        assert r.payload in by_payload, "a forwarded payload differs from every sent one"
        positions.append(by_payload[r.payload])
    return positions


@pytest.mark.parametrize("codec", ["video/VP8", "video/H264", "audio/opus"])
async def test_bytes_in_equal_bytes_out(server, codec):
    kind = codec.split("/")[0]
    source = "camera" if kind == "video" else "microphone"
    tokens = server.tokens
    pub_token = tokens.issue_room("r1", "cabin", role="nurse", publish=[source])
    sub_token = tokens.issue_room("r1", "doc", role="physician", subscribe=True)
    track = FlatVideoTrack() if kind == "video" else AudioStreamTrack()
    async with aiohttp.ClientSession() as http:
        pub = await publish(http, server.url, "r1", pub_token, [track], codecs={kind: codec})
        sent = record_sent(pub.pc)
        sub = None
        try:
            await wait_for(lambda: server.app[SFU].publications("r1"), what="publication")
            sub = await play(http, server.url, "r1", sub_token, [kind], codecs={kind: codec})
            received = record_received(sub.pc)
            await wait_for(lambda: len([r for r in received]) >= 30, timeout=15, what="30 packets forwarded")
            media_pt = received[0].payload_type
            positions = _match(sent, received, media_pt)
            assert positions == sorted(positions)
            assert len(set(r.ssrc for r in received if r.payload_type == media_pt)) == 1
            if kind == "video":
                first = next(r for r in received if r.payload_type == media_pt)
                assert keyframe_start(codec.split("/")[1].lower(), first.payload), "did not start on a keyframe"
            # Sender Reports count what the SFU wrote on this leg
            (participant,) = [p for p in server.app[SFU]._rooms["r1"].participants.values() if p.subscriptions]
            (subscription,) = participant.subscriptions.values()
            packets, octets, _ = sender_report_counts(subscription.sender)
            media = [r for r in received if r.payload_type == media_pt]
            assert packets >= len(media) and octets >= sum(len(r.payload) for r in media)
            # The writes went the configured way, and /metrics counts them
            sends = server.app[SFU].send_batch
            assert sends.uses_native == (server.settings.media.send_path == "native")
            assert sends.counts.datagrams >= len(media) and sends.counts.failed == 0
            assert 0 < sends.counts.syscalls <= sends.counts.datagrams
            counted = sends.counts.datagrams
            metrics = await (await http.get(server.url + "/metrics")).text()
            (exported,) = re.findall(r"^teleconsult_sfu_send_datagrams_total (\S+)$", metrics, re.M)
            assert float(exported) >= counted  # packets go on flowing meanwhile
            # a real aiortc receiver decodes what it gets
            track_in = sub.transceivers[0].receiver.track
            frame = await asyncio.wait_for(track_in.recv(), 10)
            if kind == "video":
                assert (frame.width, frame.height) == (320, 240)
        finally:
            if sub:
                await sub.close()
            await pub.close()
