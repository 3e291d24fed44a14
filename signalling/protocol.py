"""The signalling WebSocket protocol, sans I/O: message classes, parsing, validation.

Rules (docs/protocol.md is generated from this module, see :func:`render_reference`):

* Every frame is one JSON object with a ``type``.
* A client *request* carries an ``id`` (string or integer, chosen by the client);
  the server answers it exactly once, either with ``<type>.ok`` and the same
  ``id``, or with the one error shape ``{"type": "error", "id", "code",
  "message"}``.
* Server *events* carry no ``id``.
* The first request must be ``hello`` with an access token; nothing else is
  processed before the token is verified.
* Unknown fields are refused (``bad_message``), so that a typo never silently
  does nothing.

Each request is a frozen dataclass registered with :func:`request`; each reply
and event a frozen dataclass registered with :func:`reply` / :func:`event`.
Field documentation lives in ``field(metadata={"doc": ...})``.
"""

from __future__ import annotations

import builtins
import dataclasses
import enum
import inspect
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal, TypeGuard, TypeVar, Union

from core import json_limits
from core.vocabulary import Role

PROTOCOL_VERSION = 1

MessageId = Union[str, int]


class ErrorCode(str, enum.Enum):
    """Codes of the ``error`` message (stable: clients switch on them)."""

    BAD_JSON = "bad_json"
    """The frame is not a JSON object."""
    BAD_MESSAGE = "bad_message"
    """A field is missing, unknown, or has the wrong type or value."""
    UNKNOWN_TYPE = "unknown_type"
    """No such request type."""
    UNSUPPORTED_VERSION = "unsupported_version"
    """``hello.version`` is not one this server speaks."""
    UNAUTHENTICATED = "unauthenticated"
    """A request came before a successful ``hello``."""
    AUTH_FAILED = "auth_failed"
    """The token was refused (expired, wrong audience, bad signature...)."""
    FORBIDDEN = "forbidden"
    """The role or site of the caller may not do this."""
    NOT_FOUND = "not_found"
    """No such consultation (or not one the caller may see)."""
    CONFLICT = "conflict"
    """The consultation is not in a state that allows this (e.g. offer already taken)."""
    RATE_LIMITED = "rate_limited"
    """Too many messages per second on this connection (the message was dropped), or a site's visit requests above its rate (not emergencies: those are flagged)."""
    TOO_LARGE = "too_large"
    """A field is longer than allowed."""
    UNAVAILABLE = "unavailable"
    """The server is draining, or a dependency (SFU, store) failed; retry elsewhere or later."""
    WRONG_NODE = "wrong_node"
    """The consultation's room is on another media node: use its ``sfu_url`` (WHIP/WHEP, or ``media.offer``
    on a socket to that URL)."""
    TOKEN_EXPIRED = "token_expired"
    """The access token expired without ``auth.refresh``; the server closes the connection."""
    SLOW_CONSUMER = "slow_consumer"
    """The client read too slowly; the server closes the connection (resume is possible)."""
    INTERNAL = "internal"
    """A server bug; the connection goes on."""


class ProtocolError(Exception):
    """A request refused; becomes one ``error`` message."""

    def __init__(self, code: ErrorCode, message: str, id: MessageId | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.id = id

    def to_wire(self) -> dict[str, Any]:
        return error_message(self.code, self.message, self.id)


def error_message(code: ErrorCode, message: str, id: MessageId | None = None) -> dict[str, Any]:
    return {"type": "error", "id": id, "code": code.value, "message": message}


# -- enums used in messages --------------------------------------------------
class Priority(str, enum.Enum):
    ROUTINE = "routine"
    URGENT = "urgent"
    EMERGENCY = "emergency"

    @property
    def rank(self) -> int:
        """Higher goes first."""
        return _PRIORITY_RANK[self]


_PRIORITY_RANK = {Priority.ROUTINE: 0, Priority.URGENT: 1, Priority.EMERGENCY: 2}


class PresenceStatus(str, enum.Enum):
    AVAILABLE = "available"
    BUSY = "busy"
    AWAY = "away"
    IN_CONSULTATION = "in_consultation"
    """Set by the server from ``offer.accept`` (or ``queue.pick``) to the consultation's end."""
    OFFLINE = "offline"
    """Set by the server: the physician left (no socket back within the resume grace)."""

    @property
    def chosen(self) -> bool:
        """A value a physician may set with ``presence.set`` (the others are the server's)."""
        return self in CHOSEN_PRESENCE


CHOSEN_PRESENCE = frozenset({PresenceStatus.AVAILABLE, PresenceStatus.BUSY, PresenceStatus.AWAY})


class PresenceFeed(str, enum.Enum):
    """Whose ``presence.changed`` a connection gets (``hello.presence``)."""

    ALL = "all"
    """Every physician's (nurses and admins by default; a physician who asks)."""
    OWN = "own"
    """A physician's own only; nothing for the other roles (physicians, agents and guests by default)."""


class VisitStatus(str, enum.Enum):
    """What ``visit.status`` tells a site's nurses about their waiting request."""

    OFFERED = "offered"
    """It rings a physician."""
    DECLINED = "declined"
    """The physician declined; it is back in the queue."""
    NOT_ANSWERED = "not_answered"
    """The offer timed out; it is back in the queue."""
    PHYSICIAN_LEFT = "physician_left"
    """The physician rung lost their connection; it is back in the queue."""
    WAITING = "waiting"
    """In the queue, ringing nobody."""


class PeerState(str, enum.Enum):
    DROPPED = "dropped"
    """The peer's socket died; it may come back within the resume grace."""
    RESUMED = "resumed"
    LOST = "lost"
    """The grace passed without a resume."""


class WithdrawReason(str, enum.Enum):
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    DECLINED = "declined"
    VANISHED = "vanished"


WAIT_DOC = ("Estimated wait in seconds, from the physicians of the specialty connected now and the "
            "recent consultations' lengths: 0 when a physician is free for it; null when it cannot be "
            "estimated (no physician connected and taking patients, or no recent length known).")

PUBLICATIONS_DOC = ("The room's publications now: ``[{id, identity, role, source, kind, codec, published_at, "
                    "replaces}]`` (*Publication object*), those the receiver's seat may receive. The same from "
                    "any process: the room's node answers from its SFU, the others from the state that node "
                    "keeps in the store.")

# -- registry ----------------------------------------------------------------
ALL_ROLES: tuple[str, ...] = tuple(r.value for r in Role)
ACCOUNT_ROLES: tuple[str, ...] = tuple(r.value for r in Role if not r.invited)
"""Everyone but guests (an invitation's interpreter, specialist or guest: issue 14)."""
GUESTS: tuple[str, ...] = tuple(r.value for r in Role if r.invited)


@dataclass(frozen=True)
class Spec:
    """One message type: its name, class, and who may send it."""

    type: str
    cls: builtins.type[Any]
    kind: Literal["request", "reply", "event"]
    roles: tuple[str, ...] = ALL_ROLES


REQUESTS: dict[str, Spec] = {}
REPLIES: dict[str, Spec] = {}
EVENTS: dict[str, Spec] = {}
_REQUEST_CLASSES: dict[type, Spec] = {}

T = TypeVar("T")


def request(type_: str, roles: tuple[str, ...] = ALL_ROLES) -> Callable[[type[T]], type[T]]:
    def wrap(cls: type[T]) -> type[T]:
        cls.TYPE = type_  # type: ignore[attr-defined]
        REQUESTS[type_] = _REQUEST_CLASSES[cls] = Spec(type_, cls, "request", roles)
        return cls
    return wrap


def spec_of(message: object) -> Spec:
    """The spec of a parsed request (its type name, who may send it)."""
    return _REQUEST_CLASSES[type(message)]


def reply(type_: str) -> Callable[[type[T]], type[T]]:
    def wrap(cls: type[T]) -> type[T]:
        cls.TYPE = type_ + ".ok"  # type: ignore[attr-defined]
        REPLIES[type_] = Spec(type_ + ".ok", cls, "reply")
        return cls
    return wrap


def event(type_: str) -> Callable[[type[T]], type[T]]:
    def wrap(cls: type[T]) -> type[T]:
        cls.TYPE = type_  # type: ignore[attr-defined]
        EVENTS[type_] = Spec(type_, cls, "event")
        return cls
    return wrap


def doc(text: str, default: Any = dataclasses.MISSING, max_len: int = 0,
        default_factory: Any = dataclasses.MISSING) -> Any:
    meta = {"doc": text, "max_len": max_len}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=meta)
    if default is dataclasses.MISSING:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


class Wire:
    """Mixin: shallow conversion to a JSON-ready dict (nested dicts are passed through)."""

    TYPE: ClassVar[str]

    def to_wire(self, id: MessageId | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.TYPE}
        if id is not None:
            out["id"] = id
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, enum.Enum):
                value = value.value
            out[f.name] = value
        return out


# -- requests (client -> server) ---------------------------------------------
@request("hello")
@dataclass(frozen=True)
class Hello:
    """First message on every connection. Access tokens only (a room token is refused)."""

    version: int = doc("Protocol version; this server speaks 1.")
    token: str = doc("Access token (ours, or the configured OpenID provider's).", max_len=8192)
    resume: str | None = doc("Session id from a previous ``hello.ok`` to resume after a dropped socket.",
                             None, max_len=64)
    presence: PresenceFeed | None = doc(
        "Whose ``presence.changed`` this connection gets: ``all`` (every physician's) or ``own`` (a "
        "physician's own only; none for the other roles). Default: ``all`` for nurses and admins, ``own`` "
        "for the other roles; only nurses, physicians and admins may have ``all``. The pages ask ``own`` "
        "(none of them shows other physicians' status live; the admin console reads ``presence.list``).",
        None)


@request("ping")
@dataclass(frozen=True)
class Ping:
    """Application-level round trip (WebSocket pings are also sent by the server)."""


@request("auth.refresh")
@dataclass(frozen=True)
class AuthRefresh:
    """Replace the connection's access token before it expires (same subject, role and site)."""

    token: str = doc("The new access token.", max_len=8192)


@request("auth.renew", roles=ACCOUNT_ROLES)
@dataclass(frozen=True)
class AuthRenew:
    """Ask the server for a fresh access token (same subject, role, site, specialties) while the
    connection's token is still valid; it also becomes the connection's token (no ``auth.refresh``
    needed). Only tokens this server issued are renewed (an OpenID provider's: renew there), and
    only until ``signalling.max_session_s`` after the first token of the chain was issued: then
    ``forbidden``, sign in again."""


@request("room.publications", roles=("nurse", "physician", "agent") + GUESTS)
@dataclass(frozen=True)
class RoomPublications:
    """The publications of the consultation's room now, and who is in it (for a page that joins or reloads
    mid-call). Any process answers, the room's media node or another; subscribing still goes to the room's
    node (``media.offer`` elsewhere answers ``wrong_node``)."""

    consultation_id: str = doc("The consultation (active, with a seat of the caller).", max_len=64)


@request("presence.set", roles=("physician",))
@dataclass(frozen=True)
class PresenceSet:
    """A physician says whether offers may ring them."""

    status: PresenceStatus = doc("available, busy or away (in_consultation and offline are the server's: "
                                 "refused). During a live consultation busy or away is what the physician "
                                 "becomes when it ends (available: conflict).")


@request("presence.list", roles=("nurse", "physician", "admin"))
@dataclass(frozen=True)
class PresenceList:
    """Physicians online now, with their status."""


@request("visit.request", roles=("nurse",))
@dataclass(frozen=True)
class VisitRequest:
    """A nurse checks a patient in at the nurse's site; creates a consultation in state ``requested``."""

    patient_ref: str = doc("Opaque patient reference of the site (never logged).", max_len=128)
    reason: str = doc("Reason for the visit, free text (never logged).", max_len=2000)
    specialty: str = doc("Specialty asked for (see GET /api/directory).", max_len=64)
    priority: Priority = doc("routine, urgent or emergency.")
    consent_teleconsultation: bool = doc("The patient consented to a teleconsultation; must be true.")
    consent_recording: bool = doc("The patient consented to recording.", False)
    ins: str | None = doc("National health identifier (INS), optional.", None, max_len=64)
    ins_identity: dict[str, Any] | None = doc(
        "The patient's INS identity as the INS teleservice returned it, optional: ``{matricule, oid, "
        "birth_names, first_names, birth_date, sex, birth_place_code}`` (``signalling.patient_identity``; "
        "the matricule's key is checked). Kept sealed in the records, never logged; ``ins``, when sent "
        "too, must be its matricule.", None)
    language: str | None = doc("Language the physician must speak (e.g. ``fr``), optional.", None, max_len=16)
    request_key: str | None = doc("Idempotency key chosen by the client, optional: a retry with the same key "
                                  "(after ``unavailable``, or no answer) never makes a second request; it gets "
                                  "the first one's consultation as it is now (``conflict`` if the key was used "
                                  "for another patient, specialty or priority).", None, max_len=64)


@request("queue.pick", roles=("physician",))
@dataclass(frozen=True)
class QueuePick:
    """Take a waiting request from the queue (one of the caller's specialties; its language when one is
    asked), even one the caller declined or let time out: it is accepted at once (no ``offer.received``).
    The caller must be available with no offer ringing."""

    consultation_id: str = doc("The waiting consultation.", max_len=64)


@request("visit.cancel", roles=("nurse",))
@dataclass(frozen=True)
class VisitCancel:
    """Withdraw a waiting (requested or offered) visit request of the nurse's site."""

    consultation_id: str = doc("The consultation to cancel.", max_len=64)


@request("queue.list", roles=("physician", "admin"))
@dataclass(frozen=True)
class QueueList:
    """Waiting requests (ids, specialty, priority, site, waiting time; no patient data)."""


@request("offer.accept", roles=("physician",))
@dataclass(frozen=True)
class OfferAccept:
    """Accept the offer ringing this physician."""

    consultation_id: str = doc("The offered consultation.", max_len=64)


@request("offer.decline", roles=("physician",))
@dataclass(frozen=True)
class OfferDecline:
    """Decline the offer ringing this physician; it goes to the next one."""

    consultation_id: str = doc("The offered consultation.", max_len=64)


@request("consultation.get", roles=("nurse", "physician", "agent", "admin") + GUESTS)
@dataclass(frozen=True)
class ConsultationGet:
    """One consultation the caller is a party of (admins: any)."""

    consultation_id: str = doc("The consultation.", max_len=64)


@request("consultation.end", roles=("nurse", "physician"))
@dataclass(frozen=True)
class ConsultationEnd:
    """End an accepted or active consultation (the physician at any time, the site's nurse when active)."""

    consultation_id: str = doc("The consultation.", max_len=64)
    reason: str = doc("A short code, e.g. ``completed``, ``patient_left`` (no clinical text).",
                      "completed", max_len=32)


@request("room.token", roles=("nurse", "physician", "agent") + GUESTS)
@dataclass(frozen=True)
class RoomToken:
    """A fresh room token for the caller's seat in an active consultation."""

    consultation_id: str = doc("The consultation.", max_len=64)


@request("report.save", roles=("physician",))
@dataclass(frozen=True)
class ReportSave:
    """The consultation's physician saves (replaces) the report."""

    consultation_id: str = doc("The consultation.", max_len=64)
    report: dict[str, Any] = doc("``{reason, findings, conclusion, prescriptions: [str], follow_up, vitals, "
                                 "stills}``, every key optional (see *Report object*).")


@request("report.draft", roles=("physician",))
@dataclass(frozen=True)
class ReportDraft:
    """The consultation's physician keeps a draft of the report as they type (same body as ``report.save``,
    every key optional). Idempotent: the same draft again changes nothing. The final ``report.save``
    removes the draft."""

    consultation_id: str = doc("The consultation.", max_len=64)
    report: dict[str, Any] = doc("The draft, as ``report.save``'s ``report``.")


@request("report.get", roles=("nurse", "physician", "admin"))
@dataclass(frozen=True)
class ReportGet:
    """Read a consultation's report back."""

    consultation_id: str = doc("The consultation.", max_len=64)


@request("media.offer", roles=("nurse", "physician", "agent") + GUESTS)
@dataclass(frozen=True)
class MediaOffer:
    """Browser media through the SFU: an SDP offer for the caller's seat in the consultation's room."""

    sdp: str = doc("The SDP offer.", max_len=60000)
    consultation_id: str | None = doc("The consultation (or give room_token).", None, max_len=64)
    room_token: str | None = doc("A room token (instead of consultation_id).", None, max_len=8192)
    publish: dict[str, str] = doc("``{mid: source}`` for each sending transceiver.", default_factory=dict)
    subscribe: dict[str, str] = doc("``{mid: publication_id}`` for each receiving transceiver.",
                                    default_factory=dict)
    """A second offer on the same socket re-negotiates the same peer connection (add or stop sections)."""


@request("media.leave", roles=("nurse", "physician", "agent") + GUESTS)
@dataclass(frozen=True)
class MediaLeave:
    """Leave the consultation's room (closes the caller's peer connection on the SFU)."""

    consultation_id: str = doc("The consultation.", max_len=64)


# -- replies (server -> client, with the request's id) -----------------------
@reply("hello")
@dataclass(frozen=True)
class HelloOk(Wire):
    session: str = doc("Session id; send it as ``hello.resume`` after a dropped socket.")
    resumed: bool = doc("True when an earlier session was resumed.")
    principal: dict[str, Any] = doc("``{sub, role, site, specialties, name}`` from the token.")
    ice_servers: list[dict[str, Any]] = doc("RTCIceServer dicts: STUN, and TURN with short-lived credentials.")
    heartbeat_s: float = doc("The server pings this often; a silent connection is closed.")
    token_expires_at: float = doc("Unix time the access token expires (``auth.expiring`` comes before).")
    server_time: float = doc("Server's Unix time.")
    state: dict[str, Any] = doc("``{presence, presence_after, consultations: [consultation], "
                                "offers: [offer.received bodies], "
                                "rooms: {consultation_id: {room, room_token, grant, sfu_url, publications}}}``: "
                                "everything the client should show now.")


@reply("ping")
@dataclass(frozen=True)
class PingOk(Wire):
    server_time: float = doc("Server's Unix time.")


@reply("auth.refresh")
@dataclass(frozen=True)
class AuthRefreshOk(Wire):
    token_expires_at: float = doc("Unix time the new token expires.")


@reply("auth.renew")
@dataclass(frozen=True)
class AuthRenewOk(Wire):
    token: str = doc("The new access token; use it for REST calls and the next ``hello``.")
    token_expires_at: float = doc("Unix time it expires (never later than the session's maximum age).")
    session_expires_at: float = doc("Unix time after which no renewal is granted (sign in again).")


@reply("room.publications")
@dataclass(frozen=True)
class RoomPublicationsOk(Wire):
    consultation_id: str = doc("The consultation.")
    room: str = doc("The room.")
    publications: list[dict[str, Any]] = doc(PUBLICATIONS_DOC)
    participants: list[dict[str, Any]] = doc("Who is in the room now: ``[{session_id, identity, role}]``, one "
                                             "per media session (as ``room.event`` ``participant.joined``), in "
                                             "the order they joined; the same from any process.",
                                             default_factory=list)


@reply("presence.set")
@dataclass(frozen=True)
class PresenceSetOk(Wire):
    status: str = doc("The status now (``in_consultation`` during a live consultation).")
    after: str | None = doc("During a live consultation: the status at its end (busy or away); else null.",
                            None)


@reply("presence.list")
@dataclass(frozen=True)
class PresenceListOk(Wire):
    physicians: list[dict[str, Any]] = doc("``[{physician, name, status, specialties, languages, connected}]`` "
                                           "(``connected``: false while the physician's socket is away within "
                                           "the resume grace).")


@reply("visit.request")
@dataclass(frozen=True)
class VisitRequestOk(Wire):
    consultation: dict[str, Any] = doc("The new consultation (see *Consultation object*).")
    position: int = doc("1-based place in the queue of its specialty.")
    estimated_wait_s: float | None = doc(WAIT_DOC)


@reply("visit.cancel")
@dataclass(frozen=True)
class VisitCancelOk(Wire):
    consultation: dict[str, Any] = doc("The consultation, now ``cancelled``.")


@reply("queue.list")
@dataclass(frozen=True)
class QueueListOk(Wire):
    waiting: list[dict[str, Any]] = doc("``[{consultation_id, site, site_name, specialty, priority, language, "
                                        "waiting_s, state, declined_by_me, flagged}]`` in matching order "
                                        "(``declined_by_me``: the caller declined it or let it time out; "
                                        "``queue.pick`` still takes it; ``flagged``: an emergency above its "
                                        "site's rate, see ``visit.flagged``).")


@reply("queue.pick")
@dataclass(frozen=True)
class QueuePickOk(Wire):
    consultation: dict[str, Any] = doc("The consultation, now ``active``.")
    room: str = doc("The SFU room.")
    room_token: str = doc("The physician's room token.")
    grant: dict[str, Any] = doc("Its grant.")
    sfu_url: str | None = doc("Base URL of the media node hosting the room (null: no SFU).", None)


@reply("offer.accept")
@dataclass(frozen=True)
class OfferAcceptOk(Wire):
    consultation: dict[str, Any] = doc("The consultation, now ``active``.")
    room: str = doc("The SFU room (named after the consultation).")
    room_token: str = doc("The physician's room token.")
    grant: dict[str, Any] = doc("``{identity, role, publish, subscribe, command}`` of that token.")
    sfu_url: str | None = doc("Base URL of the media node hosting the room (null: no SFU).", None)


@reply("offer.decline")
@dataclass(frozen=True)
class OfferDeclineOk(Wire):
    consultation_id: str = doc("The declined consultation.")


@reply("consultation.get")
@dataclass(frozen=True)
class ConsultationGetOk(Wire):
    consultation: dict[str, Any] = doc("The consultation.")


@reply("consultation.end")
@dataclass(frozen=True)
class ConsultationEndOk(Wire):
    consultation: dict[str, Any] = doc("The consultation, now ``ended``.")


@reply("room.token")
@dataclass(frozen=True)
class RoomTokenOk(Wire):
    room: str = doc("The room.")
    room_token: str = doc("A fresh room token for the caller's seat.")
    grant: dict[str, Any] = doc("Its grant.")
    sfu_url: str | None = doc("Base URL of the media node hosting the room.", None)
    publications: list[dict[str, Any]] = doc(PUBLICATIONS_DOC, default_factory=list)


@reply("report.save")
@dataclass(frozen=True)
class ReportSaveOk(Wire):
    consultation_id: str = doc("The consultation.")
    saved_at: float = doc("Unix time it was stored (durably).")
    status: str = doc("``final``.", "final")


@reply("report.draft")
@dataclass(frozen=True)
class ReportDraftOk(Wire):
    consultation_id: str = doc("The consultation.")
    saved_at: float = doc("Unix time the draft was stored (the earlier one when nothing changed).")
    status: str = doc("``draft``.", "draft")
    changed: bool = doc("False when the draft was the same as the one kept (nothing written).", True)


@reply("report.get")
@dataclass(frozen=True)
class ReportGetOk(Wire):
    consultation_id: str = doc("The consultation.")
    report: dict[str, Any] | None = doc("What to show: the draft when ``status`` is draft, else the final "
                                        "report, else null (see *Report object*).")
    saved_at: float | None = doc("When ``report`` was saved.")
    author: str | None = doc("The physician who saved it.")
    status: str = doc("``empty`` (nothing saved), ``draft`` (a draft newer than any final report) or "
                      "``final``.", "empty")
    author_name: str | None = doc("The author's name in the directory.", None)
    final_saved_at: float | None = doc("When the final report was saved (null: never).", None)
    draft_saved_at: float | None = doc("When the draft was saved (null: no draft).", None)
    patient_ref: str = doc("The patient's reference (\"\" for admins).", "")
    site_name: str = doc("The site's name.", "")
    physician_name: str | None = doc("The consultation's physician's name.", None)
    nurse_name: str = doc("The name of the nurse who checked the patient in.", "")
    state: str = doc("The consultation's state.", "")
    addenda: list[dict[str, Any]] = doc("Addenda by the physician or an admitted specialist (issue 14): "
                                        "``[{author, role, name, text, at}]``, oldest first.",
                                        default_factory=list)


@reply("media.offer")
@dataclass(frozen=True)
class MediaOfferOk(Wire):
    sdp: str = doc("The SFU's SDP answer.")
    room: str = doc("The room.")
    identity: str = doc("The caller's participant identity in the room.")
    media_session: str = doc("The SFU session (one peer connection); later offers of this socket re-negotiate it.")
    publications: list[dict[str, Any]] = doc("Publications this negotiation created "
                                             "(``{id, source, kind, codec, identity, ...}``).")
    room_publications: list[dict[str, Any]] = doc("Every publication of the room now, the caller's own "
                                                  "included (subscribe to the others' in the next offer).",
                                                  default_factory=list)


@reply("media.leave")
@dataclass(frozen=True)
class MediaLeaveOk(Wire):
    consultation_id: str = doc("The consultation.")


# -- events (server -> client, no id) ----------------------------------------
@event("auth.expiring")
@dataclass(frozen=True)
class AuthExpiring(Wire):
    """The access token expires soon: send ``auth.refresh``, or the connection is closed at expiry."""

    expires_at: float = doc("Unix time of expiry.")
    in_s: float = doc("Seconds left.")


@event("presence.changed")
@dataclass(frozen=True)
class PresenceChanged(Wire):
    """A physician's status or connection changed. A dropped socket keeps the status (``connected``
    false, not matched) for the resume grace; ``offline`` when it passed without the physician back."""

    physician: str = doc("Physician id.")
    status: str = doc("available, busy, away, in_consultation or offline.")
    specialties: list[str] = doc("The physician's specialties.")
    name: str = doc("The physician's name in the directory (\"\" when not in it).", "")
    connected: bool = doc("False while the physician's socket is away (within the resume grace, and offline).",
                          True)


@event("visit.position")
@dataclass(frozen=True)
class VisitPosition(Wire):
    """To the site's nurses: the place of their waiting request changed."""

    consultation_id: str = doc("The consultation.")
    position: int = doc("1-based place in the queue of its specialty.")
    estimated_wait_s: float | None = doc(WAIT_DOC)


@event("visit.status")
@dataclass(frozen=True)
class VisitStatusEvent(Wire):
    """To the site's nurses: what happens to their waiting request (rings a physician, declined, not
    answered, the physician left) and whether another physician is being looked for."""

    consultation_id: str = doc("The consultation.")
    status: VisitStatus = doc("What happened.")
    physician: str | None = doc("The physician concerned (null for ``waiting``).")
    physician_name: str | None = doc("Their name in the directory.")
    looking: bool = doc("Another eligible physician is connected and available: another offer follows. "
                        "False: the request waits in the queue for one.")
    position: int | None = doc("1-based place in the queue of its specialty (null: not in the queue).")
    estimated_wait_s: float | None = doc(WAIT_DOC)


@event("queue.changed")
@dataclass(frozen=True)
class QueueChanged(Wire):
    """To every physician: the waiting queue changed; read it again with ``queue.list`` (at most
    every half second)."""


@event("visit.flagged")
@dataclass(frozen=True)
class VisitFlagged(Wire):
    """To the admins: a site sent emergencies above its rate of visit requests
    (``signalling.site_requests_per_window``). The request stays an emergency, flagged, and waits
    after the other sites' emergencies; someone should look (and cancel what is not one)."""

    consultation_id: str = doc("The flagged consultation.")
    site: str = doc("The site.")
    priority: str = doc("``emergency``.")
    flag: str = doc("Why: ``site_rate``.")
    requests_in_window: int = doc("The site's visit requests in the current window, this one included.")


@event("offer.received")
@dataclass(frozen=True)
class OfferReceived(Wire):
    """To one physician: a request rings them until ``expires_at``; answer with ``offer.accept`` or ``offer.decline``."""

    consultation: dict[str, Any] = doc("The consultation, with the visit's reason and patient reference.")
    expires_at: float = doc("Unix time the offer passes to the next physician.")
    timeout_s: float = doc("Seconds the offer rings.")


@event("offer.withdrawn")
@dataclass(frozen=True)
class OfferWithdrawn(Wire):
    """To the physician: the offer no longer rings them."""

    consultation_id: str = doc("The consultation.")
    reason: str = doc("timeout, cancelled, expired, declined or vanished.")


@event("consultation.updated")
@dataclass(frozen=True)
class ConsultationUpdated(Wire):
    """To the parties: the consultation changed state (offered, back to requested, accepted...)."""

    consultation: dict[str, Any] = doc("The consultation (clinical fields only for the nurse and physician).")


@event("consultation.started")
@dataclass(frozen=True)
class ConsultationStarted(Wire):
    """To each party (site nurses, the physician, the site's device agent): the room is ready; join it."""

    consultation: dict[str, Any] = doc("The consultation, ``active``.")
    room: str = doc("The SFU room.")
    room_token: str = doc("A room token for the receiver's seat.")
    grant: dict[str, Any] = doc("``{identity, role, publish, subscribe, command, subscribe_sources}``: nurse "
                                "publishes camera and microphone and subscribes; the agent publishes stethoscope, "
                                "dermatoscope, otoscope; the physician publishes camera and microphone, subscribes "
                                "and commands; an admitted guest publishes camera and microphone and receives "
                                "``subscribe_sources`` (an interpreter or guest: camera and microphone; a "
                                "specialist: every source).")
    sfu_url: str | None = doc("Base URL of the media node hosting the room: its ``/whip/{room}``, "
                              "``/whep/{room}``, or ``media.offer`` on its ``/ws`` (null: no SFU).", None)
    publications: list[dict[str, Any]] = doc(PUBLICATIONS_DOC, default_factory=list)


@event("room.moved")
@dataclass(frozen=True)
class RoomMoved(Wire):
    """To each party: the room's media node stopped heartbeating; the room is now on another node. Media
    sessions on the old node are gone: publish and subscribe again at ``sfu_url``."""

    consultation: dict[str, Any] = doc("The consultation, ``active``.")
    room: str = doc("The room (same name).")
    room_token: str = doc("A room token for the receiver's seat.")
    grant: dict[str, Any] = doc("Its grant.")
    sfu_url: str | None = doc("Base URL of the room's new media node.", None)
    publications: list[dict[str, Any]] = doc(PUBLICATIONS_DOC, default_factory=list)


@event("invitation.updated")
@dataclass(frozen=True)
class InvitationUpdated(Wire):
    """To the physician, the site's nurses and the guest: an invitation changed (claimed, admitted, consent
    given, refused, revoked, removed; its guest's media joined or left the room). The guest, once admitted,
    also gets ``consultation.started`` with its seat's grant."""

    consultation_id: str = doc("The consultation.")
    invitation: dict[str, Any] = doc("``{id, role, label, state, name, identity, admitted, consent, emailed, "
                                     "present, created_at, expires_at}`` (docs/protocol.md, *Invitations*).")


@event("consultation.ended")
@dataclass(frozen=True)
class ConsultationEnded(Wire):
    """To the parties (admitted guests too): the consultation is over (ended, cancelled, expired or failed)."""

    consultation: dict[str, Any] = doc("The consultation in its final state, with ``end_reason``.")


@event("peer.connection")
@dataclass(frozen=True)
class PeerConnection(Wire):
    """To the other parties of an open consultation: a party's socket dropped, came back, or was lost."""

    consultation_id: str = doc("The consultation.")
    role: str = doc("The party's role (nurse, physician, agent).")
    state: str = doc("dropped, resumed or lost.")


@event("room.event")
@dataclass(frozen=True)
class RoomEvent(Wire):
    """Relayed from the SFU to the room's sockets: participant.joined/left, publication.added/removed."""

    consultation_id: str = doc("The consultation.")
    room: str = doc("The room.")
    event: str = doc("participant.joined, participant.left, publication.added, publication.removed or room.closed.")
    data: dict[str, Any] = doc("The SFU's description (identity, publication id, source, kind...).")


@event("recording.started")
@dataclass(frozen=True)
class RecordingStarted(Wire):
    """To the site's nurses and the physician: the consultation is being recorded (docs/recording.md).
    The consultation object's ``recording`` says the same to whoever loads it later."""

    consultation_id: str = doc("The consultation.")
    by: str = doc("The physician who started it.")
    at: float = doc("Unix time it started.")
    encrypted: bool = doc("The files are encrypted at rest.")


@event("recording.stopped")
@dataclass(frozen=True)
class RecordingStopped(Wire):
    """To the site's nurses and the physician: the recording stopped."""

    consultation_id: str = doc("The consultation.")
    by: str = doc("Who stopped it: the physician, or ``system``.")
    at: float = doc("Unix time it stopped.")
    stop_reason: str = doc("``stopped`` (the physician), ``consultation_ended``, ``shutdown``...")
    tracks: int = doc("Tracks recorded.")


@event("recording.failed")
@dataclass(frozen=True)
class RecordingFailed(Wire):
    """To the site's nurses and the physician: the recording failed (disk full...); the call goes on."""

    consultation_id: str = doc("The consultation.")
    at: float = doc("Unix time of the failure.")
    error: str = doc("A short code, e.g. ``disk_full``, ``write_error``.")


@event("expertise.updated")
@dataclass(frozen=True)
class ExpertiseUpdated(Wire):
    """A télé-expertise case changed (docs/expertise.md): to its site's nurses, the requester, the
    expert who holds (or held) it, and the specialty's experts when it enters their pool (or the named
    expert when it is submitted to them). Ids and codes only: read the case over REST."""

    case_id: str = doc("The case.")
    state: str = doc("Its state now: ``draft``, ``submitted``, ``question``, ``answered``, ``closed``, "
                     "``cancelled``, ``escalated``.")
    action: str = doc("What happened: ``submit``, ``attach``, ``note``, ``ask``, ``reply``, ``take``, "
                      "``decline``, ``answer``, ``close``, ``cancel``, ``escalate``, ``overdue``.")
    specialty: str = doc("The case's specialty.")
    due_at: float = doc("Unix time it is due.")
    expert: str | None = doc("Who holds it (null: nobody, in the pool or named to an expert).")
    flagged: bool = doc("The sweeper flagged it as close to or past its due date.")


@event("expertise.escalated")
@dataclass(frozen=True)
class ExpertiseEscalated(Wire):
    """To the case's site's nurses and the requester: a case was turned into a live consultation
    request; the page checks the patient in (``visit.request``) for this specialty."""

    case_id: str = doc("The case.")
    specialty: str = doc("The specialty of the live consultation asked for.")


# -- parsing -----------------------------------------------------------------
_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = typing.get_type_hints(cls)
        _HINTS[cls] = hints
    return hints


def _check(name: str, value: Any, typ: Any, max_len: int) -> Any:
    origin = typing.get_origin(typ)
    if origin in (Union, types.UnionType):
        args = typing.get_args(typ)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _check(name, value, inner, max_len)
    if isinstance(typ, type) and issubclass(typ, enum.Enum):
        try:
            return typ(value)
        except ValueError:
            allowed = ", ".join(m.value for m in typ)
            raise ValueError(f"{name} must be one of: {allowed}") from None
    if typ is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be a boolean")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer")
        return value
    if typ is str:
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string")
        if max_len and len(value) > max_len:
            raise OverflowError(f"{name} is longer than {max_len} characters")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{name} must be an object")
        key_t, val_t = typing.get_args(typ)
        if val_t is str:
            for k, v in value.items():
                if not isinstance(v, str) or len(k) > 64 or len(v) > 256:
                    raise ValueError(f"{name} must map short strings to short strings")
            if len(value) > 32:
                raise ValueError(f"{name} has too many entries")
        return value
    raise TypeError(f"unsupported field type {typ!r}")  # a programming error


def parse_frame(text: str | bytes) -> dict[str, Any]:
    """A frame's JSON object; ProtocolError(bad_json) otherwise."""
    try:
        data = json_limits.loads(text)
    except json_limits.JsonTooDeep as exc:
        raise ProtocolError(ErrorCode.BAD_JSON, str(exc)) from None
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError(ErrorCode.BAD_JSON, "frame is not valid JSON") from None
    if not isinstance(data, dict):
        raise ProtocolError(ErrorCode.BAD_JSON, "frame must be a JSON object")
    return data


def parse_request(data: dict[str, Any], role: str | None = None) -> tuple[MessageId, Any]:
    """Validate one request object: its id and its message instance (raises ProtocolError).
    ``role``: the sender's, once known; a request that role may not send is ``forbidden`` before
    its fields are looked at (its schema is no business of a role that may not send it)."""
    mid = data.get("id")
    if mid is not None and (isinstance(mid, bool) or not isinstance(mid, (str, int))
                            or (isinstance(mid, str) and len(mid) > 64)):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "id must be a string (<= 64 chars) or an integer")
    type_ = data.get("type")
    if not isinstance(type_, str):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "type must be a string", mid)
    spec = REQUESTS.get(type_)
    if spec is None:
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unknown request type {type_[:40]!r}", mid)
    if mid is None:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "a request needs an id")
    if role is not None and role not in spec.roles:
        raise ProtocolError(ErrorCode.FORBIDDEN, f"a {role} may not send {type_}", mid)
    kwargs: dict[str, Any] = {}
    hints = _hints(spec.cls)
    known = set()
    for f in dataclasses.fields(spec.cls):
        known.add(f.name)
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{type_}: missing field {f.name!r}", mid)
            continue
        try:
            kwargs[f.name] = _check(f.name, data[f.name], hints[f.name], f.metadata.get("max_len", 0))
        except OverflowError as exc:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"{type_}: {exc}", mid) from None
        except ValueError as exc:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{type_}: {exc}", mid) from None
    extra = set(data) - known - {"type", "id"}
    if extra:
        raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{type_}: unknown field(s) {', '.join(sorted(extra))[:80]}", mid)
    return mid, spec.cls(**kwargs)


REPORT_FIELDS = ("reason", "findings", "conclusion", "prescriptions", "follow_up")
REPORT_EXTRAS = ("vitals", "stills")
"""Optional keys of a report, kept only when sent (a report without them reads back as it was saved)."""

VITAL_UNITS: dict[str, tuple[str, ...]] = {
    "heart_rate": ("/min",),
    "pulse_rate": ("/min",),
    "spo2": ("%",),
    "systolic": ("mm[Hg]", "kPa"),
    "diastolic": ("mm[Hg]", "kPa"),
    "mean_arterial_pressure": ("mm[Hg]", "kPa"),
    "body_temperature": ("Cel", "[degF]"),
}
"""The vitals a report keeps, named and united as the devices' measurements (``devices.measurements.Quantity``,
UCUM-like units); the first unit is the one a bare number is in."""
MAX_VITAL = 1000.0
MAX_REPORT_STILLS = 100
MAX_STILL_ID = 64


def _vital(name: str, value: Any) -> dict[str, Any]:
    units = VITAL_UNITS.get(name)
    if units is None:
        raise ValueError(f"unknown vital {name[:40]!r} (one of {', '.join(VITAL_UNITS)})")
    if _number(value):
        value = {"value": value, "unit": units[0]}
    if not isinstance(value, dict) or set(value) - {"value", "unit", "measured_at"}:
        raise ValueError(f"vitals.{name} must be a number or {{value, unit, measured_at}}")
    number, unit, at = value.get("value"), value.get("unit", units[0]), value.get("measured_at")
    if not _number(number) or not 0 <= number <= MAX_VITAL:
        raise ValueError(f"vitals.{name}.value must be a number from 0 to {MAX_VITAL:g}")
    if unit not in units:
        raise ValueError(f"vitals.{name}.unit must be one of {', '.join(units)}")
    if at is not None and (not _number(at) or at < 0):
        raise ValueError(f"vitals.{name}.measured_at must be a Unix time or null")
    return {"value": float(number), "unit": unit, "measured_at": None if at is None else float(at)}


def _number(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value \
        and value not in (float("inf"), float("-inf"))


def _still_ids(stills: Any) -> list[str]:
    """A report's ``stills``: ids, or objects with a ``still_id`` (a read-back report goes back as it came)."""
    if not isinstance(stills, list) or len(stills) > MAX_REPORT_STILLS:
        raise ValueError(f"stills must be a list of at most {MAX_REPORT_STILLS} still ids")
    out: list[str] = []
    for item in stills:
        sid = item.get("still_id") if isinstance(item, dict) else item
        if not isinstance(sid, str) or not sid or len(sid) > MAX_STILL_ID:
            raise ValueError("stills must hold still ids (or {still_id} objects)")
        if sid not in out:
            out.append(sid)
    return out


def validate_report(report: dict[str, Any]) -> dict[str, Any]:
    """A report body: strings (<= 20000 chars), prescriptions a list of strings, and when sent ``vitals``
    (:data:`VITAL_UNITS`) and ``stills`` (ids); raises ValueError. Every key is optional (a draft is
    partial; missing text fields read back empty)."""
    extra = set(report) - set(REPORT_FIELDS) - set(REPORT_EXTRAS)
    if extra:
        raise ValueError(f"unknown report field(s): {', '.join(sorted(extra))[:80]}")
    out: dict[str, Any] = {}
    for name in REPORT_FIELDS:
        value = report.get(name, [] if name == "prescriptions" else "")
        if name == "prescriptions":
            if not isinstance(value, list) or not all(isinstance(v, str) and len(v) <= 2000 for v in value) \
                    or len(value) > 100:
                raise ValueError("prescriptions must be a list of strings")
        elif not isinstance(value, str) or len(value) > 20000:
            raise ValueError(f"{name} must be a string of at most 20000 characters")
        out[name] = value
    if "vitals" in report:
        vitals = report["vitals"]
        if not isinstance(vitals, dict):
            raise ValueError("vitals must be an object")
        out["vitals"] = {name: _vital(str(name), value) for name, value in vitals.items()}
    if "stills" in report:
        out["stills"] = _still_ids(report["stills"])
    return out


# -- the reference (docs/protocol.md is checked against this) ----------------
def _type_name(typ: Any) -> str:
    origin = typing.get_origin(typ)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        return " \\| ".join(_type_name(a) for a in args) + " \\| null"
    if isinstance(typ, type) and issubclass(typ, enum.Enum):
        return " \\| ".join(f"`{m.value}`" for m in typ)
    if origin is dict:
        return "object"
    if origin is list:
        return "array"
    return {str: "string", int: "integer", bool: "boolean", float: "number"}.get(typ, str(typ))


def _table(cls: type) -> list[str]:
    fields = dataclasses.fields(cls)
    if not fields:
        return ["(no fields)", ""]
    hints = _hints(cls)
    lines = ["| field | type | required | meaning |", "|---|---|---|---|"]
    for f in fields:
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        text = f.metadata.get("doc", "")
        if f.metadata.get("max_len"):
            text += f" (at most {f.metadata['max_len']} characters)"
        lines.append(f"| `{f.name}` | {_type_name(hints[f.name])} "
                     f"| {'yes' if required else 'no'} | {text} |")
    lines.append("")
    return lines


def render_reference() -> str:
    """The generated part of docs/protocol.md."""
    out = ["## Requests (client → server)", ""]
    for type_, spec in REQUESTS.items():
        out += [f"### `{type_}`", "", (spec.cls.__doc__ or "").strip(), "",
                f"Who: {', '.join(spec.roles)}.", ""]
        out += _table(spec.cls)
        rep = REPLIES.get(type_)
        if rep is not None:
            out += [f"Reply `{rep.type}`:", ""] + _table(rep.cls)
    out += ["## Events (server → client, no id)", ""]
    for type_, spec in EVENTS.items():
        out += [f"### `{type_}`", "", (spec.cls.__doc__ or "").strip(), ""]
        out += _table(spec.cls)
    out += ["## Error codes", "", "| code | meaning |", "|---|---|"]
    for code in ErrorCode:
        out.append(f"| `{code.value}` | {_enum_doc(ErrorCode, code.name)} |")
    out.append("")
    return "\n".join(out)


def _enum_doc(cls: type, name: str) -> str:
    """The docstring under an enum member (read from the source)."""
    source = inspect.getsource(cls).splitlines()
    for i, line in enumerate(source):
        if line.strip().startswith(f"{name} ="):
            nxt = source[i + 1].strip() if i + 1 < len(source) else ""
            if nxt.startswith('"""'):
                return nxt.strip('"')
    return ""


GENERATED_BEGIN = "<!-- BEGIN GENERATED: python -m signalling.protocol -->"
GENERATED_END = "<!-- END GENERATED -->"


def update_doc(path: str) -> bool:
    """Rewrite the generated part of ``path``; True when it changed."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    head, _, rest = text.partition(GENERATED_BEGIN)
    _, _, tail = rest.partition(GENERATED_END)
    new = f"{head}{GENERATED_BEGIN}\n\n{render_reference()}\n{GENERATED_END}{tail}"
    if new != text:
        p.write_text(new, encoding="utf-8")
        return True
    return False


if __name__ == "__main__":  # pragma: no cover
    changed = update_doc(sys.argv[1] if len(sys.argv) > 1 else "docs/protocol.md")
    print("docs/protocol.md updated" if changed else "docs/protocol.md up to date")
