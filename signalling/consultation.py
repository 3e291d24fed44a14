"""The consultation: a paired session and its lifecycle, as an explicit state machine.

Rules:

* A consultation is created ``requested`` when a nurse checks a patient in.
* ``requested -> offered`` when the matcher rings a physician; ``offered ->
  requested`` on decline, timeout or a vanished physician (that physician is
  remembered in ``tried`` and not rung again for this request).
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
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any

from signalling.protocol import Priority


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
    (kept from the ``recording.*`` events, see ``SignallingService.note_recording``); None before."""

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["priority"] = self.priority.value
        out["state"] = self.state.value
        out["tried"] = list(self.tried)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Consultation":
        values = dict(data)
        values["priority"] = Priority(values["priority"])
        values["state"] = State(values["state"])
        values["tried"] = tuple(values.get("tried") or ())
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def view(self, clinical: bool) -> dict[str, Any]:
        """The wire form; ``clinical`` adds patient_ref, ins and reason."""
        out = self.to_dict()
        del out["tried"], out["offer_seq"], out["requested_by"]
        out["recording"] = recording_view(self.recording)
        if not clinical:
            for name in CLINICAL_FIELDS:
                del out[name]
        return out

    def parties(self) -> set[str]:
        """Index keys of who is involved: ``site:<id>`` and ``user:<physician>``."""
        out = {f"site:{self.site}"}
        for user in (self.physician, self.offered_to):
            if user:
                out.add(f"user:{user}")
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
        changes.setdefault("offer_expires_at", None)
    return dataclasses.replace(c, state=target, updated_at=now, **changes)


__all__ = ["State", "TRANSITIONS", "FINAL", "WAITING", "LIVE", "InvalidTransition", "Consultation",
           "transition", "CLINICAL_FIELDS", "recording_view", "recording_state"]
