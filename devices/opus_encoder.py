"""An Opus encoder for the stethoscope, and the hook that makes one RTCRtpSender use it.

aiortc 1.16's ``OpusEncoder`` uses ``application=voip`` at 96 kbit/s; libopus then runs a
high-pass around 60–100 Hz that removes much of S1/S2. :class:`StethoscopeOpusEncoder`
uses ``application=audio`` (DC rejection at 3 Hz only), fullband stereo at 48 kHz,
128 kbit/s by default, no DTX, in-band FEC on.

RED (RFC 2198): once the answer negotiated ``audio/red`` (the agent offers it first), the
sender sends RED's payload type and :meth:`StethoscopeOpusEncoder.use_red` makes each packet
carry the current Opus frame as primary plus the ``red_distance`` frames before it
(:class:`media.red.RedPacker`), so that a lost packet's frame comes back with the next one.
In-band FEC alone does not do that at 128 kbit/s: libopus runs CELT-only there, which
carries no FEC. The cost is the audio rate times ``1 + red_distance`` on the wire.

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

from aiortc import RTCRtpCodecCapability, RTCRtpSender
from aiortc.codecs.base import Encoder
from aiortc.mediastreams import convert_timebase
from av import AudioFrame, AudioResampler, CodecContext
from av.frame import Frame
from av.packet import Packet

from media.aiortc_internals import (IncompatibleAiortcError, check_encoder_replaceable, red_capability,
                                    replace_sender_encoder, sender_encoder)
from media.red import MAX_BLOCKS, RedPacker, red_payload_types

__all__ = ["IncompatibleAiortcError", "OpusApplication", "OpusConfig", "StethoscopeOpusEncoder", "sender_encoder",
           "stethoscope_codecs", "use_stethoscope_encoder"]

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
    red_distance: int = 1
    """Earlier frames each RED packet repeats (0: no RED even when negotiated). One recovers
    any isolated loss at twice the audio rate; two, a 40 ms burst too, at three times."""

    def __post_init__(self) -> None:
        if not 64000 <= self.bitrate <= 510000:
            raise ValueError("bitrate must be between 64000 and 510000 bit/s")
        if self.channels not in (1, 2):
            raise ValueError("channels must be 1 or 2")
        if not 0 <= self.expected_loss_pct <= 100:
            raise ValueError("expected_loss_pct must be between 0 and 100")
        if not 0 <= self.red_distance < MAX_BLOCKS:
            raise ValueError(f"red_distance must be between 0 and {MAX_BLOCKS - 1}")


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
        self.red: Optional[RedPacker] = None
        """Set by :meth:`use_red` once RED is negotiated: payloads go out as RED."""

    def use_red(self, opus_payload_type: Optional[int]) -> None:
        """Build RED payloads whose blocks carry ``opus_payload_type`` (the negotiated Opus
        type), or plain Opus again with None. Call before the sender starts (after the
        answer): the sender sends RED's payload type exactly when RED was negotiated."""
        if opus_payload_type is None:
            self.red = None
        else:
            # RED framing stays on whatever the distance: the sender stamps RED's payload type.
            self.red = RedPacker(opus_payload_type, self.config.red_distance)

    def set_red_distance(self, distance: int) -> None:
        """Repeat ``distance`` earlier frames from the next packet on (0: the primary alone,
        still RED-framed); an uplink too thin for the redundancy may lower it. No effect
        without RED."""
        if not 0 <= distance < MAX_BLOCKS:
            raise ValueError(f"red_distance must be between 0 and {MAX_BLOCKS - 1}")
        if self.red is not None:
            self.red.distance = distance

    def answered(self, answer: str, mid: str) -> bool:
        """Follow the answer to the offer of :func:`stethoscope_codecs`: RED when it accepted
        ``audio/red`` on ``mid`` (aiortc then sends RED's payload type), plain Opus otherwise.
        Returns whether RED is on."""
        types = red_payload_types(answer, mid)
        self.use_red(types[1] if types is not None else None)
        return self.red is not None

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
        first = self.first_packet_pts
        red = self.red
        if red is None:
            return [bytes(p) for p in packets], int(pts - first)
        return [red.pack(bytes(p), int((p.pts if p.pts is not None else pts) - first)) for p in packets], \
            int(pts - first)

    def pack(self, packet: Packet) -> tuple[list[bytes], int]:
        assert packet.pts is not None  # pack() is given stamped packets (aiortc's contract)
        timestamp = convert_timebase(packet.pts, packet.time_base, TIME_BASE)
        if self.red is not None:
            return [self.red.pack(bytes(packet), timestamp)], timestamp
        return [bytes(packet)], timestamp


def stethoscope_codecs(config: OpusConfig = OpusConfig()) -> list[RTCRtpCodecCapability]:
    """Codec preferences of the stethoscope's transceiver: RED first (when ``red_distance``),
    so that the sender sends it once the answer accepts it, then Opus."""
    opus = [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType.lower() == "audio/opus"]
    return ([red_capability()] if config.red_distance else []) + opus


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
