"""Visits: a nurse checks a patient in, the request waits in its specialty's queue, and the
site's nurses see its place in the queue move.

Positions go out from every process to the nurses connected to it, when they
change (a note on the bus says the queue changed); a request far down a long
queue gets its new place less often (see :data:`FAR_POSITION_INTERVAL_S`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections import deque
from typing import Any, Collection

from core.vocabulary import Role
from signalling import consultation
from signalling import protocol as p
from signalling import queue as queue_mod
from signalling.admission import SITE_RATE, Admission, admit
from signalling.bus import Note
from signalling.consultation import WAITING, Consultation, Effect, State, VisitNotice
from signalling.consultations import FIRST_VERSION, Consultations
from signalling.context import Context, safely
from signalling.hub import nurses
from signalling.matcher import eligible, estimated_wait_s, queue_order
from signalling.patient_identity import InsIdentity, parse_ins_identity
from signalling.presence import Presence
from signalling.protocol import ErrorCode, PresenceStatus, ProtocolError, VisitStatus
from signalling.session import Session
from signalling.store.base import Envelope

logger = logging.getLogger(__name__)

POSITION_INTERVAL_S = 0.5
NEAR_POSITION = 10
FAR_POSITION_INTERVAL_S = 5.0
"""Beyond ``NEAR_POSITION`` a request's position goes out at most this often (a long queue shifts
every request at each match: without this, 1000 waiting requests mean ~2000 messages a second)."""
RECENT_LENGTHS = 20
"""Wait estimates use the mean length of this many recent consultations (active, then over)."""
TAKING_PATIENTS = (PresenceStatus.AVAILABLE, PresenceStatus.IN_CONSULTATION)
PHYSICIANS: tuple[tuple[str, str], ...] = (("role", "physician"),)


def figures(presences: dict[str, dict[str, Any]], specialty: str, locked: Collection[str] = ()) -> tuple[int, int]:
    """Physicians of ``specialty`` connected and taking patients, and those of them free now (available,
    nothing ringing): what a wait estimate starts from."""
    entries = [Presence.from_dict(e) for e in presences.values() if specialty in e.get("specialties", ())]
    online = [pr for pr in entries if pr.connected and pr.status in TAKING_PATIENTS]
    return len(online), sum(1 for pr in online if pr.matchable and pr.physician not in locked)


def keyed_id(site: str, subject: str, request_key: str) -> str:
    """The consultation id of a request with a ``request_key``: the same key of the same nurse of
    the same site, the same id (so a retry finds the first request, in the store or the records)."""
    return "c-" + hashlib.sha256("\0".join((site, subject, request_key)).encode()).hexdigest()[:16]


class Visits:
    def __init__(self, ctx: Context, consultations: Consultations) -> None:
        self.ctx = ctx
        self.consultations = consultations
        self._positions_dirty = True
        self._last_positions: dict[str, int] = {}
        self._queue_sites: dict[str, str] = {}
        self._positions_sent_at: dict[str, float] = {}
        self._lengths: deque[float] = deque(maxlen=RECENT_LENGTHS)
        """Lengths (s) of the latest consultations over, on any process (``Note.ENDED``)."""

    def note_ended(self, envelope: Envelope) -> None:
        """A consultation left the store; one that was active says how long it lasted."""
        try:
            length = float(envelope.get("length", ""))
        except ValueError:
            return
        if length >= 0:
            self._lengths.append(length)

    def mean_length_s(self) -> float | None:
        return sum(self._lengths) / len(self._lengths) if self._lengths else None

    # -- requests --------------------------------------------------------------------------
    async def check_in(self, s: Session, msg: p.VisitRequest) -> p.VisitRequestOk:
        site = s.principal.site
        directory = self.ctx.directory
        if not site or site not in directory.sites:
            raise ProtocolError(ErrorCode.FORBIDDEN, "the token's site is not in the directory")
        if not self.ctx.accepting():
            raise ProtocolError(ErrorCode.UNAVAILABLE, "this server is draining; retry on another")
        if not msg.consent_teleconsultation:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "consent_teleconsultation must be true")
        if msg.specialty not in directory.specialties():
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "no clinician of the directory has that specialty")
        if not msg.patient_ref.strip() or not msg.reason.strip():
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "patient_ref and reason must not be empty")
        identity = self._identity(msg)
        keyed = msg.request_key is not None
        cid = keyed_id(site, s.sub, msg.request_key) if msg.request_key is not None else "c-" + secrets.token_hex(8)
        if keyed:
            earlier = await self.consultations.get_any(cid)
            if earlier is not None:
                return await self._replay(s, msg, earlier)
        sig = self.ctx.sig
        count = await self.ctx.store.count_site_request(site, sig.site_request_window_s)
        outcome = admit(msg.priority, count, sig.site_requests_per_window)
        if outcome is Admission.REFUSE:
            raise ProtocolError(ErrorCode.RATE_LIMITED, f"this site made more than {sig.site_requests_per_window} "
                                f"visit requests in {sig.site_request_window_s:g} s; retry later (emergencies "
                                "are always taken)")
        now = self.ctx.clock()
        c = Consultation(id=cid, site=site, specialty=msg.specialty, priority=msg.priority,
                         patient_ref=msg.patient_ref, reason=msg.reason, created_at=now, requested_by=s.sub,
                         ins=msg.ins, language=msg.language, consent_teleconsultation=True,
                         consent_recording=msg.consent_recording, updated_at=now,
                         site_name=directory.sites[site].name, nurse_name=s.principal.name,
                         flag=SITE_RATE if outcome is Admission.FLAG else None)
        if identity is not None:  # health data: sealed in the records, never in the store or a log
            await self.ctx.records.save_identity(c.id, identity.to_dict())
        try:
            await self.consultations.check_in(consultation.check_in(c, count), retry=keyed)
        except Exception:
            if identity is not None and not keyed:  # a keyed retry completes the same id
                await safely(self.ctx.records.delete_identity(c.id))
            raise
        logger.info("visit requested", extra={"consultation": c.id, "site": site, "priority": c.priority.value})
        if c.flag:
            logger.warning("emergency above its site's rate: flagged", extra={"consultation": c.id, "site": site,
                                                                               "requests_in_window": count})
        return await self._acknowledge(c, consultation.queued(c, count))

    @staticmethod
    def _identity(msg: p.VisitRequest) -> InsIdentity | None:
        """The check-in's INS identity, checked for format (None when not sent); ``ins``, when sent
        too, must name the same matricule."""
        if msg.ins_identity is None:
            return None
        try:
            identity = parse_ins_identity(msg.ins_identity)
        except ValueError as exc:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, str(exc)) from None
        if msg.ins is not None and msg.ins.replace(" ", "").upper() != identity.matricule:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "ins and ins_identity.matricule differ")
        return identity

    async def _acknowledge(self, c: Consultation, effects: tuple[Effect, ...]) -> p.VisitRequestOk:
        """The reply to a check-in that is durable (journaled, stored, archived): from here a store
        failure no longer fails the request (the matcher's full round finds it without the kick)."""
        got = await safely(self._position_of(c))
        position, wait = got if got is not None else (1, None)
        self._last_positions[c.id] = position
        await safely(self.consultations.carry_out(c, FIRST_VERSION, effects))
        return p.VisitRequestOk(consultation=c.view(True), position=position, estimated_wait_s=wait)

    async def _replay(self, s: Session, msg: p.VisitRequest, earlier: Consultation) -> p.VisitRequestOk:
        """The same ``request_key`` again: the first request as it is now, never a second one. One
        still waiting is checked in again idempotently (acts an earlier attempt could not journal,
        its archive), in case that attempt failed after creating it."""
        if (earlier.requested_by, earlier.specialty, earlier.priority, earlier.patient_ref) != \
                (s.sub, msg.specialty, msg.priority, msg.patient_ref):
            raise ProtocolError(ErrorCode.CONFLICT, "request_key was already used for another request")
        if earlier.state is not State.REQUESTED:
            position, wait = await self._position_of(earlier)
            return p.VisitRequestOk(consultation=earlier.view(True), position=position, estimated_wait_s=wait)
        await self.consultations.check_in(consultation.check_in(earlier), retry=True)
        logger.info("visit request replayed", extra={"consultation": earlier.id, "site": earlier.site})
        return await self._acknowledge(earlier, consultation.queued(earlier))

    async def _position_of(self, c: Consultation) -> tuple[int, float | None]:
        rank = await self.ctx.store.queue_rank(c.id, c.specialty)
        pos = 1 if rank is None else rank + 1
        return pos, await self._estimate(c.specialty, pos)

    async def _estimate(self, specialty: str, position: int,
                        presences: dict[str, dict[str, Any]] | None = None) -> float | None:
        presences = await self.ctx.store.presences() if presences is None else presences
        locked = await self.ctx.store.offer_locks(list(presences))
        online, free = figures(presences, specialty, locked)
        return estimated_wait_s(position, online, free, self.mean_length_s())

    async def notice(self, effect: VisitNotice) -> None:
        """Tell the site's nurses what happens to their waiting request (``visit.status``)."""
        c, store = effect.consultation, self.ctx.store
        position: int | None = None
        wait: float | None = None
        looking = False
        if effect.status is VisitStatus.OFFERED:
            await self.ctx.bus.note(Note.POSITIONS)  # it left the queue: physicians' queue views too
        else:
            presences = await store.presences()
            w = queue_mod.waiting(queue_mod.entry(c))
            free = [pr for pr in map(Presence.from_dict, presences.values())
                    if pr.matchable and eligible(w, pr.candidate())]
            locked = await store.offer_locks([pr.physician for pr in free])
            looking = any(pr.physician not in locked for pr in free)
            rank = await store.queue_rank(c.id, c.specialty)
            if rank is not None:
                position = rank + 1
                wait = await self._estimate(c.specialty, position, presences)
        await self.ctx.bus.emit([nurses(c.site)], p.VisitStatusEvent(
            consultation_id=c.id, status=effect.status, physician=effect.physician,
            physician_name=effect.physician_name, looking=looking, position=position,
            estimated_wait_s=wait).to_wire())

    async def cancel(self, s: Session, msg: p.VisitCancel) -> p.VisitCancelOk:
        c = await self.consultations.load_visible(s.principal, msg.consultation_id)
        if c.state not in WAITING:
            raise ProtocolError(ErrorCode.CONFLICT, f"a {c.state.value} consultation cannot be cancelled; end it")
        done = await self.consultations.finish(c.id, State.CANCELLED, actor=s.sub, reason="cancelled")
        return p.VisitCancelOk(consultation=done.view(True))

    async def list_queue(self, s: Session, msg: p.QueueList) -> p.QueueListOk:
        now = self.ctx.clock()
        entries = [queue_mod.waiting(e) for e in await self.ctx.store.waiting()]
        if s.role is Role.PHYSICIAN:
            mine = set(self.ctx.directory.specialties_of(s.sub, s.principal.specialties))
            entries = [e for e in entries if e.specialty in mine]
        sites = self.ctx.directory.sites
        return p.QueueListOk(waiting=[
            {"consultation_id": e.consultation_id, "site": e.site, "specialty": e.specialty,
             "priority": e.priority.value, "language": e.language, "waiting_s": round(now - e.since, 1),
             "state": "requested", "site_name": sites[e.site].name if e.site in sites else "",
             "declined_by_me": s.sub in e.tried, "flagged": e.flagged} for e in queue_order(entries)])

    async def expire_overdue(self, now: float) -> None:
        """Requests that waited longer than ``queue.MAX_WAIT_S`` expire."""
        for e in await self.ctx.store.waiting():
            if now - float(e["since"]) > queue_mod.MAX_WAIT_S:
                await safely(self.consultations.finish(e["id"], State.EXPIRED, actor="matcher",
                                                       reason="waited_too_long"))

    # -- positions -------------------------------------------------------------------------
    def positions_changed(self) -> None:
        self._positions_dirty = True

    async def position_loop(self) -> None:
        while True:
            await asyncio.sleep(POSITION_INTERVAL_S)
            if not self._positions_dirty:
                continue
            self._positions_dirty = False
            self.ctx.hub.deliver(PHYSICIANS, p.QueueChanged().to_wire())
            try:
                await self.send_positions()
            except Exception:
                logger.exception("positions failed")

    async def send_positions(self) -> None:
        """Each waiting request's place in its specialty's queue, to the nurses of its site on this
        process, when it changed. Reads the ordered ids only; sites are cached (they never change)."""
        nurse_key = "/" + Role.NURSE.value
        local_sites = {k.split("/", 1)[0] for k in self.ctx.hub.keys("site") if k.endswith(nurse_key)}
        if not local_sites:
            return
        store = self.ctx.store
        presences = await store.presences()
        locked = await store.offer_locks(list(presences))
        seen: set[str] = set()
        now = self.ctx.clock()
        for specialty in sorted(self.ctx.directory.specialties()):
            ids = await store.queue_ids(specialty)
            if not ids:
                continue
            unknown = [cid for cid in ids if cid not in self._queue_sites]
            for e in await store.queue_entries(unknown):
                self._queue_sites[e["id"]] = e.get("site", "")
            online, free = figures(presences, specialty, locked)
            mean = self.mean_length_s()
            for i, cid in enumerate(ids):
                if i % 200 == 199:
                    await asyncio.sleep(0)  # a long queue never stalls the loop in one burst
                seen.add(cid)
                site = self._queue_sites.get(cid)
                if site is None or site not in local_sites:
                    continue
                position = i + 1
                last = self._last_positions.get(cid)
                if last == position:
                    continue
                if last is not None and position > NEAR_POSITION and \
                        now - self._positions_sent_at.get(cid, 0.0) < FAR_POSITION_INTERVAL_S:
                    continue  # far down the queue: a place or two matters less than the load
                self._last_positions[cid] = position
                self._positions_sent_at[cid] = now
                self.ctx.hub.deliver([nurses(site)], p.VisitPosition(
                    consultation_id=cid, position=position,
                    estimated_wait_s=estimated_wait_s(position, online, free, mean)).to_wire())
        for cache in (self._last_positions, self._queue_sites, self._positions_sent_at):
            for cid in [c for c in cache if c not in seen]:
                del cache[cid]
