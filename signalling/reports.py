"""Consultation reports: written by the consultation's physician, kept in the records.

The report's text is clinical: it goes to the records only; the journal gets the
act (``report.save``) and ids.
"""

from __future__ import annotations

from typing import Any

from core.vocabulary import Act, ConsultationId, Role
from signalling import protocol as p
from signalling.consultation import Consultation, State
from signalling.consultations import Consultations
from signalling.context import Context
from signalling.protocol import ErrorCode, ProtocolError
from signalling.session import Session

REPORTABLE = (State.ACCEPTED, State.ACTIVE, State.ENDED)
"""States in which a consultation has a report."""


class Reports:
    def __init__(self, ctx: Context, consultations: Consultations) -> None:
        self.ctx = ctx
        self.consultations = consultations

    async def save(self, c: Consultation, report: dict[str, Any], author: str) -> float:
        """Keep ``report`` (validated) as ``c``'s; when it was saved."""
        now = self.ctx.clock()
        await self.ctx.records.save_report(c.id, report, author, now)
        await self.ctx.journal.append(Act.REPORT_SAVE, actor=author, consultation_id=ConsultationId(c.id))
        return now

    async def save_request(self, s: Session, msg: p.ReportSave) -> p.ReportSaveOk:
        c = await self.consultations.load_visible(s.principal, msg.consultation_id)
        if c.physician != s.sub:
            raise ProtocolError(ErrorCode.FORBIDDEN, "only the consultation's physician writes its report")
        if c.state not in REPORTABLE:
            raise ProtocolError(ErrorCode.CONFLICT, f"a {c.state.value} consultation has no report")
        try:
            report = p.validate_report(msg.report)
        except ValueError as exc:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, str(exc)) from None
        saved_at = await self.save(c, report, s.sub)
        return p.ReportSaveOk(consultation_id=c.id, saved_at=saved_at)

    async def get_request(self, s: Session, msg: p.ReportGet) -> p.ReportGetOk:
        c = await self.consultations.load_visible(s.principal, msg.consultation_id)
        if s.role is Role.PHYSICIAN and c.physician != s.sub:
            raise ProtocolError(ErrorCode.FORBIDDEN, "not your consultation")
        found = await self.ctx.records.get_report(c.id) or {}
        return p.ReportGetOk(consultation_id=c.id, report=found.get("report"), saved_at=found.get("saved_at"),
                             author=found.get("author"))
