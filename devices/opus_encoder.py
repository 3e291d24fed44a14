"""An Opus encoder for the stethoscope, and the hook that makes one RTCRtpSender use it.

aiortc 1.16's ``OpusEncoder`` uses ``application=voip`` at 96 kbit/s; libopus then runs a
high-pass around 60–100 Hz that removes much of S1/S2. :class:`StethoscopeOpusEncoder`
uses ``application=audio`` (DC rejection at 3 Hz only), fullband stereo at 48 kHz,
128 kbit/s by default, no DTX, in-band FEC on.

The hook: ``RTCRtpSender._next_encoded_frame`` calls ``get_encoder(codec)`` only while its
private ``__encoder`` is None, so installing ours beforehand replaces the encoder for that
sender alone, with no global patch (:func:`media.aiortc_internals.replace_sender_encoder`).
:func:`use_stethoscope_encoder` checks the internals it relies on and raises
:class:`IncompatibleAiortcError` when an aiortc upgrade changes them; tests run a real
loopback call to prove that the encoder is used.
"""

from __future__ import annotations

import enum
import fractions
import logging
from dataclasses import dataclass
from typing import Optional

from aiortc import RTCRtpSender
from aiortc.codecs.base import Encoder
from aiortc.mediastreams import convert_timebase
from av import AudioFrame, AudioResampler, CodecContext
from av.frame import Frame
from av.packet import Packet

from media.aiortc_internals import (IncompatibleAiortcError, check_encoder_replaceable, replace_sender_encoder,
                                    sender_encoder)

__all__ = ["IncompatibleAiortcError", "OpusApplication", "OpusConfig", "StethoscopeOpusEncoder", "sender_encoder",
           "use_stethoscope_encoder"]

logger = logging.getLogger(__name__)

SAMPLE_RATE = 48000
SAMPLES_PER_FRAME = 960
TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)


class OpusApplication(str, enum.Enum):
    AUDIO = "audio"
    LOWDELAY = "lowdelay"


@dataclass(frozen=True)
class OpusConfig:
    bitrate: int = 128000
    application: OpusApplication = OpusApplication.AUDIO
    fec: bool = True
    expected_loss_pct: int = 5
    """Tells libopus how much redundancy in-band FEC should carry."""
    channels: int = 2

    def __post_init__(self) -> None:
        if not 64000 <= self.bitrate <= 510000:
            raise ValueError("bitrate must be between 64000 and 510000 bit/s")
        if self.channels not in (1, 2):
            raise ValueError("channels must be 1 or 2")
        if not 0 <= self.expected_loss_pct <= 100:
            raise ValueError("expected_loss_pct must be between 0 and 100")


class StethoscopeOpusEncoder(Encoder):
    """Drop-in replacement for ``aiortc.codecs.opus.OpusEncoder`` (same encode/pack contract)."""

    def __init__(self, config: OpusConfig = OpusConfig()) -> None:
        self.config = config
        layout = "stereo" if config.channels == 2 else "mono"
        self.codec = CodecContext.create("libopus", "w")
        self.codec.bit_rate = config.bitrate
        self.codec.format = "s16"
        self.codec.layout = layout
        self.codec.sample_rate = SAMPLE_RATE
        self.codec.time_base = TIME_BASE
        self.codec.options = {
            "application": config.application.value,
            "dtx": "0",
            "fec": "1" if config.fec else "0",
            "packet_loss": str(config.expected_loss_pct if config.fec else 0),
            "vbr": "on",
            "frame_duration": "20",
            # libopus picks fullband (20 kHz) itself at >= 64 kbit/s unless a cutoff is set.
        }
        self.resampler = AudioResampler(format="s16", layout=layout, rate=SAMPLE_RATE, frame_size=SAMPLES_PER_FRAME)
        self.first_packet_pts: Optional[int] = None

    def encode(self, frame: Frame, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        assert isinstance(frame, AudioFrame)
        packets: list[Packet] = []
        for chunk in self.resampler.resample(frame):
            packets += self.codec.encode(chunk)
        if not packets:
            return [], None  # type: ignore[return-value]  # aiortc's own contract
        pts = packets[0].pts
        assert pts is not None  # libopus stamps every packet
        if self.first_packet_pts is None:
            # libopus starts at a negative pts (its look-ahead): count from the first packet.
            self.first_packet_pts = pts
        return [bytes(p) for p in packets], int(pts - self.first_packet_pts)

    def pack(self, packet: Packet) -> tuple[list[bytes], int]:
        assert packet.pts is not None  # pack() is given stamped packets (aiortc's contract)
        timestamp = convert_timebase(packet.pts, packet.time_base, TIME_BASE)
        return [bytes(packet)], timestamp


def use_stethoscope_encoder(sender: RTCRtpSender, config: OpusConfig = OpusConfig()) -> StethoscopeOpusEncoder:
    """Make ``sender`` encode with :class:`StethoscopeOpusEncoder` (call before it starts).

    The negotiated codec must be Opus; that is the caller's business (see devices/sdp.py).
    """
    check_encoder_replaceable(sender)
    if sender.kind != "audio":
        raise ValueError("the stethoscope encoder is for audio senders")
    encoder = StethoscopeOpusEncoder(config)
    replace_sender_encoder(sender, encoder)
    logger.info("stethoscope Opus encoder installed (%s, %d bit/s)", config.application.value, config.bitrate)
    return encoder
