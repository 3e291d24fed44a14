"""Télé-expertise cases: every step read, decided by the table, committed and journaled.

A step reads the case, finds what the caller is to it (``case.party``), lets
``case.step`` decide, and commits with one compare-and-set of the case (retried
from a fresh read when another process changed it meanwhile). Then, in this order:
the journal act (keyed by the case), ``expertise.updated`` to whoever is online
and concerned, then e-mail to those concerned the directory has an address for
(``mail_notifications``: queued, never awaited). Events, e-mails and logs carry ids and codes only.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable

from config.settings import ExpertiseSettings
from core.auth import Principal
from core.mail import Mailer
from core.vocabulary import Act, CaseId, Role
from media.recording.stills import StillStore
from signalling.directory import Directory
from signalling.expertise import attachments as att
from signalling.expertise.mail_notifications import MAILED, mails_for
from signalling.expertise.case import (OPEN, Action, Answer, Attachment, Case, CaseState, Message, Party,
                                       Recommendation, Refused, Row, Step, Urgency, allowed, in_pool, new_case,
                                       party, step, visible)
from signalling.expertise.questionnaire import AnswerError, Questionnaires, missing_photos, validate
from signalling.expertise.store import CaseStore
from signalling import protocol as p
from signalling.hub import Target, nurses, user
from signalling.journal import Journal, JournalKey

logger = logging.getLogger(__name__)

MAX_TEXT = 4000
MAX_ID = 128
MAX_LIST = 1000
CAS_ATTEMPTS = 16
ADMIN_PURPOSES = ("audit", "support", "quality", "legal_request")
"""Why an admin reads cases' metadata: a code, journaled (free text would not be)."""
SWEEPER = "sweeper"


class NotFound(Exception):
    """No such case, or one the caller may not know of (the same answer for both)."""


Emit = Callable[[Iterable[Target], dict[str, Any]], Awaitable[None]]
ConsultationSite = Callable[[Principal, str], Awaitable[str | None]]
"""The site of a consultation the caller may see, or None."""


def _text(body: dict[str, Any], name: str, *, required: bool = True, limit: int = MAX_TEXT) -> str:
    value = body.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value.strip()):
        raise Refused("bad_request", f"{name}: {'is required' if value is None else 'must be non-empty text'}")
    if len(value) > limit:
        raise Refused("bad_request", f"{name}: at most {limit} characters")
    return value


def _id(body: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_ID:
        raise Refused("bad_request", f"{name}: must be an id of 1 to {MAX_ID} characters")
    return value


def parse_answer(body: Any) -> Answer:
    if not isinstance(body, dict):
        raise Refused("bad_request", "the answer must be an object")
    try:
        recommendation = Recommendation(str(body.get("recommendation")))
    except ValueError:
        raise Refused("bad_request", "recommendation: must be one of "
                      + ", ".join(r.value for r in Recommendation)) from None
    return Answer(opinion=_text(body, "opinion"), diagnosis=_text(body, "diagnosis"),
                  recommendation=recommendation, follow_up=_text(body, "follow_up", required=False),
                  diagnosis_code=_id(body, "diagnosis_code", required=False))


@dataclass
class ExpertiseService:
    store: CaseStore
    journal: Journal
    questionnaires: Questionnaires
    blobs: att.AttachmentBlobs
    settings: ExpertiseSettings
    clock: Callable[[], float]
    emit: Emit
    directory: Callable[[], Directory]
    stills: Callable[[], StillStore | None]
    consultation_site: ConsultationSite
    mailer: Mailer | None = None
    """E-mail through ``[smtp]`` (None, or a mailer whose url is empty: none is sent)."""
    base_url: Callable[[], str] = field(default=lambda: "")
    """The base of the links e-mails carry: ``server.public_url``, else the URL this process is bound to."""

    def resolve(self, principal: Principal) -> Principal:
        """A physician's specialties as the directory knows them (else as the token claims), as
        for the live queue: a pool is the directory's experts of its specialty."""
        if principal.role is not Role.PHYSICIAN:
            return principal
        return dataclasses.replace(principal, specialties=self.directory().specialties_of(
            principal.subject, principal.specialties))

    # -- creating -------------------------------------------------------------------------
    async def create(self, principal: Principal, body: Any) -> Case:
        if principal.role not in (Role.NURSE, Role.PHYSICIAN):
            raise Refused("forbidden", "nurses and physicians of a site request expertise")
        if not isinstance(body, dict):
            raise Refused("bad_request", "body must be an object")
        consultation_id = _id(body, "consultation_id", required=False)
        site = principal.site
        if consultation_id is not None:
            from_consultation = await self.consultation_site(principal, consultation_id)
            if from_consultation is None:
                raise Refused("not_found", "no such consultation")
            site = from_consultation
        if not site:
            raise Refused("forbidden", "a request comes from a site (a token with a site, or a consultation)")
        specialty = _id(body, "specialty")
        assert specialty is not None
        q = self.questionnaires.current(specialty)
        if q is None:
            raise Refused("bad_request", f"specialty: no questionnaire for {specialty!r} "
                          f"(known: {', '.join(self.questionnaires.specialties)})")
        named = _id(body, "expert", required=False)
        if named is not None:
            clinician = self.directory().clinicians.get(named)
            if clinician is None or specialty not in clinician.specialties:
                raise Refused("bad_request", f"expert: not an expert of {specialty}")
        try:
            urgency = Urgency(body.get("urgency", Urgency.STANDARD.value))
        except ValueError:
            raise Refused("bad_request", "urgency: must be standard or urgent") from None
        if not isinstance(body.get("consent"), bool):
            raise Refused("bad_request", "consent: must be true or false")
        state = body.get("state", CaseState.DRAFT.value)
        if state not in (CaseState.DRAFT.value, CaseState.SUBMITTED.value):
            raise Refused("bad_request", "state: must be draft or submitted")
        try:
            answers = validate(q, body.get("answers", {}))
        except AnswerError as exc:
            raise Refused("bad_request", f"answers.{exc}") from None
        patient_ref = _id(body, "patient_ref")
        assert patient_ref is not None
        stills = body.get("stills") or []
        if not isinstance(stills, list) or any(not isinstance(s, str) for s in stills):
            raise Refused("bad_request", "stills: must be a list of still ids")
        if stills and consultation_id is None:
            raise Refused("bad_request", "stills: need the consultation_id they were taken in")
        case = new_case(id="x" + secrets.token_hex(10), site=site, requested_by=principal.subject,
                        patient_ref=patient_ref, specialty=specialty, urgency=urgency, questionnaire=q.ref,
                        answers=answers, consent=body["consent"], now=self.clock(), named_expert=named,
                        consultation_id=consultation_id)
        await self.store.create(case.id, case.to_dict(), case.row().to_dict(), case.indexes())
        await self.journal.append_about(JournalKey.case(CaseId(case.id)), Act.CASE_CREATE, actor=principal.subject,
                                        consultation_id=None, state=case.state.value, specialty=specialty,
                                        urgency=urgency.value, questionnaire=q.ref, site=site)
        logger.info("case created", extra={"case_id": case.id, "specialty": specialty})
        for still_id in stills:
            case = await self.add_still(principal, case.id, {"consultation_id": consultation_id,
                                                             "still_id": still_id})
        if state == CaseState.SUBMITTED.value:
            case = await self.act(principal, case.id, Action.SUBMIT)
        return case

    # -- reading --------------------------------------------------------------------------
    async def load(self, principal: Principal, case_id: str) -> tuple[Case, Party]:
        got = await self.store.get(case_id) if 0 < len(case_id) <= MAX_ID else None
        if got is None:
            raise NotFound(case_id)
        case = Case.from_dict(got.doc)
        who = party(principal, case)
        if not visible(who):
            raise NotFound(case_id)
        return case, who

    async def view(self, principal: Principal, case_id: str, purpose: str | None) -> dict[str, Any]:
        case, who = await self.load(principal, case_id)
        if who is Party.ADMIN:
            await self._admin_read(principal, purpose, case_id=case.id)
            return case.metadata()
        return self.wire(case, who)

    def wire(self, case: Case, who: Party) -> dict[str, Any]:
        out = case.to_dict()
        out["party"] = who.value
        out["in_pool"] = case.in_pool
        return out

    async def _admin_read(self, principal: Principal, purpose: str | None, case_id: str | None = None,
                          box: str | None = None) -> None:
        if purpose not in ADMIN_PURPOSES:
            raise Refused("bad_request", f"purpose: an admin says why ({', '.join(ADMIN_PURPOSES)})")
        if case_id is not None:
            await self.journal.append_about(JournalKey.case(CaseId(case_id)), Act.CASE_ADMIN_VIEW,
                                            actor=principal.subject, purpose=purpose)
        else:
            await self.journal.append(Act.CASE_ADMIN_VIEW, actor=principal.subject, purpose=purpose, box=box)

    async def list(self, principal: Principal, box: str, purpose: str | None = None,
                   limit: int = 200) -> list[dict[str, Any]]:
        """``sent``: the requester's site's cases; ``inbox``: an expert's (held, named, and the
        pools of their specialties), by due date; ``all``: both (an admin: every case's metadata)."""
        if box not in ("sent", "inbox", "all"):
            raise Refused("bad_request", "box: must be sent, inbox or all")
        limit = max(1, min(limit, MAX_LIST))
        if principal.role is Role.ADMIN:
            if box != "all":
                raise Refused("bad_request", "box: an admin lists all (metadata only)")
            await self._admin_read(principal, purpose, box=box)
            every = await self.store.index("all", limit)
            return [Row.from_dict(r).metadata() for r in await self.store.rows(every)]
        active: list[str] = []
        done: list[str] = []
        if box in ("sent", "all") and principal.role in (Role.NURSE, Role.PHYSICIAN):
            mine = f"site:{principal.site}" if principal.site else f"requester:{principal.subject}"
            active.append(mine)
            done.append(mine.replace(":", "_done:", 1))
        if box in ("inbox", "all") and principal.role is Role.PHYSICIAN:
            active += [f"expert:{principal.subject}", f"named:{principal.subject}"]
            active += [f"pool:{s}" for s in principal.specialties]
            done.append(f"expert_done:{principal.subject}")
        # Open work first, by due date; then what is over, most recent first.
        out = sorted(await self._rows(principal, active, limit, set()), key=lambda r: (r["due_at"], r["id"]))
        if len(out) < limit:
            out += await self._rows(principal, done, limit - len(out), {r["id"] for r in out})
        return out[:limit]

    async def _rows(self, principal: Principal, names: Iterable[str], limit: int,
                    seen: set[str]) -> builtins.list[dict[str, Any]]:
        """The visible rows of indexes ``names`` (each read up to ``limit``), in index order."""
        ids: list[str] = []
        for batch in await asyncio.gather(*(self.store.index(n, limit) for n in names)):
            for cid in batch:
                if cid not in seen:
                    seen.add(cid)
                    ids.append(cid)
        out = []
        for raw in await self.store.rows(ids):
            row = Row.from_dict(raw)
            who = party(principal, row)
            if visible(who):
                out.append({**raw, "party": who.value, "in_pool": in_pool(row)})
        return out

    # -- steps ----------------------------------------------------------------------------
    async def act(self, principal: Principal, case_id: str, action: Action, body: Any = None) -> Case:
        body = body if isinstance(body, dict) else {}
        now = self.clock()

        def decide(case: Case, who: Party) -> Step | None:
            kwargs: dict[str, Any] = {}
            if action is Action.TAKE and who is Party.EXPERT:
                return None  # already theirs
            allowed(case, action, who)  # who and when before what: a refusal never hides behind a 400
            if action in (Action.ASK, Action.REPLY, Action.NOTE, Action.DECLINE):
                kind = {Action.ASK: "question", Action.REPLY: "reply", Action.NOTE: "note",
                        Action.DECLINE: "decline"}[action]
                kwargs["message"] = Message(id=secrets.token_hex(6), author=principal.subject,
                                            role="expert" if who is Party.EXPERT else "requester", kind=kind,
                                            text=_text(body, "text"), at=now)
            elif action is Action.ANSWER:
                kwargs["answer"] = parse_answer(body)
            elif action is Action.ESCALATE:
                kwargs["specialty"] = _id(body, "specialty", required=False)
            elif action is Action.SUBMIT:
                q = self.questionnaires.get(case.questionnaire)
                lacking = missing_photos(q, (a.view for a in case.attachments)) if q else None
                if lacking is not None:
                    raise Refused("bad_request", f"answers.{lacking[0]}: needs a photo with view {lacking[1]}")
            return step(case, action, who, principal.subject, now, **kwargs)

        return await self._commit(principal, case_id, decide, action)

    async def message(self, principal: Principal, case_id: str, body: Any) -> Case:
        """A question (the expert) or the requester's reply (a note while no question is pending)."""
        case, who = await self.load(principal, case_id)
        if who is Party.EXPERT:
            action = Action.ASK
        elif who is Party.REQUESTER:
            action = Action.REPLY if case.state is CaseState.QUESTION else Action.NOTE
        else:
            raise Refused("forbidden", "only the requester and the expert who holds the case write in its thread")
        return await self.act(principal, case_id, action, body)

    async def _commit(self, principal: Principal | None, case_id: str,
                      decide: Callable[[Case, Party], Step | None], action: Action) -> Case:
        for _ in range(CAS_ATTEMPTS):
            got = await self.store.get(case_id) if 0 < len(case_id) <= MAX_ID else None
            if got is None:
                raise NotFound(case_id)
            case = Case.from_dict(got.doc)
            who = party(principal, case) if principal is not None else Party.SWEEPER
            if not visible(who):
                if (action is Action.TAKE and principal is not None and principal.role is Role.PHYSICIAN
                        and case.specialty in principal.specialties and case.state in OPEN
                        and case.expert is not None):
                    raise Refused("conflict", "another expert has taken this case")
                raise NotFound(case_id)
            st = decide(case, who)
            if st is None:
                return case
            if await self.store.update(case_id, got.version, st.new.to_dict(), st.new.row().to_dict(),
                                       st.new.indexes()) is not None:
                await self.journal.append_about(JournalKey.case(CaseId(case_id)), st.act, actor=st.actor,
                                                consultation_id=None, **st.fields)
                await self._notify(st)
                return st.new
        raise Refused("conflict", "the case kept changing; retry")

    async def _notify(self, st: Step) -> None:
        old, new = st.old, st.new
        targets: set[Target] = {nurses(new.site), user(new.requested_by)}
        for expert in (old.expert, new.expert):
            if expert:
                targets.add(user(expert))
        if new.in_pool and (not old.in_pool or st.action in (Action.SUBMIT, Action.OVERDUE)):
            targets.update(user(c.id) for c in self.directory().clinicians.values()
                           if new.specialty in c.specialties and c.id not in new.declined_by)
        elif new.named_expert and new.state in OPEN and new.expert is None:
            targets.add(user(new.named_expert))
        event = p.ExpertiseUpdated(case_id=new.id, state=new.state.value, action=st.action.value,
                                   specialty=new.specialty, due_at=new.due_at, expert=new.expert,
                                   flagged=new.flagged_at is not None)
        try:
            await self.emit(sorted(targets), event.to_wire())
            if st.action is Action.ESCALATE:
                await self.emit([nurses(new.site), user(new.requested_by)], p.ExpertiseEscalated(
                    case_id=new.id, specialty=new.escalated_to or new.specialty).to_wire())
        except Exception as exc:  # the step is committed and journaled; an event is best effort
            logger.warning("expertise event not sent: %s", type(exc).__name__, extra={"case_id": new.id})
        self._mail(st)

    def _mail(self, st: Step) -> None:
        """Queue the step's e-mails (best effort: the mailer sends them in the background)."""
        mailer = self.mailer
        if mailer is None or not mailer.enabled or st.action not in MAILED:
            return
        try:
            for mail in mails_for(st, self.directory(), self.base_url()):
                mailer.submit(mail)
        except Exception as exc:  # the step stands whatever happens to its e-mail
            logger.warning("expertise mail not queued: %s", type(exc).__name__, extra={"case_id": st.new.id})

    # -- attachments ----------------------------------------------------------------------
    def _check_room(self, case: Case) -> None:
        if len(case.attachments) >= self.settings.max_attachments:
            raise Refused("conflict", f"a case holds at most {self.settings.max_attachments} attachments")

    def _view(self, case: Case, value: Any) -> str | None:
        if value is None:
            return None
        q = self.questionnaires.get(case.questionnaire)
        views = {v for f in (q.fields if q else ()) for v in f.views}
        if value not in views:
            raise Refused("bad_request", f"view: must be one of {', '.join(sorted(views)) or 'none'}")
        return str(value)

    async def check_upload(self, principal: Principal, case_id: str, view: str | None) -> Case:
        """Refuse an upload the caller may not make before its body is read."""
        case, who = await self.load(principal, case_id)
        if who is not Party.REQUESTER:
            raise Refused("forbidden", "only the requester adds attachments")
        allowed(case, Action.ATTACH, who)
        self._check_room(case)
        self._view(case, view)
        return case

    async def add_upload(self, principal: Principal, case_id: str, data: bytes, view: str | None) -> Case:
        case = await self.check_upload(principal, case_id, view)
        view_code = self._view(case, view)
        try:
            clean = await asyncio.to_thread(att.clean, data, self.settings.upload_max_pixels)
        except att.UploadRefused as exc:
            raise Refused("unsupported", str(exc)) from None
        attachment = Attachment(id=secrets.token_hex(8), kind="upload", mime=clean.mime, size=len(clean.data),
                                width=clean.width, height=clean.height, added_by=principal.subject,
                                at=self.clock(), sha256=clean.sha256, view=view_code)
        await asyncio.to_thread(self.blobs.put, case.id, attachment.id, clean.data)
        return await self._attach(principal, case.id, attachment)

    async def add_still(self, principal: Principal, case_id: str, body: Any) -> Case:
        """A still of a consultation the caller may see, by reference (it stays in the stills' store)."""
        case, who = await self.load(principal, case_id)
        if who is not Party.REQUESTER:
            raise Refused("forbidden", "only the requester adds attachments")
        if not isinstance(body, dict):
            raise Refused("bad_request", "body must be an object")
        self._check_room(case)
        consultation_id, still_id = _id(body, "consultation_id"), _id(body, "still_id")
        assert consultation_id is not None and still_id is not None
        view_code = self._view(case, body.get("view"))
        stills = self.stills()
        if stills is None or await self.consultation_site(principal, consultation_id) is None:
            raise Refused("not_found", "no such consultation")
        try:
            meta = await asyncio.to_thread(stills.meta, consultation_id, still_id)
        except Exception:
            raise Refused("not_found", "no such still in this consultation") from None
        attachment = Attachment(id=secrets.token_hex(8), kind="still", mime=meta.mime, size=meta.size,
                                width=meta.width, height=meta.height, added_by=principal.subject, at=self.clock(),
                                consultation_id=consultation_id, still_id=still_id, view=view_code)
        return await self._attach(principal, case.id, attachment)

    async def _attach(self, principal: Principal, case_id: str, attachment: Attachment) -> Case:
        def decide(case: Case, who: Party) -> Step:
            self._check_room(case)
            return step(case, Action.ATTACH, who, principal.subject, self.clock(), attachment=attachment)
        return await self._commit(principal, case_id, decide, Action.ATTACH)

    async def download(self, principal: Principal, case_id: str, attachment_id: str,
                       purpose: str | None = None) -> tuple[Attachment, bytes]:
        """An attachment's bytes for the requester, the expert or the pool (journaled each time)."""
        case, who = await self.load(principal, case_id)
        if who is Party.ADMIN:
            raise Refused("forbidden", "admins see cases' metadata only")
        found = next((a for a in case.attachments if a.id == attachment_id), None)
        if found is None:
            raise NotFound(attachment_id)
        if found.kind == "still":
            stills = self.stills()
            if stills is None or found.consultation_id is None or found.still_id is None:
                raise NotFound(attachment_id)
            try:
                _, data = await asyncio.to_thread(stills.get, found.consultation_id, found.still_id)
            except Exception:
                raise NotFound(attachment_id) from None  # shredded with its consultation's retention
        else:
            data = await asyncio.to_thread(self.blobs.get, case.id, found.id, found.sha256)
        await self.journal.append_about(JournalKey.case(CaseId(case.id)), Act.CASE_ACCESS, actor=principal.subject,
                                        attachment_id=found.id, kind=found.kind, party=who.value)
        return found, data

    # -- due dates --------------------------------------------------------------------------
    async def sweep(self, now: float | None = None, limit: int = 500) -> int:
        """Flag the open cases within ``due_warning_s`` of their due date (or past it) and open
        them to the specialty's pool; every process may run it, each case is flagged once
        (the flag is a compare-and-set, and a flagged case leaves the ``open`` index)."""
        now = self.clock() if now is None else now
        flagged = 0
        for case_id in await self.store.index("open", limit, until=now + self.settings.due_warning_s):
            def decide(case: Case, who: Party) -> Step:
                return step(case, Action.OVERDUE, who, SWEEPER, now)
            try:
                await self._commit(None, case_id, decide, Action.OVERDUE)
                flagged += 1
            except (Refused, NotFound):
                continue  # another process flagged it, or it moved on
        return flagged

    async def sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval_s)
            try:
                await self.sweep()
            except Exception as exc:
                logger.warning("expertise sweep failed: %s", type(exc).__name__)
