"""E-mail about a case to the people it concerns (sans I/O): who gets one for a step, and what it says.

A message holds no patient data: the case id, its state, its due date and the link to the
page (``<base>/expertise#case=<id>``), in French or English. Only people the directory has an
address for get one: an expert (a clinician's ``email``), the requester when they are a
clinician of the directory, and the requester's site (its shared mailbox: nurses change
shifts). Nobody is told of their own act.

| step | who |
|---|---|
| submit, decline (the case enters the pool) | the named expert, or every expert of the specialty (the pool) |
| ask | the requester and the site |
| reply, note | the expert who holds the case |
| answer | the requester and the site |
| overdue (the sweeper: due soon, or past due) | the expert who holds it or is named, and the pool it is opened to |

The language is the recipient's first of ``fr``/``en`` in the directory's ``languages``, else French.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from core.mail import Mail
from core.vocabulary import Language
from signalling.directory import Directory
from signalling.expertise.case import OPEN, Action, Case, CaseState, Step


@dataclass(frozen=True)
class Recipient:
    id: str
    """A clinician's id, or ``site:<id>`` for a site's mailbox (what logs name)."""
    address: str
    language: Language


MAILED = frozenset({Action.SUBMIT, Action.DECLINE, Action.ASK, Action.REPLY, Action.NOTE, Action.ANSWER,
                    Action.OVERDUE})

_STATES: dict[Language, dict[CaseState, str]] = {
    Language.FR: {CaseState.DRAFT: "brouillon", CaseState.SUBMITTED: "en attente de l'expert",
              CaseState.QUESTION: "question posée au demandeur", CaseState.ANSWERED: "avis rendu",
              CaseState.CLOSED: "clôturée", CaseState.CANCELLED: "annulée",
              CaseState.ESCALATED: "transformée en téléconsultation"},
    Language.EN: {CaseState.DRAFT: "draft", CaseState.SUBMITTED: "waiting for the expert",
              CaseState.QUESTION: "question to the requester", CaseState.ANSWERED: "opinion given",
              CaseState.CLOSED: "closed", CaseState.CANCELLED: "cancelled",
              CaseState.ESCALATED: "turned into a live teleconsultation"},
}

_WHAT: dict[Language, dict[str, str]] = {
    Language.FR: {"new": "nouvelle demande", "question": "question de l'expert",
              "message": "nouveau message du demandeur", "answer": "avis rendu",
              "due_soon": "échéance proche", "overdue": "échéance dépassée"},
    Language.EN: {"new": "new request", "question": "the expert asks a question",
              "message": "new message from the requester", "answer": "opinion given",
              "due_soon": "due soon", "overdue": "past its due date"},
}

_TEXT: dict[Language, str] = {
    Language.FR: """Bonjour,

Demande de télé-expertise {case_id} : {what}.

Demande : {case_id}
État : {state}
Échéance : {due}

Ouvrir la demande : {link}

Ce message ne contient aucune donnée de patient : connectez-vous pour lire la demande.
Message automatique, merci de ne pas y répondre.
""",
    Language.EN: """Hello,

Tele-expertise request {case_id}: {what}.

Request: {case_id}
State: {state}
Due: {due}

Open the request: {link}

This message holds no patient data: sign in to read the request.
Automatic message, please do not reply.
""",
}

_SUBJECT: dict[Language, str] = {Language.FR: "Télé-expertise {case_id} : {what}",
                             Language.EN: "Tele-expertise {case_id}: {what}"}


def case_link(base_url: str, case_id: str) -> str:
    return f"{base_url.rstrip('/')}/expertise#case={case_id}"


def _what(st: Step) -> str:
    action = st.action
    if action in (Action.SUBMIT, Action.DECLINE):
        return "new"
    if action is Action.ASK:
        return "question"
    if action in (Action.REPLY, Action.NOTE):
        return "message"
    if action is Action.ANSWER:
        return "answer"
    flagged = st.new.flagged_at if st.new.flagged_at is not None else 0.0
    return "overdue" if flagged >= st.new.due_at else "due_soon"


def _language(languages: tuple[str, ...]) -> Language:
    for code in languages:
        if code.lower() in tuple(Language):
            return Language(code.lower())
    return Language.FR


def _pool(case: Case, directory: Directory) -> set[str]:
    return {c.id for c in directory.clinicians.values()
            if case.specialty in c.specialties and c.id not in case.declined_by}


def recipients(st: Step, directory: Directory) -> list[Recipient]:
    """Who gets an e-mail for ``st`` (those with an address in ``directory``), in a stable order."""
    if st.action not in MAILED:
        return []
    old, new, action = st.old, st.new, st.action
    experts: set[str] = set()
    requester_side = False
    if action in (Action.SUBMIT, Action.DECLINE, Action.OVERDUE):
        if new.in_pool and (not old.in_pool or action in (Action.SUBMIT, Action.OVERDUE)):
            experts |= _pool(new, directory)
        elif new.named_expert and new.state in OPEN and new.expert is None:
            experts.add(new.named_expert)
        if action is Action.OVERDUE and new.expert:
            experts.add(new.expert)
    elif action in (Action.REPLY, Action.NOTE):
        if new.expert:
            experts.add(new.expert)
    else:  # ask, answer
        requester_side = True
    out: dict[str, Recipient] = {}

    def add(rid: str, address: str, languages: tuple[str, ...]) -> None:
        if rid != st.actor and address and address.lower() not in out:
            out[address.lower()] = Recipient(rid, address, _language(languages))

    for expert in sorted(experts):
        clinician = directory.clinicians.get(expert)
        if clinician is not None:
            add(clinician.id, clinician.email, clinician.languages)
    if requester_side:
        clinician = directory.clinicians.get(new.requested_by)
        if clinician is not None:
            add(clinician.id, clinician.email, clinician.languages)
        site = directory.sites.get(new.site)
        if site is not None:
            add(f"site:{site.id}", site.email, ())
    return list(out.values())


def _due(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(at))


def compose(st: Step, recipient: Recipient, base_url: str) -> Mail:
    lang, case = recipient.language, st.new
    values = {"case_id": case.id, "what": _WHAT[lang][_what(st)], "state": _STATES[lang][case.state],
              "due": _due(case.due_at), "link": case_link(base_url, case.id)}
    return Mail(to=recipient.address, subject=_SUBJECT[lang].format(**values), text=_TEXT[lang].format(**values),
                kind=f"expertise.{st.action.value}", ids={"case_id": case.id, "recipient": recipient.id},
                language=lang.value)


def mails_for(st: Step, directory: Directory, base_url: str) -> list[Mail]:
    """The messages ``st`` calls for."""
    return [compose(st, r, base_url) for r in recipients(st, directory)]


__all__ = ["MAILED", "Recipient", "case_link", "compose", "mails_for", "recipients"]
