"""Delivery of events to the connections of this process.

Every event is an envelope ``{"t": [[kind, key], ...], "m": message}`` published
through the store, so that it reaches connections on every process. Target
kinds: ``user`` (a subject), ``site`` (``<site>/<role>``: the nurses or the
agent of a site), ``role`` (everyone of a role), ``session``. The message is
serialised once and queued on each matching connection (never awaited: a
slow client cannot stall the others).
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Protocol

from core.vocabulary import Role


class Outbox(Protocol):
    """What the hub needs of a connection."""

    session_id: str
    subject: str
    role: str
    site: str | None

    def send_text(self, text: str) -> None: ...


Target = tuple[str, str]


def user(subject: str) -> Target:
    """Every connection of one person (a physician: their pages on every process)."""
    return ("user", subject)


def nurses(site: str) -> Target:
    return ("site", f"{site}/{Role.NURSE.value}")


def agents(site: str) -> Target:
    """The device agent(s) of a site."""
    return ("site", f"{site}/{Role.AGENT.value}")


def admins() -> Target:
    """Every admin's connections (the admin console)."""
    return ("role", Role.ADMIN.value)


def seat_of(subject: str, role: Role, site: str | None) -> Target:
    """Where a party of a consultation is reached: the physician as a person, a site's nurses
    or agent as a seat."""
    if role is Role.PHYSICIAN:
        return user(subject)
    return ("site", f"{site}/{role.value}")


PRESENCE_ALL: Target = ("presence", "all")
"""The connections that get every physician's presence changes (``hello.presence``: ``all``); a
physician's own reach them as a person (``user``)."""


def presence_watchers(physician: str) -> tuple[Target, ...]:
    """Who hears of ``physician``'s presence changes: those who show every physician's status, and
    the physician's own pages. Not every physician's and nurse's page: with 200 physicians, each
    change went to some 220 sockets, and a matching decision makes two or three changes."""
    return (PRESENCE_ALL, user(physician))


def targets_of(conn: Outbox) -> list[Target]:
    out = [("user", conn.subject), ("role", conn.role), ("session", conn.session_id)]
    if conn.site:
        out.append(("site", f"{conn.site}/{conn.role}"))
    return out


class Hub:
    def __init__(self) -> None:
        self._index: dict[Target, set[Outbox]] = {}
        self._extra: dict[Outbox, tuple[Target, ...]] = {}
        """What each connection subscribed to beyond who it is (``add``'s ``watches``)."""
        self.sent = 0

    def add(self, conn: Outbox, watches: Iterable[Target] = ()) -> None:
        """``conn`` gets what is sent to who it is and to ``watches`` (e.g. :data:`PRESENCE_ALL`)."""
        extra = tuple(watches)
        if extra:
            self._extra[conn] = extra
        for t in (*targets_of(conn), *extra):
            self._index.setdefault(t, set()).add(conn)

    def remove(self, conn: Outbox) -> None:
        for t in (*targets_of(conn), *self._extra.pop(conn, ())):
            members = self._index.get(t)
            if members is not None:
                members.discard(conn)
                if not members:
                    del self._index[t]

    def local(self, kind: str, key: str) -> set[Outbox]:
        return set(self._index.get((kind, key), ()))

    def keys(self, kind: str) -> set[str]:
        """The keys of ``kind`` with a connection on this process (e.g. ``<site>/nurse``)."""
        return {key for (k, key) in self._index if k == kind}

    def __len__(self) -> int:
        return sum(len(v) for (k, _), v in self._index.items() if k == "session")

    def deliver(self, targets: Iterable[Iterable[str]], message: dict[str, Any]) -> int:
        conns: set[Outbox] = set()
        for kind, key in targets:
            members = self._index.get((kind, key))
            if members:
                conns |= members
        if not conns:
            return 0
        text = json.dumps(message, separators=(",", ":"))
        for conn in conns:
            conn.send_text(text)
        self.sent += len(conns)
        return len(conns)
