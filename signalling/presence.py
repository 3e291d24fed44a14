"""Physicians online: status, what they can take, which connection owns it.

Presence is server state, one entry (:class:`Presence`) per physician in the store; every
change goes through :class:`Presences`, which announces it to those who watch and tells
matching when a physician becomes available. Who watches (:func:`presence_feed`): connections
that get every physician's changes (nurses and admins unless they ask otherwise, a physician who
asks), and each physician's own pages for their own changes; a physician's page shows nothing
else, and the pages ask for their own only (``hello.presence``).

Rules (:func:`status_on_arrival` is the table of the first):

* A physician chooses ``available``, ``busy`` or ``away``; the server sets
  ``in_consultation`` from an accepted offer to the consultation's end, then restores
  what they had (``available``, or the ``busy``/``away`` they chose meanwhile: ``after``).
* A dropped socket (a reload too) keeps the entry and its status, marked not ``connected``:
  hidden from matching, shown as such. Back within the resume grace, on the same session
  or a new one, the physician has their status again; never a silent ``away``.
* The grace passed with nobody back: the entry goes, watchers see ``offline``. Entries of a
  process that stopped refreshing its liveness key are marked not connected, and go once
  their session is gone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Protocol

from core.auth import Principal
from core.vocabulary import Role
from signalling import protocol as p
from signalling.consultation import LIVE
from signalling.consultations import Consultations
from signalling.context import Context, safely
from signalling.hub import PRESENCE_ALL, Target, presence_watchers
from signalling.matcher import Candidate
from signalling.protocol import ErrorCode, PresenceFeed, PresenceStatus, ProtocolError
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
    connected: bool = True
    """False while the owning socket is away (within the resume grace): not matched."""
    after: PresenceStatus | None = None
    """During a consultation: what the physician becomes at its end when not ``available``."""
    name: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"physician": self.physician, "status": self.status.value, "specialties": list(self.specialties),
                "languages": list(self.languages), "since": self.since, "session": self.session, "proc": self.proc,
                "connected": self.connected, "after": self.after.value if self.after else None, "name": self.name}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Presence":
        after = d.get("after")
        return cls(d["physician"], PresenceStatus(d["status"]), tuple(d["specialties"]), tuple(d["languages"]),
                   float(d["since"]), d["session"], d["proc"], bool(d.get("connected", True)),
                   PresenceStatus(after) if after else None, str(d.get("name") or ""))

    @property
    def matchable(self) -> bool:
        return self.status is PresenceStatus.AVAILABLE and self.connected

    def candidate(self) -> Candidate:
        return Candidate(self.physician, frozenset(self.specialties), frozenset(self.languages), self.since)

    def public(self, name: str = "") -> dict[str, Any]:
        return {"physician": self.physician, "name": name or self.name, "status": self.status.value,
                "specialties": list(self.specialties), "languages": list(self.languages),
                "connected": self.connected}


def status_on_arrival(entry: Presence | None, live: bool) -> tuple[PresenceStatus, PresenceStatus | None]:
    """A physician's status and ``after`` when a socket of theirs says hello (resumed or new):
    what their entry says (or what it restores to at a consultation's end), ``in_consultation``
    while one of theirs is live; ``away`` on a first arrival."""
    if entry is None:
        base = PresenceStatus.AVAILABLE if live else PresenceStatus.AWAY
    elif entry.status in (PresenceStatus.IN_CONSULTATION, PresenceStatus.OFFLINE):
        base = entry.after or PresenceStatus.AVAILABLE
    else:
        base = entry.status
    if live:
        return PresenceStatus.IN_CONSULTATION, None if base is PresenceStatus.AVAILABLE else base
    return base, None


FEED_ALL_ROLES = frozenset({Role.NURSE, Role.PHYSICIAN, Role.ADMIN})
"""Who may get every physician's presence changes (as ``presence.list``'s roles)."""
DEFAULT_FEED_ALL = frozenset({Role.NURSE, Role.ADMIN})
"""Who gets them unless they ask otherwise (what clients had before ``hello.presence``; a physician's
page shows only its own status, and 200 physicians each getting everyone's changes flooded them)."""


def presence_feed(role: Role, asked: PresenceFeed | None) -> PresenceFeed:
    """Whose presence changes a connection of ``role`` gets, having asked ``asked`` in its hello."""
    if asked is None:
        return PresenceFeed.ALL if role in DEFAULT_FEED_ALL else PresenceFeed.OWN
    return asked if role in FEED_ALL_ROLES else PresenceFeed.OWN


def presence_watches(role: Role, asked: PresenceFeed | None) -> tuple[Target, ...]:
    """What a connection subscribes to for presence beyond its own person (``Hub.add``)."""
    return (PRESENCE_ALL,) if presence_feed(role, asked) is PresenceFeed.ALL else ()


class Kicker(Protocol):
    """What presence needs of matching."""

    async def kick(self, *, physicians: Iterable[str] = (), requests: Iterable[str] = (),
                   full: bool = False) -> None: ...


class Presences:
    def __init__(self, ctx: Context, consultations: Consultations, matching: Kicker) -> None:
        self.ctx = ctx
        self.consultations = consultations
        self.matching = matching
        self.local: dict[str, Session] = {}
        """This process's sessions (the sessions component's table), to keep their status in step."""

    def specialties(self, principal: Principal) -> tuple[str, ...]:
        return self.ctx.directory.specialties_of(principal.subject, principal.specialties)

    def name_of(self, physician: str) -> str:
        clinician = self.ctx.directory.clinicians.get(physician)
        return clinician.name if clinician else ""

    async def get(self, physician: str) -> Presence | None:
        raw = await self.ctx.store.presence(physician)
        return Presence.from_dict(raw) if raw else None

    async def live(self, principal: Principal) -> bool:
        """Whether a consultation of this physician is accepted or active."""
        return any(c.physician == principal.subject and c.state in LIVE
                   for c in await self.consultations.open_of(principal))

    async def _put(self, old: Presence | None, physician: str, *, status: PresenceStatus,
                   after: PresenceStatus | None, connected: bool, session: str, proc: str,
                   specialties: tuple[str, ...], languages: tuple[str, ...]) -> Presence:
        """Store and announce one physician's entry; an available, connected physician is matched."""
        since = old.since if old is not None and old.status is status else self.ctx.clock()
        entry = Presence(physician, status, specialties, languages, since, session, proc, connected, after,
                         self.name_of(physician))
        await self.ctx.store.set_presence(physician, entry.to_dict())
        for s in self.local.values():
            if s.sub == physician:
                s.status, s.after = status, after
        if entry.matchable:  # first: matching reads the store while the change is announced
            await self.matching.kick(physicians=[physician])
        await self.ctx.bus.emit(presence_watchers(physician), p.PresenceChanged(
            physician=physician, status=status.value, specialties=list(specialties), name=entry.name,
            connected=connected).to_wire())
        return entry

    async def put_session(self, s: Session, status: PresenceStatus, after: PresenceStatus | None = None) -> Presence:
        """``s`` (connected) owns its physician's entry, with ``status``."""
        return await self._put(await self.get(s.sub), s.sub, status=status, after=after, connected=True,
                               session=s.id, proc=self.ctx.proc, specialties=self.specialties(s.principal),
                               languages=self.ctx.directory.languages_of(s.sub))

    async def arrive(self, s: Session) -> Presence:
        """A socket of ``s``'s physician said hello (new or resumed session): their status back."""
        status, after = status_on_arrival(await self.get(s.sub), await self.live(s.principal))
        return await self.put_session(s, status, after)

    async def in_consultation(self, s: Session) -> None:
        """``s`` accepted a consultation (its offer lock is released after this)."""
        old = await self.get(s.sub)
        after = old.after if old is not None and old.status is PresenceStatus.IN_CONSULTATION else None
        await self.put_session(s, PresenceStatus.IN_CONSULTATION, after)

    async def consultation_over(self, physician: str) -> None:
        """A live consultation of ``physician`` is over: they become what they were (``available``, or
        the ``after`` they chose meanwhile), connected or not, whichever process holds their socket."""
        old = await self.get(physician)
        if old is None or old.status is not PresenceStatus.IN_CONSULTATION:
            return
        await self._put(old, physician, status=old.after or PresenceStatus.AVAILABLE, after=None,
                        connected=old.connected, session=old.session, proc=old.proc,
                        specialties=old.specialties, languages=old.languages)

    async def detached(self, s: Session, others: Iterable[Session] = ()) -> None:
        """``s``'s socket is gone: its physician keeps their status, not connected (not matched) —
        unless another live socket of theirs (``others``) takes the entry over."""
        old = await self.get(s.sub)
        if old is None or old.session != s.id:
            return
        for other in others:
            if other.conn is not None and other.sub == s.sub:
                await self._put(old, s.sub, status=old.status, after=old.after, connected=True, session=other.id,
                                proc=self.ctx.proc, specialties=old.specialties, languages=old.languages)
                return
        await self._put(old, s.sub, status=old.status, after=old.after, connected=False, session=old.session,
                        proc=old.proc, specialties=old.specialties, languages=old.languages)

    async def go_offline(self, physician: str, session: str, specialties: Iterable[str] = ()) -> None:
        """Nobody came back for ``session`` within the grace: the entry goes, watchers see it offline."""
        old = await self.get(physician)
        if await safely(self.ctx.store.remove_presence(physician, session)):
            await safely(self.ctx.bus.emit(presence_watchers(physician), p.PresenceChanged(
                physician=physician, status=PresenceStatus.OFFLINE.value,
                specialties=list(old.specialties if old else specialties), name=self.name_of(physician),
                connected=False).to_wire()))

    async def reap(self) -> None:
        """Entries of processes that stopped refreshing their liveness key: not connected (not matched)
        while their session may still resume elsewhere, gone when it cannot."""
        presences = await self.ctx.store.presences()
        procs = {e["proc"] for e in presences.values()}
        alive = await self.ctx.store.live_processes(procs)
        for physician, e in presences.items():
            if e["proc"] in alive:
                continue
            entry = Presence.from_dict(e)
            if await self.ctx.store.get_session(entry.session) is None:
                await self.go_offline(physician, entry.session)
            elif entry.connected:
                await self._put(entry, physician, status=entry.status, after=entry.after, connected=False,
                                session=entry.session, proc=entry.proc, specialties=entry.specialties,
                                languages=entry.languages)

    # -- requests ------------------------------------------------------------------------------
    async def set_request(self, s: Session, msg: p.PresenceSet) -> p.PresenceSetOk:
        if not msg.status.chosen:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{msg.status.value} is set by the server, not chosen")
        if await self.live(s.principal):
            if msg.status is PresenceStatus.AVAILABLE:
                raise ProtocolError(ErrorCode.CONFLICT, "end your consultation before becoming available")
            entry = await self.put_session(s, PresenceStatus.IN_CONSULTATION, msg.status)
        else:
            entry = await self.put_session(s, msg.status)
        return p.PresenceSetOk(status=entry.status.value, after=entry.after.value if entry.after else None)

    async def list_request(self, s: Session, msg: p.PresenceList) -> p.PresenceListOk:
        out = [Presence.from_dict(entry).public(self.name_of(physician))
               for physician, entry in (await self.ctx.store.presences()).items()]
        return p.PresenceListOk(physicians=sorted(out, key=lambda e: e["physician"]))
