"""RED (RFC 2198) for the stethoscope through the real SFU: an agent-like aiortc publisher (the
stethoscope's Opus encoder, RED offered first) publishes over WHIP; a subscriber that offers RED
gets the RED payloads, with its own payload types, and recovers the packets its lossy leg drops
from the next packet's redundancy; a subscriber that offers Opus only gets each packet's primary
Opus frame, as plain Opus. Loss is injected on the RED subscriber's leg (media.ice.RandomLoss)."""

from __future__ import annotations

import aiohttp
import numpy as np
import pytest
from aiortc import RTCSessionDescription
from aiortc import sdp as aiortc_sdp
from aiortc.mediastreams import AudioStreamTrack
from av import AudioFrame

from devices.opus_encoder import OpusConfig, stethoscope_codecs, use_stethoscope_encoder
from media import red
from media.red import set_red_fmtp as red_fmtp
from media.ice import RandomLoss
from sfu.appkeys import SFU
from tests.sfu.clients import Session, client_pc, post_offer, prefer, record_received, record_sent
from tests.support import wait_for

pytestmark = pytest.mark.timeout(60)


class ToneTrack(AudioStreamTrack):
    """A 440 Hz tone (aiortc's AudioStreamTrack is silence)."""

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


def renumber_opus(sdp: str, opus: int, *, red: bool = True) -> str:
    """An aiortc offer with Opus at ``opus`` instead of 96 (as Chromium numbers it: 111), with
    RED's fmtp (or without RED): the SFU must renumber what it forwards for this leg."""
    out = []
    for line in sdp.split("\r\n"):
        if line.startswith("m=audio"):
            formats = [str(opus) if f == "96" else f for f in line.split()[3:] if red or f != "63"]
            line = " ".join(line.split()[:3] + formats)
        elif line.startswith(("a=rtpmap:96 ", "a=fmtp:96 ")):
            line = line.replace(":96 ", f":{opus} ", 1)
        elif line.startswith("a=rtpmap:63 ") and not red:
            continue
        out.append(line)
    text = "\r\n".join(out)
    return red_fmtp(text) if red else text


async def play_renumbered(http: aiohttp.ClientSession, base: str, room: str, token: str, opus: int, *,
                          red: bool, hook: RandomLoss | None = None) -> Session:
    """A WHEP player whose offer numbers Opus ``opus`` (and offers RED or not)."""
    pc = client_pc(hook)
    transceiver = pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    response = await post_offer(http, f"{base}/whep/{room}", token,
                                renumber_opus(pc.localDescription.sdp, opus, red=red))
    text = await response.text()
    if response.status != 201:
        await pc.close()
        raise AssertionError(f"WHEP {response.status}: {text}")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=text, type="answer"))
    return Session(pc, response.headers["Location"], text, [transceiver])


def codecs_of(answer: str) -> dict[str, int]:
    (media,) = aiortc_sdp.SessionDescription.parse(answer).media
    return {c.mimeType.lower(): c.payloadType for c in media.rtp.codecs if c.payloadType is not None}


async def test_red_reaches_a_red_subscriber_and_its_primary_a_plain_one(server):
    sfu = server.app[SFU]
    tokens = server.tokens
    loss = RandomLoss(0.1, seed=5)
    config = OpusConfig(red_distance=2)
    pc = client_pc()
    sessions = []
    try:
        # The agent's way (devices/agent_room.py): RED first, then Opus; RED's fmtp; the
        # encoder follows the answer.
        transceiver = pc.addTransceiver(ToneTrack(), direction="sendonly")
        transceiver.setCodecPreferences(stethoscope_codecs(config))
        encoder = use_stethoscope_encoder(transceiver.sender, config)
        sent = record_sent(pc)
        await pc.setLocalDescription(await pc.createOffer())
        offer = red.set_red_fmtp(pc.localDescription.sdp, levels=3)
        async with aiohttp.ClientSession() as http:
            response = await post_offer(http, f"{server.url}/whip/red", tokens.issue_room(
                "red", "cabin", role="nurse", publish=["stethoscope"]), offer)
            answer = await response.text()
            assert response.status == 201, answer
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
            assert transceiver.mid is not None
            assert encoder.answered(answer, transceiver.mid)
            publisher_types = codecs_of(answer)
            assert list(publisher_types)[:2] == ["audio/red", "audio/opus"], "RED first, as offered"
            opus_in, red_in = publisher_types["audio/opus"], publisher_types["audio/red"]
            assert f"a=fmtp:{red_in} {opus_in}/{opus_in}" in answer
            await wait_for(lambda: sfu.publications("red"), what="publication")
            viewer = tokens.issue_room("red", "doc", role="physician", subscribe=True)
            # Chromium's numbering on the RED leg (Opus 111), another on the plain one.
            with_red = await play_renumbered(http, server.url, "red", viewer, 111, red=True, hook=loss)
            plain = await play_renumbered(http, server.url, "red", viewer, 109, red=False)
        sessions += [with_red, plain]
        got_red, got_plain = record_received(with_red.pc), record_received(plain.pc)
        await wait_for(lambda: loss.dropped >= 20 and len(got_red) > 150 and len(got_plain) > 150, timeout=40,
                       what="audio on both legs, loss on the RED one")

        # The publisher sent RED: each packet's blocks are Opus of the publisher's leg.
        sent_red = [p for p in sent if p.payload_type == red_in]
        assert len(sent_red) == len(sent) > 100
        primaries = [red.primary(p.payload)[1] for p in sent_red]
        assert all(red.valid(p.payload, opus_in) for p in sent_red)
        assert sum(len(red.parse(p.payload)) >= 2 for p in sent_red) > 0.9 * len(sent_red)

        # The RED subscriber: RED with its own payload types, and what its leg lost comes
        # back from the next packet.
        types = codecs_of(with_red.answer)
        assert types == {"audio/opus": 111, "audio/red": 63} and opus_in == 96
        assert f"a=fmtp:{types['audio/red']} {types['audio/opus']}/{types['audio/opus']}" in with_red.answer
        assert {p.payload_type for p in got_red} == {types["audio/red"]}
        receiver = red.RedReceiver()
        frames = []
        for packet in got_red:
            assert red.valid(packet.payload, types["audio/opus"]), "a RED block kept the publisher's type"
            frames += receiver.push(packet.sequence_number, packet.timestamp, packet.payload)
        received_seqs = {p.sequence_number for p in got_red}
        lost = set(range(min(received_seqs), max(received_seqs) + 1)) - received_seqs
        assert len(lost) >= 5, "no loss on the RED leg"
        # Each lost packet comes back when one of the two after it arrived and carried it.
        depth = {p.sequence_number: len(red.parse(p.payload)) - 1 for p in got_red}
        recoverable = {s for s in lost if any(depth.get((s + k) % 65536, 0) >= k for k in (1, 2))}
        assert {f.sequence_number for f in frames if f.recovered} == recoverable
        assert len(recoverable) >= len(lost) - 3
        first = primaries.index(frames[0].data)
        origin = frames[0].sequence_number
        for frame in frames:
            assert frame.data == primaries[first + (frame.sequence_number - origin) % 65536], \
                "a recovered frame is not the one its packet carried"

        # The plain subscriber: Opus only, each packet the primary frame, nothing lost.
        assert codecs_of(plain.answer) == {"audio/opus": 109}
        assert {p.payload_type for p in got_plain} == {109}
        primary_set = set(primaries)
        assert all(p.payload in primary_set for p in got_plain), "not the primary Opus frame"
        plain_seqs = {p.sequence_number for p in got_plain}
        assert len(plain_seqs) == max(plain_seqs) - min(plain_seqs) + 1
        assert sfu.metrics.dropped.get("malformed_red", 0) == 0
    finally:
        for session in sessions:
            await session.close()
        await pc.close()


async def test_a_publisher_without_red_is_answered_opus_only(server):
    """An offer with Opus alone gets Opus alone; an aiortc offer with its default codecs (RED
    last) gets RED after Opus, so that aiortc goes on sending Opus."""
    tokens = server.tokens
    for prefs, expected in ((["audio/opus"], ["audio/opus"]), (None, ["audio/opus", "audio/red"])):
        pc = client_pc()
        try:
            transceiver = pc.addTransceiver(ToneTrack(), direction="sendonly")
            if prefs is not None:
                prefer(transceiver, prefs[0])
            await pc.setLocalDescription(await pc.createOffer())
            async with aiohttp.ClientSession() as http:
                response = await post_offer(http, f"{server.url}/whip/plain", tokens.issue_room(
                    "plain", "cabin", role="nurse", publish=["stethoscope"]), pc.localDescription.sdp)
                answer = await response.text()
                assert response.status == 201, answer
            assert list(codecs_of(answer)) == expected
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        finally:
            await pc.close()
