"""Visits: a nurse checks a patient in, the request waits in its specialty's queue, and the
site's nurses see its place in the queue move.

Positions go out from every process to the nurses connected to it, when they
change (a note on the bus says the queue changed); a request far down a long
queue gets its new place less often (see :data:`FAR_POSITION_INTERVAL_S`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets

from core.vocabulary import Role
from signalling import consultation
from signalling import protocol as p
from signalling import queue as queue_mod
from signalling.consultation import WAITING, Consultation, State
from signalling.consultations import Consultations
from signalling.context import Context, safely
from signalling.hub import nurses
from signalling.matcher import estimated_wait_s, queue_order
from signalling.protocol import ErrorCode, ProtocolError
from signalling.session import Session

logger = logging.getLogger(__name__)

POSITION_INTERVAL_S = 0.5
NEAR_POSITION = 10
FAR_POSITION_INTERVAL_S = 5.0
"""Beyond ``NEAR_POSITION`` a request's position goes out at most this often (a long queue shifts
every request at each match: without this, 1000 waiting requests mean ~2000 messages a second)."""


class Visits:
    def __init__(self, ctx: Context, consultations: Consultations) -> None:
        self.ctx = ctx
        self.consultations = consultations
        self._positions_dirty = True
        self._last_positions: dict[str, int] = {}
        self._queue_sites: dict[str, str] = {}
        self._positions_sent_at: dict[str, float] = {}

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
        now = self.ctx.clock()
        c = Consultation(id="c-" + secrets.token_hex(8), site=site, specialty=msg.specialty, priority=msg.priority,
                         patient_ref=msg.patient_ref, reason=msg.reason, created_at=now, requested_by=s.sub,
                         ins=msg.ins, language=msg.language, consent_teleconsultation=True,
                         consent_recording=msg.consent_recording, updated_at=now)
        version = await self.consultations.apply(consultation.check_in(c))
        assert version is not None
        logger.info("visit requested", extra={"consultation": c.id, "site": site, "priority": c.priority.value})
        position, wait = await self._position_of(c)
        self._last_positions[c.id] = position
        await self.consultations.carry_out(c, version, consultation.queued(c))
        return p.VisitRequestOk(consultation=c.view(True), position=position, estimated_wait_s=wait)

    async def _position_of(self, c: Consultation) -> tuple[int, float]:
        rank = await self.ctx.store.queue_rank(c.id, c.specialty)
        pos = 1 if rank is None else rank + 1
        return pos, estimated_wait_s(pos, await self._online_for(c.specialty))

    async def _online_for(self, specialty: str) -> int:
        return sum(1 for e in (await self.ctx.store.presences()).values()
                   if specialty in e["specialties"] and e["status"] != "away")

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
        return p.QueueListOk(waiting=[
            {"consultation_id": e.consultation_id, "site": e.site, "specialty": e.specialty,
             "priority": e.priority.value, "language": e.language, "waiting_s": round(now - e.since, 1),
             "state": "requested"} for e in queue_order(entries)])

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
        presences = list((await store.presences()).values())
        seen: set[str] = set()
        now = self.ctx.clock()
        for specialty in sorted(self.ctx.directory.specialties()):
            ids = await store.queue_ids(specialty)
            if not ids:
                continue
            unknown = [cid for cid in ids if cid not in self._queue_sites]
            for e in await store.queue_entries(unknown):
                self._queue_sites[e["id"]] = e.get("site", "")
            online = sum(1 for pr in presences if specialty in pr["specialties"] and pr["status"] != "away")
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
                    estimated_wait_s=estimated_wait_s(position, online)).to_wire())
        for cache in (self._last_positions, self._queue_sites, self._positions_sent_at):
            for cid in [c for c in cache if c not in seen]:
                del cache[cid]
