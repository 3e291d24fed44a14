"""Matching: runs the pure policy of ``signalling.matcher`` against the store, and makes offers.

Something changed for matching (a kick): physicians became free, requests
entered the queue. The process that saw it matches just those, incrementally
(:meth:`Matching.match_hints`); every process also runs the whole matcher now
and then (:data:`FULL_ROUND_INTERVAL_S`, and after a kick note), a safety net
under the incremental path. Claims stay atomic in the store, so that processes
matching at the same time never double-book.
"""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator, Iterable

from signalling import queue as queue_mod
from signalling.bus import Note
from signalling.consultation import Kick
from signalling.context import Context
from signalling.matcher import Candidate, Waiting, eligible, plan, queue_order
from signalling.offers import Offers
from signalling.presence import Presence
from signalling.store.base import Envelope
from signalling.visits import Visits

logger = logging.getLogger(__name__)

FULL_ROUND_INTERVAL_S = 5.0
"""The whole matcher runs this often anyway (a safety net under incremental matching)."""
MAX_CLAIM_TRIES = 5
QUEUE_PAGE = 32
MAX_LATENCIES = 10000


class Matching:
    def __init__(self, ctx: Context, offers: Offers, visits: Visits) -> None:
        self.ctx = ctx
        self.offers = offers
        self.visits = visits
        self._kick = asyncio.Event()
        self._kick_at: float | None = None
        self._full_round = True
        """Run the whole matcher at the next wake-up (start, periodic safety net, lost hints)."""
        self._hint_physicians: set[str] = set()
        self._hint_requests: set[str] = set()
        self._last_full_round = 0.0
        self.decision_latency: list[float] = []
        """Seconds from a kick to the offers it made (bench and metrics)."""

    # -- kicks -------------------------------------------------------------------------------
    async def kick(self, *, physicians: Iterable[str] = (), requests: Iterable[str] = (),
                   full: bool = False) -> None:
        """Something changed for matching: match incrementally here, refresh positions everywhere.

        ``physicians`` became free (available, or an offer lock released), ``requests`` entered
        the queue: this process matches just those. ``full``: every process runs the whole
        matcher (the periodic sweep also does, as a safety net)."""
        if full:
            await self.ctx.bus.note(Note.KICK)
            return
        self._hint_physicians.update(physicians)
        self._hint_requests.update(requests)
        self._kick_at = self._kick_at or self.ctx.clock()
        self._kick.set()
        self.visits.positions_changed()
        await self.ctx.bus.note(Note.POSITIONS)

    async def on_kick(self, effect: Kick) -> None:
        await self.kick(physicians=effect.physicians, requests=effect.requests)

    def on_kick_note(self, envelope: Envelope) -> None:
        """Another process asked for a full round."""
        self._kick_at = self._kick_at or self.ctx.clock()
        self.full_round()
        self.visits.positions_changed()

    def full_round(self) -> None:
        self._full_round = True
        self._kick.set()

    def safety_net(self, now: float) -> None:
        """A full round when none ran for :data:`FULL_ROUND_INTERVAL_S`."""
        if now - self._last_full_round >= FULL_ROUND_INTERVAL_S:
            self.full_round()

    # -- the loop ------------------------------------------------------------------------------
    async def loop(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            kicked_at = self._kick_at or self.ctx.clock()
            self._kick_at = None
            full, self._full_round = self._full_round, False
            physicians, self._hint_physicians = self._hint_physicians, set()
            requests, self._hint_requests = self._hint_requests, set()
            if not self.ctx.accepting():
                continue
            try:
                if full:
                    self._last_full_round = self.ctx.clock()
                    made = await self.match_round()
                else:
                    made = await self.match_hints(requests, physicians)
            except Exception:
                logger.exception("matching round failed")
                await asyncio.sleep(0.2)
                self.full_round()
                continue
            if made:
                self.decision_latency.append(self.ctx.clock() - kicked_at)
                if len(self.decision_latency) > MAX_LATENCIES:
                    del self.decision_latency[:MAX_LATENCIES // 2]

    async def match_round(self) -> int:
        """One pass of the pure matcher over the whole store; returns the offers made."""
        store = self.ctx.store
        entries = [queue_mod.waiting(e) for e in await store.waiting()]
        if not entries:
            return 0
        presences = [Presence.from_dict(e) for e in (await store.presences()).values()]
        available = [pr for pr in presences if pr.matchable]
        if not available:
            return 0
        locked = await store.offer_locks([pr.physician for pr in available])
        candidates = [pr.candidate() for pr in available if pr.physician not in locked]
        # Concurrently: the journal's group commit makes one fsync for the whole round.
        results = await asyncio.gather(*(self.offers.offer(x.consultation_id, x.physician)
                                         for x in plan(entries, candidates)))
        return sum(1 for ok in results if ok)

    async def match_hints(self, requests: set[str], physicians: set[str]) -> int:
        """Incremental matching: only the new requests and the freed physicians.

        After a full round no eligible pair is left unmatched, so a new request's best
        physician is the longest-available eligible one, and a freed physician's best request
        is the first eligible one in queue order: the same pairs the full plan would make,
        without loading the whole queue. Claims stay atomic in the store; a claim that keeps
        failing asks for a full round."""
        made = 0
        if requests:
            entries = await self.ctx.store.queue_entries(sorted(requests))
            for w in queue_order(queue_mod.waiting(e) for e in entries):
                made += await self._match_request(w)
        for physician in sorted(physicians):
            made += await self._match_physician(physician)
        return made

    async def _free_candidates(self, physicians: Iterable[str] | None = None) -> list[Candidate]:
        presences = await self.ctx.store.presences()
        wanted = presences if physicians is None else {ph: presences[ph] for ph in physicians if ph in presences}
        available = [pr for pr in map(Presence.from_dict, wanted.values()) if pr.matchable]
        locked = await self.ctx.store.offer_locks([pr.physician for pr in available])
        return sorted((pr.candidate() for pr in available if pr.physician not in locked),
                      key=lambda c: (c.available_since, c.physician))

    async def _match_request(self, w: Waiting) -> int:
        tries = 0
        for candidate in await self._free_candidates():
            if not eligible(w, candidate):
                continue
            if await self.offers.offer(w.consultation_id, candidate.physician):
                return 1
            tries += 1
            if tries >= MAX_CLAIM_TRIES or await self.ctx.store.get_consultation(w.consultation_id) is None:
                break
        return 0

    async def _match_physician(self, physician: str) -> int:
        found = await self._free_candidates([physician])
        if not found:
            return 0
        candidate = found[0]
        tries = 0
        async for w in self._in_queue_order(sorted(candidate.specialties)):
            if not eligible(w, candidate):
                continue
            if await self.offers.offer(w.consultation_id, physician):
                return 1
            tries += 1
            if tries >= MAX_CLAIM_TRIES or await self.ctx.store.offer_locks([physician]):
                break
        if tries >= MAX_CLAIM_TRIES:
            self.full_round()
        return 0

    async def _in_queue_order(self, specialties: list[str]) -> AsyncIterator[Waiting]:
        """Waiting requests of ``specialties``, merged in queue order, read page by page."""
        offsets = dict.fromkeys(specialties, 0)
        buffers: dict[str, list[Waiting]] = {sp: [] for sp in specialties}
        done: set[str] = set()
        while True:
            for sp in specialties:
                if not buffers[sp] and sp not in done:
                    ids = await self.ctx.store.queue_ids(sp, offsets[sp], offsets[sp] + QUEUE_PAGE - 1)
                    offsets[sp] += len(ids)
                    if len(ids) < QUEUE_PAGE:
                        done.add(sp)
                    entries = await self.ctx.store.queue_entries(ids)
                    buffers[sp] = [queue_mod.waiting(e) for e in reversed(entries)]
            heads = [(buffers[sp][-1].order_key(), sp) for sp in specialties if buffers[sp]]
            if not heads:
                return
            yield buffers[min(heads)[1]].pop()
