"""The télé-expertise case and its lifecycle, as an explicit table (sans I/O).

A case is an asynchronous request for an expert opinion: a professional of a site
(the *requester*) sends a patient's case to a specialty, or to one named expert of
it; an expert takes it, may ask questions, and answers with a structured opinion.

States::

  draft --submit--> submitted --ask--> question --reply--> submitted
                    submitted|question --answer--> answered --close--> closed
  draft|submitted|question --cancel--> cancelled
  submitted|question|answered --escalate--> escalated (a live consultation is asked for)

``take`` and ``decline`` change who holds the case, not its state: ``take`` (the named
expert, or any expert of the specialty once it is in the pool, while nobody holds it;
on Redis as on memory one compare-and-set, so exactly one taker wins) and ``decline`` (the holder hands it back to
the pool, with a reason). ``attach`` and ``note`` (the requester's message while no
question is pending) keep the state too. ``overdue`` is the sweeper's: a case close
to or past its due date is opened to the specialty's pool (a case addressed to one
named expert becomes visible to all experts of the specialty).

:func:`step` is the only way to change a case; anything not in :data:`TRANSITIONS`,
or done by someone :data:`ACTORS` does not allow, raises :class:`Refused`. Every
step returns the journal act that records it (:data:`ACTS`).
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any, Mapping, Protocol

from core.auth import Principal
from core.vocabulary import Act, Role

DAY_S = 86_400.0


class CaseState(enum.StrEnum):
    DRAFT = "draft"
    SUBMITTED = "submitted"
    QUESTION = "question"
    """The expert asked the requester something; the requester's reply brings it back to submitted."""
    ANSWERED = "answered"
    CLOSED = "closed"
    CANCELLED = "cancelled"
    ESCALATED = "escalated"
    """Turned into a live consultation request."""

    @property
    def final(self) -> bool:
        return self in FINAL


FINAL = frozenset({CaseState.CLOSED, CaseState.CANCELLED, CaseState.ESCALATED})
OPEN = frozenset({CaseState.SUBMITTED, CaseState.QUESTION})
"""Waiting for an expert: what inboxes and the due-date sweeper look at."""


class Action(enum.StrEnum):
    SUBMIT = "submit"
    ATTACH = "attach"
    NOTE = "note"
    """A requester's message while no question is pending."""
    ASK = "ask"
    REPLY = "reply"
    TAKE = "take"
    DECLINE = "decline"
    ANSWER = "answer"
    CLOSE = "close"
    CANCEL = "cancel"
    ESCALATE = "escalate"
    OVERDUE = "overdue"


_S = CaseState
_A = Action
TRANSITIONS: dict[CaseState, dict[Action, CaseState]] = {
    _S.DRAFT: {_A.SUBMIT: _S.SUBMITTED, _A.ATTACH: _S.DRAFT, _A.CANCEL: _S.CANCELLED},
    _S.SUBMITTED: {_A.ATTACH: _S.SUBMITTED, _A.NOTE: _S.SUBMITTED, _A.ASK: _S.QUESTION, _A.TAKE: _S.SUBMITTED,
                   _A.DECLINE: _S.SUBMITTED, _A.ANSWER: _S.ANSWERED, _A.CANCEL: _S.CANCELLED,
                   _A.ESCALATE: _S.ESCALATED, _A.OVERDUE: _S.SUBMITTED},
    _S.QUESTION: {_A.ATTACH: _S.QUESTION, _A.REPLY: _S.SUBMITTED, _A.ASK: _S.QUESTION, _A.TAKE: _S.QUESTION,
                  _A.DECLINE: _S.SUBMITTED, _A.ANSWER: _S.ANSWERED, _A.CANCEL: _S.CANCELLED,
                  _A.ESCALATE: _S.ESCALATED, _A.OVERDUE: _S.QUESTION},
    _S.ANSWERED: {_A.CLOSE: _S.CLOSED, _A.ESCALATE: _S.ESCALATED},
    _S.CLOSED: {},
    _S.CANCELLED: {},
    _S.ESCALATED: {},
}
"""state -> action -> next state; an action missing from a state's row is refused there."""


class Party(enum.StrEnum):
    """What a caller is to one case."""

    REQUESTER = "requester"
    """The requesting professional, or a nurse or physician of the case's site (shifts change)."""
    EXPERT = "expert"
    """The expert who holds the case."""
    POOL = "pool"
    """An expert of the specialty while nobody holds the case (and it is not named to another)."""
    ADMIN = "admin"
    """Metadata only, with a reason (journaled)."""
    SWEEPER = "sweeper"
    OUTSIDER = "outsider"


ACTORS: dict[Action, frozenset[Party]] = {
    _A.SUBMIT: frozenset({Party.REQUESTER}),
    _A.ATTACH: frozenset({Party.REQUESTER}),
    _A.NOTE: frozenset({Party.REQUESTER}),
    _A.REPLY: frozenset({Party.REQUESTER}),
    _A.CLOSE: frozenset({Party.REQUESTER}),
    _A.CANCEL: frozenset({Party.REQUESTER}),
    _A.ASK: frozenset({Party.EXPERT}),
    _A.ANSWER: frozenset({Party.EXPERT}),
    _A.DECLINE: frozenset({Party.EXPERT}),
    _A.TAKE: frozenset({Party.POOL}),
    _A.ESCALATE: frozenset({Party.REQUESTER, Party.EXPERT}),
    _A.OVERDUE: frozenset({Party.SWEEPER}),
}

ACTS: dict[Action, Act] = {
    _A.SUBMIT: Act.CASE_SUBMIT,
    _A.ATTACH: Act.CASE_ATTACH,
    _A.NOTE: Act.CASE_MESSAGE,
    _A.ASK: Act.CASE_QUESTION,
    _A.REPLY: Act.CASE_REPLY,
    _A.TAKE: Act.CASE_TAKE,
    _A.DECLINE: Act.CASE_DECLINE,
    _A.ANSWER: Act.CASE_ANSWER,
    _A.CLOSE: Act.CASE_CLOSE,
    _A.CANCEL: Act.CASE_CANCEL,
    _A.ESCALATE: Act.CASE_ESCALATE,
    _A.OVERDUE: Act.CASE_OVERDUE,
}


class Urgency(enum.StrEnum):
    STANDARD = "standard"
    URGENT = "urgent"

    @property
    def delay_s(self) -> float:
        return 7 * DAY_S if self is Urgency.STANDARD else 2 * DAY_S


class Recommendation(enum.StrEnum):
    ADVICE = "advice"
    TREATMENT = "treatment"
    TELECONSULTATION = "teleconsultation"
    REFERRAL = "referral"
    """In-person referral."""
    URGENT_CARE = "urgent_care"
    """Urgent in-person care."""


class Refused(Exception):
    """A step the table or the actor rules refuse; ``code`` is the HTTP-ish kind of refusal."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        """``conflict`` (the state forbids it, or someone else took it), ``forbidden``, ``bad_request``."""
        self.message = message


@dataclass(frozen=True)
class Message:
    id: str
    author: str
    role: str
    """``requester`` or ``expert``."""
    kind: str
    """``question``, ``reply``, ``note`` or ``decline`` (an expert's reason for handing it back)."""
    text: str
    at: float


@dataclass(frozen=True)
class Attachment:
    id: str
    kind: str
    """``upload`` (a photo sent with the case) or ``still`` (a consultation's still, by reference)."""
    mime: str
    size: int
    width: int
    height: int
    added_by: str
    at: float
    consultation_id: str | None = None
    still_id: str | None = None
    sha256: str = ""
    """Of the stored upload (a still by reference has its own, in the stills' store)."""
    view: str | None = None
    """Which of the questionnaire's photo views it shows (``close_up``, ``distance``...), if any."""


@dataclass(frozen=True)
class Answer:
    opinion: str
    diagnosis: str
    recommendation: Recommendation
    follow_up: str
    diagnosis_code: str | None = None
    by: str = ""
    at: float = 0.0


@dataclass(frozen=True)
class Case:
    id: str
    site: str
    requested_by: str
    """Subject of the requesting professional."""
    patient_ref: str
    specialty: str
    urgency: Urgency
    questionnaire: str
    """``<specialty>@<version>`` the answers were checked against."""
    answers: Mapping[str, Any]
    consent: bool
    created_at: float
    due_at: float
    state: CaseState = CaseState.DRAFT
    named_expert: str | None = None
    """The one expert the requester addressed (None: the specialty's pool)."""
    expert: str | None = None
    """Who holds it now (took it: a named expert takes it too, or declines it to the pool)."""
    pooled: bool = False
    """Opened to the specialty's pool although it named an expert (declined, or overdue)."""
    declined_by: tuple[str, ...] = ()
    attachments: tuple[Attachment, ...] = ()
    messages: tuple[Message, ...] = ()
    answer: Answer | None = None
    updated_at: float = 0.0
    submitted_at: float | None = None
    flagged_at: float | None = None
    """When the sweeper flagged it as close to or past its due date."""
    escalated_to: str | None = None
    """The specialty of the live consultation asked for."""
    consultation_id: str | None = None
    """The live consultation it came from (pre-filled from a consultation), if any."""

    # -- wire and store forms -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        # Shallow copies of flat dataclasses: ``dataclasses.asdict`` deep-copies and costs ~10x.
        out = dict(self.__dict__)
        out["answers"] = dict(self.answers)
        out["declined_by"] = list(self.declined_by)
        out["attachments"] = [dict(a.__dict__) for a in self.attachments]
        out["messages"] = [dict(m.__dict__) for m in self.messages]
        out["answer"] = dict(self.answer.__dict__) if self.answer is not None else None
        return out

    def row(self) -> Row:
        """The light form lists are made of (kept next to the document by the store)."""
        return Row(id=self.id, site=self.site, requested_by=self.requested_by, patient_ref=self.patient_ref,
                   specialty=self.specialty, urgency=self.urgency.value, state=self.state,
                   created_at=self.created_at, due_at=self.due_at, updated_at=self.updated_at, expert=self.expert,
                   named_expert=self.named_expert, pooled=self.pooled, flagged_at=self.flagged_at,
                   attachments=len(self.attachments), messages=len(self.messages),
                   recommendation=self.answer.recommendation.value if self.answer else None)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Case:
        values = dict(data)
        values["state"] = CaseState(values["state"])
        values["urgency"] = Urgency(values["urgency"])
        values["declined_by"] = tuple(values.get("declined_by") or ())
        values["attachments"] = tuple(Attachment(**a) for a in values.get("attachments") or ())
        values["messages"] = tuple(Message(**m) for m in values.get("messages") or ())
        answer = values.get("answer")
        if answer is not None:
            values["answer"] = Answer(**{**answer, "recommendation": Recommendation(answer["recommendation"])})
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def metadata(self) -> dict[str, Any]:
        """What an admin sees: no patient, no answers, no thread, no answer text."""
        return self.row().metadata()

    # -- who sees it ------------------------------------------------------------------------
    @property
    def in_pool(self) -> bool:
        """Any expert of the specialty may take it."""
        return in_pool(self)

    def indexes(self) -> dict[str, float]:
        """Store indexes (name -> score). While a case is not final: ``site:``, ``requester:`` and
        ``expert:`` by due date; once final, ``site_done:``, ``requester_done:``, ``expert_done:`` by
        most recent first (so that years of history never push open cases out of a list). Also
        ``all`` (by creation), ``named:<expert>`` (open, nobody holds it), ``pool:<specialty>``
        (open, any expert of it may take it) and ``open`` (open, not yet flagged: the sweeper's)."""
        done = self.state.final
        suffix, score = ("_done", -self.updated_at) if done else ("", self.due_at)
        out = {"all": self.created_at, f"site{suffix}:{self.site}": score,
               f"requester{suffix}:{self.requested_by}": score}
        if self.expert:
            out[f"expert{suffix}:{self.expert}"] = score
        if self.named_expert and self.state in OPEN and self.expert is None:
            out[f"named:{self.named_expert}"] = self.due_at
        if self.in_pool:
            out[f"pool:{self.specialty}"] = self.due_at
        if self.state in OPEN and self.flagged_at is None:
            out["open"] = self.due_at
        return out


class Holding(Protocol):
    """What deciding who sees a case needs (a :class:`Case` or a :class:`Row`)."""

    @property
    def site(self) -> str: ...
    @property
    def requested_by(self) -> str: ...
    @property
    def specialty(self) -> str: ...
    @property
    def state(self) -> CaseState: ...
    @property
    def expert(self) -> str | None: ...
    @property
    def named_expert(self) -> str | None: ...
    @property
    def pooled(self) -> bool: ...


def in_pool(case: Holding) -> bool:
    return case.state in OPEN and case.expert is None and (case.named_expert is None or case.pooled)


@dataclass(frozen=True)
class Row:
    """A case as lists show it: no answers, thread, attachments' details or answer text."""

    id: str
    site: str
    requested_by: str
    patient_ref: str
    specialty: str
    urgency: str
    state: CaseState
    created_at: float
    due_at: float
    updated_at: float
    expert: str | None
    named_expert: str | None
    pooled: bool
    flagged_at: float | None
    attachments: int
    messages: int
    recommendation: str | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Row:
        return cls(**{**data, "state": CaseState(data["state"])})

    def metadata(self) -> dict[str, Any]:
        """What an admin sees: no patient reference, no recommendation."""
        out = self.to_dict()
        del out["patient_ref"], out["recommendation"], out["pooled"]
        return out


def party(principal: Principal, case: Holding) -> Party:
    """What ``principal`` is to ``case`` (an outsider sees nothing: the same 404 as no case)."""
    if principal.role is Role.ADMIN:
        return Party.ADMIN
    if principal.role is Role.PHYSICIAN and case.expert == principal.subject:
        return Party.EXPERT
    if principal.subject == case.requested_by:
        return Party.REQUESTER
    if principal.role in (Role.NURSE, Role.PHYSICIAN) and principal.site and principal.site == case.site:
        return Party.REQUESTER
    if (principal.role is Role.PHYSICIAN and case.specialty in principal.specialties
            and case.state is not CaseState.DRAFT):
        if in_pool(case) or (case.state in OPEN and case.expert is None
                            and case.named_expert == principal.subject):
            return Party.POOL
    return Party.OUTSIDER


def visible(p: Party) -> bool:
    return p is not Party.OUTSIDER


def new_case(*, id: str, site: str, requested_by: str, patient_ref: str, specialty: str, urgency: Urgency,
             questionnaire: str, answers: Mapping[str, Any], consent: bool, now: float,
             named_expert: str | None = None, consultation_id: str | None = None) -> Case:
    """A draft, due ``urgency.delay_s`` after now (counted again from submission)."""
    return Case(id=id, site=site, requested_by=requested_by, patient_ref=patient_ref, specialty=specialty,
                urgency=urgency, questionnaire=questionnaire, answers=dict(answers), consent=consent,
                created_at=now, due_at=now + urgency.delay_s, named_expert=named_expert, updated_at=now,
                consultation_id=consultation_id)


@dataclass(frozen=True)
class Step:
    """One step: ``old`` became ``new``; ``act`` and ``fields`` go to the journal (ids and codes)."""

    old: Case
    new: Case
    action: Action
    actor: str
    act: Act
    fields: Mapping[str, str | int | float | bool | None]


def allowed(case: Case, action: Action, who: Party) -> CaseState:
    """The next state; :class:`Refused` when the table or the actor rules say no."""
    if who not in ACTORS[action]:
        raise Refused("forbidden", f"the {who.value} of a case may not {action.value} it")
    target = TRANSITIONS[case.state].get(action)
    if target is None:
        raise Refused("conflict", f"a {case.state.value} case cannot be {_past(action)}")
    return target


def _past(action: Action) -> str:
    return {"submit": "submitted", "attach": "given attachments", "note": "given a note", "ask": "asked a question",
            "reply": "replied to", "take": "taken", "decline": "declined", "answer": "answered",
            "close": "closed", "cancel": "cancelled", "escalate": "escalated",
            "overdue": "flagged overdue"}[action.value]


def step(case: Case, action: Action, who: Party, actor: str, now: float, *,
         message: Message | None = None, attachment: Attachment | None = None, answer: Answer | None = None,
         specialty: str | None = None) -> Step:
    """``case`` after ``actor`` (``who`` to it) did ``action``; :class:`Refused` otherwise."""
    target = allowed(case, action, who)
    changes: dict[str, Any] = {"state": target, "updated_at": now}
    fields: dict[str, str | int | float | bool | None] = {"state": target.value, "from_state": case.state.value}
    if action is Action.SUBMIT:
        if not case.consent:
            raise Refused("bad_request", "the patient's consent is required to submit")
        changes.update(submitted_at=now, due_at=now + case.urgency.delay_s)
    elif action is Action.TAKE:
        if case.expert is not None:
            raise Refused("conflict", "another expert has taken this case")
        changes["expert"] = actor
    elif action is Action.DECLINE:
        if message is None or not message.text.strip():
            raise Refused("bad_request", "a reason is required to decline")
        # The reason is the thread's (the requester reads it), never the journal's: it is free text.
        changes.update(expert=None, pooled=True, declined_by=(*case.declined_by, actor),
                       messages=(*case.messages, message))
        fields["message_id"] = message.id
    elif action in (Action.ASK, Action.REPLY, Action.NOTE):
        if message is None:
            raise Refused("bad_request", "a message is required")
        changes["messages"] = (*case.messages, message)
        fields["message_id"] = message.id
    elif action is Action.ATTACH:
        if attachment is None:
            raise Refused("bad_request", "an attachment is required")
        changes["attachments"] = (*case.attachments, attachment)
        fields.update(attachment_id=attachment.id, kind=attachment.kind)
    elif action is Action.ANSWER:
        if answer is None:
            raise Refused("bad_request", "an answer is required")
        changes["answer"] = dataclasses.replace(answer, by=actor, at=now)
        fields["recommendation"] = answer.recommendation.value
    elif action is Action.ESCALATE:
        changes["escalated_to"] = specialty or case.specialty
        fields["specialty"] = specialty or case.specialty
    elif action is Action.OVERDUE:
        if case.flagged_at is not None:
            raise Refused("conflict", "this case is already flagged")
        changes.update(flagged_at=now, pooled=True)
        fields["due_at"] = case.due_at
    new = dataclasses.replace(case, **changes)
    return Step(old=case, new=new, action=action, actor=actor, act=ACTS[action], fields=fields)
