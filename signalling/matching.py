"""Matching: runs the pure policy of ``signalling.matcher`` against the store, and makes offers.

Something changed for matching (a kick): physicians became free, requests
entered the queue. The process that saw it matches just those, incrementally
(:meth:`Matching.match_hints`); every process also runs the whole matcher now
and then (:data:`FULL_ROUND_INTERVAL_S`, and after a kick note), a safety net
under the incremental path. Claims stay atomic in the store, so that processes
matching at the same time never double-book. A decision costs a fixed number of
store round trips (one read, one read of the consultations, one batch of claims),
however many hints it takes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Collection, Iterable

from signalling import queue as queue_mod
from signalling.bus import Note
from signalling.consultation import Kick
from signalling.context import Context
from signalling.matcher import Pairing, plan
from signalling.offers import Offers
from signalling.presence import Presence
from signalling.store.base import Envelope
from signalling.visits import Visits

logger = logging.getLogger(__name__)

FULL_ROUND_INTERVAL_S = 5.0
"""The whole matcher runs this often anyway (a safety net under incremental matching)."""
MAX_CLAIM_TRIES = 5
"""Decisions in a row whose claims were lost to other processes before a full round is asked for."""
QUEUE_PAGE = 32
"""The first page of a queue read for a decision (plus one entry per physician looked for)."""
MAX_PAGES = 8
"""Further pages a decision reads, each twice the last (32 << 8: thousands of requests deep)."""
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
        """One pass of the pure matcher over the whole store (every free physician, the queues of
        their specialties read page by page); returns the offers made."""
        return await self._decide(set(), set(), full=True)

    async def match_hints(self, requests: set[str], physicians: set[str]) -> int:
        """Incremental matching: only the new requests and the freed physicians.

        After a full round no eligible pair is left unmatched, so a new request's best
        physician is the longest-available eligible one, and a freed physician's best request
        is the first eligible one in queue order: the same pairs the full plan would make,
        without loading the whole queue. All the hints of a wake-up are one decision: one read
        (:meth:`~signalling.store.base.Store.match_view`), the pure plan, one read of the
        consultations and one batch of claims (:meth:`Offers.offer_many`). Claims stay atomic in
        the store; a claim lost to another process is decided again, and one that keeps failing
        asks for a full round."""
        return await self._decide(requests, physicians, full=False)

    async def _decide(self, requests: Collection[str], physicians: Collection[str], *, full: bool) -> int:
        made = 0
        for _ in range(MAX_CLAIM_TRIES):
            pairs = await self._plan(requests, physicians, full)
            if not pairs:
                return made
            offered = await self.offers.offer_many(pairs)
            made += sum(offered)
            lost = [x for x, ok in zip(pairs, offered) if not ok]
            if not lost:
                return made
            # Another process took the request or the physician meanwhile: decide again for those.
            requests = {x.consultation_id for x in lost}
            physicians = {x.physician for x in lost}
            full = False
        self.full_round()
        return made

    async def _plan(self, requests: Collection[str], physicians: Collection[str], full: bool) -> list[Pairing]:
        """The pure plan over the free physicians and the head of the queues that concern the hints,
        read page by page (each page twice the last) while a physician looked for (hinted, or any in
        a full round) is left without a pair and its queues go on, or a hinted request lies beyond
        what was read of its queue (it must not pass the requests before it)."""
        store = self.ctx.store
        count = QUEUE_PAGE + len(physicians)
        view = await store.match_view(physicians=sorted(physicians), requests=sorted(requests), all_free=full,
                                      count=count)
        candidates = [pr.candidate() for pr in map(Presence.from_dict, view.free.values()) if pr.matchable]
        if not candidates:
            return []
        wanted = {c.physician for c in candidates} if full else set(physicians)
        hinted = [queue_mod.waiting(e) for e in view.requests]
        asked = {w.consultation_id for w in hinted}
        loaded = {sp: [queue_mod.waiting(e) for e in page] for sp, page in view.queues.items()}
        exhausted = {sp for sp, page in view.queues.items() if len(page) < count}
        offset = count
        for pages in range(MAX_PAGES + 1):
            entries = {w.consultation_id: w for ws in loaded.values() for w in ws}
            beyond: set[str] = set()
            for w in hinted:
                head = loaded.get(w.specialty, [])
                if w.specialty in exhausted or (head and w.order_key() <= head[-1].order_key()):
                    entries.setdefault(w.consultation_id, w)
                else:
                    beyond.add(w.specialty)
            pairs = plan(entries.values(), candidates)
            used = {x.physician for x in pairs}
            more = sorted({sp for c in candidates if c.physician not in used for sp in c.specialties
                           if sp in loaded and sp not in exhausted and (c.physician in wanted or sp in beyond)})
            if not more or pages == MAX_PAGES:
                if full:
                    return pairs
                # Only the pairs of this decision's hints: another free physician is another process's
                # hint (or the safety net's), and claiming it here would only race that process.
                return [x for x in pairs if x.physician in wanted or x.consultation_id in asked]
            count *= 2
            page = await store.match_view(specialties=more, offset=offset, count=count)
            offset += count
            for sp in more:
                got = page.queues.get(sp, [])
                loaded[sp] += [queue_mod.waiting(e) for e in got]
                if len(got) < count:
                    exhausted.add(sp)
        return []  # not reached: the last page returns
