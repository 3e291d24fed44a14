"""The consultation: a paired session and its lifecycle, as an explicit state machine.

Rules:

* A consultation is created ``requested`` when a nurse checks a patient in.
* ``requested -> offered`` when the matcher rings a physician (or one picks it
  from the queue); ``offered -> requested`` on decline, timeout or a vanished
  physician (one who declined or let it time out is remembered in ``tried`` and
  not rung again for this request, though they may still pick it).
* ``offered -> accepted`` when that physician accepts; ``accepted -> active``
  once the SFU room exists and room tokens are out; ``accepted -> failed`` when
  the room cannot be made.
* ``requested|offered -> cancelled`` (the site's nurse) or ``expired`` (the
  nurse is lost past the resume grace, or it waited too long).
* ``accepted|active -> ended`` by either side (the physician at any time).
* ``ended``, ``cancelled``, ``expired`` and ``failed`` are final.

:func:`transition` is the only way to change state; anything not in
:data:`TRANSITIONS` raises :class:`InvalidTransition`. The object is a frozen
value; the store keeps it as a dict with a version for compare-and-set.

What each step implies, sans I/O: the functions of the last section return a
:class:`Transition`, the new value with what the store changes atomically with it
(:class:`QueueChange`) and the effects that follow, in order, as data
(``signalling.consultations`` carries them out)::

  step                 store, atomically          then, in this order
  -------------------  -------------------------  -------------------------------------------------
  check_in   -> req.   create; enter the queue    journal visit.checkin, consent (visit.flag)
                       (after the journal acts)   BEFORE the store; archive
  queued               -                          (the reply has its position) nurses:
                                                  consultation.updated; admins: visit.flagged
                                                  (flagged); kick the request
  offer  req.-> off.   claim: leave the queue,    journal offer; physician: offer.received;
                       lock the physician         nurses: visit.status, consultation.updated
  withdraw off.->req.  back in the queue; unlock, journal offer.<timeout|decline|vanished>;
                       clear the deadline         physician: offer.withdrawn; nurses: updated;
                                                  kick the physician and the request; nurses:
                                                  visit.status
  accept off.->acc.    clear the deadline (lock   the physician turns in_consultation; unlock;
                       kept until then)           journal offer.accept
  take_over  acc.      the process that places    unlock; journal offer.accept (recovered) when
   (its process died   the room and starts it:    the dead process had not
   before the start)   this one
  start  acc.->active  -                          archive; journal consultation.start;
                                                  each seat: consultation.started + its grant
  finish  -> final     leave the queue; unlock,   (was live) free the physician, close the room;
                       clear the deadline (was    archive; leave the store; journal
                       offered)                   consultation.<end|cancel|expire|fail>;
                                                  offered: physician offer.withdrawn; nurses,
                                                  physician, agents (was live): consultation.ended;
                                                  kick the physicians involved
  recover -> final     - (in no store: its        journal consultation.recover, then
   (startup)           process died with it)      consultation.<expire|end>; archive
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any, Mapping

from core.vocabulary import Act, Role
from signalling import protocol as p
from signalling.invitation import FINAL as INVITATION_FINAL
from signalling.invitation import Invitation, InvitationState
from signalling.hub import Target, admins, agents, nurses, user
from signalling.journal import JournalValue
from signalling.protocol import Priority, WithdrawReason


class State(str, enum.Enum):
    REQUESTED = "requested"
    OFFERED = "offered"
    ACCEPTED = "accepted"
    ACTIVE = "active"
    ENDED = "ended"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in FINAL


FINAL = frozenset({State.ENDED, State.CANCELLED, State.EXPIRED, State.FAILED})
WAITING = frozenset({State.REQUESTED, State.OFFERED})
LIVE = frozenset({State.ACCEPTED, State.ACTIVE})

TRANSITIONS: dict[State, frozenset[State]] = {
    State.REQUESTED: frozenset({State.OFFERED, State.CANCELLED, State.EXPIRED}),
    State.OFFERED: frozenset({State.REQUESTED, State.ACCEPTED, State.CANCELLED, State.EXPIRED}),
    State.ACCEPTED: frozenset({State.ACTIVE, State.FAILED, State.ENDED}),
    State.ACTIVE: frozenset({State.ENDED}),
    State.ENDED: frozenset(),
    State.CANCELLED: frozenset(),
    State.EXPIRED: frozenset(),
    State.FAILED: frozenset(),
}


class InvalidTransition(Exception):
    def __init__(self, current: State, target: State) -> None:
        super().__init__(f"a {current.value} consultation cannot become {target.value}")
        self.current = current
        self.target = target


CLINICAL_FIELDS = ("patient_ref", "ins", "reason")
"""Fields only the site's nurses and the physician see; never logged, never journaled."""


@dataclass(frozen=True)
class Consultation:
    id: str
    site: str
    specialty: str
    priority: Priority
    patient_ref: str
    reason: str
    created_at: float
    requested_by: str
    """Subject of the nurse who checked the patient in."""
    state: State = State.REQUESTED
    ins: str | None = None
    language: str | None = None
    consent_teleconsultation: bool = True
    consent_recording: bool = False
    physician: str | None = None
    """The physician who accepted."""
    offered_to: str | None = None
    offer_expires_at: float | None = None
    offer_seq: int = 0
    """Counts offers, so that a late timeout never withdraws a newer offer."""
    tried: tuple[str, ...] = ()
    room: str | None = None
    updated_at: float = 0.0
    ended_at: float | None = None
    end_reason: str | None = None
    recording: dict[str, Any] | None = None
    """``{active, started_by, started_at, stopped_at, stop_reason, error}`` once a recording started
    (kept from the ``recording.*`` events, see ``Consultations.note_recording``); None before."""
    site_name: str = ""
    """Names as the directory (the nurse: her token) gave them when the step happened, so that whoever
    decides sees people and places, and the records keep who it was."""
    nurse_name: str = ""
    physician_name: str | None = None
    offered_to_name: str | None = None
    started_at: float | None = None
    """When it became active (None before): recent consultations' lengths make the wait estimates."""
    accepted_at: float | None = None
    """When the physician accepted (None before): the journal says it if the accept's own act was lost."""
    accepted_on: str | None = None
    """The signalling process that accepted and places the room, then starts the consultation: if it
    dies in between, another one takes over (:func:`take_over`). Not on the wire."""
    flag: str | None = None
    """Why the admins should look at this request (None: no reason): ``site_rate``, an emergency above
    its site's rate of visit requests (still an emergency, queued after the other sites' ones)."""
    invitations: tuple[Invitation, ...] = ()
    """Third parties invited in (``signalling.invitation``); kept in the document, so that each step
    is one compare-and-set with the rest and the links die with the consultation."""

    addenda: tuple[dict[str, Any], ...] = ()
    """Addenda to the report, each ``{author, role, name, text, at}`` (``Reports.add_addendum``): clinical,
    never in :meth:`view`."""

    def invitation(self, inv_id: str) -> Invitation | None:
        return next((i for i in self.invitations if i.id == inv_id), None)

    def guest(self, identity: str) -> Invitation | None:
        """The admitted guest seated as ``identity`` in the room."""
        return next((i for i in self.invitations if i.identity == identity and i.state is InvitationState.ADMITTED),
                    None)

    def with_invitation(self, inv: Invitation, now: float) -> "Consultation":
        """``inv`` added, or put in place of the invitation with its id."""
        kept = tuple(inv if i.id == inv.id else i for i in self.invitations)
        if all(i.id != inv.id for i in self.invitations):
            kept += (inv,)
        return dataclasses.replace(self, invitations=kept, updated_at=now)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["priority"] = self.priority.value
        out["state"] = self.state.value
        out["tried"] = list(self.tried)
        out["invitations"] = [i.to_dict() for i in self.invitations]
        out["addenda"] = [dict(a) for a in self.addenda]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Consultation":
        values = dict(data)
        values["priority"] = Priority(values["priority"])
        values["state"] = State(values["state"])
        values["tried"] = tuple(values.get("tried") or ())
        values["addenda"] = tuple(dict(a) for a in values.get("addenda") or ())
        values["invitations"] = tuple(Invitation.from_dict(i) for i in values.get("invitations") or ())
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def view(self, clinical: bool) -> dict[str, Any]:
        """The wire form; ``clinical`` adds patient_ref, ins and reason."""
        out = self.to_dict()
        del out["tried"], out["offer_seq"], out["requested_by"], out["invitations"], out["addenda"]
        del out["accepted_at"], out["accepted_on"]
        out["recording"] = recording_view(self.recording)
        if not clinical:
            for name in CLINICAL_FIELDS:
                del out[name]
        return out

    def parties(self) -> set[str]:
        """Index keys of who is involved: ``site:<id>`` and ``user:<physician>``."""
        out = {f"site:{self.site}"}
        for physician in (self.physician, self.offered_to):
            if physician:
                out.add(f"user:{physician}")
        return out


def recording_view(state: dict[str, Any] | None) -> dict[str, Any]:
    """The wire form of a consultation's recording: ``{active, started_by, started_at, ...}``."""
    if not state:
        return {"active": False, "started_by": None, "started_at": None}
    return dict(state)


def recording_state(current: dict[str, Any] | None, event: dict[str, Any]) -> dict[str, Any] | None:
    """The recording state after one ``recording.*`` event (None: the event changes nothing)."""
    kind = event.get("type")
    if kind == "recording.started":
        return {"active": True, "started_by": event.get("by"), "started_at": event.get("at"),
                "encrypted": bool(event.get("encrypted"))}
    base = dict(current or {"active": False, "started_by": None, "started_at": None})
    if kind == "recording.stopped":
        base.update(active=False, stopped_at=event.get("at"), stop_reason=event.get("stop_reason"))
        return base
    if kind == "recording.failed":
        base.update(active=False, stopped_at=event.get("at"), error=event.get("error"))
        return base
    return None


def transition(c: Consultation, target: State, now: float, **changes: Any) -> Consultation:
    """``c`` in state ``target`` with ``changes``; raises InvalidTransition."""
    if target not in TRANSITIONS[c.state]:
        raise InvalidTransition(c.state, target)
    if target.final:
        changes.setdefault("ended_at", now)
    if target is not State.OFFERED and c.state is State.OFFERED:
        changes.setdefault("offered_to", None)
        changes.setdefault("offered_to_name", None)
        changes.setdefault("offer_expires_at", None)
    return dataclasses.replace(c, state=target, updated_at=now, **changes)


# -- what a step implies ------------------------------------------------------------------
class QueueMove(str, enum.Enum):
    KEEP = "keep"
    ENTER = "enter"
    """(Back) in the waiting queue, with the new value's entry."""
    LEAVE = "leave"


@dataclass(frozen=True)
class QueueChange:
    """What the store changes in the same compare-and-set as the state: the waiting queue
    and the offer's bookkeeping (the physician's lock and the offer deadline)."""

    queue: QueueMove = QueueMove.KEEP
    lock_for: str | None = None
    """Claim: this physician must be available and unlocked, and is locked (an offer)."""
    release_lock_of: str | None = None
    clear_offer: bool = False
    """Drop the offer deadline (nothing rings any more)."""


@dataclass(frozen=True)
class JournalAct:
    """An act for the audit journal, about this consultation."""

    act: Act
    actor: str
    fields: Mapping[str, JournalValue] = field(default_factory=dict)


@dataclass(frozen=True)
class Notify:
    """An event to the sockets of ``targets``, on every process."""

    targets: tuple[Target, ...]
    event: p.Wire


@dataclass(frozen=True)
class Kick:
    """Matching has something new: physicians became free, requests entered the queue."""

    physicians: tuple[str, ...] = ()
    requests: tuple[str, ...] = ()


@dataclass(frozen=True)
class Archive:
    """The new value goes to the records (what outlives the store)."""


@dataclass(frozen=True)
class Forget:
    """A final consultation leaves the store; every process forgets its timers."""


@dataclass(frozen=True)
class ReleaseOfferLock:
    physician: str


@dataclass(frozen=True)
class Busy:
    """The accepting physician's session turns busy (its presence says so)."""

    session_id: str


@dataclass(frozen=True)
class VisitNotice:
    """The site's nurses hear what happens to their waiting request (``visit.status``): it rings
    ``physician``, or came back from them, and whether another physician is looked for."""

    consultation: Consultation
    status: p.VisitStatus
    physician: str | None
    physician_name: str | None


@dataclass(frozen=True)
class FreePhysician:
    """A live consultation is over: its physician, busy on a live socket, turns available."""

    physician: str


@dataclass(frozen=True)
class CloseRoom:
    """A live consultation is over: its media sessions are forgotten and its room closed."""

    consultation_id: str
    room: str | None


@dataclass(frozen=True)
class GrantSeats:
    """Each seat (nurses, agent, physician) gets ``consultation.started`` with its room grant."""

    consultation: Consultation
    sfu_url: str | None
    """The room's media node (None: no SFU)."""


Effect = (JournalAct | Notify | Kick | Archive | Forget | ReleaseOfferLock | Busy | FreePhysician | CloseRoom
          | GrantSeats | VisitNotice)


@dataclass(frozen=True)
class Transition:
    """One step: ``old`` (None: created) becomes ``new``, with its store change and effects."""

    old: Consultation | None
    new: Consultation
    store: QueueChange = QueueChange()
    effects: tuple[Effect, ...] = ()


FINISH_ACTS: dict[State, Act] = {
    State.CANCELLED: Act.CONSULTATION_CANCEL,
    State.EXPIRED: Act.CONSULTATION_EXPIRE,
    State.ENDED: Act.CONSULTATION_END,
    State.FAILED: Act.CONSULTATION_FAIL,
}
WITHDRAW_ACTS: dict[WithdrawReason, Act] = {
    WithdrawReason.TIMEOUT: Act.OFFER_TIMEOUT,
    WithdrawReason.DECLINED: Act.OFFER_DECLINE,
    WithdrawReason.VANISHED: Act.OFFER_VANISHED,
}
WITHDRAW_NOTICES: dict[WithdrawReason, p.VisitStatus] = {
    WithdrawReason.TIMEOUT: p.VisitStatus.NOT_ANSWERED,
    WithdrawReason.DECLINED: p.VisitStatus.DECLINED,
    WithdrawReason.VANISHED: p.VisitStatus.PHYSICIAN_LEFT,
}
NOT_AGAIN = frozenset({WithdrawReason.DECLINED, WithdrawReason.TIMEOUT})
"""A physician who declined or let an offer time out is not rung again for it (they may still pick it
from the queue); one whose socket dropped is, once back (a reload is no answer)."""
MATCHER = "matcher"
"""The actor of what the matcher does (offers, timeouts, vanished physicians)."""
RECOVERY = "recovery"
"""The actor of what recovery does after a crash (``signalling.recovery``)."""
PROCESS_CRASHED = "process_crashed"
"""The end reason of a consultation a crash left open, closed by recovery at startup."""


def check_in(c: Consultation, requests_in_window: int = 0) -> Transition:
    """A nurse checked a patient in: ``c`` (requested) enters the queue. Then :func:`queued`.
    Its journal acts are written before the store changes (``Consultations.check_in``): a request
    is never in the queue without them. ``requests_in_window``: the site's count, for a flag."""
    flag: tuple[Effect, ...] = (JournalAct(Act.VISIT_FLAG, c.requested_by, {
        "site": c.site, "priority": c.priority.value, "flag": c.flag, "requests_in_window": requests_in_window}),
    ) if c.flag else ()
    return Transition(None, c, QueueChange(QueueMove.ENTER), (
        JournalAct(Act.VISIT_CHECKIN, c.requested_by,
                   {"site": c.site, "specialty": c.specialty, "priority": c.priority.value}),
        JournalAct(Act.CONSENT, c.requested_by, {"teleconsultation": True, "recording": c.consent_recording}),
        *flag,
        Archive(),
    ))


def queued(c: Consultation, requests_in_window: int = 0) -> tuple[Effect, ...]:
    """After a check-in, once the nurse's reply knows the request's place in the queue; a flagged
    request goes to the admins too."""
    flag: tuple[Effect, ...] = (Notify((admins(),), p.VisitFlagged(
        consultation_id=c.id, site=c.site, priority=c.priority.value, flag=c.flag,
        requests_in_window=requests_in_window)),) if c.flag else ()
    return (Notify((nurses(c.site),), p.ConsultationUpdated(consultation=c.view(True))),
            *flag,
            Kick(requests=(c.id,)), VisitNotice(c, p.VisitStatus.WAITING, None, None))


def offer(c: Consultation, physician: str, now: float, timeout_s: float, name: str = "",
          ring: bool = True) -> Transition:
    """``c`` rings ``physician`` (``name``: theirs in the directory). Not ``ring``: the physician took it
    from the queue (``queue.pick``) and accepts it at once, so nothing rings."""
    new = transition(c, State.OFFERED, now, offered_to=physician, offered_to_name=name or physician,
                     offer_expires_at=now + timeout_s, offer_seq=c.offer_seq + 1)
    rings: tuple[Effect, ...] = (
        Notify((user(physician),), p.OfferReceived(consultation=new.view(True), expires_at=now + timeout_s,
                                                   timeout_s=timeout_s)),
    ) if ring else ()
    return Transition(c, new, QueueChange(QueueMove.LEAVE, lock_for=physician), (
        JournalAct(Act.OFFER, MATCHER if ring else physician, {"physician": physician, "offer_seq": new.offer_seq}),
        *rings,
        Notify((nurses(c.site),), p.ConsultationUpdated(consultation=new.view(True))),
        *((VisitNotice(new, p.VisitStatus.OFFERED, physician, new.offered_to_name),) if ring else ()),
    ))


def withdraw(c: Consultation, why: WithdrawReason, actor: str, now: float) -> Transition:
    """The offer of ``c`` stops ringing its physician (``actor``: who declined): back to the queue,
    that physician remembered in ``tried``."""
    physician, name = c.offered_to, c.offered_to_name
    if physician is None:
        raise InvalidTransition(c.state, State.REQUESTED)
    tried = c.tried + (physician,) if why in NOT_AGAIN and physician not in c.tried else c.tried
    new = transition(c, State.REQUESTED, now, tried=tried)
    notice = WITHDRAW_NOTICES.get(why)
    return Transition(c, new, QueueChange(QueueMove.ENTER, release_lock_of=physician, clear_offer=True), (
        JournalAct(WITHDRAW_ACTS.get(why, Act.OFFER_WITHDRAW), actor if why is WithdrawReason.DECLINED else MATCHER,
                   {"physician": physician, "offer_seq": c.offer_seq}),
        Notify((user(physician),), p.OfferWithdrawn(consultation_id=c.id, reason=why.value)),
        Notify((nurses(c.site),), p.ConsultationUpdated(consultation=new.view(True))),
        *((VisitNotice(new, notice, physician, name),) if notice else ()),
        Kick(physicians=(physician,), requests=(c.id,)),
    ))


def accept(c: Consultation, physician: str, session_id: str, now: float, name: str = "",
           process: str | None = None) -> Transition:
    """The physician rung accepts; the room is named after the consultation. Their offer lock
    is kept until their presence says in consultation, so that no other offer sneaks in.
    ``process``: the signalling process that goes on to place the room and start it."""
    new = transition(c, State.ACCEPTED, now, physician=physician, room=c.id,
                     physician_name=name or c.offered_to_name or physician, accepted_at=now, accepted_on=process)
    return Transition(c, new, QueueChange(clear_offer=True), (
        Busy(session_id),
        ReleaseOfferLock(physician),
        JournalAct(Act.OFFER_ACCEPT, physician, {"physician": physician}),
    ))


def take_over(c: Consultation, process: str, now: float, accept_journaled: bool) -> Transition:
    """``c`` was accepted on a signalling process that died before it started the consultation
    (``c.accepted_on``, known dead): ``process`` takes the rest over, placing the room then
    :func:`start`. Still accepted; the compare-and-set on the version lets one process only
    take it over. The dead process may have died before it unlocked the physician, or before
    it journaled the accept (``accept_journaled``: the journal has it): the act is written
    then, from the document (who and when), marked recovered."""
    if c.state is not State.ACCEPTED or c.physician is None:
        raise InvalidTransition(c.state, State.ACTIVE)
    new = dataclasses.replace(c, accepted_on=process, updated_at=now)
    journal: tuple[Effect, ...] = () if accept_journaled else (JournalAct(Act.OFFER_ACCEPT, c.physician, {
        "physician": c.physician, "accepted_at": c.accepted_at, "recovered_by": RECOVERY,
        "process": c.accepted_on}),)
    return Transition(c, new, QueueChange(), (ReleaseOfferLock(c.physician), *journal))


def start(c: Consultation, actor: str, sfu_url: str | None, now: float) -> Transition:
    """The room exists (on the node at ``sfu_url``; None: no SFU): the consultation is active."""
    new = transition(c, State.ACTIVE, now, started_at=now)
    return Transition(c, new, QueueChange(), (
        Archive(),
        JournalAct(Act.CONSULTATION_START, actor, {"room": new.room or new.id, "site": c.site}),
        GrantSeats(new, sfu_url),
    ))


def recover(c: Consultation, now: float) -> Transition:
    """At startup, ``c`` is open in the records but its process died with the store that held it
    (the memory store): nothing can resume it (no session, room or offer survived), so it closes:
    waiting -> expired, accepted or active -> ended, for ``process_crashed``. It is in no store,
    so nothing changes there and nobody is connected to be told: the journal says what recovery
    found and did, the records keep the end."""
    target = State.EXPIRED if c.state in WAITING else State.ENDED
    new = transition(c, target, now, end_reason=PROCESS_CRASHED)
    return Transition(c, new, QueueChange(), (
        JournalAct(Act.CONSULTATION_RECOVER, RECOVERY, {"previous_state": c.state.value, "outcome": target.value,
                                                        "why": PROCESS_CRASHED}),
        JournalAct(FINISH_ACTS[target], RECOVERY, {"end_reason": PROCESS_CRASHED, "previous_state": c.state.value}),
        Archive(),
    ))


def finish(c: Consultation, target: State, actor: str, reason: str, now: float) -> Transition:
    """``c`` becomes final (cancelled, expired, ended, failed) for ``reason``."""
    new = transition(c, target, now, end_reason=reason)
    store = QueueChange()
    if c.state is State.REQUESTED:
        store = QueueChange(QueueMove.LEAVE)
    if c.state is State.OFFERED:
        store = QueueChange(QueueMove.LEAVE, release_lock_of=c.offered_to, clear_offer=True)
    effects: list[Effect] = []
    if c.state in LIVE:
        if new.physician:
            effects.append(FreePhysician(new.physician))  # first: the next offer need not wait for records
        effects.append(CloseRoom(new.id, new.room))
    effects += [Archive(), Forget(), JournalAct(FINISH_ACTS[target], actor,
                                                {"end_reason": reason, "previous_state": c.state.value})]
    if c.state is State.OFFERED and c.offered_to:
        why = WithdrawReason.CANCELLED if target is State.CANCELLED else WithdrawReason.EXPIRED
        effects.append(Notify((user(c.offered_to),), p.OfferWithdrawn(consultation_id=c.id, reason=why.value)))
    effects.append(Notify((nurses(c.site),), p.ConsultationEnded(consultation=new.view(True))))
    if c.physician:
        effects.append(Notify((user(c.physician),), p.ConsultationEnded(consultation=new.view(True))))
    if c.state in LIVE:
        effects.append(Notify((agents(c.site),), p.ConsultationEnded(consultation=new.view(False))))
        for guest in c.invitations:
            if guest.state not in INVITATION_FINAL:
                effects.append(Notify((user(guest.id),), p.ConsultationEnded(
                    consultation=new.view(guest.role is Role.SPECIALIST))))
    effects.append(Kick(physicians=tuple(ph for ph in (c.offered_to, c.physician) if ph)))
    return Transition(c, new, store, tuple(effects))


__all__ = ["State", "TRANSITIONS", "FINAL", "WAITING", "LIVE", "InvalidTransition", "Consultation",
           "transition", "CLINICAL_FIELDS", "recording_view", "recording_state",
           "QueueMove", "QueueChange", "JournalAct", "Notify", "Kick", "Archive", "Forget", "ReleaseOfferLock",
           "Busy", "FreePhysician", "CloseRoom", "GrantSeats", "VisitNotice", "Effect", "Transition", "FINISH_ACTS",
           "WITHDRAW_ACTS", "RECOVERY", "PROCESS_CRASHED", "recover", "WITHDRAW_NOTICES", "NOT_AGAIN", "MATCHER",
           "check_in", "queued", "offer", "withdraw", "accept", "take_over", "start", "finish"]
