"""Offers: a waiting request rings one physician, who accepts or declines; it rings no longer
on timeout, decline, or when the physician vanishes, and goes back to the queue.

The store's claim keeps a request from ringing two physicians and a physician
from getting two offers, across processes. This process keeps each offer's
timeout timer (the sweep withdraws offers whose process died) and the count of
consultations it started (a draining process waits for them).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Iterable, Sequence

from core.vocabulary import Act, Role
from signalling import consultation
from signalling import protocol as p
from signalling.consultation import MATCHER, RECOVERY, Consultation, State, Transition
from signalling.consultations import CAS_TRIES, OFFER_LOCK_MARGIN_S, Consultations
from signalling.context import Context, safely
from signalling.matcher import Pairing
from signalling.protocol import ErrorCode, ProtocolError, WithdrawReason
from signalling.rooms import Rooms
from signalling.session import Session
from signalling.store.base import OfferClaim

logger = logging.getLogger(__name__)

DUE_MARGIN_S = 1.0
"""The sweep withdraws offers this long past their deadline (their own timer goes first)."""


class Offers:
    def __init__(self, ctx: Context, consultations: Consultations, rooms: Rooms) -> None:
        self.ctx = ctx
        self.consultations = consultations
        self.rooms = rooms
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._live: set[str] = set()
        """Consultations accepted on this process and not over yet."""
        self._rechecks: dict[str, asyncio.TimerHandle] = {}
        """Accepts of another process, not started, looked at again once it would be known dead."""

    def live_count(self) -> int:
        return len(self._live)

    def _stop_timer(self, cid: str) -> None:
        timer = self._timers.pop(cid, None)
        if timer is not None:
            timer.cancel()

    def forget(self, cid: str) -> None:
        """``cid`` left the store (on any process)."""
        self._live.discard(cid)
        self._stop_timer(cid)
        recheck = self._rechecks.pop(cid, None)
        if recheck is not None:
            recheck.cancel()

    def close(self) -> None:
        for timer in (*self._timers.values(), *self._rechecks.values()):
            timer.cancel()

    def _name(self, physician: str, fallback: str = "") -> str:
        clinician = self.ctx.directory.clinicians.get(physician)
        return clinician.name if clinician else fallback or physician

    async def offer(self, cid: str, physician: str, *, ring: bool = True) -> bool:
        """Ring ``physician`` for ``cid`` if it still waits and they can be claimed (not ``ring``:
        they picked it from the queue and accept it at once)."""
        got = await self.consultations.get(cid)
        if got is None:
            return False
        c, version = got
        if c.state is not State.REQUESTED:
            return False
        timeout = self.ctx.sig.offer_timeout_s
        t = consultation.offer(c, physician, self.ctx.clock(), timeout, self._name(physician), ring=ring)
        if await self.consultations.apply(t, version) is None:
            return False
        self._arm(cid, t.new.offer_seq, timeout)
        logger.info("offer", extra={"consultation": cid, "physician": physician})
        return True

    def _arm(self, cid: str, seq: int, timeout: float) -> None:
        """Offer ``seq`` of ``cid`` stops ringing after ``timeout``."""
        self._timers[cid] = asyncio.get_running_loop().call_later(
            timeout, lambda: self.ctx.tasks.spawn(self.withdraw(cid, seq, WithdrawReason.TIMEOUT)))

    async def offer_many(self, pairs: Sequence[Pairing]) -> list[bool]:
        """Ring each pair's physician for its request, as :meth:`offer` does one: the consultations
        read in one round trip, claimed in another (each claim atomic: exactly one offer per
        request, one per physician, across processes), then the effects of those that held carried
        out concurrently. Which pairs were offered, in order."""
        if not pairs:
            return []
        store = self.ctx.store
        docs = {v.doc.get("id"): v for v in await store.get_consultations([x.consultation_id for x in pairs])}
        timeout = self.ctx.sig.offer_timeout_s
        now = self.ctx.clock()
        staged: list[tuple[int, Transition]] = []
        claims: list[OfferClaim] = []
        for i, x in enumerate(pairs):
            got = docs.get(x.consultation_id)
            if got is None:
                continue
            c = Consultation.from_dict(got.doc)
            if c.state is not State.REQUESTED:
                continue
            t = consultation.offer(c, x.physician, now, timeout, self._name(x.physician))
            assert t.new.offer_expires_at is not None
            staged.append((i, t))
            claims.append(OfferClaim(c.id, got.version, t.new.to_dict(), x.physician, t.new.offer_expires_at,
                                     timeout + OFFER_LOCK_MARGIN_S))
        offered = [False] * len(pairs)
        performing = []
        for (i, t), version in zip(staged, await store.claim_offers(claims)):
            if version is None:
                continue
            offered[i] = True
            self._arm(t.new.id, t.new.offer_seq, timeout)
            logger.info("offer", extra={"consultation": t.new.id, "physician": pairs[i].physician})
            performing.append(self.consultations.perform(t, version))
        # Concurrently: the journal's writes and the events of every offer overlap.
        for outcome in await asyncio.gather(*performing, return_exceptions=True):
            if isinstance(outcome, BaseException):
                logger.error("an offer's effects failed", exc_info=outcome)
        return offered

    async def withdraw(self, cid: str, seq: int, why: WithdrawReason, actor: str = MATCHER) -> bool:
        """Offer ``seq`` of ``cid`` stops ringing (timeout, decline, vanished): back to the queue."""
        self._stop_timer(cid)
        for _ in range(CAS_TRIES):
            got = await self.consultations.get(cid)
            if got is None:
                return False
            c, version = got
            if c.state is not State.OFFERED or c.offer_seq != seq or not c.offered_to:
                return False
            if await self.consultations.apply(consultation.withdraw(c, why, actor, self.ctx.clock()), version) is not None:
                return True
        return False

    async def withdraw_due(self, now: float) -> None:
        """Offers past their deadline whose timer is gone (its process died)."""
        for cid in await self.ctx.store.due_offers(now - DUE_MARGIN_S):
            got = await self.consultations.get(cid)
            if got and got[0].state is State.OFFERED:
                await self.withdraw(cid, got[0].offer_seq, WithdrawReason.TIMEOUT)

    async def withdraw_from(self, s: Session) -> None:
        """``s`` (a physician) vanished: what rings them goes back to the queue."""
        for c in await self.consultations.open_of(s.principal):
            if c.state is State.OFFERED and c.offered_to == s.sub:
                await safely(self.withdraw(c.id, c.offer_seq, WithdrawReason.VANISHED))

    async def _ringing(self, s: Session, cid: str) -> tuple[Consultation, int]:
        """The consultation whose offer rings for ``s``, and its version."""
        c, version = await self.consultations.load_visible_versioned(s.principal, cid)
        if c.state is not State.OFFERED or c.offered_to != s.sub or version is None:
            raise ProtocolError(ErrorCode.CONFLICT, "no offer of yours rings for this consultation")
        return c, version

    async def decline(self, s: Session, msg: p.OfferDecline) -> p.OfferDeclineOk:
        c, _ = await self._ringing(s, msg.consultation_id)
        if not await self.withdraw(c.id, c.offer_seq, WithdrawReason.DECLINED, actor=s.sub):
            raise ProtocolError(ErrorCode.CONFLICT, "the offer is no longer ringing")
        return p.OfferDeclineOk(consultation_id=c.id)

    async def pick(self, s: Session, msg: p.QueuePick) -> p.QueuePickOk:
        """A physician takes a waiting request from the queue (even one they declined): it is offered to
        them without ringing, then accepted."""
        got = await self.consultations.get(msg.consultation_id)
        if got is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, "no such waiting request")
        c = got[0]
        if c.state is not State.REQUESTED:
            raise ProtocolError(ErrorCode.CONFLICT, f"the request is no longer waiting ({c.state.value})")
        directory = self.ctx.directory
        if c.specialty not in directory.specialties_of(s.sub, s.principal.specialties) \
                or (c.language and c.language not in directory.languages_of(s.sub)):
            raise ProtocolError(ErrorCode.FORBIDDEN, "not a request of your specialties or languages")
        if not await self.offer(c.id, s.sub, ring=False):
            raise ProtocolError(ErrorCode.CONFLICT, "be available with no offer ringing, on a request still waiting")
        return p.QueuePickOk(**await self._take(s, c.id))

    async def accept(self, s: Session, msg: p.OfferAccept) -> p.OfferAcceptOk:
        """Accepted: the room is placed on a media node, then the consultation is active and each
        seat gets its room token."""
        ringing = await self._ringing(s, msg.consultation_id)
        return p.OfferAcceptOk(**await self._take(s, ringing[0].id, ringing))

    async def _take(self, s: Session, cid: str, read: tuple[Consultation, int] | None = None) -> dict[str, Any]:
        """``s``'s physician takes ``cid``, offered to them: the fields of the accept's reply.
        ``read``: the consultation and version the caller just read (not read again)."""
        got = read or await self.consultations.get(cid)
        if got is None:
            raise ProtocolError(ErrorCode.CONFLICT, "the consultation is over")
        c, version = got
        if c.state is not State.OFFERED or c.offered_to != s.sub:
            raise ProtocolError(ErrorCode.CONFLICT, "the offer is no longer ringing")
        accepted = consultation.accept(c, s.sub, s.id, self.ctx.clock(), self._name(s.sub, s.principal.name),
                                       process=self.ctx.proc)
        ver = await self.consultations.commit(accepted, version)
        if ver is None:
            raise ProtocolError(ErrorCode.CONFLICT, "the offer is no longer ringing")
        self._stop_timer(c.id)
        self._live.add(c.id)
        await self.consultations.perform(accepted, ver)
        started = await self._start(c.id, s.sub)
        if started is None:
            raise ProtocolError(ErrorCode.CONFLICT, "the consultation changed meanwhile")
        new, sfu_url = started
        return {"consultation": new.view(True), **self.rooms.grant(new, Role.PHYSICIAN, sfu_url)}

    async def _start(self, cid: str, actor: str) -> tuple[Consultation, str | None] | None:
        """The second half of an accept, by the process that accepted ``cid`` or took it over
        (:meth:`take_over`): the room is placed on a media node, then the consultation is active,
        with every effect (each seat gets ``consultation.started`` with its grant). The started
        consultation and its node's URL; None when it changed meanwhile (over, or taken over by
        another process that thought this one dead)."""
        try:
            node = await self.rooms.place(cid)
        except Exception as exc:
            logger.error("SFU room could not be placed: %s", exc, extra={"consultation": cid})
            self._live.discard(cid)
            await safely(self.consultations.finish(cid, State.FAILED, actor="sfu", reason="room_failed"))
            raise ProtocolError(ErrorCode.UNAVAILABLE, "no media node could open the room") from None
        sfu_url = node.url if node else None
        got = await self.consultations.get(cid)
        if got is None:
            return None
        accepted, version = got
        if accepted.state is not State.ACCEPTED or accepted.accepted_on != self.ctx.proc:
            return None
        started = consultation.start(accepted, actor, sfu_url, self.ctx.clock())
        ver = await self.consultations.commit(started, version)
        if ver is None:
            return None
        logger.info("consultation started", extra={"consultation": cid, "room": started.new.room,
                                                   "node": node.id if node else None})
        await self.consultations.perform(started, ver)
        return started.new, sfu_url

    # -- accepts whose process died before the start -------------------------------------------
    async def complete_accepts(self, party_open: Iterable[Consultation]) -> None:
        """Of ``party_open`` (a party's open consultations), those accepted on another process and
        not started: the ones whose process is dead are taken over and started here now; the others
        are looked at once more when their process's liveness key would have lapsed, in case it
        dies before it starts them."""
        for c in party_open:
            if not self._interrupted(c):
                continue
            assert c.accepted_on is not None
            if await self.ctx.store.live_processes([c.accepted_on]):
                self._recheck(c.id)
            else:
                await safely(self.take_over(c.id))

    def _interrupted(self, c: Consultation) -> bool:
        """Whether ``c`` waits for the start of an accept made on another process."""
        return c.state is State.ACCEPTED and c.accepted_on is not None and c.accepted_on != self.ctx.proc

    def _recheck(self, cid: str) -> None:
        if cid in self._rechecks:
            return
        delay = self.ctx.liveness_s + self.ctx.sig.heartbeat_s

        def fire() -> None:
            self._rechecks.pop(cid, None)
            self.ctx.tasks.spawn(safely(self.take_over(cid)))
        self._rechecks[cid] = asyncio.get_running_loop().call_later(delay, fire)

    async def take_over(self, cid: str) -> Consultation | None:
        """``cid`` was accepted on a process now dead (it stopped heartbeating), which did not start
        it: this process places its room and starts it, with every effect, journaling the accept
        if the dead process did not (marked recovered). One process only does it (a compare-and-set
        on the version names it in ``accepted_on``). The started consultation; None when there is
        nothing to do (started, over, its process alive) or another process did it."""
        for _ in range(CAS_TRIES):
            got = await self.consultations.get(cid)
            if got is None:
                return None
            c, version = got
            if not self._interrupted(c):
                return None
            assert c.accepted_on is not None
            if await self.ctx.store.live_processes([c.accepted_on]):
                return None
            journaled = Act.OFFER_ACCEPT in await self.consultations.journaled(cid)
            t = consultation.take_over(c, self.ctx.proc, self.ctx.clock(), accept_journaled=journaled)
            ver = await self.consultations.commit(t, version)
            if ver is not None:
                break
        else:
            return None
        logger.warning("accept of a dead process taken over", extra={
            "consultation": cid, "proc": c.accepted_on, "accept_journaled": journaled})
        self._stop_timer(cid)
        self._live.add(cid)
        await self.consultations.perform(t, ver)
        try:
            started = await self._start(cid, RECOVERY)
        except ProtocolError:
            return None  # no media node: it failed, with its effects
        return started[0] if started else None
