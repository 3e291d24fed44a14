"""The project's one vocabulary: media sources, roles, id types and journal acts.

Every component names these things from here; the pages get the same names from
``web_client/static/vocabulary.js``, generated from this module
(``python -m core.vocabulary web_client/static/vocabulary.js``; a test fails when
the file drifts).

The enums are ``StrEnum``s: a member is its wire string in comparisons, f-strings
and JSON, so that code still holding plain strings (a parsed message, a token
claim) meets the same values.
"""

from __future__ import annotations

import enum
import json
import sys
from pathlib import Path
from typing import NewType

# -- ids -------------------------------------------------------------------------------------
# Distinct types for ids that are all strings on the wire, so that a room id is
# never passed where a consultation id is meant without a visible conversion.
ConsultationId = NewType("ConsultationId", str)
RoomId = NewType("RoomId", str)
"""A room is named after its consultation; the distinct type marks the media side."""
ParticipantId = NewType("ParticipantId", str)
"""An identity in a room (``a=msid`` token)."""
Subject = NewType("Subject", str)
"""Who a token says the caller is (``sub``): a clinician, nurse, agent or admin."""
SiteId = NewType("SiteId", str)
SessionId = NewType("SessionId", str)
NodeId = NewType("NodeId", str)
CaseId = NewType("CaseId", str)
"""A télé-expertise case."""


class MediaKind(enum.StrEnum):
    """How a source travels: an RTP audio or video track, or the room's data channel."""

    AUDIO = "audio"
    VIDEO = "video"
    DATA = "data"


class Source(enum.StrEnum):
    """What a publication carries (the second ``a=msid`` token)."""

    CAMERA = "camera"
    MICROPHONE = "microphone"
    STETHOSCOPE = "stethoscope"
    DERMATOSCOPE = "dermatoscope"
    OTOSCOPE = "otoscope"
    SCREEN = "screen"
    VITALS = "vitals"

    @property
    def kind(self) -> MediaKind:
        return _KINDS[self]

    @property
    def is_device(self) -> bool:
        """A connected medical device (published by the cabin's device agent)."""
        return self in DEVICES

    @property
    def is_media(self) -> bool:
        """Travels as an RTP track (so the SFU forwards it and recording may keep it)."""
        return self.kind is not MediaKind.DATA

    @classmethod
    def parse(cls, value: str) -> Source:
        """The source named ``value``; ``ValueError`` naming the known ones otherwise."""
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"unknown source {value!r} (known: {', '.join(s.value for s in cls)})") from None


_KINDS: dict[Source, MediaKind] = {
    Source.CAMERA: MediaKind.VIDEO,
    Source.MICROPHONE: MediaKind.AUDIO,
    Source.STETHOSCOPE: MediaKind.AUDIO,
    Source.DERMATOSCOPE: MediaKind.VIDEO,
    Source.OTOSCOPE: MediaKind.VIDEO,
    Source.SCREEN: MediaKind.VIDEO,
    Source.VITALS: MediaKind.DATA,
}

MEDIA_SOURCES: tuple[Source, ...] = tuple(s for s in Source if s.is_media)
"""Sources that travel as RTP tracks: those the SFU forwards."""
DEVICES: tuple[Source, ...] = (Source.STETHOSCOPE, Source.DERMATOSCOPE, Source.OTOSCOPE, Source.VITALS)
"""Connected devices, in the order the cabin lists them."""
MEDIA_DEVICES: tuple[Source, ...] = tuple(s for s in DEVICES if s.is_media)
"""Devices that publish an RTP track (vitals go on the data channel)."""
STILL_DEVICES: tuple[Source, ...] = (Source.DERMATOSCOPE, Source.OTOSCOPE)
"""Devices that take full-resolution stills."""
RECORDED: tuple[Source, ...] = (Source.CAMERA, Source.MICROPHONE, Source.STETHOSCOPE,
                                 Source.DERMATOSCOPE, Source.OTOSCOPE)
"""Sources a consultation recording keeps."""


class Language(enum.StrEnum):
    """The languages the pages, the reports, the questionnaires and the e-mails are written in."""

    FR = "fr"
    EN = "en"


class Role(enum.StrEnum):
    """What an access or room token lets its holder be."""

    NURSE = "nurse"
    PHYSICIAN = "physician"
    AGENT = "agent"
    ADMIN = "admin"
    INTERPRETER = "interpreter"
    SPECIALIST = "specialist"
    """A second clinician invited into one consultation (sees the devices, writes addenda)."""
    GUEST = "guest"
    """A family member, carer or the referring GP, invited into one consultation."""

    @property
    def invited(self) -> bool:
        """Someone without an account, let into one consultation by an invitation link."""
        return self in GUEST_ROLES


GUEST_ROLES: frozenset[Role] = frozenset({Role.INTERPRETER, Role.SPECIALIST, Role.GUEST})
"""The roles of an invitation (issue 14): only a guest access token carries one."""


class JournalSubject(enum.StrEnum):
    """What a journal entry is about: the key its entries are read back by."""

    CONSULTATION = "consultation"
    CASE = "case"
    """A télé-expertise case."""
    PRINCIPAL = "principal"
    """Acts about a person rather than a consultation (token renewal)."""


class Act(enum.StrEnum):
    """Every act the audit journal records (lower-case dotted names)."""

    VISIT_CHECKIN = "visit.checkin"
    CONSENT = "consent"
    VISIT_FLAG = "visit.flag"
    """A site's emergency above its rate of visit requests: kept an emergency, flagged to the admins."""
    VISIT_ROLLBACK = "visit.rollback"
    """A check-in whose store or records step failed: the acts journaled before it did not take."""
    OFFER = "offer"
    OFFER_ACCEPT = "offer.accept"
    OFFER_DECLINE = "offer.decline"
    OFFER_TIMEOUT = "offer.timeout"
    OFFER_VANISHED = "offer.vanished"
    OFFER_WITHDRAW = "offer.withdraw"
    CONSULTATION_START = "consultation.start"
    CONSULTATION_END = "consultation.end"
    CONSULTATION_CANCEL = "consultation.cancel"
    CONSULTATION_EXPIRE = "consultation.expire"
    CONSULTATION_FAIL = "consultation.fail"
    CONSULTATION_RECOVER = "consultation.recover"
    """At startup, or when a dead process's sessions are taken over: what recovery found and did."""
    ROOM_MOVE = "room.move"
    INVITATION_CREATE = "invitation.create"
    INVITATION_SEND = "invitation.send"
    """The link sent by e-mail (queued to the SMTP relay)."""
    INVITATION_CLAIM = "invitation.claim"
    INVITATION_ADMIT = "invitation.admit"
    INVITATION_CONSENT = "invitation.consent"
    """The nurse confirmed that the patient's consent covers this guest."""
    INVITATION_REFUSE = "invitation.refuse"
    INVITATION_REVOKE = "invitation.revoke"
    PARTICIPANT_JOIN = "participant.join"
    """A guest's media joined the room."""
    PARTICIPANT_LEAVE = "participant.leave"
    PARTICIPANT_REMOVE = "participant.remove"
    REPORT_ADDENDUM = "report.addendum"
    REPORT_SAVE = "report.save"
    REPORT_DRAFT = "report.draft"
    AUTH_RENEW = "auth.renew"
    RECORDING_START = "recording.start"
    RECORDING_STOP = "recording.stop"
    RECORDING_FAIL = "recording.fail"
    RECORDING_RECOVER = "recording.recover"
    RECORDING_RESUME = "recording.resume"
    """A new segment of a recording, on the node its room moved to (its node was lost)."""
    RECORDING_SHRED = "recording.shred"
    RECORDING_ACCESS = "recording.access"
    RECORDING_DENIED = "recording.denied"
    STILL_CAPTURE = "still.capture"
    STILL_LIST = "still.list"
    STILL_ACCESS = "still.access"
    STILL_LABEL = "still.label"
    STILL_SHRED = "still.shred"
    JOURNAL_READ = "journal.read"
    REPORT_PDF = "report.pdf"
    """The report read as a PDF document (``interop``)."""
    FHIR_READ = "fhir.read"
    """A consultation read as FHIR resources (``interop``: the Encounter, or the whole Bundle)."""
    AUTH_SIGNIN = "auth.signin"
    """A clinician signed in through the OpenID provider (Pro Santé Connect) and got our access token."""
    AUTH_REFUSED = "auth.refused"
    """A sign-in through the OpenID provider refused (the ``cause`` code says why)."""
    # Télé-expertise (signalling.expertise): one act per step of a case, keyed by the case.
    CASE_CREATE = "case.create"
    CASE_SUBMIT = "case.submit"
    CASE_ATTACH = "case.attach"
    CASE_MESSAGE = "case.message"
    """A requester's note in the thread while no question is pending."""
    CASE_QUESTION = "case.question"
    CASE_REPLY = "case.reply"
    CASE_TAKE = "case.take"
    CASE_DECLINE = "case.decline"
    CASE_ANSWER = "case.answer"
    CASE_CLOSE = "case.close"
    CASE_CANCEL = "case.cancel"
    CASE_ESCALATE = "case.escalate"
    CASE_OVERDUE = "case.overdue"
    """The sweeper flagged a case close to or past its due date and opened it to the specialty's pool."""
    CASE_ACCESS = "case.access"
    """An attachment of a case downloaded."""
    CASE_ADMIN_VIEW = "case.admin_view"
    """An admin read a case's (or the cases') metadata, with a reason code."""


# -- the JS constants (web_client/static/vocabulary.js is checked against this) ---------------
def render_js() -> str:
    """The pages' copy of this vocabulary, as an ES module."""

    def const(name: str, value: object) -> str:
        return f"export const {name} = Object.freeze({json.dumps(value, indent=2)});\n"

    return "".join([
        "// Generated by `python -m core.vocabulary web_client/static/vocabulary.js` from core/vocabulary.py.\n"
        "// Do not edit: a test fails when this file drifts from the Python vocabulary.\n\n",
        const("SOURCES", [s.value for s in Source]),
        const("SOURCE_KINDS", {s.value: s.kind.value for s in Source}),
        const("DEVICES", [s.value for s in DEVICES]),
        const("DEVICE_SOURCES", [s.value for s in MEDIA_DEVICES]),
        const("STILL_DEVICES", [s.value for s in STILL_DEVICES]),
        const("ROLES", {r.name: r.value for r in Role}),
        const("GUEST_ROLES", sorted(r.value for r in GUEST_ROLES)),
    ])


def main(argv: list[str]) -> int:
    path = Path(argv[1] if len(argv) > 1 else "web_client/static/vocabulary.js")
    text = render_js()
    changed = not path.exists() or path.read_text() != text
    if changed:
        path.write_text(text)
    print(f"{path} {'updated' if changed else 'up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
