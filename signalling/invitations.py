"""Invitations in the store: a consultation's physician lets a third party in (issue 14).

Each step is decided sans I/O by ``signalling.invitation`` and kept in the consultation's
document by one compare-and-set (so a link is consumed exactly once, however many claims
race, and dies with its consultation); then it is journaled and told to the physician, the
site's nurses and the guest (``invitation.updated``). Once admitted, the guest also gets
``consultation.started`` with its seat's grant, as the other parties did; once removed, its
media ends on whichever node hosts the room, and its tokens die with its seat
(``Rooms.is_live``).

The link is ``<origin>/join#invite=<consultation>.<invitation>.<secret>``: the fragment
never reaches a server's logs, and only the secret's hash is kept.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import replace
from typing import Any, Callable

from core.auth import AuthError, Principal
from core.mail import Mail, Mailer
from core.vocabulary import Act, ConsultationId, Language, Role
from signalling import invitation as inv_mod
from signalling import protocol as p
from signalling.consultation import Consultation, State
from signalling.consultations import CAS_TRIES, Consultations
from signalling.context import Context
from signalling.hub import nurses, user
from signalling.invitation import Gone, Invitation, InvitationError, InvitationState, Step
from signalling.protocol import ErrorCode, ProtocolError
from signalling.rooms import Rooms

logger = logging.getLogger(__name__)

_ACTS: dict[Step, Act] = {
    Step.CLAIM: Act.INVITATION_CLAIM, Step.ADMIT: Act.INVITATION_ADMIT, Step.CONSENT: Act.INVITATION_CONSENT,
    Step.REFUSE: Act.INVITATION_REFUSE, Step.REVOKE: Act.INVITATION_REVOKE, Step.REMOVE: Act.PARTICIPANT_REMOVE,
}
_ROLE_NAMES = {
    Language.FR: {Role.INTERPRETER: "interprète", Role.SPECIALIST: "spécialiste", Role.GUEST: "invité"},
    Language.EN: {Role.INTERPRETER: "interpreter", Role.SPECIALIST: "specialist", Role.GUEST: "guest"},
}
_SUBJECT = {Language.FR: "Invitation à une téléconsultation ({role})",
            Language.EN: "Invitation to a teleconsultation ({role})"}
_TEXT = {
    Language.FR: ("Bonjour,\n\nVous êtes invité(e) à rejoindre une téléconsultation en tant que {role}.\n\n"
                  "Ouvrez ce lien (valable une fois, jusqu'au {until} UTC) :\n{link}\n\n"
                  "Le médecin vous admettra dans l'appel.\n"),
    Language.EN: ("Hello,\n\nYou are invited to join a teleconsultation as {role}.\n\n"
                  "Open this link (it works once, until {until} UTC):\n{link}\n\n"
                  "The physician will admit you to the call.\n"),
}


class InvitationGoneError(Exception):
    """A claim of a link that no longer works (410 ``invitation_gone``)."""

    def __init__(self, gone: Gone) -> None:
        super().__init__(f"this invitation is {gone.value}")
        self.gone = gone


def invitation_mail(to: str, link: str, inv: Invitation, consultation_id: str, language: Language) -> Mail:
    """The e-mail that carries an invitation's link (no patient data: who is invited, until when)."""
    until = time.strftime("%Y-%m-%d %H:%M", time.gmtime(inv.expires_at))
    role = _ROLE_NAMES[language][inv.role]
    return Mail(to=to, subject=_SUBJECT[language].format(role=role),
                text=_TEXT[language].format(role=role, until=until, link=link), kind="invitation",
                ids={"consultation_id": consultation_id, "invitation": inv.id}, language=language.value)


def _clean_email(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 254 or value.count("@") != 1 or any(
            c.isspace() or c in "<>,;\"" for c in value) or not value.isprintable():
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "email must be one address (name@domain)")
    return value


class Invitations:
    def __init__(self, ctx: Context, consultations: Consultations, rooms: Rooms) -> None:
        self.ctx = ctx
        self.consultations = consultations
        self.rooms = rooms
        self.mailer: Callable[[], Mailer | None] = lambda: None

    # -- who may do what ----------------------------------------------------------------------
    async def _load(self, principal: Principal, cid: str) -> tuple[Consultation, int]:
        got = await self.consultations.get(cid)
        if got is None or not self.consultations.visible(principal, got[0]) or principal.role.invited:
            raise ProtocolError(ErrorCode.NOT_FOUND, "no such open consultation")
        return got

    async def _as_physician(self, principal: Principal, cid: str) -> Consultation:
        c, _ = await self._load(principal, cid)
        if principal.role is not Role.PHYSICIAN or c.physician != principal.subject:
            raise ProtocolError(ErrorCode.FORBIDDEN, "the consultation's physician only")
        if c.state is not State.ACTIVE:
            raise ProtocolError(ErrorCode.CONFLICT, f"a {c.state.value} consultation takes no guests")
        return c

    async def _as_party(self, principal: Principal, cid: str) -> Consultation:
        """The physician or a nurse of the site."""
        c, _ = await self._load(principal, cid)
        if not ((principal.role is Role.PHYSICIAN and c.physician == principal.subject)
                or (principal.role is Role.NURSE and principal.site == c.site)):
            raise ProtocolError(ErrorCode.FORBIDDEN, "the consultation's physician or the site's nurses only")
        return c

    # -- requests ----------------------------------------------------------------------------------
    async def create(self, principal: Principal, cid: str, body: Any, origin: str) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "body must be an object")
        c = await self._as_physician(principal, cid)
        try:
            role = Role(str(body.get("role")))
        except ValueError:
            role = Role.ADMIN  # refused just below, with the list of guest roles
        ttl = body.get("ttl_s", 3600)
        label = body.get("label", "")
        if not isinstance(ttl, int) or isinstance(ttl, bool) or not isinstance(label, str):
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "ttl_s must be an integer and label a string")
        email = _clean_email(body.get("email"))
        clinician = None
        if body.get("clinician") is not None:
            clinician = self.ctx.directory.clinicians.get(str(body.get("clinician")))
            if clinician is None or role is not Role.SPECIALIST:
                raise ProtocolError(ErrorCode.BAD_MESSAGE, "clinician must be a directory clinician, invited "
                                                           "as a specialist")
            email = email or clinician.email or None  # the link to their own address: who holds it is them
            label = label or clinician.name
        secret = inv_mod.new_secret()
        try:
            inv = inv_mod.create("iv-" + secrets.token_hex(6), role, label, ttl, principal.subject, secret,
                                 self.ctx.clock())
        except ValueError as exc:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, str(exc)) from None
        link = f"{origin.rstrip('/')}/join#invite={c.id}.{inv.id}.{secret}"
        mailer = self.mailer()
        if email is not None and (mailer is None or not mailer.enabled):
            raise ProtocolError(ErrorCode.CONFLICT, "e-mail is not set up on this server ([smtp] url): copy the link")
        inv = replace(inv, emailed=email is not None, clinician=clinician.id if clinician else None)
        c = await self._change(cid, lambda c: self._added(c, inv))
        await self.ctx.journal.append(Act.INVITATION_CREATE, actor=principal.subject,
                                      consultation_id=ConsultationId(c.id), invitation=inv.id, role=role.value,
                                      expires_at=inv.expires_at)
        if email is not None and mailer is not None:
            language = Language.EN if c.language == Language.EN.value else Language.FR
            mailer.submit(invitation_mail(email, link, inv, c.id, language))
            await self.ctx.journal.append(Act.INVITATION_SEND, actor=principal.subject,
                                          consultation_id=ConsultationId(c.id), invitation=inv.id)
        await self._tell(c, inv)
        logger.info("invitation created", extra={"consultation": c.id, "invitation": inv.id, "role": role.value})
        return {"id": inv.id, "link": link, "expires_at": inv.expires_at, "invitation": self._view(c, inv)}

    @staticmethod
    def _added(c: Consultation, inv: Invitation) -> Invitation:
        live = [i for i in c.invitations if i.state not in inv_mod.FINAL]
        if len(live) >= inv_mod.MAX_PER_CONSULTATION:
            raise ProtocolError(ErrorCode.CONFLICT, f"at most {inv_mod.MAX_PER_CONSULTATION} guests at once")
        return inv

    async def list(self, principal: Principal, cid: str) -> list[dict[str, Any]]:
        c = await self._as_party(principal, cid)
        return [self._view(c, i) for i in c.invitations]

    async def act(self, principal: Principal, cid: str, inv_id: str, what: Step) -> dict[str, Any]:
        """admit, refuse, consent or revoke ``inv_id``, as the role each needs."""
        if what is Step.CONSENT:
            c = await self._as_party(principal, cid)
            if principal.role is not Role.NURSE:
                raise ProtocolError(ErrorCode.FORBIDDEN, "the patient's consent is confirmed by the site's nurse")
        elif what is Step.REFUSE:
            c = await self._as_party(principal, cid)
        else:
            c = await self._as_physician(principal, cid)
        if c.invitation(inv_id) is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, "no such invitation")
        c, inv = await self._step(cid, inv_id, what, actor=principal.subject)
        return self._view(c, inv)

    async def remove(self, principal: Principal, cid: str, identity: str) -> dict[str, Any]:
        c = await self._as_physician(principal, cid)
        guest = c.guest(identity)
        if guest is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, "no admitted guest with this identity")
        c, inv = await self._step(cid, guest.id, Step.REMOVE, actor=principal.subject)
        await self.rooms.remove(c, inv.identity)
        return self._view(c, inv)

    async def claim(self, token: Any, name: Any) -> dict[str, Any]:
        """The guest page's claim: the invitation consumed, a guest access token returned. A forged
        token: ``AuthError`` (401); a link that no longer works: :class:`InvitationGoneError` (410)."""
        if not isinstance(token, str) or token.count(".") < 2 or len(token) > 400 or not token.isascii():
            raise AuthError("invitation token malformed")
        cid, inv_id, secret = token.rsplit(".", 2)
        c_any = await self.consultations.get_any(cid)
        inv = c_any.invitation(inv_id) if c_any is not None else None
        if c_any is None or inv is None or not inv.matches(secret):
            raise AuthError("invitation token invalid")
        known = self.ctx.directory.clinicians.get(inv.clinician or "")
        try:  # a directory specialist is named as the directory names them
            clean = known.name if known is not None else inv_mod.clean_name(name)
        except ValueError as exc:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, str(exc)) from None
        if c_any.state is not State.ACTIVE:
            raise InvitationGoneError(Gone.EXPIRED)  # the consultation is over: so is its link
        try:
            c, inv = await self._step(cid, inv_id, Step.CLAIM, actor=inv_id, name=clean)
        except InvitationError as exc:
            raise InvitationGoneError(exc.gone or Gone.USED) from None
        ttl = self.ctx.settings.auth.room_ttl_s
        access = self.ctx.tokens.issue_guest(inv.role, inv.id, c.id, name=clean, ttl=ttl)
        return {"access_token": access, "consultation_id": c.id, "invitation": self._view(c, inv),
                "expires_at": self.ctx.clock() + ttl}

    async def standing(self, principal: Principal) -> bool:
        """``TokenService.guest_standing``: a guest's token opens something only while its consultation
        is open and its invitation is not refused, revoked or removed."""
        got = await self.consultations.get(principal.consultation or "")
        return got is not None and self.consultations.visible(principal, got[0])

    async def presence(self, cid: str, identity: str, present: bool) -> None:
        """``Rooms``: a guest's media joined (or left) the room: journaled, and shown to the parties."""
        got = await self.consultations.get(cid)
        if got is None:
            return
        guest = next((i for i in got[0].invitations if i.identity == identity), None)
        if guest is None:
            return
        await self.ctx.journal.append(Act.PARTICIPANT_JOIN if present else Act.PARTICIPANT_LEAVE, actor=guest.id,
                                      consultation_id=ConsultationId(cid), identity=identity,
                                      role=guest.role.value)
        if guest.state is not InvitationState.ADMITTED or guest.present == present:
            return
        c = await self._change(cid, lambda c: replace(c.invitation(guest.id) or guest, present=present))
        inv = c.invitation(guest.id)
        if inv is not None:
            await self._tell(c, inv)

    # -- steps ---------------------------------------------------------------------------------
    async def _change(self, cid: str, change: Callable[[Consultation], Invitation]) -> Consultation:
        """``change`` applied to the consultation's invitations, one compare-and-set (retried)."""
        for _ in range(CAS_TRIES):
            got = await self.consultations.get(cid)
            if got is None:
                raise ProtocolError(ErrorCode.NOT_FOUND, "no such open consultation")
            c, version = got
            new = c.with_invitation(change(c), self.ctx.clock())
            if await self.ctx.store.update_consultation(cid, version, new.to_dict()) is not None:
                return new
        raise ProtocolError(ErrorCode.CONFLICT, "the consultation keeps changing; retry")

    async def _step(self, cid: str, inv_id: str, what: Step, *, actor: str,
                    name: str = "") -> tuple[Consultation, Invitation]:
        before: list[Invitation] = []

        def change(c: Consultation) -> Invitation:
            inv = c.invitation(inv_id)
            if inv is None:
                raise ProtocolError(ErrorCode.NOT_FOUND, "no such invitation")
            before[:] = [inv]
            return inv_mod.step(inv, what, self.ctx.clock(), name=name, by=actor)

        try:
            c = await self._change(cid, change)
        except InvitationError as exc:
            if what is Step.CLAIM:
                raise
            raise ProtocolError(ErrorCode.CONFLICT, exc.reason) from None
        inv = c.invitation(inv_id)
        assert inv is not None
        await self.ctx.journal.append(_ACTS[what], actor=actor, consultation_id=ConsultationId(cid),
                                      invitation=inv.id, role=inv.role.value, identity=inv.identity)
        await self._tell(c, inv)
        if inv.state is InvitationState.ADMITTED and before and before[0].state is not InvitationState.ADMITTED:
            await self._seat(c, inv)
        logger.info("invitation %s", what.value, extra={"consultation": cid, "invitation": inv.id,
                                                         "state": inv.state.value})
        return c, inv

    async def _seat(self, c: Consultation, inv: Invitation) -> None:
        """The admitted guest's grant, as the other parties got theirs."""
        await self.ctx.bus.emit([user(inv.id)], p.ConsultationStarted(
            consultation=c.view(inv.role is Role.SPECIALIST), **await self.rooms.join_guest(c, inv)).to_wire())

    def _view(self, c: Consultation, inv: Invitation) -> dict[str, Any]:
        return inv.view(c.id, self.ctx.clock())

    async def _tell(self, c: Consultation, inv: Invitation) -> None:
        targets = [nurses(c.site), user(inv.id)] + ([user(c.physician)] if c.physician else [])
        await self.ctx.bus.emit(targets, p.InvitationUpdated(consultation_id=c.id,
                                                             invitation=self._view(c, inv)).to_wire())


__all__ = ["InvitationGoneError", "Invitations", "invitation_mail"]
