import asyncio
import fractions

import av
import numpy as np
import pytest
from aiortc.codecs.base import Encoder
from aiortc.codecs.opus import OpusDecoder, OpusEncoder
from aiortc.jitterbuffer import JitterFrame

from devices.opus_encoder import (
    OpusApplication,
    OpusConfig,
    StethoscopeOpusEncoder,
    sender_encoder,
    stethoscope_codecs,
    use_stethoscope_encoder,
)
from devices.sdp import opus_fmtp, set_opus_fmtp
from devices.simulated import PhonocardiogramSimulator, make_multitone
from devices.stethoscope import StethoscopeAdapter
from media import red
from media.aiortc_internals import replace_sender_encoder
from media.ice import ScopedPeerConnection

LOW = [25.0, 30.0, 35.0, 40.0]
REFERENCE = [300.0, 1000.0]


def _round_trip(encoder: Encoder, signal: np.ndarray) -> np.ndarray:
    decoder = OpusDecoder()
    pcm = np.clip(np.rint(signal * 32767), -32768, 32767).astype(np.int16)
    out = []
    timestamp = 0
    for start in range(0, len(pcm) - 959, 960):
        chunk = np.repeat(pcm[start : start + 960, None], 2, axis=1).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = 48000, start, fractions.Fraction(1, 48000)
        payloads, _ = encoder.encode(frame)
        for payload in payloads:
            for decoded in decoder.decode(JitterFrame(data=payload, timestamp=timestamp)):
                assert isinstance(decoded, av.AudioFrame)
                out.append(decoded.to_ndarray().reshape(-1, 2)[:, 0])
            timestamp += 960
    return np.concatenate(out).astype(np.float64) / 32767


def _tone_gain_db(signal: np.ndarray, freq: float, amplitude: float) -> float:
    t = np.arange(len(signal)) / 48000
    measured = 2 * abs(np.mean(signal * np.exp(-2j * np.pi * freq * t)))
    return float(20 * np.log10(measured / amplitude))


def test_low_frequencies_survive_our_encoder_but_not_stock_voip() -> None:
    amplitude = 0.08
    signal = make_multitone(LOW + REFERENCE, 2.0, amplitude)
    ours = _round_trip(StethoscopeOpusEncoder(), signal)[-48000:]
    stock = _round_trip(OpusEncoder(), signal)[-48000:]
    ours_db = [_tone_gain_db(ours, f, amplitude) for f in LOW]
    stock_db = [_tone_gain_db(stock, f, amplitude) for f in LOW]
    assert all(abs(g) <= 3 for g in ours_db), ours_db
    # The stock encoder (application=voip) high-passes: 25 Hz loses far more than 3 dB.
    assert stock_db[0] < -6 and min(stock_db) < -3, stock_db
    for f in REFERENCE:
        assert abs(_tone_gain_db(ours, f, amplitude)) <= 1
        assert abs(_tone_gain_db(stock, f, amplitude)) <= 1


def test_config_is_what_libopus_gets() -> None:
    encoder = StethoscopeOpusEncoder(OpusConfig(bitrate=96000, application=OpusApplication.LOWDELAY))
    assert encoder.codec.options["application"] == "lowdelay"
    assert encoder.codec.options["dtx"] == "0" and encoder.codec.options["fec"] == "1"
    assert encoder.codec.bit_rate == 96000 and encoder.codec.layout.name == "stereo"
    with pytest.raises(ValueError):
        OpusConfig(bitrate=32000)


async def test_sender_hook_in_a_real_loopback_call() -> None:
    """If an aiortc upgrade breaks the hook, this fails: the sender must use our encoder."""
    adapter = StethoscopeAdapter(PhonocardiogramSimulator(70, channels=2, seed=1), channels=2)
    caller, callee = ScopedPeerConnection(), ScopedPeerConnection()
    received = asyncio.Event()
    frames: list[av.AudioFrame] = []

    @callee.on("track")
    def on_track(track: object) -> None:
        async def pull() -> None:
            while len(frames) < 10:
                frames.append(await track.recv())  # type: ignore[attr-defined]
            received.set()

        asyncio.ensure_future(pull())

    try:
        track = adapter.track
        assert track is not None and track.source == "stethoscope"  # type: ignore[attr-defined]
        transceiver = caller.addTransceiver(track, direction="sendonly")
        encoder = use_stethoscope_encoder(transceiver.sender)
        await caller.setLocalDescription(await caller.createOffer())
        mid = transceiver.mid
        assert mid is not None
        offer = set_opus_fmtp(caller.localDescription.sdp, mid)
        await callee.setRemoteDescription(type(caller.localDescription)(sdp=offer, type="offer"))
        await callee.setLocalDescription(await callee.createAnswer())
        await caller.setRemoteDescription(callee.localDescription)
        async with asyncio.timeout(20):
            await received.wait()
        assert sender_encoder(transceiver.sender) is encoder
        assert encoder.first_packet_pts is not None  # it really encoded
        assert opus_fmtp(offer, mid)["stereo"] == "1"
    finally:
        await caller.close()
        await callee.close()
        await adapter.close()


async def test_hook_refuses_a_started_sender() -> None:
    pc = ScopedPeerConnection()
    try:
        transceiver = pc.addTransceiver("audio")
        replace_sender_encoder(transceiver.sender, OpusEncoder())  # as if it had started sending
        with pytest.raises(RuntimeError, match="already"):
            use_stethoscope_encoder(transceiver.sender)
    finally:
        await pc.close()


RED_ANSWER = "\r\n".join([
    "v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "t=0 0",
    "m=audio 9 UDP/TLS/RTP/SAVPF 63 96", "a=mid:0",
    "a=rtpmap:63 red/48000/2", "a=fmtp:63 96/96", "a=rtpmap:96 opus/48000/2", "",
])


def test_red_once_answered_each_packet_carries_the_previous_frame():
    encoder = StethoscopeOpusEncoder(OpusConfig(red_distance=1))
    assert not encoder.answered(RED_ANSWER.replace("a=rtpmap:63 red/48000/2\r\n", ""), "0")
    assert encoder.answered(RED_ANSWER, "0")
    signal = make_multitone(REFERENCE, 0.5, 0.3)
    pcm = np.repeat(np.rint(signal * 32767).astype(np.int16)[:, None], 2, axis=1)
    payloads = []
    for start in range(0, len(pcm) - 959, 960):
        frame = av.AudioFrame.from_ndarray(pcm[start:start + 960].reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = 48000, start, fractions.Fraction(1, 48000)
        payloads += encoder.encode(frame)[0]
    blocks = [red.parse(p) for p in payloads]
    assert len(blocks) > 10 and all(b[-1].payload_type == 96 for b in blocks)
    for previous, current in zip(blocks, blocks[1:]):
        assert [(b.timestamp_offset, b.data) for b in current[:-1]] == [(960, previous[-1].data)]
    # What a plain decoder gets from the primaries is the stethoscope's audio.
    decoder = OpusDecoder()
    decoded = [f for b in blocks for f in decoder.decode(JitterFrame(data=b[-1].data, timestamp=0))]
    assert len(decoded) == len(blocks)


def test_stethoscope_codecs_put_red_first_unless_off():
    assert [c.mimeType for c in stethoscope_codecs(OpusConfig())] == ["audio/red", "audio/opus"]
    assert [c.mimeType for c in stethoscope_codecs(OpusConfig(red_distance=0))] == ["audio/opus"]
    encoder = StethoscopeOpusEncoder(OpusConfig(red_distance=0))
    assert encoder.answered(RED_ANSWER, "0")  # negotiated anyway: RED framing, primary alone
    assert encoder.red is not None and encoder.red.distance == 0
    encoder.set_red_distance(2)
    assert encoder.red.distance == 2
    with pytest.raises(ValueError):
        encoder.set_red_distance(-1)
    with pytest.raises(ValueError):
        OpusConfig(red_distance=8)
