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
  :class:`sfu.budgets.RetransmitBudget` and at most ``max_resends`` times per packet (beyond
  either a NACKed packet is not resent, and counted: ``retransmits_refused``);
* PLI/FIR from the subscriber go to the forwarder, which asks the publisher;
* REMB from the subscriber is its participant's (``sfu/congestion.py``);
* RED (RFC 2198) audio from the publisher goes out as RED where this leg negotiated it (its
  blocks' payload type renumbered for this leg when the legs differ), else as its primary
  Opus block alone (no decoding: the RED header is cut off; media/red.py).

Lifecycle: waiting (transport not connected) -> ready, waiting for a keyframe ->
forwarding -> closed (idempotent ``close()``).
"""

from __future__ import annotations

import logging
import random
import time
from functools import partial
from typing import TYPE_CHECKING, Callable

from aiortc import RTCDtlsTransport, RTCRtpSender

from config.settings import MediaSettings
from media import aiortc_internals
from media import red as rfc2198
from media.send_batch import SendBatch
from sfu.budgets import RetransmitBudget
from sfu.congestion import RateMeter
from sfu.leg import new_leg
from sfu.metrics import TrackCounts
from sfu.rtp import (ExtensionRewriter, Layout, RtpError, RtpHeader, extension_layout, parse_header, rewrite_packet,
                     wrap_rtx)
from sfu.sdp import LegParameters

if TYPE_CHECKING:
    from sfu.forwarder import Forwarder

logger = logging.getLogger(__name__)


def _nothing() -> None:
    """A leg without a batch writes at once: nothing to enqueue."""


class Subscription:
    def __init__(self, subscription_id: str, session_id: str, sender: RTCRtpSender, transport: RTCDtlsTransport,
                 leg: LegParameters, publisher_extensions: dict[str, int], history_size: int,
                 counts: TrackCounts, clock: Callable[[], float] = time.monotonic, *,
                 budget: RetransmitBudget | None = None, max_resends: int = 3,
                 batch: SendBatch | None = None, writer: aiortc_internals.RtpWriter | None = None) -> None:
        if leg.ssrc is None:
            raise ValueError("a subscription leg needs a sending SSRC")
        self.id = subscription_id
        self.session_id = session_id
        self.sender = sender
        self.transport = transport
        self._write = writer if writer is not None and writer.transport is transport \
            else aiortc_internals.RtpWriter(transport)
        """Shared by the subscriptions on one transport, so that a turn's packets to it, audio
        and video, leave in one batch."""
        self._put: Callable[[bytes], None] = self._write if batch is None else partial(batch.add, self._write)
        """Writes one rewritten packet: at the end of the event-loop turn with the rest of this
        turn's to the same transport (``batch``), or at once (None)."""
        self.mid = leg.mid
        self.kind = leg.kind
        self.ssrc = leg.ssrc
        self.payload_type = leg.payload_type
        self.clock_rate = leg.codec.clockRate
        self.rtx_payload_type = leg.rtx_payload_type if leg.rtx_ssrc is not None else None
        self.rtx_ssrc = leg.rtx_ssrc
        self.red_payload_type = leg.red_payload_type
        """This leg's RED payload type (None: RED is cut down to its primary block here)."""
        self._red_map: dict[int, int] = {}
        """Publisher's codec payload type -> this leg's, for the blocks of a RED payload."""
        self._rtx_seq = random.randrange(1 << 15)
        self.leg_extensions = leg.extensions
        self.leg = new_leg(native=batch is not None and batch.uses_native, ssrc=leg.ssrc,
                           payload_type=leg.payload_type, history_size=history_size,
                           first_sequence_number=random.randrange(1 << 15), first_timestamp=random.randrange(1 << 32),
                           pending=self._write.pending,
                           enqueue=partial(batch.due, self._write) if batch is not None else _nothing)
        """Mapping, history, counters; a C leg is forwarded by ``sfu._fanout.fan_out`` for the
        forwarder, and comes back here only when not ready or for RED (sfu/leg.py)."""
        self.mapper = self.leg.mapper
        self.history = self.leg.history
        self._set_rewriter(ExtensionRewriter.between(publisher_extensions, leg.extensions, leg.mid))
        aiortc_internals.report_from(sender, self.leg)
        self._write.on_lost.append(self._connection_lost)
        self.counts = counts
        self.clock = clock
        self.max_resends = max_resends
        """Times one packet is resent at most (``[media] nack_max_retries``): beyond, a
        subscriber that keeps losing it is better served by a keyframe."""
        self.budget = budget or RetransmitBudget.from_settings(MediaSettings())
        """Shared by the subscriber's subscriptions."""
        self.forwarder: "Forwarder | None" = None
        self.publication_id: str | None = None
        self._ready = False
        self.rate = RateMeter()
        self.closed = False

    # -- state -----------------------------------------------------------
    @property
    def ready(self) -> bool:
        """Transport connected and sender started: packets can go."""
        if not self._ready and not self.closed:
            self._ready = self.transport.state == "connected" and aiortc_internals.sender_started(self.sender)
            self.leg.active = self._ready
        return self._ready

    @property
    def bytes_sent(self) -> int:
        """Bytes forwarded on this leg (retransmissions aside): its share of the subscriber's
        estimate is measured from it (``sfu/congestion.py``)."""
        return self.leg.bytes_out

    def _set_rewriter(self, rewriter: ExtensionRewriter) -> None:
        self.rewriter = rewriter
        self.leg.set_rewriter(rewriter.id_map, rewriter.mid_id, rewriter.mid)

    def _connection_lost(self) -> None:
        """Packets queued for the transport were dropped at the end of the turn: not connected."""
        self._ready = False
        self.leg.active = False

    def attach(self, forwarder: "Forwarder", publication_id: str, publisher_extensions: dict[str, int]) -> None:
        """Follow ``forwarder`` (a new subscription, or the replacement of the publication)."""
        if self.forwarder is not None and self.forwarder is not forwarder:
            self.forwarder.remove(self)
            self.source_changed(self.clock())
        self.forwarder = forwarder
        self.publication_id = publication_id
        self.leg.red_in = forwarder.red_payload_type
        self._red_map = {forwarder.payload_type: self.payload_type} if forwarder.payload_type is not None else {}
        self._set_rewriter(ExtensionRewriter.between(publisher_extensions, self.leg_extensions, self.mid))
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
        last_sent = self.leg.last_sent_at
        if last_sent is not None:
            gap = max(1, int((now - last_sent) * self.clock_rate))
        self.mapper.switch(gap)

    # -- packet path -------------------------------------------------------
    def send(self, data: bytes, header: RtpHeader, keyframe: bool, layout: Layout | None = None,
             now: float | None = None) -> bool:
        """Forward one packet; returns True while this subscription waits for a keyframe.
        ``layout``: the packet's :func:`sfu.rtp.extension_layout` and ``now`` the clock's time
        (the forwarder works them out once for all subscriptions). Synchronous: nothing on this
        path waits. Once per packet and subscriber: what it does is kept to the minimum."""
        if not self._ready:  # also closed: close() clears it, and ready stays False after
            if not self.ready:
                return False
            if self.forwarder is not None:  # just became ready: the keyframe to start on
                self.forwarder.keyframe_wanted("ready")
        payload_type = self.payload_type
        if header.payload_type == self.leg.red_in:
            red = self._red_for_leg(data, header)
            if red is None:
                return False
            data, header, payload_type = red
        mapper = self.mapper
        mapped = mapper.map(header.sequence_number, header.timestamp)
        if mapped is None:
            if mapper.started:
                return False
            if not keyframe:
                return True
            mapper.start(header.sequence_number, header.timestamp)
            mapped = mapper.map(header.sequence_number, header.timestamp)
            if mapped is None:
                return False
        seq, ts = mapped
        if layout is None:
            layout = extension_layout(data, header)
        packet = rewrite_packet(data, header.csrc_end, header.payload_start, self.ssrc, payload_type, seq, ts,
                                self.rewriter.block(data, layout))
        self.history.put(seq, packet)
        try:
            self._put(packet)
        except ConnectionError:
            self._connection_lost()
            return False
        if now is None:
            now = self.clock()
        leg = self.leg
        leg.last_sent_at = now
        leg.note_sent(ts, header.payload_end - header.payload_start)
        size = len(packet)
        counts = self.counts
        counts.packets_out += 1
        counts.bytes_out += size
        leg.bytes_out += size
        return False

    def _red_for_leg(self, data: bytes, header: RtpHeader) -> tuple[bytes, RtpHeader, int] | None:
        """A RED packet of the publisher as this leg takes it: (datagram, its header, payload
        type). The header bytes (extensions: the layout) stay where they were; only the payload
        changes, padding dropped. None: not usable (the receive path already dropped malformed
        RED; this is the last guard)."""
        payload = data[header.payload_start:header.payload_end]
        try:
            if self.red_payload_type is not None:
                if all(a == b for a, b in self._red_map.items()) and not data[0] & 0x20:
                    return data, header, self.red_payload_type
                payload = rfc2198.retag(payload, self._red_map)
                payload_type = self.red_payload_type
            else:
                block_type, payload = rfc2198.primary(payload)
                if block_type not in self._red_map or not payload:
                    return None
                payload_type = self.payload_type
            rebuilt = bytes((data[0] & 0xDF,)) + data[1:header.payload_start] + payload
            return rebuilt, parse_header(rebuilt), payload_type
        except (rfc2198.RedError, RtpError):
            return None

    async def on_nack(self, lost: list[int]) -> None:
        """The subscriber reports these (output) sequence numbers lost."""
        self.counts.nack_received += 1
        now = self.clock()
        for seq in lost[:64]:
            packet = self.history.get(seq)
            if packet is None:
                continue
            if (self.history.resent(seq) >= self.max_resends
                    or not self.budget.allow(len(packet) + 2, now)):  # + 2: RTX's original sequence number
                self.counts.retransmits_refused += 1
                continue
            self.history.note_resent(seq)
            if self.rtx_payload_type is not None and self.rtx_ssrc is not None:
                packet = wrap_rtx(packet, payload_type=self.rtx_payload_type, ssrc=self.rtx_ssrc,
                                  sequence_number=self._rtx_seq)
                self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
            try:
                await aiortc_internals.send_rtp(self.transport, packet)
            except ConnectionError:
                return
            self.counts.retransmits += 1
            self.counts.retransmit_bytes += len(packet)

    def on_keyframe_request(self, kind: str) -> None:
        self.counts.pli_received += 1
        if self.forwarder is not None:
            self.forwarder.keyframe_wanted(kind)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._ready = False
        self.leg.active = False
        if self._connection_lost in self._write.on_lost:
            self._write.on_lost.remove(self._connection_lost)
        if self.forwarder is not None:
            self.forwarder.remove(self)
            self.forwarder = None
