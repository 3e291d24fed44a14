"""Shared test media: real encoded frames, packetized by aiortc's own packetizers."""

from __future__ import annotations

import fractions
from dataclasses import dataclass
from typing import Literal

import av
import numpy as np
import pytest
from aiortc import RTCRtpCodecParameters
from aiortc.codecs import get_encoder
from aiortc.rtp import RtpPacket

from media.recording.vault import MasterKey, Vault

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
H264 = RTCRtpCodecParameters(
    mimeType="video/H264",
    clockRate=90000,
    payloadType=102,
    parameters={"packetization-mode": "1", "profile-level-id": "42e01f"},
)
OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)


@dataclass(frozen=True)
class Clip:
    """Encoded frames of one codec and the RTP packets that carry them."""

    codec: RTCRtpCodecParameters
    frames: list[tuple[bytes, int, bool]]
    """(data, RTP timestamp offset, keyframe)."""
    packets: list[list[RtpPacket]]
    """Per frame, its packets."""

    def flat(self) -> list[RtpPacket]:
        return [p for group in self.packets for p in group]


def encode_video(codec_name: Literal["libvpx", "libx264"], count: int, width: int = 160, height: int = 120,
                 gop: int = 30) -> list[av.Packet]:
    ctx = av.CodecContext.create(codec_name, "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
    ctx.time_base = fractions.Fraction(1, 30)
    ctx.framerate = fractions.Fraction(30, 1)
    ctx.gop_size = gop
    if codec_name == "libx264":
        ctx.options = {"tune": "zerolatency", "preset": "ultrafast"}
        ctx.profile = "Baseline"
    else:
        ctx.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    rng = np.random.default_rng(1)
    out: list[av.Packet] = []
    for i in range(count):
        img = np.zeros((height, width, 3), np.uint8)
        img[:, : (i * 4) % width] = (200, 40, 40)
        img[::7, ::5] = rng.integers(0, 255, size=img[::7, ::5].shape, dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        frame.time_base = ctx.time_base
        out += ctx.encode(frame)
    out += ctx.encode(None)
    return out


def encode_opus(count: int) -> list[av.Packet]:
    ctx = av.CodecContext.create("libopus", "w")
    ctx.sample_rate = 48000
    ctx.layout = "stereo"
    ctx.format = "s16"
    out: list[av.Packet] = []
    t = np.arange(960) / 48000
    for i in range(count):
        tone = (np.sin(2 * np.pi * 220 * (t + i * 0.02)) * 8000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.repeat(tone, 2).reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate = 48000
        frame.pts = i * 960
        frame.time_base = fractions.Fraction(1, 48000)
        out += ctx.encode(frame)
    return out[:count]


def packetize(
    codec: RTCRtpCodecParameters, encoded: list[av.Packet], *, seq0: int = 1000, ts0: int = 12345, ssrc: int = 1234
) -> Clip:
    encoder = get_encoder(codec)
    step = 3000 if codec.clockRate == 90000 else 960
    seq = seq0
    frames: list[tuple[bytes, int, bool]] = []
    groups: list[list[RtpPacket]] = []
    for i, enc in enumerate(encoded):
        data = bytes(enc)
        src = av.Packet(data)
        src.pts = i * step
        src.time_base = fractions.Fraction(1, codec.clockRate)
        payloads, _ = encoder.pack(src)
        ts = (ts0 + i * step) % (1 << 32)
        group = []
        for j, payload in enumerate(payloads):
            group.append(
                RtpPacket(
                    payload_type=codec.payloadType or 96,
                    marker=1 if (j == len(payloads) - 1 and codec.clockRate == 90000) else 0,
                    sequence_number=seq % (1 << 16),
                    timestamp=ts,
                    ssrc=ssrc,
                    payload=payload,
                )
            )
            seq += 1
        frames.append((data, ts, bool(enc.is_keyframe)))
        groups.append(group)
    return Clip(codec, frames, groups)


@pytest.fixture(scope="session")
def vp8_clip() -> Clip:
    return packetize(VP8, encode_video("libvpx", 90, gop=30))


@pytest.fixture(scope="session")
def h264_clip() -> Clip:
    # Large enough frames that some keyframes need FU-A.
    return packetize(H264, encode_video("libx264", 60, 320, 240, gop=30))


@pytest.fixture(scope="session")
def opus_clip() -> Clip:
    return packetize(OPUS, encode_opus(150))


@pytest.fixture()
def vault() -> Vault:
    return Vault(MasterKey.generate(), chunk_size=4096, fsync=False)


@pytest.fixture()
def plain_vault() -> Vault:
    return Vault(None, fsync=False)
