"""Consultation reports: written by the consultation's physician, kept in the records.

A report is ``empty``, a ``draft`` (kept as the physician types, so that a reload or the
next patient ringing loses nothing) or ``final`` (``report.save``; it removes the draft). A
draft saved after the final report makes it a draft again until the next final save. The
report keeps the consultation's vitals and the stills the physician attached (their ids,
read back with each still's label and time from the still store).

The report's text is clinical: it goes to the records only; the journal gets the
act (``report.save``, ``report.draft``, ``report.addendum``) and ids. While the
consultation is open, the physician or an admitted specialist (issue 14) may add an
addendum: signed by its author, kept with the consultation (and archived at once), read
back with the report.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import replace
from typing import Any, Callable

from core.auth import Principal
from core.vocabulary import Act, ConsultationId, Role
from media.recording.stills import StillStore
from media.recording.stills_http import still_view
from signalling import protocol as p
from signalling.consultation import Consultation, State
from signalling.consultations import CAS_TRIES, Consultations
from signalling.context import Context
from signalling.protocol import ErrorCode, ProtocolError
from signalling.session import Session

REPORTABLE = (State.ACCEPTED, State.ACTIVE, State.ENDED)
"""States in which a consultation has a report."""
MAX_ADDENDUM_CHARS = 4000

StillsAccess = Callable[[], StillStore | None]
"""The stills' store of this process (None where stills are not set up)."""


class ReportStatus(str, enum.Enum):
    EMPTY = "empty"
    DRAFT = "draft"
    FINAL = "final"


class Reports:
    def __init__(self, ctx: Context, consultations: Consultations, stills: StillsAccess = lambda: None) -> None:
        self.ctx = ctx
        self.consultations = consultations
        self.stills = stills

    # -- rules -------------------------------------------------------------------------------
    @staticmethod
    def check_writer(principal: Principal, c: Consultation) -> None:
        """Only the consultation's physician writes its report, while it has one."""
        if principal.role is not Role.PHYSICIAN or c.physician != principal.subject:
            raise ProtocolError(ErrorCode.FORBIDDEN, "only the consultation's physician writes its report")
        if c.state not in REPORTABLE:
            raise ProtocolError(ErrorCode.CONFLICT, f"a {c.state.value} consultation has no report")

    @staticmethod
    def check_reader(principal: Principal, c: Consultation) -> None:
        """The consultation's physician, the site's nurses and admins read it (visibility first)."""
        if principal.role is Role.AGENT or (principal.role is Role.PHYSICIAN and c.physician != principal.subject):
            raise ProtocolError(ErrorCode.FORBIDDEN, "not yours to read")

    async def validated(self, c: Consultation, body: Any) -> dict[str, Any]:
        """A report body checked (:func:`~signalling.protocol.validate_report`), its stills ones of
        this consultation, each kept as ``{still_id, label, taken_at, device}`` as it is now."""
        if not isinstance(body, dict):
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "the report must be an object")
        try:
            report = p.validate_report(body)
        except ValueError as exc:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, str(exc)) from None
        if "stills" in report:
            known = {s["still_id"]: s for s in await self._stills_of(c.id)}
            unknown = [sid for sid in report["stills"] if sid not in known]
            if unknown:
                raise ProtocolError(ErrorCode.BAD_MESSAGE, f"no still {unknown[0][:64]!r} in this consultation")
            report["stills"] = [{k: known[sid][k] for k in ("still_id", "label", "taken_at", "device")}
                                for sid in report["stills"]]
        return report

    async def _stills_of(self, cid: str) -> list[dict[str, Any]]:
        store = self.stills()
        if store is None:
            return []
        try:
            metas = await asyncio.to_thread(store.list, cid)
            labels = await asyncio.to_thread(store.labels, cid)
        except ValueError:
            return []
        return [still_view(m, labels.get(m.still_id, "")) for m in metas]

    # -- writing -------------------------------------------------------------------------------
    async def save(self, c: Consultation, report: dict[str, Any], author: str) -> float:
        """Keep ``report`` (validated) as ``c``'s final report; when it was saved. The draft goes."""
        now = self.ctx.clock()
        await self.ctx.records.save_report(c.id, report, author, now)
        await self.ctx.records.delete_draft(c.id)
        await self.ctx.journal.append(Act.REPORT_SAVE, actor=author, consultation_id=ConsultationId(c.id))
        return now

    async def save_draft(self, c: Consultation, draft: dict[str, Any], author: str) -> tuple[float, bool]:
        """Keep ``draft`` (validated) as ``c``'s draft: when it was saved, and whether it changed (the
        same draft again writes nothing, so that a page may send it as often as it likes)."""
        kept = await self.ctx.records.get_draft(c.id)
        if kept is not None and kept.get("report") == draft and kept.get("author") == author:
            return float(kept["saved_at"]), False
        now = self.ctx.clock()
        await self.ctx.records.save_draft(c.id, draft, author, now)
        await self.ctx.journal.append(Act.REPORT_DRAFT, actor=author, consultation_id=ConsultationId(c.id))
        return now, True

    async def add_addendum(self, principal: Principal, cid: str, text: Any) -> dict[str, Any]:
        """An addendum to the report by the physician or an admitted specialist (an accountable author
        other than the report's), kept in the consultation and in the records at once."""
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_ADDENDUM_CHARS:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"text must be 1-{MAX_ADDENDUM_CHARS} characters")
        for _ in range(CAS_TRIES):
            got = await self.consultations.get(cid)
            if got is None or not self.consultations.visible(principal, got[0]):
                raise ProtocolError(ErrorCode.NOT_FOUND, "no such open consultation")
            c, version = got
            if not ((principal.role is Role.PHYSICIAN and c.physician == principal.subject)
                    or (principal.role is Role.SPECIALIST and self.consultations.seat(principal, c))):
                raise ProtocolError(ErrorCode.FORBIDDEN, "the physician or an admitted specialist only")
            if c.state not in REPORTABLE:
                raise ProtocolError(ErrorCode.CONFLICT, f"a {c.state.value} consultation has no report")
            now = self.ctx.clock()
            guest = c.invitation(principal.subject) if principal.role.invited else None
            addendum: dict[str, Any] = {"author": (guest.clinician if guest else None) or principal.subject,
                                        "role": principal.role.value, "name": principal.name,
                                        "text": text.strip(), "at": now}
            new = replace(c, addenda=c.addenda + (addendum,), updated_at=now)
            if await self.ctx.store.update_consultation(cid, version, new.to_dict()) is not None:
                await self.ctx.records.save_consultation(new.to_dict())
                await self.ctx.journal.append(Act.REPORT_ADDENDUM, actor=principal.subject,
                                              consultation_id=ConsultationId(cid), role=principal.role.value)
                return addendum
        raise ProtocolError(ErrorCode.CONFLICT, "the consultation keeps changing; retry")

    # -- reading -------------------------------------------------------------------------------
    async def read(self, principal: Principal, c: Consultation) -> dict[str, Any]:
        """The report as the reader sees it: status, what to show, when, by whom, with the names and
        the patient's reference (clinical readers only); its stills with their labels as they are now."""
        final = await self.ctx.records.get_report(c.id)
        draft = await self.ctx.records.get_draft(c.id)
        shown = draft if draft is not None and (final is None or draft["saved_at"] >= final["saved_at"]) else final
        status = ReportStatus.EMPTY if shown is None else \
            ReportStatus.DRAFT if shown is draft else ReportStatus.FINAL
        report = dict(shown["report"]) if shown is not None else None
        if report is not None and "stills" in report:
            report["stills"] = await self._stills_now(c.id, report["stills"])
        author = shown.get("author") if shown else None
        clinician = self.ctx.directory.clinicians.get(author or "")
        return {
            "consultation_id": c.id, "status": status.value, "report": report,
            "saved_at": shown.get("saved_at") if shown else None, "author": author,
            "author_name": clinician.name if clinician else (c.physician_name if author == c.physician else None),
            "final_saved_at": final.get("saved_at") if final else None,
            "draft_saved_at": draft.get("saved_at") if draft else None,
            "patient_ref": c.patient_ref if self.consultations.clinical_for(principal) else "",
            "site_name": c.site_name or self._site_name(c.site), "physician_name": c.physician_name,
            "nurse_name": c.nurse_name, "state": c.state.value, "addenda": list(c.addenda),
        }

    async def _stills_now(self, cid: str, attached: list[Any]) -> list[dict[str, Any]]:
        now = {s["still_id"]: s for s in await self._stills_of(cid)}
        out = []
        for item in attached:
            kept = item if isinstance(item, dict) else {"still_id": str(item)}
            current = now.get(kept["still_id"])
            out.append(current if current is not None else {**kept, "missing": True})
        return out

    def _site_name(self, site: str) -> str:
        found = self.ctx.directory.sites.get(site)
        return found.name if found else ""

    # -- requests ------------------------------------------------------------------------------
    async def save_request(self, s: Session, msg: p.ReportSave) -> p.ReportSaveOk:
        c = await self.consultations.load_visible(s.principal, msg.consultation_id)
        self.check_writer(s.principal, c)
        saved_at = await self.save(c, await self.validated(c, msg.report), s.sub)
        return p.ReportSaveOk(consultation_id=c.id, saved_at=saved_at)

    async def draft_request(self, s: Session, msg: p.ReportDraft) -> p.ReportDraftOk:
        c = await self.consultations.load_visible(s.principal, msg.consultation_id)
        self.check_writer(s.principal, c)
        saved_at, changed = await self.save_draft(c, await self.validated(c, msg.report), s.sub)
        return p.ReportDraftOk(consultation_id=c.id, saved_at=saved_at, changed=changed)

    async def get_request(self, s: Session, msg: p.ReportGet) -> p.ReportGetOk:
        c = await self.consultations.load_visible(s.principal, msg.consultation_id)
        self.check_reader(s.principal, c)
        return p.ReportGetOk(**await self.read(s.principal, c))
