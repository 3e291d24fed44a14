"""One peer connection to the SFU (a WHIP or WHEP session, or a browser's one connection).

aiortc stays the answerer. For each media section of an offer the participant
makes the transceiver itself, bound to the section's mid, before
``setRemoteDescription`` negotiates codecs, so that codec preferences decide
the answer:

* a section the caller publishes on: ``recvonly``, narrowed to the first codec of
  the offer the SFU forwards (VP8, H.264, Opus) plus RTX -> a :class:`Publication`;
* a section the caller subscribes on: ``sendonly``, narrowed to the
  publication's exact codec plus RTX -> a :class:`Subscription`;
* RED (RFC 2198) over Opus is accepted on both when offered (on a subscriber's, when the
  publication negotiated it too); the answer says ``a=fmtp:<red> <opus>/<opus>``;
* anything else: ``inactive``.

Re-offers (renegotiation) keep existing sections; new sections get new
transceivers, sections no longer sending/receiving (direction, or removed: port
0, answered rejected) end their publication or subscription. Media sections are
all BUNDLEd on one transport, whatever their order (the offerer's tagged
section's candidates; docs/whip-whep.md), whose decrypted RTP comes straight to
:meth:`Participant.on_rtp` (demultiplexed by SSRC, then by the ``mid`` header
extension, then by payload type). A publisher's new SSRC (an encoder restart)
becomes its publication's source; late packets of the old one are dropped. SSRCs
beyond those the offer declared, their RTX, and a small budget of new ones
(:data:`sfu.publication.NEW_SSRC_BURST`) are dropped and counted, never handed to
aiortc.

Data: a channel labelled ``room`` relays JSON messages through the room.

Lifecycle: new -> negotiated (repeatable) -> closed (idempotent ``close()``;
its publications end, its subscriptions close, the peer connection closes within
``[media] close_timeout_s``, else its resources are released: ``media/teardown.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any, Callable

from aiortc import RTCConfiguration, RTCDtlsTransport, RTCSessionDescription
from aiortc.rate import RemoteBitrateEstimator
from aiortc.rtcconfiguration import RTCBundlePolicy

from config.settings import MediaSettings
from core.auth import RoomGrant
from core.vocabulary import Role
from media import aiortc_internals
from media import red as rfc2198
from media.eager import run_now
from media.ice import MediaNetwork, ScopedPeerConnection
from media.send_batch import SendBatch
from media.teardown import close_peer_connection
from sfu.budgets import RetransmitBudget, TokenBucket
from sfu.congestion import (
    LinkEstimate,
    agent_site_share,
    publication_cap,
    remb_bps,
    retransmit_burst,
    retransmit_packets_per_s,
    site_cap,
    subscriber_share,
)
from sfu.errors import SfuError
from sfu.events import ParticipantInfo, PublicationInfo
from sfu.metrics import SfuMetrics
from sfu.publication import Publication, new_publication_id, now, offered_red, publisher_codec, subscriber_codec
from sfu.nack import NackPolicy
from sfu.room import SERVER_IDENTITY, envelope
from sfu.rtp import (
    RtpError,
    RtpHeader,
    abs_send_time_now,
    extension_elements,
    extension_value_at,
    parse_header,
    unwrap_rtx,
)
from sfu.sdp import (
    LegParameters,
    MediaLine,
    Offer,
    SdpError,
    bundle_candidates,
    label_answer,
    leg_parameters,
    reject_sections,
)
from sfu.subscription import Subscription

if TYPE_CHECKING:
    from sfu.room import Room

logger = logging.getLogger(__name__)

MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
DATA_LABEL = "room"
MAX_DECLARED_SSRCS = 4
"""Media SSRCs (and as many RTX pairs) of one offered section taken as the publication's;
an offer may declare more, which are then new SSRCs like any other (budgeted)."""
MAX_LEARNED_SSRCS = 16
"""Routes of SSRCs no offer declared that one participant keeps (the oldest is forgotten)."""


class Participant:
    def __init__(self, session_id: str, grant: RoomGrant, room: "Room", network: MediaNetwork,
                 metrics: SfuMetrics, history_size: int, pli_interval: float,
                 on_gone: Callable[["Participant"], None], *, retransmit_budget: RetransmitBudget | None = None,
                 close_timeout_s: float = 5.0, media: MediaSettings | None = None,
                 send_batch: SendBatch | None = None) -> None:
        self.id = session_id
        self.grant = grant
        self.room = room
        self.metrics = metrics
        self.history_size = history_size
        self.pli_interval = pli_interval
        self.pc = ScopedPeerConnection(network, RTCConfiguration(bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
        self.publications: dict[str, Publication] = {}
        """mid -> publication."""
        self.subscriptions: dict[str, Subscription] = {}
        """mid -> subscription."""
        self.routes: dict[int, tuple[Publication, int | None]] = {}
        """ssrc -> (publication, media ssrc when this is its RTX stream)."""
        self._learned: dict[int, tuple[Publication, int | None]] = {}
        """The routes of ``routes`` that no offer declared, oldest first."""
        self.retransmit_budget = retransmit_budget or RetransmitBudget.from_settings(MediaSettings())
        """What this participant's NACKs may have retransmitted, all its subscriptions together."""
        self.close_timeout_s = close_timeout_s
        self.send_batch = send_batch
        """Where its subscriptions write (None: each packet at once)."""
        self._writers: dict[RTCDtlsTransport, aiortc_internals.RtpWriter] = {}
        """One per transport (with bundling, one): its subscriptions' packets go out together."""
        self.init_congestion_control(media or MediaSettings())
        self.channel: Any = None
        self._sending: set[asyncio.Task[None]] = set()
        """NACKs upstream that had to wait (``media.eager.run_now``)."""
        self.closed = False
        self._negotiating = asyncio.Lock()
        self._on_gone = on_gone
        self.pc.on("connectionstatechange", self._connection_state)
        self.pc.on("datachannel", self._datachannel)

    def init_congestion_control(self, media: MediaSettings) -> None:
        """The state of this participant's bandwidth feedback and NACKs, from the start (also
        for ``bench.hotpath``'s stand-in participant)."""
        self.media = media
        self.nack_policy = NackPolicy(max_retries=media.nack_max_retries, max_age_ms=media.nack_max_age_ms)
        self.estimator = RemoteBitrateEstimator()
        """This transport's uplink estimate from the abs-send-time of what it publishes (aiortc's)."""
        self.uplink = LinkEstimate()
        """The latest of that estimate (bit/s)."""
        self.downlink = LinkEstimate()
        """The latest REMB this participant sent for what it receives (its subscriptions')."""
        self._nack_budget: TokenBucket | None = None
        """Packets the SFU's NACKs may ask of this publisher, once its uplink estimate is known."""

    @property
    def info(self) -> ParticipantInfo:
        return ParticipantInfo(session_id=self.id, identity=self.grant.identity, role=self.grant.role.value)

    # -- negotiation -------------------------------------------------------
    async def negotiate(self, offer: Offer, publish: dict[str, str], subscribe: dict[str, Publication]) -> tuple[
            str, list[Publication]]:
        """Apply ``offer``; returns the (labelled) answer and the new publications."""
        async with self._negotiating:
            if self.closed:
                raise SfuError("session closed", status=409, error="closed")
            return await self._negotiate(offer, publish, subscribe)

    async def _negotiate(self, offer: Offer, publish: dict[str, str], subscribe: dict[str, Publication]) -> tuple[
            str, list[Publication]]:
        existing = {t.mid for t in self.pc.getTransceivers() if t.mid is not None}
        new_pubs: list[tuple[MediaLine, Any, str]] = []
        new_subs: list[tuple[MediaLine, Any, Publication]] = []
        ended: list[str] = []
        plan: list[tuple[MediaLine, str, Any]] = []
        for line in offer.media:
            if line.mid in existing:
                if line.mid in self.publications and not line.offers_media:
                    ended.append(line.mid)
                if line.mid in self.subscriptions and not line.wants_media:
                    ended.append(line.mid)
                continue
            if line.mid in publish:
                prefs = publisher_codec(line.kind, line.codecs)
                if prefs is None:
                    raise SdpError(f"m-line {line.mid}: no codec the SFU forwards (VP8, H.264, Opus)",
                                   error="unsupported_codec")
                plan.append((line, "publish", prefs))
            elif line.mid in subscribe:
                publication = subscribe[line.mid]
                red = publication.red_payload_type is not None and offered_red(line.codecs) is not None
                prefs = subscriber_codec(publication.codec, red=red)
                if not prefs or not any(aiortc_internals.codecs_compatible(c, publication.codec)
                                        for c in line.codecs):
                    raise SdpError(f"m-line {line.mid} does not offer {publication.codec.mimeType}, "
                                   f"the codec of publication {publication.id}", status=406, error="codec_mismatch")
                plan.append((line, "subscribe", prefs))
            else:
                plan.append((line, "inactive", None))
        # Everything checked: make the transceivers (no refusal after this point but aiortc's own).
        for line, role, prefs in plan:
            if role == "publish":
                transceiver = self.pc.addTransceiver(line.kind, direction="recvonly")
                transceiver.setCodecPreferences(prefs)
                aiortc_internals.count_decodes(transceiver.receiver, self.metrics.decoded)
                new_pubs.append((line, transceiver, publish[line.mid]))
            elif role == "subscribe":
                publication = subscribe[line.mid]
                track = aiortc_internals.SilentTrack(line.kind, publication.info.source)
                transceiver = self.pc.addTransceiver(track, direction="sendonly")
                transceiver.setCodecPreferences(prefs)
                aiortc_internals.count_encodes(transceiver.sender, self.metrics.encoded)
                new_subs.append((line, transceiver, publication))
            else:
                transceiver = self.pc.addTransceiver(line.kind, direction="inactive")
            aiortc_internals.bind_transceiver(transceiver, line.mid, line.index)
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=bundle_candidates(offer.sdp),
                                                                     type="offer"))
            answer = await self.pc.createAnswer()
            await self.pc.setLocalDescription(answer)
        except SfuError:
            raise
        except Exception as exc:
            logger.info("negotiation failed", extra={"session": self.id, "error": type(exc).__name__})
            raise SdpError(f"offer could not be negotiated: {exc}") from None
        local = rfc2198.set_red_fmtp(self.pc.localDescription.sdp)  # aiortc writes none for RED
        for transceiver in self.pc.getTransceivers():
            aiortc_internals.tap_transport(transceiver.receiver.transport, self.on_rtp, self.on_rtp_now)

        for mid in ended:
            self._end(mid)
        labels: dict[str, tuple[str, str]] = {}
        created: list[Publication] = []
        for line, transceiver, source in new_pubs:
            leg = leg_parameters(local, line.mid)
            publication = self._publication(line, transceiver, source, leg)
            self.publications[line.mid] = publication
            for ssrc in line.ssrcs[:MAX_DECLARED_SSRCS]:
                self.routes[ssrc] = (publication, None)
            for rtx, media in line.rtx_ssrcs[:MAX_DECLARED_SSRCS]:
                self.routes[rtx] = (publication, media)
            created.append(publication)
            labels[line.mid] = (self.grant.identity, source)
        for line, transceiver, publication in new_subs:
            leg = leg_parameters(local, line.mid)
            subscription = Subscription(f"SU_{self.id}_{line.mid}", self.id, transceiver.sender,
                                        transceiver.sender.transport, leg, publication.extensions,
                                        self.history_size, publication.counts, budget=self.retransmit_budget,
                                        max_resends=self.media.nack_max_retries, batch=self.send_batch,
                                        writer=self._writer_for(transceiver.sender.transport))
            aiortc_internals.intercept_sender_rtcp(transceiver.sender, subscription.on_nack,
                                                   subscription.on_keyframe_request, self._subscriber_remb)
            self.subscriptions[line.mid] = subscription
            subscription.attach(publication.forwarder, publication.id, publication.extensions)
            labels[line.mid] = (publication.info.identity, publication.info.source)
        for publication in created:
            self.room.add_publication(publication)
        if self._is_site_camera(created):
            self._site_camera_changed()
        for mid, subscription in self.subscriptions.items():
            if mid not in labels and subscription.publication_id is not None:
                pub = self.room.publication(subscription.publication_id)
                if pub is not None:
                    labels[mid] = (pub.info.identity, pub.info.source)
        for mid, publication in self.publications.items():
            labels.setdefault(mid, (publication.info.identity, publication.info.source))
        return reject_sections(label_answer(local, labels), {line.mid for line in offer.media if line.rejected}), created

    def _publication(self, line: MediaLine, transceiver: Any, source: str, leg: LegParameters) -> Publication:
        info = PublicationInfo(
            id=new_publication_id(), room=self.room.name, identity=self.grant.identity,
            role=self.grant.role.value, session_id=self.id, kind=line.kind, source=source,
            codec=leg.codec.mimeType, published_at=now(),
        )
        return Publication(info, transceiver.receiver, leg, line.ssrcs, dict(line.rtx_ssrcs), self.pli_interval,
                           self.metrics.track(line.kind, source), self.metrics.decoded,
                           nack_policy=self.nack_policy)

    def _end(self, mid: str) -> None:
        publication = self.publications.pop(mid, None)
        if publication is not None:
            self.room.remove_publication(publication)
            if self._is_site_camera([publication]):
                self._site_camera_changed()
            self.routes = {k: v for k, v in self.routes.items() if v[0] is not publication}
            self._learned = {k: v for k, v in self._learned.items() if v[0] is not publication}
        subscription = self.subscriptions.pop(mid, None)
        if subscription is not None:
            subscription.close()

    # -- media -------------------------------------------------------------
    async def on_rtp(self, data: bytes, arrival_time_ms: int) -> None:
        """One decrypted RTP packet from this participant's transport."""
        self.on_rtp_now(data, arrival_time_ms)

    def on_rtp_now(self, data: bytes, arrival_time_ms: int) -> None:
        """:meth:`on_rtp`, synchronously (the direct receive path calls it per packet): a NACK
        upstream goes out before the packet is forwarded, as when it was awaited here."""
        try:
            header = parse_header(data)
        except RtpError:
            return
        route = self.routes.get(header.ssrc)
        if route is None:
            route = self._learn(data, header, arrival_time_ms)
            if route is None:
                return
        publication, media_ssrc = route
        if publication.closed:
            return
        if publication.abs_send_time_id and header.extension_profile:
            data = self._estimate_uplink(data, header, publication.abs_send_time_id, arrival_time_ms)
        receiver = publication.receiver
        clock_rate = publication.codec.clockRate
        if media_ssrc is not None:
            if header.payload_type != publication.rtx_payload_type:
                return
            if publication.media_ssrc is not None and media_ssrc != publication.media_ssrc:
                return  # a retransmission for a source the publisher no longer sends
            aiortc_internals.feed_receiver_rtx(receiver, header.ssrc, header.sequence_number, header.timestamp,
                                               clock_rate)
            try:
                data, header = unwrap_rtx(data, header, payload_type=publication.payload_type, ssrc=media_ssrc)
            except RtpError:
                return  # padding-only RTX (bandwidth probing): not a retransmission
            # header.ssrc: the media ssrc now
            publication.counts.rtx_bytes_in += len(data)
            publication.counts.lost += publication.loss.add(header.sequence_number)
            if publication.nack is not None:
                publication.nack.received(header.sequence_number, arrival_time_ms)
        else:
            if header.payload_type != publication.payload_type:
                if header.payload_type != publication.red_payload_type:
                    return
                if not rfc2198.valid(data[header.payload_start:header.payload_end], publication.payload_type):
                    self.metrics.drop("malformed_red")
                    return
            if not publication.accept_media_ssrc(header.ssrc, arrival_time_ms):
                return
            aiortc_internals.feed_receiver_packet(receiver, header, clock_rate, nack=False)
            publication.counts.lost += publication.loss.add(header.sequence_number)
            nacks = publication.nack
            if nacks is not None:
                nacks.received(header.sequence_number, arrival_time_ms)
                if nacks.wants_check(arrival_time_ms):
                    self._ask_again(publication, header.ssrc, arrival_time_ms)
        publication.forwarder.forward_now(data, header)

    # -- congestion control (sfu/congestion.py, sfu/nack.py) ----------------
    def _ask_again(self, publication: Publication, ssrc: int, now_ms: int) -> None:
        """NACK upstream what :class:`sfu.nack.NackRequester` says is due, within the share of
        this publisher's uplink estimate that retransmissions may take."""
        nacks = publication.nack
        assert nacks is not None
        bucket = self._nack_budget
        allowance = None if bucket is None else int(bucket.refill(now_ms / 1000))
        lost = nacks.due(now_ms, allowance)
        given_up = nacks.pop_given_up()
        if given_up:
            publication.counts.nack_given_up += given_up
            # Every subscriber (and the recording) now holds a frame it cannot complete: ask
            # for the keyframe once here, not after each of them found out (rate-limited).
            publication.forwarder.keyframe_wanted("lost upstream")
        if not lost:
            return
        if bucket is not None:
            bucket.tokens -= len(lost)
        publication.counts.nack_sent += 1
        run_now(aiortc_internals.send_nack(publication.receiver, ssrc, lost), self._sending)

    def _estimate_uplink(self, data: bytes, header: RtpHeader, ext_id: int, arrival_ms: int) -> bytes:
        """Feed this transport's estimator with the packet's abs-send-time; returns the packet
        with the SFU's own send time in its place, so that subscribers' estimators measure
        the leg from the SFU to them (as mediasoup does), not the publisher's uplink too."""
        at = extension_value_at(data, header, ext_id)
        if at < 0 or at + 3 > header.payload_start:
            return data
        estimate = self.estimator.add(arrival_time_ms=arrival_ms, abs_send_time=int.from_bytes(data[at:at + 3], "big"),
                                      payload_size=len(data) - header.payload_start, ssrc=header.ssrc)
        if estimate is not None:
            self._uplink_estimated(estimate[0])
        return b"".join((data[:at], abs_send_time_now(time.time_ns()), data[at + 3:]))

    def _uplink_estimated(self, bps: int) -> None:
        """aiortc's estimator has a new estimate of this transport (every 0.5 s at most, or at
        once on overuse): send the REMB, capped by subscribers and site (``sfu/congestion.py``)."""
        now_s = time.monotonic()
        self.uplink.update(bps, now_s)
        rate = retransmit_packets_per_s(bps, self.media.retransmit_share)
        if self._nack_budget is None:
            self._nack_budget = TokenBucket(rate, retransmit_burst(rate))
        else:
            self._nack_budget.rate, self._nack_budget.burst = rate, retransmit_burst(rate)
        video = [p for p in self.publications.values() if p.info.kind == "video" and not p.closed]
        if not video:
            return
        caps = [self._subscribers_cap(p, now_s) for p in video]
        site = self._site_cap(now_s)
        value = remb_bps(bps, caps, site)
        ssrcs: list[int] = []
        for publication, cap in zip(video, caps):
            feedback = publication.feedback
            feedback.uplink_bps, feedback.subscribers_cap_bps, feedback.site_cap_bps = bps, cap, site
            feedback.remb_bps = value
            if publication.media_ssrc is not None:
                ssrcs.append(publication.media_ssrc)
                ssrcs += [rtx for rtx, media in publication.rtx_ssrcs.items() if media == publication.media_ssrc]
        if ssrcs:
            run_now(aiortc_internals.send_remb(video[0].receiver, value, ssrcs), self._sending)

    def _subscribers_cap(self, publication: Publication, now_s: float) -> float | None:
        """The smallest share of a subscriber's REMB that this publication's subscription takes."""
        shares: list[float | None] = []
        for subscription in publication.forwarder.subscriptions:
            subscriber = self.room.participants.get(subscription.session_id)
            estimate = subscriber.downlink.current(now_s) if subscriber is not None else None
            if subscriber is None or estimate is None:
                continue
            legs = [s for s in subscriber.subscriptions.values() if not s.closed]
            total = sum(s.rate.sample(s.bytes_sent, now_s) for s in legs)
            own = subscription.rate.sample(subscription.bytes_sent, now_s)
            shares.append(subscriber_share(estimate, own, total, len(legs)))
        return publication_cap(shares)

    def _site_cap(self, now_s: float) -> float | None:
        """A nurse's browser: its share of the site's uplink estimate, while the site's device
        agent publishes in the room too (it shares the uplink, and comes first)."""
        if self.grant.role is not Role.NURSE:
            return None
        site = [(p.grant.role, p.uplink.current(now_s)) for p in self.room.participants.values()
                if p.grant.role in (Role.NURSE, Role.AGENT)]
        if not any(role is Role.AGENT and bps is not None for role, bps in site):
            return None
        return site_cap([bps for _, bps in site if bps is not None], self.media.nurse_site_share)

    def _subscriber_remb(self, bitrate: int) -> None:
        """This participant, as a subscriber, sent a REMB for its transport."""
        self.downlink.update(bitrate, time.monotonic())
        self.retransmit_budget.follow_estimate(bitrate, self.media.retransmit_share)

    def _learn(self, data: bytes, header: Any, arrival_ms: int) -> tuple[Publication, int | None] | None:
        """Route a packet of an SSRC the offer did not declare: by mid extension, else by
        payload type when only one publication uses it, within that publication's budget of
        new SSRCs (:meth:`Publication.admit_new_ssrc`). None: dropped (counted)."""
        publications = [p for p in self.publications.values() if not p.closed]
        if not publications:
            self.metrics.drop("unknown_ssrc")
            return None
        route: tuple[Publication, int | None] | None = None
        mid_id = publications[0].extensions.get(MID_URI)
        if mid_id and header.extension_profile:
            for ext_id, value in extension_elements(data, header):
                if ext_id == mid_id:
                    publication = self.publications.get(value.decode("utf-8", "replace"))
                    if publication is not None:
                        route = self._route_for(publication, header)
                    break
        if route is None:
            matches = [p for p in publications
                       if header.payload_type in (p.payload_type, p.rtx_payload_type, p.red_payload_type)]
            if len(matches) == 1:
                route = self._route_for(matches[0], header)
        if route is None or not route[0].admit_new_ssrc(arrival_ms):
            self.metrics.drop("unknown_ssrc")
            return None
        self.routes[header.ssrc] = self._learned[header.ssrc] = route
        if len(self._learned) > MAX_LEARNED_SSRCS:
            oldest = next(iter(self._learned))
            if self.routes.get(oldest) is self._learned.pop(oldest):
                del self.routes[oldest]
        return route

    @staticmethod
    def _route_for(publication: Publication, header: Any) -> tuple[Publication, int | None] | None:
        if header.payload_type == publication.rtx_payload_type:
            media = publication.rtx_ssrcs.get(header.ssrc) or publication.media_ssrc
            if media is None:
                return None
            return (publication, media)
        return (publication, None)

    # -- events ------------------------------------------------------------
    def _writer_for(self, transport: RTCDtlsTransport) -> aiortc_internals.RtpWriter:
        writer = self._writers.get(transport)
        if writer is None:
            writer = self._writers[transport] = aiortc_internals.RtpWriter(transport)
        return writer

    def _connection_state(self) -> None:
        state = self.pc.connectionState
        if state == "connected":
            for subscription in self.subscriptions.values():
                subscription.became_ready()
        elif state in ("failed", "closed") and not self.closed:
            logger.info("peer connection %s", state, extra={"session": self.id})
            self._on_gone(self)

    def _datachannel(self, channel: Any) -> None:
        if channel.label != DATA_LABEL:
            return
        self.channel = channel
        self.tell_site_share()  # a nurse's camera may have come first

        @channel.on("message")
        def on_message(message: Any) -> None:
            self.room.relay_data(self, message)

    # -- the site's uplink ----------------------------------------------------
    def _is_site_camera(self, publications: list[Publication]) -> bool:
        return self.grant.role is Role.NURSE and any(p.info.kind == "video" for p in publications)

    def _site_camera_changed(self) -> None:
        """The nurse's camera started or stopped: the site's device agent hears its new share."""
        for participant in list(self.room.participants.values()):
            if participant is not self:
                participant.tell_site_share()

    def tell_site_share(self) -> None:
        """A device agent's share of the site's uplink, on its ``room`` channel (none yet: it
        hears it when the channel opens)."""
        if self.grant.role is not Role.AGENT:
            return
        camera = any(p.info.role == Role.NURSE.value and p.info.kind == "video"
                     for p in self.room.publications.values())
        share = agent_site_share(camera, self.media.nurse_site_share)
        self.send_data(envelope(SERVER_IDENTITY, "server", {"type": "site_share", "share": round(share, 3)}))

    def send_data(self, text: str) -> bool:
        channel = self.channel
        if channel is None or channel.readyState != "open":
            return False
        channel.send(text)
        return True

    def check_ready_subscriptions(self) -> None:
        for subscription in self.subscriptions.values():
            subscription.became_ready()

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for subscription in self.subscriptions.values():
            subscription.close()
        for publication in list(self.publications.values()):
            self.room.remove_publication(publication)
        if self._is_site_camera(list(self.publications.values())):
            self._site_camera_changed()
        await close_peer_connection(self.pc, self.close_timeout_s, {"session": self.id, "room": self.room.name})
