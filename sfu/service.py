"""The SFU of one node: rooms, sessions, and the API that WHIP/WHEP and signalling use.

:class:`SfuService` is the stable Python API of the SFU (the signalling layer's
WebSocket path codes against it)::

    service.negotiate(grant, offer_sdp, *, session_id=None, publish=None, subscribe=None)
        -> Negotiation(session_id, answer_sdp, publications)
        One peer connection per session; aiortc answers. First call (session_id
        None): a new session (participant) in room ``grant.room``. Later calls
        with that session_id: a re-offer on the same peer connection (same
        identity only). ``publish``: {mid: source} for the offer's sendonly
        sections this call adds; ``subscribe``: {mid: publication_id} for the
        recvonly sections it adds. Sections already negotiated keep their role;
        one that stops sending (publish) or receiving (subscribe) ends it.
        Sections in neither map are answered inactive. Raises SfuError
        subclasses (``status``, ``error``, ``reason``): SdpError 400/406/413,
        Forbidden 403 (grant; a new session in a room whose consultation is not
        live, see ``sfu.ports.RoomGate`` and ``sfu.standalone_rooms``), NotFound
        404, Unavailable 503 (draining: new sessions only).
    service.whip(grant, offer_sdp, sources=()) / service.whep(grant, offer_sdp)
        The WHIP/WHEP rules on top of negotiate (docs/whip-whep.md).
    await service.leave(session_id) -> bool
    service.publications(room) -> list[PublicationInfo]   (publication order)
    service.participants(room) -> list[ParticipantInfo]   (join order)
    service.on_room_event(room, callback) -> unsubscribe()  (callback(RoomEvent), sync)
    service.create_room(room) / await service.close_room(room)   (idempotent)
    service.rooms() -> list[str]
    service.feedback(room) -> {publication_id: PublicationFeedback}   (bandwidth estimates, REMB)
    service.send_data(room, message) -> int   (server message on every ``room`` channel)
    await service.close()                      (every room)

Events (:class:`sfu.events.RoomEvent`): participant_joined / participant_left
(ParticipantInfo), publication_added / publication_removed (PublicationInfo;
a replacement is "removed" of the old, then "added" with ``replaces``), room_closed.
Browsers use one peer connection per participant: data channel ``room``,
sendonly sections for what they publish, recvonly ones for what they play,
re-offering as publications come and go.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable

from config.settings import Settings
from core.auth import RoomGrant
from core.vocabulary import ParticipantId, RoomId
from media.ice import MediaNetwork
from media.send_batch import NATIVE, SendBatch
from sfu.budgets import RetransmitBudget
from sfu.errors import Forbidden, NotFound, SfuError, Unavailable
from sfu.events import ParticipantInfo, PublicationInfo, RoomListener
from sfu.leg import FANOUT
from sfu.congestion import PublicationFeedback
from sfu.metrics import Gauges, SfuMetrics, UplinkFigures
from sfu.participant import Participant
from sfu.ports import RoomGate
from sfu.publication import Publication, source_kind
from sfu.room import Room
from sfu.sdp import SdpError, parse_offer

logger = logging.getLogger(__name__)

MAX_SESSIONS_PER_ROOM = 32


@dataclass(frozen=True)
class Negotiation:
    session_id: str
    answer_sdp: str
    publications: tuple[PublicationInfo, ...] = ()
    """Publications this negotiation created."""


def _send_batch(send_path: str) -> SendBatch:
    missing = [name for name, module in (("media._rtpsend", NATIVE), ("sfu._fanout", FANOUT)) if module is None]
    if send_path == "native" and missing:
        raise RuntimeError(f"[media] send_path = \"native\", but the C extension(s) {', '.join(missing)} were not "
                           "built (they need gcc and the Python headers: reinstall with scripts/install.sh)")
    batch = SendBatch(native=send_path != "python")
    if send_path == "auto" and missing:
        logger.warning("C extensions not built: forwarding runs in Python for what they do",
                       extra={"missing": ",".join(missing)})
    return batch


class SfuService:
    def __init__(self, settings: Settings, *, accepting: Callable[[], bool] = lambda: True,
                 network: MediaNetwork | None = None, gate: RoomGate | None = None) -> None:
        self.settings = settings
        self.gate = gate
        """Whether a room's consultation is live (the assembly sets signalling's); None: no room
        opens unless ``sfu.standalone_rooms``."""
        self.network = network or MediaNetwork.from_settings(settings.effective_media, settings.ice)
        self.accepting = accepting
        self.metrics = SfuMetrics()
        self.metrics.gauges = self._gauges
        self.metrics.uplinks = self._uplinks
        self._rooms: dict[str, Room] = {}
        self._sessions: dict[str, Participant] = {}
        self.send_batch = _send_batch(settings.media.send_path)
        """Every subscription's writes of one event-loop turn, sent together at its end."""
        sends = self.send_batch.counts
        self.metrics.sends = lambda: (sends.syscalls, sends.datagrams, sends.failed)
        self.closed = False

    # -- rooms -----------------------------------------------------------------
    def rooms(self) -> list[str]:
        return list(self._rooms)

    def create_room(self, room: str) -> Room:
        if not room:
            raise SfuError("a room needs a name")
        existing = self._rooms.get(room)
        if existing is not None:
            return existing
        if not self.accepting() or self.closed:
            raise Unavailable("this node is draining: no new rooms")
        created = self._rooms[room] = Room(room)
        logger.info("room created", extra={"room": room})
        return created

    async def close_room(self, room: str) -> None:
        existing = self._rooms.pop(room, None)
        if existing is None:
            return
        for participant in list(existing.participants.values()):
            self._sessions.pop(participant.id, None)
        await existing.close()
        logger.info("room closed", extra={"room": room})

    def publications(self, room: str) -> list[PublicationInfo]:
        existing = self._rooms.get(room)
        return existing.infos() if existing else []

    def participants(self, room: str) -> list[ParticipantInfo]:
        """The room's participants (media sessions), in the order they joined."""
        existing = self._rooms.get(room)
        return [p.info for p in existing.participants.values()] if existing else []

    def on_room_event(self, room: str, callback: RoomListener) -> Callable[[], None]:
        """Listen to a room's events (the room is created if needed)."""
        return self.create_room(room).listen(callback)

    def send_data(self, room: str, message: Any) -> int:
        existing = self._rooms.get(room)
        return existing.send_data(message) if existing else 0

    def live_rooms(self) -> int:
        """Rooms with media going on (some publication): the work a draining node waits for.
        Subscribers alone keep nothing alive: with no publisher left there is nothing to
        forward, and during draining a new publisher can only come through a re-offer."""
        return sum(1 for r in self._rooms.values() if r.participants and r.publications)

    # -- sessions ----------------------------------------------------------------
    async def negotiate(self, grant: RoomGrant, offer_sdp: str, *, session_id: str | None = None,
                        publish: dict[str, str] | None = None,
                        subscribe: dict[str, str] | None = None) -> Negotiation:
        if session_id is None:
            self._check_accepting()
        offer = parse_offer(offer_sdp)
        publish = dict(publish or {})
        subscribe = dict(subscribe or {})
        if session_id is not None:
            participant = self._sessions.get(session_id)
            if participant is None or participant.room.name != grant.room:
                raise NotFound("no such session in this room")
            if participant.grant.identity != grant.identity:
                raise Forbidden("this session belongs to another participant")
            room = participant.room
        else:
            if not self.accepting() or self.closed:
                raise Unavailable("this node is draining: no new sessions")
            await self.check_room_live(grant.room, grant.identity)
            room = self.create_room(grant.room)
            if len(room.participants) >= MAX_SESSIONS_PER_ROOM:
                raise SfuError("room is full", status=409, error="room_full")
            participant = None
        lines = {line.mid: line for line in offer.media}
        self._check_publish(grant, lines, publish)
        targets = self._check_subscribe(grant, room, lines, subscribe)
        new = participant is None
        if participant is None:
            media = self.settings.media
            participant = Participant(
                "SE_" + secrets.token_hex(8), grant, room, self.network, self.metrics,
                media.nack_history, media.pli_interval_s, self._gone,
                retransmit_budget=RetransmitBudget.from_settings(media),
                close_timeout_s=media.close_timeout_s, media=media, send_batch=self.send_batch)
        try:
            answer, created = await participant.negotiate(offer, publish, targets)
        except BaseException:
            if new:
                await participant.close()
            raise
        if new:
            if room.closed:
                await participant.close()
                raise NotFound("room closed")
            self._sessions[participant.id] = participant
            room.join(participant)
        return Negotiation(participant.id, answer, tuple(p.info for p in created))

    def _check_publish(self, grant: RoomGrant, lines: dict[str, Any], publish: dict[str, str]) -> None:
        seen: set[str] = set()
        for mid, source in publish.items():
            line = lines.get(mid)
            if line is None:
                raise SdpError(f"publish names mid {mid!r}, which the offer does not have")
            kind = source_kind(source)
            if kind is None:
                raise SfuError(f"unknown source {source!r}", error="unknown_source")
            if not grant.may_publish(source):
                raise Forbidden(f"the room token does not grant publishing {source!r}")
            if kind != line.kind:
                raise SfuError(f"source {source!r} is {kind}, m-line {mid} is {line.kind}",
                               error="kind_mismatch")
            if not line.offers_media:
                raise SdpError(f"m-line {mid} does not send media (direction {line.direction})")
            if source in seen:
                raise SfuError(f"source {source!r} published twice in one offer", error="duplicate_source")
            seen.add(source)

    def _check_subscribe(self, grant: RoomGrant, room: Room, lines: dict[str, Any],
                         subscribe: dict[str, str]) -> dict[str, Publication]:
        if subscribe and not grant.subscribe:
            raise Forbidden("the room token does not grant subscribing")
        targets: dict[str, Publication] = {}
        for mid, publication_id in subscribe.items():
            line = lines.get(mid)
            if line is None:
                raise SdpError(f"subscribe names mid {mid!r}, which the offer does not have")
            publication = room.publication(publication_id)
            if publication is None:
                raise NotFound(f"no publication {publication_id!r} in this room")
            if not grant.may_subscribe(publication.info.source):
                raise Forbidden(f"the room token does not grant receiving {publication.info.source!r}")
            if publication.info.kind != line.kind:
                raise SfuError(f"publication {publication_id} is {publication.info.kind}, m-line {mid} is "
                               f"{line.kind}", error="kind_mismatch")
            if not line.wants_media:
                raise SdpError(f"m-line {mid} does not receive media (direction {line.direction})")
            targets[mid] = publication
        return targets

    async def whip(self, grant: RoomGrant, offer_sdp: str, sources: Iterable[str] = ()) -> Negotiation:
        """WHIP: one publication per media kind; each m-line's source is the one of ``sources``
        of its kind, else the grant's only source of that kind."""
        self._check_accepting()
        offer = parse_offer(offer_sdp)
        wanted = list(sources)
        for source in wanted:
            if source_kind(source) is None:
                raise SfuError(f"unknown source {source!r}", error="unknown_source")
        publish: dict[str, str] = {}
        kinds_seen: set[str] = set()
        for line in offer.media:
            if line.rejected:
                continue
            if line.kind in kinds_seen:
                raise SdpError(f"WHIP takes one {line.kind} track per session")
            kinds_seen.add(line.kind)
            if not line.offers_media:
                raise SdpError(f"WHIP m-line {line.mid} must be sendonly")
            choices = [s for s in wanted if source_kind(s) == line.kind]
            if not choices:
                choices = [s for s in grant.publish if source_kind(s) == line.kind]
                if not choices:
                    raise Forbidden(f"the room token grants no {line.kind} source")
            if len(choices) != 1:
                raise SfuError(f"several {line.kind} sources possible ({', '.join(choices)}): name one with "
                               f"?source=", error="ambiguous_source")
            publish[line.mid] = choices[0]
        if not publish:
            raise SdpError("WHIP offer has no media to publish")
        return await self.negotiate(grant, offer_sdp, publish=publish)

    async def whep(self, grant: RoomGrant, offer_sdp: str) -> Negotiation:
        """WHEP: the room's publications present now (other identities' only), in publication
        order, one per offered m-line of their kind (first video m-line <- first video
        publication...); m-lines left over are answered inactive."""
        if not grant.subscribe:
            raise Forbidden("the room token does not grant subscribing")
        self._check_accepting()
        offer = parse_offer(offer_sdp)
        await self.check_room_live(grant.room, grant.identity)
        room = self._rooms.get(grant.room)
        available = {"audio": [], "video": []}  # type: dict[str, list[PublicationInfo]]
        if room is not None:
            for info in room.infos():
                if info.identity != grant.identity and grant.may_subscribe(info.source):  # not one's own
                    available[info.kind].append(info)
        subscribe: dict[str, str] = {}
        for line in offer.media:
            if not line.wants_media:
                continue
            queue = available.get(line.kind) or []
            if queue:
                subscribe[line.mid] = queue.pop(0).id
        if not subscribe:
            raise SfuError("nothing to play in this room yet", status=409, error="no_publications")
        return await self.negotiate(grant, offer_sdp, subscribe=subscribe)

    async def check_room_live(self, room: str, identity: str) -> None:
        """A new session enters ``room`` only while its consultation is live and ``identity`` holds a
        seat in it: a room token dies with its consultation, or with its guest's removal (403), and
        no room is made again for one that ended. Not with ``sfu.standalone_rooms``."""
        if self.settings.sfu.standalone_rooms:
            return
        if self.gate is None:
            raise Forbidden("rooms open only for a live consultation, and this node knows of none")
        try:
            live = await self.gate.is_live(RoomId(room), ParticipantId(identity))
        except Exception as exc:  # the store behind the gate: retry later, never a 500
            logger.warning("room gate unavailable: %s", type(exc).__name__, extra={"room": room})
            raise Unavailable("cannot check the room's consultation now; retry") from None
        if not live:
            raise Forbidden("the room's consultation is not live, or this seat left it (its room tokens died)")
        try:
            here = await self.gate.hosted_here(RoomId(room))
        except Exception as exc:
            logger.warning("room gate unavailable: %s", type(exc).__name__, extra={"room": room})
            raise Unavailable("cannot check where the room is now; retry") from None
        if not here:
            raise SfuError("the room is hosted on another media node: use the consultation's sfu_url",
                           status=409, error="wrong_node")

    def _check_accepting(self) -> None:
        if not self.accepting() or self.closed:
            raise Unavailable("this node is draining: no new sessions")

    async def leave(self, session_id: str) -> bool:
        participant = self._sessions.pop(session_id, None)
        if participant is None:
            return False
        await participant.room.leave(participant)
        return True

    async def remove(self, room: str, identity: str) -> int:
        """End every session of ``identity`` in ``room`` now (a guest removed): its media stops and
        its publications leave the room. Returns how many sessions it had."""
        existing = self._rooms.get(room)
        if existing is None:
            return 0
        gone = [p for p in existing.participants.values() if p.grant.identity == identity]
        for participant in gone:
            await self.leave(participant.id)
        logger.info("participant removed", extra={"room": room, "identity": identity, "sessions": len(gone)})
        return len(gone)

    def session(self, session_id: str) -> Participant | None:
        return self._sessions.get(session_id)

    def _gone(self, participant: Participant) -> None:
        """A peer connection failed or closed by itself."""
        if participant.id in self._sessions:
            task = asyncio.ensure_future(self.leave(participant.id))
            task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    def feedback(self, room: str) -> dict[str, PublicationFeedback]:
        """Publication id -> the bandwidth feedback last worked out for it (``sfu/congestion.py``):
        the publisher's uplink estimate, its subscribers' cap, the REMB sent."""
        existing = self._rooms.get(room)
        return {p.id: replace(p.feedback) for p in existing.publications.values()} if existing else {}

    def _uplinks(self) -> list[UplinkFigures]:
        return [UplinkFigures(p.info.kind, p.info.source, p.feedback.uplink_bps, p.feedback.remb_bps)
                for r in self._rooms.values() for p in r.publications.values()]

    def _gauges(self) -> Gauges:
        rooms = list(self._rooms.values())
        return Gauges(
            rooms=len(rooms),
            participants=sum(len(r.participants) for r in rooms),
            publications=sum(len(r.publications) for r in rooms),
            subscriptions=sum(len(p.subscriptions) for r in rooms for p in r.participants.values()),
        )

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        # Together: each close is bounded ([media] close_timeout_s), so is the node's.
        await asyncio.gather(*(self.close_room(room) for room in list(self._rooms)))
        self.send_batch.close()
