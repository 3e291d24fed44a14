"""Moving one publication's packets to its subscriptions.

The forwarder decides; subscriptions write (LiveKit's split). Per packet from
the publisher it works out once whether the packet starts a keyframe, hands the
packet to each subscription in turn (to all those with a C leg in one
``sfu._fanout.fan_out`` call: sfu/leg.py), and keeps the keyframe requests upstream
flowing while some subscription still waits for one:

* a new (ready) subscription, a subscriber's PLI/FIR, or a change of the
  publisher's SSRC ask for a keyframe through :class:`KeyframeRequester`
  (rate limit ``pli_interval_s``, except right after a keyframe arrived);
* while a ready subscription waits, the request is repeated every interval.

Nothing is buffered: each packet goes out to every subscription before the
next one is read (no jitter buffer, no added latency).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Callable

from sfu.keyframes import KeyframeRequester, keyframe_start
from sfu.leg import FANOUT
from sfu.metrics import TrackCounts
from sfu.rtp import Layout, RtpHeader, extension_layout

if TYPE_CHECKING:
    from sfu.subscription import Subscription

logger = logging.getLogger(__name__)

Clock = Callable[[], float]


class Forwarder:
    """Lifecycle: open -> (subscriptions added/removed, packets forwarded) -> closed."""

    def __init__(self, publication_id: str, kind: str, codec: str, clock_rate: int, pli_interval: float,
                 send_pli: Callable[[], None], counts: TrackCounts, clock: Clock = time.monotonic) -> None:
        self.publication_id = publication_id
        self.kind = kind
        self.codec = codec.lower()
        self.clock_rate = clock_rate
        self.requester = KeyframeRequester(pli_interval)
        self._send_pli = send_pli
        self.counts = counts
        self.clock = clock
        self.subscriptions: list["Subscription"] = []
        self._fast: list["Subscription"] = []
        """The subscriptions with a C leg (sfu/leg.py), forwarded by one ``fan_out`` call."""
        self._fast_legs: list[object] = []
        self._slow: list["Subscription"] = []
        """The others, each forwarding in Python."""
        self.packet_listeners: list[Callable[[bytes, RtpHeader], None]] = []
        """Taps (recording) that see each media packet (and its parsed header) before the
        subscriptions; must not raise."""
        self.ssrc: int | None = None
        self.payload_type: int | None = None
        """The publisher's payload type for the codec (its subscriptions map it to theirs)."""
        self.red_payload_type: int | None = None
        """The publisher's RED (RFC 2198) payload type, when negotiated: such packets go to
        each subscription as RED, or as their primary block where RED was not negotiated."""
        self._last_keyframe_ts: int | None = None
        self.closed = False

    def add(self, subscription: "Subscription") -> None:
        if subscription not in self.subscriptions:
            self.subscriptions.append(subscription)
            self._split()
        if subscription.ready:
            self.keyframe_wanted("subscribe")

    def remove(self, subscription: "Subscription") -> None:
        if subscription in self.subscriptions:
            self.subscriptions.remove(subscription)
            self._split()

    def _split(self) -> None:
        fanout = FANOUT
        self._fast = [s for s in self.subscriptions if fanout is not None and isinstance(s.leg, fanout.Leg)]
        self._fast_legs = [s.leg for s in self._fast]
        self._slow = [s for s in self.subscriptions if s not in self._fast]

    def keyframe_wanted(self, reason: str) -> None:
        """A subscriber needs a keyframe (new, PLI/FIR, source change), or all of them do (a
        packet lost for good upstream). Nobody to show it to (no subscription, no tap): no
        request."""
        if self.kind != "video" or self.closed or not (self.subscriptions or self.packet_listeners):
            return
        if self.requester.request(self.clock()):
            self.counts.pli_sent += 1
            logger.debug("keyframe requested", extra={"publication": self.publication_id, "why": reason})
            self._send_pli()

    async def forward(self, data: bytes, header: RtpHeader) -> None:
        """One media packet of the publisher (RTX already unwrapped)."""
        self.forward_now(data, header)

    def forward_now(self, data: bytes, header: RtpHeader) -> None:
        """:meth:`forward`, synchronously (nothing on the forwarding path waits)."""
        counts = self.counts
        counts.packets_in += 1
        counts.bytes_in += len(data)
        if self.kind == "video":
            start, end = header.payload_start, header.payload_end
            if self.codec == "vp8":  # its keyframe test reads the first 7 bytes at most
                end = min(end, start + 16)
            keyframe = keyframe_start(self.codec, data[start:end])
            if header.marker:
                counts.frames += 1
            if keyframe:
                self.requester.keyframe_arrived()
                if header.timestamp != self._last_keyframe_ts:
                    self._last_keyframe_ts = header.timestamp
                    counts.keyframes += 1
        else:
            keyframe = True
            counts.frames += 1
        if header.ssrc != self.ssrc:
            if self.ssrc is not None:
                now = self.clock()
                for subscription in self.subscriptions:
                    subscription.source_changed(now)
                self.ssrc = header.ssrc
                if not keyframe and self.subscriptions:
                    self.keyframe_wanted("ssrc changed")  # to the new ssrc
            self.ssrc = header.ssrc
        for listener in self.packet_listeners:
            listener(data, header)
        waiting = False
        if self.subscriptions:
            now = self.clock()
            layout: Layout | None = None
            if self._fast_legs:
                assert FANOUT is not None
                waiting, packets, octets, handed_back = FANOUT.fan_out(
                    data, header.csrc_end, header.extension_profile, header.extension_start, header.payload_start,
                    header.payload_end, header.sequence_number, header.timestamp, keyframe, now, self._fast_legs)
                counts.packets_out += packets
                counts.bytes_out += octets
                if handed_back is not None:
                    layout = extension_layout(data, header)
                    fast = self._fast
                    for i in handed_back:
                        if fast[i].send(data, header, keyframe, layout, now):
                            waiting = True
            if self._slow:
                if layout is None:
                    layout = extension_layout(data, header)  # once per packet, for every subscription
                for subscription in self._slow:
                    if subscription.send(data, header, keyframe, layout, now):
                        waiting = True
        if waiting and self.kind == "video" and self.requester.due(self.clock()):
            self.keyframe_wanted("still waiting")

    def close(self) -> list["Subscription"]:
        """Stop; returns the subscriptions (for adoption by a replacement)."""
        self.closed = True
        subscriptions, self.subscriptions = self.subscriptions, []
        self._split()
        return subscriptions
