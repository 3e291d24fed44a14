"""One client's session: who it is, its socket while it has one, its timers.

A session outlives a dropped socket for the resume grace (``hello`` with
``resume``); its record in the store says which process holds it, so that
another process can end it when that one dies. Lifecycle: live (a socket) ->
dropped (no socket, grace running) -> live again (resumed) or lost (grace over).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from core.auth import Principal
from core.vocabulary import Role
from signalling.hub import Outbox
from signalling.protocol import PresenceStatus


@dataclass
class Session:
    id: str
    principal: Principal
    conn: Outbox | None = None
    status: PresenceStatus = PresenceStatus.AWAY
    """A physician's status as this process last set it (the store's presence entry is the truth)."""
    after: PresenceStatus | None = None
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    grace: asyncio.TimerHandle | None = None
    token: str | None = None
    """The connection's access token (hello, auth.refresh, auth.renew): what ``auth.renew`` renews."""

    @property
    def sub(self) -> str:
        return self.principal.subject

    @property
    def role(self) -> Role:
        return self.principal.role

    def cancel_timers(self) -> None:
        for t in self.timers:
            t.cancel()
        self.timers.clear()
