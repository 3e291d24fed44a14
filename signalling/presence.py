"""Physicians online: status (available, busy, away), what they can take, which connection owns it.

An entry (:class:`Presence`) lives in the store while its connection lives: it is
removed when the connection closes *or dies* (missed heartbeats), and entries of a
process that stopped refreshing its liveness key are reaped by the other processes.
:class:`Presences` publishes changes to those who watch (nurses, physicians,
admins) and tells matching when a physician becomes available.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Protocol

from core.auth import Principal
from signalling import protocol as p
from signalling.consultation import LIVE
from signalling.consultations import Consultations
from signalling.context import Context, safely
from signalling.hub import PRESENCE_WATCHERS
from signalling.matcher import Candidate
from signalling.protocol import ErrorCode, PresenceStatus, ProtocolError
from signalling.session import Session


@dataclass(frozen=True)
class Presence:
    physician: str
    status: PresenceStatus
    specialties: tuple[str, ...]
    languages: tuple[str, ...]
    since: float
    """When the status last changed (available longest goes first)."""
    session: str
    proc: str

    def to_dict(self) -> dict[str, Any]:
        return {"physician": self.physician, "status": self.status.value, "specialties": list(self.specialties),
                "languages": list(self.languages), "since": self.since, "session": self.session, "proc": self.proc}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Presence":
        return cls(d["physician"], PresenceStatus(d["status"]), tuple(d["specialties"]), tuple(d["languages"]),
                   float(d["since"]), d["session"], d["proc"])

    def candidate(self) -> Candidate:
        return Candidate(self.physician, frozenset(self.specialties), frozenset(self.languages), self.since)

    def public(self, name: str = "") -> dict[str, Any]:
        return {"physician": self.physician, "name": name, "status": self.status.value,
                "specialties": list(self.specialties), "languages": list(self.languages)}


class Kicker(Protocol):
    """What presence needs of matching."""

    async def kick(self, *, physicians: Iterable[str] = (), requests: Iterable[str] = (),
                   full: bool = False) -> None: ...


class Presences:
    def __init__(self, ctx: Context, consultations: Consultations, matching: Kicker) -> None:
        self.ctx = ctx
        self.consultations = consultations
        self.matching = matching

    def specialties(self, principal: Principal) -> tuple[str, ...]:
        return self.ctx.directory.specialties_of(principal.subject, principal.specialties)

    async def publish(self, s: Session) -> None:
        """Store and announce ``s``'s status; an available physician is matched at once."""
        entry = Presence(s.sub, s.status, self.specialties(s.principal),
                         self.ctx.directory.languages_of(s.sub), self.ctx.clock(), s.id, self.ctx.proc)
        await self.ctx.store.set_presence(s.sub, entry.to_dict())
        await self.ctx.bus.emit(PRESENCE_WATCHERS, p.PresenceChanged(
            physician=s.sub, status=s.status.value, specialties=list(entry.specialties)).to_wire())
        if s.status is PresenceStatus.AVAILABLE:
            await self.matching.kick(physicians=[s.sub])

    async def set_status(self, s: Session, status: PresenceStatus) -> None:
        s.status = status
        await self.publish(s)

    async def go_offline(self, s: Session) -> None:
        """``s``'s socket is gone: its entry leaves the store, watchers see it offline."""
        if await safely(self.ctx.store.remove_presence(s.sub, s.id)):
            await safely(self.ctx.bus.emit(PRESENCE_WATCHERS, p.PresenceChanged(
                physician=s.sub, status="offline", specialties=list(self.specialties(s.principal))).to_wire()))

    async def reap(self) -> None:
        """Entries of processes that stopped refreshing their liveness key."""
        presences = await self.ctx.store.presences()
        procs = {e["proc"] for e in presences.values()}
        alive = await self.ctx.store.live_processes(procs)
        for physician, e in presences.items():
            if e["proc"] not in alive:
                await self.ctx.store.remove_presence(physician, e["session"])

    # -- requests ------------------------------------------------------------------------------
    async def set_request(self, s: Session, msg: p.PresenceSet) -> p.PresenceSetOk:
        if msg.status is PresenceStatus.AVAILABLE:
            if any(c.physician == s.sub and c.state in LIVE for c in await self.consultations.open_of(s.principal)):
                raise ProtocolError(ErrorCode.CONFLICT, "end your consultation before becoming available")
        await self.set_status(s, msg.status)
        return p.PresenceSetOk(status=s.status.value)

    async def list_request(self, s: Session, msg: p.PresenceList) -> p.PresenceListOk:
        out = []
        for entry in (await self.ctx.store.presences()).values():
            pr = Presence.from_dict(entry)
            clinician = self.ctx.directory.clinicians.get(pr.physician)
            out.append(pr.public(clinician.name if clinician else ""))
        return p.PresenceListOk(physicians=sorted(out, key=lambda e: e["physician"]))
