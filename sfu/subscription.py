"""One outgoing copy of a publication to one participant (a "down track").

A subscription owns an aiortc ``RTCRtpSender`` on the subscriber's peer
connection, whose track never yields (:class:`media.aiortc_internals.SilentTrack`):
aiortc keeps sending its Sender Reports, with packet/octet counts and RTP
timestamps advanced for every packet the SFU writes, while the SFU writes RTP
itself on the subscriber's DTLS transport:

* the packet's header is rewritten (SSRC and payload type of this leg,
  sequence number and timestamp through a :class:`sfu.rtp.SequenceMapper`,
  header extensions renumbered for this leg with its own ``mid``); the payload
  is untouched;
* it starts on a keyframe, and again after its source changed (a replaced
  publication or a new publisher SSRC), with sequence numbers and timestamps
  continuing where they were;
* NACKs from the subscriber are answered from its :class:`sfu.rtp.PacketHistory`
  as RTX when negotiated, else as plain retransmissions, within the subscriber's
  :class:`sfu.budgets.RetransmitBudget` (beyond it a NACKed packet is not resent, and
  counted: ``retransmits_refused``);
* PLI/FIR from the subscriber go to the forwarder, which asks the publisher.

Lifecycle: waiting (transport not connected) -> ready, waiting for a keyframe ->
forwarding -> closed (idempotent ``close()``).
"""

from __future__ import annotations

import logging
import random
import time
from typing import TYPE_CHECKING, Callable

from aiortc import RTCDtlsTransport, RTCRtpSender

from config.settings import MediaSettings
from media import aiortc_internals
from sfu.budgets import RetransmitBudget
from sfu.metrics import TrackCounts
from sfu.rtp import (ExtensionRewriter, Layout, PacketHistory, RtpHeader, SequenceMapper, extension_layout,
                     rewrite_packet, wrap_rtx)
from sfu.sdp import LegParameters

if TYPE_CHECKING:
    from sfu.forwarder import Forwarder

logger = logging.getLogger(__name__)


class Subscription:
    def __init__(self, subscription_id: str, session_id: str, sender: RTCRtpSender, transport: RTCDtlsTransport,
                 leg: LegParameters, publisher_extensions: dict[str, int], history_size: int,
                 counts: TrackCounts, clock: Callable[[], float] = time.monotonic, *,
                 budget: RetransmitBudget | None = None) -> None:
        if leg.ssrc is None:
            raise ValueError("a subscription leg needs a sending SSRC")
        self.id = subscription_id
        self.session_id = session_id
        self.sender = sender
        self.transport = transport
        self._write = aiortc_internals.RtpWriter(transport)
        self.mid = leg.mid
        self.kind = leg.kind
        self.ssrc = leg.ssrc
        self.payload_type = leg.payload_type
        self.clock_rate = leg.codec.clockRate
        self.rtx_payload_type = leg.rtx_payload_type if leg.rtx_ssrc is not None else None
        self.rtx_ssrc = leg.rtx_ssrc
        self._rtx_seq = random.randrange(1 << 15)
        self.leg_extensions = leg.extensions
        self.rewriter = ExtensionRewriter.between(publisher_extensions, leg.extensions, leg.mid)
        self.mapper = SequenceMapper(random.randrange(1 << 15), random.randrange(1 << 32))
        self.history = PacketHistory(history_size)
        self.counts = counts
        self.clock = clock
        self.budget = budget or RetransmitBudget.from_settings(MediaSettings())
        """Shared by the subscriber's subscriptions."""
        self.forwarder: "Forwarder | None" = None
        self.publication_id: str | None = None
        self._ready = False
        self._last_sent: float | None = None
        self.first_packet_at: float | None = None
        self.closed = False

    # -- state -----------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Transport connected and sender started: packets can go."""
        if not self._ready and not self.closed:
            self._ready = self.transport.state == "connected" and aiortc_internals.sender_started(self.sender)
        return self._ready

    def attach(self, forwarder: "Forwarder", publication_id: str, publisher_extensions: dict[str, int]) -> None:
        """Follow ``forwarder`` (a new subscription, or the replacement of the publication)."""
        if self.forwarder is not None and self.forwarder is not forwarder:
            self.forwarder.remove(self)
            self.source_changed(self.clock())
        self.forwarder = forwarder
        self.publication_id = publication_id
        self.rewriter = ExtensionRewriter.between(publisher_extensions, self.leg_extensions, self.mid)
        self.counts = forwarder.counts
        forwarder.add(self)

    def became_ready(self) -> None:
        """The subscriber's transport connected: ask for the keyframe to start on."""
        if self.ready and self.forwarder is not None:
            self.forwarder.keyframe_wanted("connected")

    def source_changed(self, now: float) -> None:
        """The packets that follow come from another source: continue the sequence and wait
        for a keyframe."""
        gap = 1
        if self._last_sent is not None:
            gap = max(1, int((now - self._last_sent) * self.clock_rate))
        self.mapper.switch(gap)

    # -- packet path -------------------------------------------------------
    def send(self, data: bytes, header: RtpHeader, keyframe: bool, layout: Layout | None = None) -> bool:
        """Forward one packet; returns True while this subscription waits for a keyframe.
        ``layout``: the packet's :func:`sfu.rtp.extension_layout` (the forwarder works it out
        once for all subscriptions). Synchronous: nothing on this path waits."""
        if self.closed:
            return False
        if not self._ready:
            if not self.ready:
                return False
            if self.forwarder is not None:  # just became ready: the keyframe to start on
                self.forwarder.keyframe_wanted("ready")
        mapper = self.mapper
        if not mapper.started:
            if not keyframe:
                return True
            mapper.start(header.sequence_number, header.timestamp)
        mapped = mapper.map(header.sequence_number, header.timestamp)
        if mapped is None:
            return False
        seq, ts = mapped
        if layout is None:
            layout = extension_layout(data, header)
        packet = rewrite_packet(data, header.csrc_end, header.payload_start, self.ssrc, self.payload_type, seq, ts,
                                self.rewriter.block(data, layout))
        self.history.put(seq, packet)
        try:
            self._write(packet)
        except ConnectionError:
            self._ready = False
            return False
        now = self.clock()
        if self.first_packet_at is None:
            self.first_packet_at = now
        self._last_sent = now
        aiortc_internals.note_sent(self.sender, ts, header.payload_end - header.payload_start)
        counts = self.counts
        counts.packets_out += 1
        counts.bytes_out += len(packet)
        return False

    async def on_nack(self, lost: list[int]) -> None:
        """The subscriber reports these (output) sequence numbers lost."""
        self.counts.nack_received += 1
        now = self.clock()
        for seq in lost[:64]:
            packet = self.history.get(seq)
            if packet is None:
                continue
            if not self.budget.allow(len(packet) + 2, now):  # + 2: RTX's original sequence number
                self.counts.retransmits_refused += 1
                continue
            if self.rtx_payload_type is not None and self.rtx_ssrc is not None:
                packet = wrap_rtx(packet, payload_type=self.rtx_payload_type, ssrc=self.rtx_ssrc,
                                  sequence_number=self._rtx_seq)
                self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
            try:
                await aiortc_internals.send_rtp(self.transport, packet)
            except ConnectionError:
                return
            self.counts.retransmits += 1

    def on_keyframe_request(self, kind: str) -> None:
        self.counts.pli_received += 1
        if self.forwarder is not None:
            self.forwarder.keyframe_wanted(kind)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.forwarder is not None:
            self.forwarder.remove(self)
            self.forwarder = None
