"""Recovery after a crash: nothing a dead process held stays open for ever, and the journal says
what was done about it.

* **At startup** (:meth:`Recovery.at_start`): a consultation the records hold open but the store
  does not was left by a process that died with its store, the memory store's case (a crash
  loses its sessions, rooms, offers and queue): it is closed (``signalling.consultation.recover``:
  waiting -> expired, live -> ended, ``process_crashed``) and journaled ``consultation.recover``
  then ``consultation.<expire|end>``. Before this, it stayed ``active`` for ever and
  ``consultation.end`` answered ``conflict``. With Redis the store outlives the process and
  the records have nothing of the kind (``RedisRecords.unfinished_ids``).
* **When a dead process's sessions are taken over** (Redis, ``Sessions.sweep``, any process,
  a restarted one included): each live consultation of such a session is journaled
  ``consultation.recover`` (``outcome: resume_grace``): its parties may come back and resume
  within ``signalling.resume_grace_s``; if not, it ends (``connection_lost``) as for any lost
  party. A consultation the dead process accepted and did not start is started by the
  taking process (``Offers.complete_accepts``), journaling the accept if it was lost.
"""

from __future__ import annotations

import logging

from core.vocabulary import Act, ConsultationId, Role
from signalling import consultation
from signalling.consultation import LIVE, RECOVERY, Consultation
from signalling.consultations import Consultations
from signalling.context import Context, safely
from signalling.session import Session

logger = logging.getLogger(__name__)

RESUME_GRACE = "resume_grace"
"""``consultation.recover``'s outcome when the parties get the resume grace (Redis)."""


class Recovery:
    def __init__(self, ctx: Context, consultations: Consultations) -> None:
        self.ctx = ctx
        self.consultations = consultations

    async def at_start(self) -> int:
        """Close what a crash left open in the records and not in the store; how many were."""
        ctx = self.ctx
        closed = 0
        for cid in await ctx.records.unfinished_ids():
            if await ctx.store.get_consultation(cid) is not None:
                continue  # open in a store that outlived the crash: the sweep sees to it
            doc = await ctx.records.get_consultation(cid)
            if doc is None:
                continue
            c = Consultation.from_dict(doc)
            if c.state.final:
                continue
            t = consultation.recover(c, ctx.clock())
            await self.consultations.perform(t, 0)
            logger.warning("consultation left open by a crash closed",
                           extra={"consultation": cid, "previous_state": c.state.value, "state": t.new.state.value})
            closed += 1
        return closed

    async def taken_over(self, s: Session, dead_process: str) -> None:
        """``s`` was held by a process that stopped heartbeating and now starts its resume grace
        here: journal it for each live consultation ``s`` is a party of."""
        for c in await self.consultations.open_of(s.principal):
            if c.state not in LIVE or (s.role is Role.NURSE and c.requested_by != s.sub):
                continue
            await safely(self.ctx.journal.append(
                Act.CONSULTATION_RECOVER, actor=RECOVERY, consultation_id=ConsultationId(c.id),
                previous_state=c.state.value, outcome=RESUME_GRACE, role=s.role.value, process=dead_process,
                grace_s=self.ctx.sig.resume_grace_s))


__all__ = ["Recovery", "RESUME_GRACE"]
