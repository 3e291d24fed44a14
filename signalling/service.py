"""The signalling service: the facade that the WebSocket and REST handlers call.

One :class:`SignallingService` per process. It composes the parts, each in its
own module, and keeps no authoritative state of its own (the store does):

* ``sessions`` — hello/resume, token timers and renewal, resume grace;
* ``presence`` — physicians' status, announced and matched;
* ``visits`` — check-in, cancel, the queue and its positions;
* ``matching`` and ``offers`` — the matcher run against the store; ringing,
  accepting, declining;
* ``consultations`` — loading, visibility, and carrying out transitions
  (``consultation`` decides them, sans I/O);
* ``rooms`` — grants, media-node placement, the media proxy, room events;
* ``node_probe`` — killed media nodes told by their refused connections, their rooms
  re-placed before their heartbeat expires;
* ``reports``; and the ``bus`` between processes (``hub``: this process's sockets).

Requests are dispatched by their message class (:attr:`SignallingService.handlers`);
a handler takes the :class:`~signalling.session.Session` and the parsed request
and returns the reply, or raises :class:`~signalling.protocol.ProtocolError`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any, Awaitable, Callable, Iterable

from config.settings import Settings, SignallingSettings
from core.auth import Principal, TokenService
from core.vocabulary import ConsultationId, NodeId, ParticipantId, RoomId
from sfu.service import SfuService
from signalling import protocol as p
from signalling.bus import Bus, Note
from signalling.consultation import Busy, CloseRoom, Consultation, FreePhysician, GrantSeats, Kick, VisitNotice
from signalling.consultations import Consultations
from signalling.context import Context, safely
from signalling.directory import Directory, load_directory
from signalling.hub import Hub, Outbox, Target
from signalling.invitations import Invitations
from signalling.journal import Journal
from signalling.matching import Matching
from signalling.node_probe import NodeProbe
from signalling.offers import Offers
from signalling.presence import Presences
from signalling.records import Records
from signalling.recovery import Recovery
from signalling.reports import Reports, StillsAccess
from signalling.rooms import Rooms
from signalling.session import Session
from signalling.sessions import Sessions
from signalling.store import Store
from signalling.store.base import Envelope
from signalling.store.faults import STORE_FAULTS
from signalling.visits import Visits

logger = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 1.0
Handler = Callable[[Session, Any], Awaitable[p.Wire]]


def _unavailable(request: str, exc: BaseException) -> p.ProtocolError:
    """A store outage met by a request: ``unavailable`` (the protocol's word for a failed
    dependency), logged with the request type and the fault's class only."""
    logger.warning("store unavailable", extra={"type": request, "fault": type(exc).__name__})
    return p.ProtocolError(p.ErrorCode.UNAVAILABLE, "the store is unavailable; retry later (with the same "
                           "request_key for a visit.request)")


class SignallingService:
    def __init__(self, settings: Settings, store: Store, tokens: TokenService, journal: Journal,
                 records: Records, *, sfu: Callable[[], SfuService | None] = lambda: None,
                 accepting: Callable[[], bool] = lambda: True, clock: Callable[[], float] = time.time,
                 process_id: str | None = None, stills: StillsAccess = lambda: None) -> None:
        proc = process_id or secrets.token_hex(6)
        hub = Hub()
        self.ctx = ctx = Context(settings=settings, store=store, tokens=tokens, journal=journal, records=records,
                                 hub=hub, bus=Bus(hub, store, proc), clock=clock, proc=proc, sfu=sfu,
                                 accepting=accepting, sig=settings.signalling,
                                 node_url=settings.server.public_url.rstrip("/") or settings.base_url)
        self.consultations = Consultations(ctx)
        self.rooms = Rooms(ctx, self.consultations)
        self.offers = Offers(ctx, self.consultations, self.rooms)
        self.visits = Visits(ctx, self.consultations)
        self.matching = Matching(ctx, self.offers, self.visits)
        self.presences = Presences(ctx, self.consultations, self.matching)
        self.recovery = Recovery(ctx, self.consultations)
        self.sessions = Sessions(ctx, self.consultations, self.presences, self.offers, self.rooms, self.recovery)
        self.reports = Reports(ctx, self.consultations, stills)
        self.invitations = Invitations(ctx, self.consultations, self.rooms)
        self.node_probe = NodeProbe(ctx, self.rooms.node_gone)
        """Tells killed media nodes by their refused connections, before their heartbeat expires."""
        self._directory_reads = 0
        """Directory reads started (``_reload_directory``) or superseded (``set_directory``)."""
        self.rooms.guest_presence = self.invitations.presence

        self.consultations.on(Kick, self.matching.on_kick)
        self.consultations.on(Busy, self.sessions.busy)
        self.consultations.on(FreePhysician, self.sessions.free_physician)
        self.consultations.on(CloseRoom, self.rooms.close)
        self.consultations.on(GrantSeats, self.rooms.grant_seats)
        self.consultations.on(VisitNotice, self.visits.notice)

        bus = ctx.bus
        bus.on(Note.POSITIONS, lambda _: self.visits.positions_changed())
        bus.on(Note.KICK, self.matching.on_kick_note)
        bus.on(Note.DIRECTORY, lambda _: self._spawn(self._reload_directory()))
        bus.on(Note.PLACE, self._for_this_node(Note.PLACE, self.rooms.open_local))
        bus.on(Note.CLOSE_ROOM, self._for_this_node(Note.CLOSE_ROOM,
                                                    lambda room: self._spawn(self.rooms.close_local(room))))
        bus.on(Note.ENDED, self._ended)
        bus.on(Note.REMOVE, self._remove_note)

        self.handlers: dict[type, Handler] = {
            p.Hello: self._hello_again,
            p.Ping: self._ping,
            p.AuthRefresh: self.sessions.refresh,
            p.AuthRenew: self.sessions.renew,
            p.PresenceSet: self.presences.set_request,
            p.PresenceList: self.presences.list_request,
            p.VisitRequest: self.visits.check_in,
            p.VisitCancel: self.visits.cancel,
            p.QueueList: self.visits.list_queue,
            p.OfferAccept: self.offers.accept,
            p.OfferDecline: self.offers.decline,
            p.QueuePick: self.offers.pick,
            p.ConsultationGet: self.consultations.get_request,
            p.ConsultationEnd: self.consultations.end,
            p.RoomToken: self.rooms.token_request,
            p.RoomPublications: self.rooms.publications_request,
            p.ReportSave: self.reports.save_request,
            p.ReportDraft: self.reports.draft_request,
            p.ReportGet: self.reports.get_request,
            p.MediaOffer: self.rooms.media_offer,
            p.MediaLeave: self.rooms.media_leave,
        }
        """Request message class -> its handler (every class of ``protocol.REQUESTS``)."""

    def _ended(self, envelope: Envelope) -> None:
        """A consultation left the store (on any process)."""
        self.offers.forget(str(envelope[Note.ENDED.value]))
        self.visits.note_ended(envelope)

    def _remove_note(self, envelope: Envelope) -> None:
        """A guest removed from a room this node hosts: its media ends here."""
        if envelope.get("node") == self.node_id:
            self._spawn(self.rooms.remove_local(str(envelope[Note.REMOVE.value]), str(envelope.get("identity"))))

    def _spawn(self, coro: Awaitable[Any]) -> None:
        self.ctx.tasks.spawn(coro)

    def _for_this_node(self, note: Note, action: Callable[[str], None]) -> Callable[[Envelope], None]:
        """A handler of ``{<note>: room, "node": id}``: ``action(room)`` on that node only."""
        def handle(envelope: Envelope) -> None:
            if envelope.get("node") == self.node_id:
                action(str(envelope[note.value]))
        return handle

    # -- what the handlers and other components use ------------------------------------------
    @property
    def settings(self) -> Settings:
        return self.ctx.settings

    @property
    def sig(self) -> SignallingSettings:
        return self.ctx.sig

    @sig.setter
    def sig(self, value: SignallingSettings) -> None:
        self.ctx.sig = value

    @property
    def store(self) -> Store:
        return self.ctx.store

    @property
    def journal(self) -> Journal:
        return self.ctx.journal

    @property
    def records(self) -> Records:
        return self.ctx.records

    @property
    def clock(self) -> Callable[[], float]:
        return self.ctx.clock

    @property
    def directory(self) -> Directory:
        return self.ctx.directory

    @property
    def node_id(self) -> NodeId:
        return self.ctx.node_id

    @property
    def node_url(self) -> str:
        return self.ctx.node_url

    @node_url.setter
    def node_url(self, value: str) -> None:
        self.ctx.node_url = value

    def live_count(self) -> int:
        """Consultations this process started that are not over (a draining process waits)."""
        return self.offers.live_count()

    async def get_any(self, cid: str) -> Consultation | None:
        return await self.consultations.get_any(cid)

    async def is_live(self, room_id: RoomId, identity: ParticipantId | None = None) -> bool:
        """``sfu.ports.RoomGate``: whether the room's consultation is live (its tokens good for media),
        and ``identity`` seated there."""
        return await self.rooms.is_live(room_id, identity)

    async def room_node_elsewhere(self, consultation_id: ConsultationId) -> str | None:
        """``media.recording.ports.Signalling``: the URL of the node hosting the consultation's room
        when it is another process."""
        got = await self.consultations.get(consultation_id)
        room = (got[0].room or got[0].id) if got is not None else consultation_id
        return await self.rooms.node_elsewhere(room)

    def on_room_opened(self, callback: Callable[[str], Awaitable[object]]) -> None:
        """``media.recording.ports.Signalling``: ``callback(room)`` each time this process's media
        node opens a room (placed or re-placed here)."""
        self.rooms.room_opened.append(callback)

    async def media_node_gone(self, url: str) -> None:
        """The media node at ``url`` died (its parent process saw it exit): re-place its rooms now."""
        await self.rooms.node_gone(url)

    async def hosted_here(self, room_id: RoomId) -> bool:
        """``sfu.ports.RoomGate``: the room is placed on this process's node (or nowhere yet)."""
        return await self.rooms.hosted_here(room_id)

    def visible(self, principal: Principal, c: Consultation) -> bool:
        return self.consultations.visible(principal, c)

    def clinical_for(self, principal: Principal) -> bool:
        return self.consultations.clinical_for(principal)

    async def save_report(self, c: Consultation, report: dict[str, Any], author: str) -> float:
        return await self.reports.save(c, report, author)

    async def emit(self, targets: Iterable[Target], message: dict[str, Any]) -> None:
        """Deliver an event to ``targets`` on every process. ``recording.*`` events (from the
        recording component) are first kept in the consultation, so that a page loaded later
        knows too."""
        if str(message.get("type", "")).startswith("recording."):
            await safely(self.note_recording(message))
        await self.ctx.bus.emit(targets, message)

    async def note_recording(self, event: dict[str, Any]) -> bool:
        return await self.consultations.note_recording(event)

    async def heartbeat_node(self) -> None:
        await self.rooms.heartbeat_node()

    async def match_round(self) -> int:
        return await self.matching.match_round()

    # -- life ----------------------------------------------------------------------------------
    async def start(self) -> None:
        ctx = self.ctx
        await ctx.store.start()
        ctx.bus.start()
        stored = await ctx.store.get_directory()
        if stored is None:
            ctx.directory = load_directory(ctx.sig.directory_file)
            await ctx.store.put_directory(ctx.directory.to_dict())
        else:
            ctx.directory = Directory.from_dict(stored)
        await ctx.store.touch_process(ctx.liveness_s)
        await self.recovery.at_start()
        await self.heartbeat_node()
        ctx.tasks.spawn(self.matching.loop())
        ctx.tasks.spawn(self._sweep_loop())
        ctx.tasks.spawn(self.node_probe.loop())
        ctx.tasks.spawn(self.visits.position_loop())
        self.matching.full_round()

    async def close(self) -> None:
        ctx = self.ctx
        ctx.tasks.closing = True
        self.offers.close()
        await self.sessions.close()
        await ctx.tasks.close()
        await ctx.journal.close()
        await ctx.records.close()
        await ctx.store.close()

    async def _reload_directory(self) -> None:
        # Reloads run concurrently (one per note): only the latest started may apply what it read,
        # else an earlier, slower read puts an older directory back over a newer one.
        self._directory_reads += 1
        mine = self._directory_reads
        stored = await self.ctx.store.get_directory()
        if stored is not None and mine == self._directory_reads:
            self.ctx.directory = Directory.from_dict(stored)

    async def set_directory(self, directory: Directory) -> None:
        await self.ctx.store.put_directory(directory.to_dict())
        self._directory_reads += 1  # a reload started before this write must not undo it
        self.ctx.directory = directory
        await self.ctx.bus.note(Note.DIRECTORY)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            try:
                await self.sweep()
            except Exception:
                logger.exception("sweep failed")

    async def sweep(self) -> None:
        """What no timer of a live process takes care of: this process's liveness and node
        heartbeat, lost nodes, sessions and offers of dead processes, presences of dead
        processes, requests waiting too long; and the matcher's periodic full round."""
        now = self.ctx.clock()
        await self.ctx.store.touch_process(self.ctx.liveness_s)
        await self.heartbeat_node()
        await self.rooms.sweep_nodes()
        await self.sessions.sweep()
        self.matching.safety_net(now)
        await self.offers.withdraw_due(now)
        await self.presences.reap()
        await self.visits.expire_overdue(now)

    # -- requests ------------------------------------------------------------------------------
    async def hello(self, conn_factory: Callable[[Session], Outbox], msg: p.Hello) -> tuple[Session, p.HelloOk]:
        try:
            return await self.sessions.hello(conn_factory, msg)
        except STORE_FAULTS as exc:
            raise _unavailable("hello", exc) from None

    async def detach(self, s: Session, conn: Outbox) -> None:
        await self.sessions.detach(s, conn)

    async def handle(self, s: Session, msg: Any) -> p.Wire:
        """One request of a session that said hello: its reply (raises ProtocolError)."""
        spec = p.spec_of(msg)
        if s.role.value not in spec.roles:
            raise p.ProtocolError(p.ErrorCode.FORBIDDEN, f"a {s.role.value} may not send {spec.type}")
        try:
            return await self.handlers[type(msg)](s, msg)
        except STORE_FAULTS as exc:
            raise _unavailable(spec.type, exc) from None

    async def _ping(self, s: Session, msg: p.Ping) -> p.PingOk:
        return p.PingOk(server_time=self.ctx.clock())

    async def _hello_again(self, s: Session, msg: p.Hello) -> p.HelloOk:
        raise p.ProtocolError(p.ErrorCode.CONFLICT, "hello was already said on this connection")
