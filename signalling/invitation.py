"""An invitation: a third party (interpreter, specialist, guest) let into one consultation, sans I/O.

Rules (issue 14):

* The consultation's physician creates it with a role, a label and a validity; the link
  carries a single-use secret (only its hash is kept), never a room token.
* ``claim`` consumes it (on the guest page's POST, not on opening the link: mail scanners
  open links): ``pending -> waiting``. A claim of one that was claimed, revoked or is past
  its validity is *gone* (:class:`Gone`: 410), a forged one unknown (401).
* Admission takes two people: the physician admits (``admitted``) and the nurse confirms
  that the patient's consent covers this person (``consent``); whichever comes second
  makes it ``admitted``, and only then does the guest get a room token. The nurse may
  confirm consent before the guest arrives.
* The physician or the nurse refuses a waiting guest; the physician revokes a link not yet
  admitted, and removes an admitted guest (its media ends at once, its tokens die).
* ``refused``, ``revoked`` and ``removed`` are final: a guest's token is then good for
  nothing, and it never opens another consultation.

:func:`step` is the only way to change one; anything not in :data:`STEPS` raises
:class:`InvitationError`. ``present`` (its media is in the room) is bookkeeping, not a state.

  step      from                     to
  --------  -----------------------  --------------------------------------------------
  claim     pending (in validity)    waiting (name kept)
  admit     waiting                  waiting, admitted; admitted once consent is there
  consent   pending, waiting         the same, consent; admitted once admitted is there
  refuse    waiting                  refused
  revoke    pending, waiting         revoked
  remove    admitted                 removed
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from core.vocabulary import GUEST_ROLES, Role

MIN_TTL_S = 60
MAX_TTL_S = 86400
MAX_LABEL_CHARS = 120
MAX_NAME_CHARS = 80
MAX_PER_CONSULTATION = 8
"""Invitations one consultation may hold (a room takes a bounded number of sessions)."""


class InvitationState(enum.StrEnum):
    PENDING = "pending"
    WAITING = "waiting"
    ADMITTED = "admitted"
    REFUSED = "refused"
    REVOKED = "revoked"
    REMOVED = "removed"


class Gone(enum.StrEnum):
    """Why a link no longer works (the ``reason`` of a 410 ``invitation_gone``)."""

    EXPIRED = "expired"
    REVOKED = "revoked"
    USED = "used"


class Step(enum.StrEnum):
    CLAIM = "claim"
    ADMIT = "admit"
    CONSENT = "consent"
    REFUSE = "refuse"
    REVOKE = "revoke"
    REMOVE = "remove"


S = InvitationState
STEPS: dict[Step, frozenset[InvitationState]] = {
    Step.CLAIM: frozenset({S.PENDING}),
    Step.ADMIT: frozenset({S.WAITING}),
    Step.CONSENT: frozenset({S.PENDING, S.WAITING}),
    Step.REFUSE: frozenset({S.WAITING}),
    Step.REVOKE: frozenset({S.PENDING, S.WAITING}),
    Step.REMOVE: frozenset({S.ADMITTED}),
}
"""The states each step may start from."""
FINAL = frozenset({S.REFUSED, S.REVOKED, S.REMOVED})


class InvitationError(Exception):
    """A step refused; ``gone`` says why a link no longer works (a claim), else it is a conflict."""

    def __init__(self, reason: str, gone: Gone | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.gone = gone


def new_secret() -> str:
    return secrets.token_urlsafe(24)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class Invitation:
    id: str
    role: Role
    label: str
    created_by: str
    created_at: float
    expires_at: float
    secret_hash: str
    """SHA-256 of the link's secret: the secret itself is only in the link."""
    state: InvitationState = InvitationState.PENDING
    name: str = ""
    admitted: bool = False
    consent: bool = False
    consent_by: str | None = None
    emailed: bool = False
    present: bool = False
    updated_at: float = 0.0
    clinician: str | None = None
    """A specialist picked from the directory (its id): the accountable author of what it writes,
    named as the directory names it, whatever is typed at the claim."""

    @property
    def identity(self) -> str:
        """The guest's identity in the room (an msid token)."""
        return f"{self.role.value}-{self.id.removeprefix('iv-')[:8]}"

    def matches(self, secret: str) -> bool:
        return hmac.compare_digest(self.secret_hash, digest(secret))

    def shown_state(self, now: float) -> str:
        if self.state is S.PENDING and now >= self.expires_at:
            return "expired"
        return self.state.value

    def view(self, consultation_id: str, now: float) -> dict[str, Any]:
        """The wire form (never the secret's hash)."""
        return {"id": self.id, "consultation_id": consultation_id, "role": self.role.value, "label": self.label,
                "state": self.shown_state(now), "name": self.name, "identity": self.identity,
                "admitted": self.admitted, "consent": self.consent, "emailed": self.emailed,
                "present": self.present, "created_at": self.created_at, "expires_at": self.expires_at,
                "clinician": self.clinician}

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["role"], out["state"] = self.role.value, self.state.value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Invitation":
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["role"], values["state"] = Role(values["role"]), InvitationState(values["state"])
        return cls(**values)


def create(inv_id: str, role: Role, label: str, ttl_s: int, created_by: str, secret: str,
           now: float) -> Invitation:
    """A new invitation; ``ValueError`` naming what is wrong."""
    if role not in GUEST_ROLES:
        raise ValueError(f"role must be one of: {', '.join(sorted(r.value for r in GUEST_ROLES))}")
    if not MIN_TTL_S <= ttl_s <= MAX_TTL_S:
        raise ValueError(f"ttl_s must be {MIN_TTL_S}-{MAX_TTL_S}")
    label = label.strip()
    if len(label) > MAX_LABEL_CHARS or not label.isprintable():
        raise ValueError(f"label must be at most {MAX_LABEL_CHARS} printable characters")
    return Invitation(inv_id, role, label, created_by, now, now + ttl_s, digest(secret), updated_at=now)


def gone(inv: Invitation, now: float) -> Gone | None:
    """Why the link of ``inv`` no longer works for a claim (None: it does)."""
    if inv.state is S.REVOKED:
        return Gone.REVOKED
    if inv.state is not S.PENDING:
        return Gone.USED
    if now >= inv.expires_at:
        return Gone.EXPIRED
    return None


def step(inv: Invitation, what: Step, now: float, *, name: str = "", by: str = "") -> Invitation:
    """``inv`` after ``what``; raises :class:`InvitationError`."""
    if what is Step.CLAIM:
        why = gone(inv, now)
        if why is not None:
            raise InvitationError(f"this invitation is {why.value}", gone=why)
    if inv.state not in STEPS[what]:
        raise InvitationError(f"{what.value}: not possible for a {inv.shown_state(now)} invitation")
    changes: dict[str, Any] = {"updated_at": now}
    if what is Step.CLAIM:
        changes.update(state=S.WAITING, name=name)
    elif what is Step.ADMIT:
        changes.update(admitted=True, state=S.ADMITTED if inv.consent else inv.state)
    elif what is Step.CONSENT:
        changes.update(consent=True, consent_by=by,
                       state=S.ADMITTED if inv.admitted and inv.state is S.WAITING else inv.state)
    elif what is Step.REFUSE:
        changes.update(state=S.REFUSED)
    elif what is Step.REVOKE:
        changes.update(state=S.REVOKED)
    elif what is Step.REMOVE:
        changes.update(state=S.REMOVED, present=False)
    return dataclasses.replace(inv, **changes)


def clean_name(name: Any) -> str:
    """A guest's name as typed; ``ValueError`` when it is empty, too long or not printable."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("name is required")
    name = " ".join(name.split())
    if len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise ValueError(f"name must be at most {MAX_NAME_CHARS} printable characters")
    return name
