"""Consultations in the store: loading them, who sees what, and carrying out their transitions.

A step of the lifecycle is decided sans I/O by ``signalling.consultation``
(a :class:`~signalling.consultation.Transition`: the new value, its store change,
its effects); :meth:`Consultations.commit` makes it a compare-and-set in the store
and :meth:`Consultations.perform` carries out its effects, in order. Effects about
the consultation itself (journal, events, records, the store) are carried out
here; those about other parts (matching, presence, rooms) go to the handler the
service set for their type with :meth:`Consultations.on`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from typing import Any, Awaitable, Callable, Iterable, TypeVar

from core.auth import Principal
from core.vocabulary import Act, ConsultationId, Role
from signalling import consultation
from signalling import protocol as p
from signalling import queue as queue_mod
from signalling.bus import Note
from signalling.consultation import (LIVE, Archive, Consultation, Effect, Forget, InvalidTransition, JournalAct,
                                     Notify, QueueMove, ReleaseOfferLock, State, Transition, recording_state)
from signalling.context import Context, safely
from signalling.hub import Target
from signalling.invitation import FINAL as INVITATION_FINAL
from signalling.invitation import InvitationState
from signalling.protocol import ErrorCode, ProtocolError
from signalling.session import Session
from signalling.store.base import QueueOp

logger = logging.getLogger(__name__)

E = TypeVar("E")
CAS_TRIES = 5
"""Compare-and-set attempts before giving up on a consultation that keeps changing."""
FIRST_VERSION = 1
"""A created consultation's version in the store."""
OFFER_LOCK_MARGIN_S = 5.0
"""A physician's offer lock outlives the offer by this much (its timeout withdraws it first)."""
_QUEUE_OPS = {QueueMove.KEEP: QueueOp.KEEP, QueueMove.ENTER: QueueOp.ADD, QueueMove.LEAVE: QueueOp.REMOVE}


class Consultations:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._handlers: dict[type, Callable[[Any], Awaitable[None]]] = {}

    def on(self, kind: type[E], handler: Callable[[E], Awaitable[None]]) -> None:
        """Carry out effects of type ``kind`` with ``handler``."""
        self._handlers[kind] = handler

    # -- loading and visibility --------------------------------------------------------
    async def get(self, cid: str) -> tuple[Consultation, int] | None:
        """An open consultation and its version."""
        v = await self.ctx.store.get_consultation(cid)
        if v is None:
            return None
        return Consultation.from_dict(v.doc), v.version

    async def get_any(self, cid: str) -> Consultation | None:
        """A consultation, open (store) or finished (records)."""
        got = await self.get_versioned(cid)
        return got[0] if got is not None else None

    async def get_versioned(self, cid: str) -> tuple[Consultation, int | None] | None:
        """A consultation and its version in the store (None: finished, from the records)."""
        got = await self.get(cid)
        if got is not None:
            return got
        doc = await self.ctx.records.get_consultation(cid)
        return (Consultation.from_dict(doc), None) if doc else None

    @staticmethod
    def visible(principal: Principal, c: Consultation) -> bool:
        if principal.role is Role.ADMIN:
            return True
        if principal.role in (Role.NURSE, Role.AGENT):
            return principal.site == c.site
        if principal.role.invited:  # its own consultation, while its invitation stands
            inv = c.invitation(principal.subject)
            return principal.consultation == c.id and inv is not None and inv.state not in INVITATION_FINAL
        return principal.subject in (c.physician, c.offered_to)

    @staticmethod
    def clinical_for(principal: Principal) -> bool:
        return principal.role in (Role.NURSE, Role.PHYSICIAN, Role.SPECIALIST)

    @staticmethod
    def seat(principal: Principal, c: Consultation) -> bool:
        """Whether ``principal`` has a seat in ``c``'s room."""
        if principal.role is Role.PHYSICIAN:
            return c.physician == principal.subject
        if principal.role.invited:
            inv = c.invitation(principal.subject)
            return principal.consultation == c.id and inv is not None and inv.state is InvitationState.ADMITTED
        return principal.role in (Role.NURSE, Role.AGENT) and principal.site == c.site

    async def load_visible(self, principal: Principal, cid: str) -> Consultation:
        return (await self.load_visible_versioned(principal, cid))[0]

    async def load_visible_versioned(self, principal: Principal, cid: str) -> tuple[Consultation, int | None]:
        """:meth:`load_visible`, with the version read (None: finished), so that a request can
        commit on what it checked without reading it again."""
        got = await self.get_versioned(cid)
        if got is None or not self.visible(principal, got[0]):
            raise ProtocolError(ErrorCode.NOT_FOUND, "no such consultation")
        return got

    async def open_of(self, principal: Principal) -> list[Consultation]:
        """The open consultations ``principal`` is a party of (a physician's, or a site's)."""
        if principal.role is Role.PHYSICIAN:
            party = f"user:{principal.subject}"
        elif principal.site:
            party = f"site:{principal.site}"
        else:
            return []
        cids = await self.ctx.store.open_for(party)
        return [Consultation.from_dict(v.doc) for v in await self.ctx.store.get_consultations(cids)]

    # -- carrying out transitions ------------------------------------------------------
    async def commit(self, t: Transition, version: int = 0) -> int | None:
        """The transition as one compare-and-set, keeping the party indexes; the new version,
        or None when ``version`` is stale (or the physician cannot be claimed)."""
        store, new, change = self.ctx.store, t.new, t.store
        if t.old is None:
            await store.create_consultation(new.id, new.to_dict(), queue_mod.entry(new), new.parties())
            return FIRST_VERSION
        if change.lock_for is not None:
            timeout = self.ctx.sig.offer_timeout_s
            assert new.offer_expires_at is not None
            return await store.claim_offer(new.id, version, new.to_dict(), change.lock_for, new.offer_expires_at,
                                           timeout + OFFER_LOCK_MARGIN_S)
        old_p = set() if t.old.state.final else t.old.parties()
        new_p = set() if new.state.final else new.parties()
        queue = _QUEUE_OPS[change.queue]
        return await store.update_consultation(
            new.id, version, new.to_dict(), queue=queue,
            queue_entry=queue_mod.entry(new) if queue is QueueOp.ADD else None,
            parties_remove=old_p - new_p, parties_add=new_p - old_p,
            release_lock_of=change.release_lock_of, clear_offer=change.clear_offer)

    async def perform(self, t: Transition, version: int) -> None:
        """Carry out the effects of ``t`` (committed at ``version``), in order."""
        await self.carry_out(t.new, version, t.effects)

    async def carry_out(self, new: Consultation, version: int, effects: Iterable[Effect]) -> None:
        """Carry out ``effects`` of a step that made ``new`` (at ``version``), in order."""
        ctx = self.ctx
        notices: list[tuple[Iterable[Target], dict[str, Any]]] = []
        for effect in effects:
            if isinstance(effect, Notify):  # consecutive notices go out together
                notices.append((effect.targets, effect.event.to_wire()))
                continue
            if notices:
                await ctx.bus.emit_all(notices)
                notices = []
            if isinstance(effect, JournalAct):
                await ctx.journal.append(effect.act, actor=effect.actor, consultation_id=ConsultationId(new.id),
                                         **effect.fields)
            elif isinstance(effect, Archive):
                await ctx.records.save_consultation(new.to_dict())
            elif isinstance(effect, Forget):
                await ctx.store.update_consultation(new.id, version, new.to_dict(), delete=True)
                length = {} if new.started_at is None or new.ended_at is None else \
                    {"length": f"{new.ended_at - new.started_at:.3f}"}  # wait estimates use recent lengths
                await ctx.bus.note(Note.ENDED, new.id, **length)
            elif isinstance(effect, ReleaseOfferLock):
                await ctx.store.release_offer_lock(effect.physician, new.id)
            else:
                await self._handlers[type(effect)](effect)
        if notices:
            await ctx.bus.emit_all(notices)

    async def apply(self, t: Transition, version: int = 0) -> int | None:
        """Commit, then (when it held) perform."""
        ver = await self.commit(t, version)
        if ver is not None:
            await self.perform(t, ver)
        return ver

    async def check_in(self, t: Transition, *, retry: bool = False) -> None:
        """A check-in, journal first: its journal acts are durable before the consultation enters
        the store (and the queue), then it is archived; only then may the nurse be answered. If a
        step fails, what this attempt did is undone (best effort, journaled ``visit.rollback``)
        and the failure raised. ``retry`` (the same ``request_key`` again): the acts an earlier
        attempt journaled (since its last rollback) are not written twice, and a consultation it
        created is kept."""
        c = t.new
        acts = [e for e in t.effects if isinstance(e, JournalAct)]
        rest = [e for e in t.effects if not isinstance(e, JournalAct)]
        done = await self.journaled(c.id) if retry else set()
        wrote = created = existed = False
        try:
            for act in acts:
                if act.act not in done:
                    wrote = True
                    await self.ctx.journal.append(act.act, actor=act.actor, consultation_id=ConsultationId(c.id),
                                                  **act.fields)
            try:
                await self.commit(t)
                created = True
            except KeyError:
                if not retry:
                    raise
                existed = True  # an earlier attempt with the same key made it: keep it
            await self.carry_out(c, FIRST_VERSION, rest)
        except Exception as exc:
            if not existed:
                await self._roll_back_check_in(c, created, wrote, exc)
            raise

    async def journaled(self, cid: str) -> set[Act]:
        """The acts the journal holds about ``cid``, since its last ``visit.rollback`` (a rolled back
        check-in's acts did not take)."""
        acts: set[Act] = set()
        for entry in await self.ctx.journal.read(ConsultationId(cid)):
            if entry.get("act") == Act.VISIT_ROLLBACK:
                acts.clear()
            else:
                acts.add(Act(entry["act"]))
        return acts

    async def _roll_back_check_in(self, c: Consultation, created: bool, wrote: bool, exc: Exception) -> None:
        """Undo a failed check-in's store entry (if this attempt made it and nothing took it since),
        then journal that the acts written before did not take. Either may fail too (the store is
        down): a keyed retry then finds the request, or its acts, and completes them."""
        if created:
            removed = await safely(self.ctx.store.update_consultation(
                c.id, FIRST_VERSION, c.to_dict(), queue=QueueOp.REMOVE, parties_remove=c.parties(), delete=True))
            if removed is None:
                logger.warning("check-in not rolled back", extra={"consultation": c.id})
                return
        if created or wrote:
            await safely(self.ctx.journal.append(Act.VISIT_ROLLBACK, actor=c.requested_by,
                                                 consultation_id=ConsultationId(c.id), fault=type(exc).__name__))

    async def finish(self, cid: str, target: State, *, actor: str, reason: str,
                     read: tuple[Consultation, int] | None = None) -> Consultation:
        """Move to a final state (cancelled, expired, ended, failed), with every effect. ``read``:
        the consultation and version the caller just read, tried first (a stale one costs a retry)."""
        for _ in range(CAS_TRIES):
            got, read = read or await self.get(cid), None
            if got is None:
                raise ProtocolError(ErrorCode.CONFLICT, "the consultation is already over")
            c, version = got
            try:
                t = consultation.finish(c, target, actor, reason, self.ctx.clock())
            except InvalidTransition as exc:
                raise ProtocolError(ErrorCode.CONFLICT, str(exc)) from None
            if await self.apply(t, version) is None:
                continue
            logger.info("consultation over", extra={"consultation": cid, "state": target.value, "reason": reason})
            return t.new
        raise ProtocolError(ErrorCode.CONFLICT, "the consultation changed too often; retry")

    async def note_recording(self, event: dict[str, Any]) -> bool:
        """Keep a ``recording.*`` event's outcome in the consultation (CAS); False when it is over."""
        cid = str(event.get("consultation_id") or "")
        for _ in range(CAS_TRIES):
            got = await self.get(cid)
            if got is None:
                return False
            c, version = got
            state = recording_state(c.recording, event)
            if state is None or c.state.final:
                return False
            new = replace(c, recording=state, updated_at=self.ctx.clock())
            if await self.ctx.store.update_consultation(cid, version, new.to_dict()) is not None:
                return True
        logger.warning("recording state not kept", extra={"consultation": cid})
        return False

    # -- requests ------------------------------------------------------------------------
    async def end(self, s: Session, msg: p.ConsultationEnd) -> p.ConsultationEndOk:
        c, version = await self.load_visible_versioned(s.principal, msg.consultation_id)
        if not self.seat(s.principal, c):
            raise ProtocolError(ErrorCode.FORBIDDEN, "only the physician or the site's nurse may end it")
        if s.role is Role.NURSE and c.state is not State.ACTIVE:
            raise ProtocolError(ErrorCode.CONFLICT,
                                f"a nurse ends active consultations (this one is {c.state.value})")
        if c.state not in LIVE:
            raise ProtocolError(ErrorCode.CONFLICT, f"a {c.state.value} consultation cannot be ended")
        reason = re.sub(r"[^a-z0-9_]", "_", msg.reason.lower())[:32] or "completed"
        done = await self.finish(c.id, State.ENDED, actor=s.sub, reason=reason,
                                 read=None if version is None else (c, version))
        return p.ConsultationEndOk(consultation=done.view(True))

    async def get_request(self, s: Session, msg: p.ConsultationGet) -> p.ConsultationGetOk:
        c = await self.load_visible(s.principal, msg.consultation_id)
        return p.ConsultationGetOk(consultation=c.view(self.clinical_for(s.principal)))
