"""Consultation rooms: who may join with what (grants), and where they live (media nodes).

A room is named after its consultation and placed on the least loaded live SFU
node (``sfu.node``); every node registers itself in the store with a heartbeat.
A node whose heartbeat expires loses its rooms to the others, and the parties
are told where to go (``room.moved``). Each seat of a room gets a room token
scoped to what it may do (:data:`SEATS`, default deny). The node's room events
are relayed to the parties' sockets, and browsers' SDP goes to this node's SFU
over the socket (``media.offer``, ``media.leave``). The room's state (participants,
publications) reads the same from any process: the hosting node's SFU, or the
document it keeps in the store (``signalling.room_state``).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from core.auth import AuthError, Principal
from core.vocabulary import MEDIA_DEVICES, Act, ConsultationId, ParticipantId, Role, RoomId, Source
from sfu.events import RoomEvent
from sfu.node import NodeInfo, choose_node
from sfu.service import SfuService
from signalling import protocol as p
from signalling.bus import Note
from signalling.consultation import LIVE, CloseRoom, Consultation, GrantSeats, State
from signalling.consultations import Consultations
from signalling.context import Context, safely
from signalling.hub import agents, nurses, user
from signalling.invitation import Invitation, InvitationState
from signalling.protocol import ErrorCode, ProtocolError
from signalling.room_state import RoomStates, RoomView
from signalling.session import Session

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Seat:
    """What one seat of a room may do."""

    identity: str
    publish: tuple[str, ...]
    subscribe: bool
    command: bool
    """Drive the devices (stethoscope mode, stills)."""
    receive: tuple[str, ...] | None = None
    """The sources it may receive when it subscribes (None: every one)."""


_PEOPLE = (Source.CAMERA.value, Source.MICROPHONE.value)
"""A person's own camera and microphone."""
SEATS: dict[Role, Seat] = {
    Role.NURSE: Seat("nurse", _PEOPLE, subscribe=True, command=False),
    Role.PHYSICIAN: Seat("physician", _PEOPLE, subscribe=True, command=True),
    Role.AGENT: Seat("agent", tuple(s.value for s in MEDIA_DEVICES), subscribe=False, command=False),
    # Guests (issue 14): their identity is their invitation's. An interpreter or a family member
    # sees and hears the people, not the devices; a specialist examines with the devices but
    # drives none of them (the physician leads the examination).
    Role.INTERPRETER: Seat("interpreter", _PEOPLE, subscribe=True, command=False, receive=_PEOPLE),
    Role.GUEST: Seat("guest", _PEOPLE, subscribe=True, command=False, receive=_PEOPLE),
    Role.SPECIALIST: Seat("specialist", _PEOPLE, subscribe=True, command=False),
}
"""Room grants per seat (default deny: only what is listed)."""
CORE_IDENTITIES = frozenset(seat.identity for role, seat in SEATS.items() if not role.invited)
"""The seats every consultation has; any other identity in a room is an admitted guest's."""

PUBLICATION_FIELDS = ("id", "identity", "role", "source", "kind", "codec", "published_at", "replaces")
PARTICIPANT_FIELDS = ("session_id", "identity", "role")


def info(obj: Any) -> dict[str, Any]:
    """An SFU description (dataclass) as a JSON-ready dict."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    return dict(obj) if isinstance(obj, dict) else {"value": str(obj)}


def publication(pub: Any) -> dict[str, Any]:
    """A publication's wire form (the *Publication object* of docs/protocol.md)."""
    full = info(pub)
    return {name: full.get(name) for name in PUBLICATION_FIELDS}


class Rooms:
    def __init__(self, ctx: Context, consultations: Consultations) -> None:
        self.ctx = ctx
        self.consultations = consultations
        self._listeners: dict[str, Callable[[], None]] = {}
        """Room -> stop relaying its events (rooms open on this node)."""
        self.states = RoomStates(ctx)
        """The store's documents of the rooms this node hosts, and any room's view."""
        self._media_sessions: dict[tuple[str, str], str] = {}
        """(signalling session, consultation) -> the SFU session its ``media.offer`` opened."""
        self.guest_presence: Callable[[str, str, bool], Awaitable[None]] = _nobody
        """(consultation, identity, present): a guest's media joined or left the room (set by the
        service to ``Invitations.presence``)."""
        self.room_opened: list[Callable[[str], Awaitable[object]]] = []
        """Told each room this node opens, placed or re-placed here (recording resumes a moved
        room's recording: ``SignallingService.on_room_opened``)."""

    # -- grants ----------------------------------------------------------------------------
    def grant(self, c: Consultation, role: Role, sfu_url: str | None = None,
              identity: str | None = None) -> dict[str, Any]:
        """A seat's room token and grant (the fields of ``consultation.started``, ``room.token.ok``...);
        a guest's ``identity`` is its invitation's."""
        seat = SEATS[role]
        identity = identity or seat.identity
        token = self.ctx.tokens.issue_room(c.id, identity, role=role, publish=seat.publish,
                                           subscribe=seat.subscribe, command=seat.command,
                                           subscribe_sources=seat.receive)
        return {"room": c.id, "room_token": token, "sfu_url": sfu_url,
                "grant": {"identity": identity, "role": role.value, "publish": list(seat.publish),
                          "subscribe": seat.subscribe, "command": seat.command,
                          "subscribe_sources": list(seat.receive if seat.receive is not None
                                                    else (s.value for s in Source))}}

    @staticmethod
    def identity_of(c: Consultation, principal: Principal) -> str:
        """``principal``'s identity in ``c``'s room."""
        if principal.role.invited:
            inv = c.invitation(principal.subject)
            assert inv is not None, "a guest without its invitation has no seat"
            return inv.identity
        return SEATS[principal.role].identity

    async def join(self, c: Consultation, principal: Principal) -> dict[str, Any]:
        """What a party needs to join the room now: grant, token, node URL, the publications it may
        receive."""
        room = c.room or c.id
        return {**self.grant(c, principal.role, await self.sfu_url(room), self.identity_of(c, principal)),
                "publications": await self.publications(room, principal.role)}

    async def join_guest(self, c: Consultation, inv: Invitation) -> dict[str, Any]:
        room = c.room or c.id
        return {**self.grant(c, inv.role, await self.sfu_url(room), inv.identity),
                "publications": await self.publications(room, inv.role)}

    async def grant_seats(self, effect: GrantSeats) -> None:
        c = effect.consultation
        assert c.physician is not None
        for role, target in ((Role.NURSE, nurses(c.site)), (Role.AGENT, agents(c.site)),
                             (Role.PHYSICIAN, user(c.physician))):
            grant = self.grant(c, role, effect.sfu_url)
            await self.ctx.bus.emit([target], p.ConsultationStarted(
                consultation=c.view(role is not Role.AGENT), publications=await self.publications(c.room or c.id),
                **grant).to_wire())

    async def view(self, room: str) -> RoomView:
        """The room's participants and publications: from this process's SFU when it hosts the room
        (or the room is placed nowhere: one process), else the hosting node's document in the store."""
        sfu = self.ctx.sfu()
        node = await self.ctx.store.room_node(room)
        if sfu is not None and (node is None or node == self.ctx.node_id):
            return RoomView.of(sfu, room)
        return await self.states.view(room)

    async def publications(self, room: str, role: Role | None = None) -> list[dict[str, Any]]:
        """The room's publications (those ``role`` may receive; None: every one), from any process."""
        return shown(await self.view(room), role)

    async def _seated(self, s: Session, cid: str) -> Consultation:
        c = await self.consultations.load_visible(s.principal, cid)
        if c.state is not State.ACTIVE or not self.consultations.seat(s.principal, c):
            raise ProtocolError(ErrorCode.CONFLICT, "no seat of yours in an active consultation")
        return c

    async def token_request(self, s: Session, msg: p.RoomToken) -> p.RoomTokenOk:
        c = await self._seated(s, msg.consultation_id)
        return p.RoomTokenOk(**await self.join(c, s.principal))

    async def publications_request(self, s: Session, msg: p.RoomPublications) -> p.RoomPublicationsOk:
        c = await self._seated(s, msg.consultation_id)
        room = c.room or c.id
        view = await self.view(room)
        return p.RoomPublicationsOk(consultation_id=c.id, room=room, publications=shown(view, s.role),
                                    participants=[participant(x) for x in view.participants])

    # -- rooms on this node ------------------------------------------------------------------
    def _open(self, sfu: SfuService, room: str) -> None:
        """Create the room on the SFU and relay its events."""
        sfu.create_room(room)
        if room not in self._listeners:
            self._listeners[room] = sfu.on_room_event(room, self.on_room_event)
            for callback in self.room_opened:
                self.ctx.tasks.spawn(safely(callback(room)))

    async def is_live(self, room_id: RoomId, identity: ParticipantId | None = None) -> bool:
        """``sfu.ports.RoomGate``: the consultation the room is named after is open and live (an
        ended one has left the store), so the room's tokens are good for media; a guest's only
        while it is admitted (removed: its tokens died)."""
        got = await self.consultations.get(room_id)
        if got is None or got[0].state not in LIVE or (got[0].room or got[0].id) != room_id:
            return False
        return identity is None or identity in CORE_IDENTITIES or got[0].guest(identity) is not None

    async def hosted_here(self, room_id: RoomId) -> bool:
        """``sfu.ports.RoomGate``: the room is placed on this process's media node, or nowhere yet
        (one node, the memory store): a room token opens no second room on another node."""
        node = await self.ctx.store.room_node(room_id)
        return node is None or node == self.ctx.node_id

    def open_local(self, room: str) -> None:
        sfu = self.ctx.sfu()
        if sfu is None:
            return
        try:
            self._open(sfu, room)
        except Exception as exc:
            logger.error("room could not be opened on this node: %s", exc, extra={"room": room})

    async def close_local(self, room: str) -> None:
        unlisten = self._listeners.pop(room, None)
        if unlisten is not None:
            unlisten()
        self.states.forget(room)
        sfu = self.ctx.sfu()
        if sfu is not None:
            try:
                await sfu.close_room(room)
            except Exception as exc:
                logger.warning("closing the room failed: %s", exc, extra={"room": room})

    async def close(self, effect: CloseRoom) -> None:
        """A live consultation is over: its room closes, on whichever node hosts it."""
        for key in [k for k in self._media_sessions if k[1] == effect.consultation_id]:
            del self._media_sessions[key]
        room = effect.room
        if room:
            node = await safely(self.ctx.store.room_node(room))
            await safely(self.ctx.store.unplace_room(room))
            if node is None or node == self.ctx.node_id:
                await self.close_local(room)
            else:
                await safely(self.ctx.bus.note(Note.CLOSE_ROOM, room, node=node))

    def on_room_event(self, event: RoomEvent) -> None:
        """Called by the SFU (sync): the room's document in the store follows, then the event goes
        to the room's sockets (on every process)."""
        kind = event.type.value.replace("_", ".", 1)
        data: dict[str, Any] = {}
        if event.participant is not None:
            data["participant"] = info(event.participant)
        if event.publication is not None:
            data["publication"] = info(event.publication)
        self.ctx.tasks.spawn(self._relay(event.room, kind, data, self.states.changed(event.room)))

    async def _relay(self, room: str, event: str, data: dict[str, Any], change: int = 0) -> None:
        # First the store's document, so that whoever hears this event reads it there too.
        await safely(self.states.write(room, change))
        c = await self.consultations.get_any(room)
        if c is None:
            return
        wire = p.RoomEvent(consultation_id=c.id, room=room, event=event, data=data).to_wire()
        targets = [nurses(c.site), agents(c.site)] + ([user(c.physician)] if c.physician else [])
        await self.ctx.bus.emit(targets, wire)
        source = (data.get("publication") or {}).get("source")
        guests = [user(i.id) for i in c.invitations
                  if i.state is InvitationState.ADMITTED and (source is None or receives(i.role, source))]
        if guests:
            await self.ctx.bus.emit(guests, wire)
        identity = (data.get("participant") or {}).get("identity")
        if identity and identity not in CORE_IDENTITIES and event in ("participant.joined", "participant.left"):
            await safely(self.guest_presence(c.id, str(identity), event == "participant.joined"))

    # -- media nodes (sfu.node) ------------------------------------------------------------------
    async def heartbeat_node(self) -> None:
        """Register this process's SFU as a node (url, load, draining), alive for 3 heartbeats."""
        sfu = self.ctx.sfu()
        if sfu is None:
            return
        gauges = sfu.metrics.gauges()
        node = NodeInfo(self.ctx.node_id, self.ctx.node_url, rooms=gauges.rooms, participants=gauges.participants,
                        draining=not self.ctx.accepting())
        await self.ctx.store.register_node(node.id, node.to_dict(), self.ctx.liveness_s,
                                           rooms=self.states.hosted())

    async def _live_nodes(self) -> list[NodeInfo]:
        return [NodeInfo.from_dict(nid, d) for nid, d in (await self.ctx.store.nodes()).items()]

    async def place(self, room: str) -> NodeInfo | None:
        """Put the room on the least loaded live node; None when no node exists at all (no SFU)."""
        nodes = await self._live_nodes()
        if not nodes:
            if self.ctx.sfu() is not None:
                raise RuntimeError("this process's node is not registered")
            return None
        placed: dict[str, int] = {}
        for node_id in (await self.ctx.store.placements()).values():
            placed[node_id] = placed.get(node_id, 0) + 1
        chosen = choose_node(nodes, placed)
        if chosen is None:
            raise RuntimeError("no live media node accepts rooms")
        await self.ctx.store.place_room(room, chosen.id)
        if chosen.id == self.ctx.node_id:
            sfu = self.ctx.sfu()
            assert sfu is not None
            self._open(sfu, room)
        else:
            await self.ctx.bus.note(Note.PLACE, room, node=chosen.id)
        return chosen

    async def node_elsewhere(self, room: str) -> str | None:
        """The URL of the node hosting ``room`` when it is not this process's; None: here or nowhere."""
        node_id = await self.ctx.store.room_node(room)
        if node_id is None or node_id == self.ctx.node_id:
            return None
        return await self.sfu_url(room)

    async def sfu_url(self, room: str) -> str | None:
        node_id = await self.ctx.store.room_node(room)
        if node_id is None:
            return None
        node = (await self.ctx.store.nodes()).get(node_id)
        return str(node["url"]) if node else None

    async def node_gone(self, url: str) -> None:
        """The node at ``url`` is known dead (``serve --media-workers``: its parent saw the process
        exit): its rooms are re-placed now, not once its heartbeat has expired (three heartbeats),
        when another live node can take them; else they wait for that expiry, by which time the
        dead one may be back (its parent starts it again)."""
        nodes = await self.ctx.store.nodes()
        gone = [nid for nid, info in nodes.items() if info.get("url") == url]
        others = [n for n in (NodeInfo.from_dict(nid, info) for nid, info in nodes.items() if nid not in gone)
                  if n.alive and not n.draining]
        if not gone or not others:
            return  # no node to take its rooms now: the heartbeat's expiry re-places them (or ends them)
        for node_id in gone:
            await self.ctx.store.expire_node(node_id)
        await self.sweep_nodes()

    async def sweep_nodes(self) -> None:
        """Nodes whose heartbeat expired lose their rooms: re-placed, parties told (room.moved)."""
        dead = [n for n in await self._live_nodes() if not n.alive]
        if not dead:
            return
        placements = await self.ctx.store.placements()
        for node in dead:
            if not await self.ctx.store.forget_node(node.id):
                continue  # another process took it
            logger.warning("media node lost", extra={"node": node.id})
            for room in [r for r, nid in placements.items() if nid == node.id]:
                await safely(self.move(room, node.id))

    async def move(self, room: str, from_node: str) -> None:
        """Re-place the room of an active consultation (its node is gone); end it when no node can."""
        got = await self.consultations.get(room)
        if got is None or got[0].state is not State.ACTIVE:
            await self.ctx.store.unplace_room(room)
            return
        c = got[0]
        try:
            node = await self.place(room)
        except Exception:
            await self.ctx.store.unplace_room(room)
            await self.consultations.finish(c.id, State.FAILED, actor="sfu", reason="media_node_lost")
            return
        sfu_url = node.url if node else None
        await self.ctx.journal.append(Act.ROOM_MOVE, actor="sfu", consultation_id=ConsultationId(c.id),
                                      from_node=from_node, to_node=node.id if node else None)
        targets = [(Role.NURSE, nurses(c.site)), (Role.AGENT, agents(c.site))]
        if c.physician:
            targets.append((Role.PHYSICIAN, user(c.physician)))
        for role, target in targets:
            await self.ctx.bus.emit([target], p.RoomMoved(consultation=c.view(role is not Role.AGENT),
                                                          publications=await self.publications(room),
                                                          **self.grant(c, role, sfu_url)).to_wire())
        for inv in c.invitations:
            if inv.state is InvitationState.ADMITTED:
                await self.ctx.bus.emit([user(inv.id)], p.RoomMoved(
                    consultation=c.view(inv.role is Role.SPECIALIST),
                    publications=await self.publications(room, inv.role),
                    **self.grant(c, inv.role, sfu_url, inv.identity)).to_wire())

    async def remove(self, c: Consultation, identity: str) -> None:
        """End a removed guest's media now, on whichever node hosts the room."""
        room = c.room or c.id
        node = await self.ctx.store.room_node(room)
        if node is None or node == self.ctx.node_id:
            await self.remove_local(room, identity)
        else:
            await self.ctx.bus.note(Note.REMOVE, room, node=node, identity=identity)

    async def remove_local(self, room: str, identity: str) -> None:
        sfu = self.ctx.sfu()
        if sfu is not None:
            await sfu.remove(room, identity)

    # -- the media proxy (media.offer, media.leave) ------------------------------------------------
    async def media_offer(self, s: Session, msg: p.MediaOffer) -> p.MediaOfferOk:
        sfu = self.ctx.sfu()
        if sfu is None:
            raise ProtocolError(ErrorCode.UNAVAILABLE, "no media server in this process")
        if msg.room_token:
            try:
                grant = self.ctx.tokens.verify_room(msg.room_token, msg.consultation_id)
            except AuthError as exc:
                raise ProtocolError(ErrorCode.AUTH_FAILED, exc.reason) from None
            c = await self.consultations.load_visible(s.principal, grant.room)
            if grant.role is not s.role or (s.role.invited and not self.consultations.seat(s.principal, c)) or (
                    s.role.invited and grant.identity != self.identity_of(c, s.principal)):
                raise ProtocolError(ErrorCode.FORBIDDEN, "the room token is for another seat")
        elif msg.consultation_id:
            c = await self._seated(s, msg.consultation_id)
            grant = self.ctx.tokens.verify_room(self.grant(c, s.role, identity=self.identity_of(c, s.principal))
                                                ["room_token"], c.id)
        else:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "give consultation_id or room_token")
        if c.state is not State.ACTIVE:
            raise ProtocolError(ErrorCode.CONFLICT, "the consultation is not active")
        node = await self.ctx.store.room_node(c.id)
        if node is not None and node != self.ctx.node_id:
            raise ProtocolError(ErrorCode.WRONG_NODE,
                                "the room is on another media node: use the consultation's sfu_url")
        key = (s.id, c.id)
        try:
            result = await sfu.negotiate(grant, msg.sdp, session_id=self._media_sessions.get(key),
                                         publish=dict(msg.publish), subscribe=dict(msg.subscribe))
        except Exception as exc:
            raise _sfu_error(exc) from None
        self._media_sessions[key] = result.session_id
        # A guest hears only of what it may receive (as in room.publications and room.event).
        shown = await self.publications(c.room or c.id, s.role if s.role.invited else None)
        return p.MediaOfferOk(sdp=result.answer_sdp, room=c.id, identity=grant.identity,
                              media_session=result.session_id,
                              publications=[info(pub) for pub in result.publications],
                              room_publications=shown)

    async def media_leave(self, s: Session, msg: p.MediaLeave) -> p.MediaLeaveOk:
        sfu = self.ctx.sfu()
        c = await self.consultations.load_visible(s.principal, msg.consultation_id)
        media = self._media_sessions.pop((s.id, c.id), None)
        if sfu is not None and media is not None:
            try:
                await sfu.leave(media)
            except Exception as exc:
                logger.warning("leaving the room failed: %s", exc, extra={"consultation": c.id})
        return p.MediaLeaveOk(consultation_id=c.id)


def shown(view: RoomView, role: Role | None) -> list[dict[str, Any]]:
    """The publications of ``view`` that ``role``'s seat may receive (None: every one), in wire form:
    the one filter of every answer, whichever process gives it."""
    return [publication(pub) for pub in view.publications
            if role is None or receives(role, str(pub.get("source")))]


def participant(part: dict[str, Any]) -> dict[str, Any]:
    """A participant's wire form: ``{session_id, identity, role}`` (as in ``room.event``)."""
    return {name: part.get(name) for name in PARTICIPANT_FIELDS}


def receives(role: Role, source: str) -> bool:
    """Whether the seat of ``role`` may receive ``source``."""
    seat = SEATS.get(role)
    return seat is not None and seat.subscribe and (seat.receive is None or source in seat.receive)


async def _nobody(consultation: str, identity: str, present: bool) -> None:
    return None


def _sfu_error(exc: Exception) -> ProtocolError:
    """The socket's error for a failed negotiation (``SfuError`` carries an HTTP status)."""
    status = getattr(exc, "status", None)
    reason = str(getattr(exc, "reason", exc))[:200]
    if status is None:
        logger.exception("media negotiation failed", exc_info=exc)
        return ProtocolError(ErrorCode.INTERNAL, "media negotiation failed")
    code = {403: ErrorCode.FORBIDDEN, 404: ErrorCode.NOT_FOUND, 503: ErrorCode.UNAVAILABLE}.get(
        int(status), ErrorCode.BAD_MESSAGE)
    return ProtocolError(code, f"media server: {reason}")
