"""One incoming track: a participant's source (camera, microphone, stethoscope...) on the SFU.

A publication owns the aiortc ``RTCRtpReceiver`` its packets arrive for (kept for
its receiver reports and NACKs upstream, never for decoding) and the
:class:`sfu.forwarder.Forwarder` that moves its packets to subscriptions.

Lifecycle: live -> closed (publisher left, transceiver removed, or replaced by a
new publication of the same identity and source, which adopts its subscriptions).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Callable

from aiortc import RTCRtpCapabilities, RTCRtpCodecCapability, RTCRtpReceiver, RTCRtpSender
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from core.vocabulary import MEDIA_SOURCES, MediaKind, Source
from media import aiortc_internals
from sfu.budgets import TokenBucket
from sfu.congestion import ABS_SEND_TIME_URI, PublicationFeedback
from sfu.events import PublicationInfo
from sfu.forwarder import Forwarder
from sfu.metrics import TrackCounts
from sfu.nack import NackPolicy, NackRequester
from sfu.rtp import LossCounter, RtpHeader
from sfu.sdp import LegParameters

logger = logging.getLogger(__name__)


def source_kind(source: str) -> MediaKind | None:
    """The kind of track ``source`` is; None unless it is a source the SFU forwards
    (``vitals`` travels on the room's data channel, never as a publication)."""
    return Source(source).kind if source in MEDIA_SOURCES else None


SSRC_SWITCH_GRACE_MS = 2000
"""After a publisher's SSRC changed, packets of the old one are late ones for this long."""

NEW_SSRC_BURST = 4
"""SSRCs a publication may take on beyond those its offer declared (an offer without
``a=ssrc``, an encoder restart: a media SSRC and its RTX one each), at once. Any other
SSRC is dropped before aiortc sees it (issue 17: each one grew aiortc's receiver report
until libsrtp refused it, and the peer connection could no longer close)."""
NEW_SSRC_REFILL_S = 10.0
"""One more new SSRC is allowed this often."""

FORWARDED_CODECS = ("video/vp8", "video/h264", "audio/opus")
"""Codecs the SFU forwards (it understands their keyframes, or they have none)."""


def offered_red(offered: tuple[RTCRtpCodecParameters, ...]) -> RTCRtpCodecParameters | None:
    """The RED (RFC 2198) codec of an m-line's offered codecs that the SFU can answer with
    the same payload type (:func:`media.aiortc_internals.red_payload_type_usable`), if any."""
    for codec in offered:
        if aiortc_internals.is_red(codec) and codec.clockRate == 48000:
            return codec if aiortc_internals.red_payload_type_usable(codec.payloadType) else None
    return None


def publisher_codec(kind: str, offered: tuple[RTCRtpCodecParameters, ...]) -> list[RTCRtpCodecCapability] | None:
    """Codec preferences for a publisher's m-line: the first codec of the offer the SFU
    forwards (the offerer's own order), with RTX; with Opus, RED too when offered, before or
    after Opus as the offer orders them (the first one is what an aiortc offerer without
    preferences sends); None when there is none."""
    capabilities: RTCRtpCapabilities = RTCRtpSender.getCapabilities(kind)
    rtx = next((c for c in capabilities.codecs if c.mimeType.lower().endswith("/rtx")), None)
    for index, codec in enumerate(offered):
        if codec.mimeType.lower() not in FORWARDED_CODECS:
            continue
        for capability in capabilities.codecs:
            if aiortc_internals.codecs_compatible(capability, codec):
                red = offered_red(offered) if capability.mimeType.lower() == "audio/opus" else None
                if red is not None:
                    red_first = offered.index(red) < index
                    pair = [aiortc_internals.red_capability(), capability]
                    return pair if red_first else pair[::-1]
                return [capability] + ([rtx] if rtx is not None and kind == "video" else [])
    return None


def subscriber_codec(codec: RTCRtpCodecParameters, *, red: bool = False) -> list[RTCRtpCodecCapability]:
    """Codec preferences for a subscriber's m-line: exactly the publication's codec (+ RTX),
    then RED when ``red`` (the publication may send it and the subscriber offered it)."""
    capabilities = RTCRtpSender.getCapabilities(codec.mimeType.split("/")[0])
    preferred = [c for c in capabilities.codecs if aiortc_internals.codecs_compatible(c, codec)
                 and c.parameters == codec.parameters][:1]
    rtx = [c for c in capabilities.codecs if c.mimeType.lower().endswith("/rtx")]
    if preferred and codec.mimeType.lower().startswith("video/"):
        preferred += rtx[:1]
    if preferred and red and codec.mimeType.lower() == "audio/opus":
        preferred.append(aiortc_internals.red_capability())
    return preferred


class Publication:
    def __init__(self, info: PublicationInfo, receiver: RTCRtpReceiver, leg: LegParameters,
                 media_ssrcs: tuple[int, ...], rtx_ssrcs: dict[int, int], pli_interval: float,
                 counts: TrackCounts, on_decode: Callable[[], None], *,
                 nack_policy: NackPolicy | None = None) -> None:
        self.info = info
        self.receiver = receiver
        self.mid = leg.mid
        self.codec = leg.codec
        self.payload_type = leg.payload_type
        self.rtx_payload_type = leg.rtx_payload_type
        self.red_payload_type = leg.red_payload_type
        """RED (RFC 2198) payloads the publisher may send besides plain ``codec`` ones."""
        self.extensions = leg.extensions
        """Header extension uri -> id on the publisher's leg."""
        self.declared_ssrcs = media_ssrcs
        self.rtx_ssrcs = dict(rtx_ssrcs)
        """RTX ssrc -> media ssrc, from the offer."""
        self.media_ssrc: int | None = media_ssrcs[0] if media_ssrcs else None
        self.counts = counts
        self.loss = LossCounter()
        self._previous_ssrc: int | None = None
        self._switched_at_ms = 0
        self._new_ssrcs = TokenBucket(1 / NEW_SSRC_REFILL_S, NEW_SSRC_BURST)
        self.forwarder = Forwarder(info.id, info.kind, leg.codec.mimeType.split("/")[1], leg.codec.clockRate,
                                   pli_interval, self.send_pli, counts)
        self.forwarder.payload_type = leg.payload_type
        self.forwarder.red_payload_type = leg.red_payload_type
        self.nack = NackRequester(nack_policy or NackPolicy()) if info.kind == "video" else None
        """Which lost packets to ask the publisher for (video: aiortc negotiates no NACK for audio)."""
        self.abs_send_time_id = self.extensions.get(ABS_SEND_TIME_URI, 0)
        """The publisher leg's id of abs-send-time (0: not negotiated: no uplink estimate from it)."""
        self.feedback = PublicationFeedback()
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = False

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def key(self) -> tuple[str, str]:
        """(identity, source): a new publication with the same key replaces this one."""
        return (self.info.identity, self.info.source)

    def add_packet_listener(self, listener: Callable[[bytes, RtpHeader], None]) -> Callable[[], None]:
        """Tap this publication's media packets (RTX unwrapped) with their parsed header;
        returns the remover. The listener runs on the forwarding path: it must not raise."""
        listeners = self.forwarder.packet_listeners
        listeners.append(listener)
        return lambda: listeners.remove(listener) if listener in listeners else None

    def request_keyframe(self, reason: str) -> None:
        """A tap (recording) needs a keyframe: a PLI upstream, rate-limited with the
        subscriptions' own requests."""
        self.forwarder.keyframe_wanted(reason)

    def admit_new_ssrc(self, now_ms: int) -> bool:
        """Whether a packet of an SSRC neither declared nor seen yet may become one of this
        publication's (:data:`NEW_SSRC_BURST`); False: drop it."""
        return self._new_ssrcs.take(now_ms / 1000)

    def accept_media_ssrc(self, ssrc: int, now_ms: int) -> bool:
        """A media packet of ``ssrc`` (not RTX) arrived. A new SSRC (an encoder restarted)
        becomes the source: loss and NACK accounting start afresh. False for a late packet of
        the source it replaced (within ``SSRC_SWITCH_GRACE_MS``): drop it, or subscribers
        would switch back and wait for a keyframe again."""
        current = self.media_ssrc
        if ssrc == current:
            return True
        if current is not None:
            if ssrc == self._previous_ssrc and now_ms - self._switched_at_ms < SSRC_SWITCH_GRACE_MS:
                return False
            self._previous_ssrc = current
            self._switched_at_ms = now_ms
            self.loss = LossCounter()
            aiortc_internals.reset_nack_generator(self.receiver)
            if self.nack is not None:
                self.nack.reset()
            # No receiver report on a source no longer sent: aiortc's reports stay small.
            aiortc_internals.forget_receiver_stream(self.receiver, current)
            logger.info("publisher ssrc changed", extra={"publication": self.id})
        self.media_ssrc = ssrc
        return True

    def send_pli(self) -> None:
        ssrc = self.forwarder.ssrc or self.media_ssrc
        if ssrc is None or self.closed:
            return
        self._spawn(aiortc_internals.send_pli(self.receiver, ssrc))

    def _spawn(self, coro: "asyncio.Future[None] | object") -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def received(self, data: bytes, header: "object") -> None:
        await self.forwarder.forward(data, header)  # type: ignore[arg-type]

    def close(self) -> list:  # type: ignore[type-arg]
        """Stop forwarding; returns the subscriptions, for a replacement to adopt."""
        if self.closed:
            return []
        self.closed = True
        for task in self._tasks:
            task.cancel()
        return self.forwarder.close()


def new_publication_id() -> str:
    return "PU_" + secrets.token_hex(6)


def now() -> float:
    return time.time()
