"""What every part of the signalling service shares within one process.

The parts (sessions, presences, visits, matching, offers, consultations, rooms,
reports) each hold one :class:`Context`: the collaborators that state lives in
(store, journal, records), the clock, this process's id, its background tasks,
and the few values that change while it runs (the directory, the settings tests
tighten, the node URL ``teleconsult serve`` learns once bound). None of the parts
keeps authoritative state: that is the store's, so that several processes on one
Redis behave as one service.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Awaitable, Callable, TypeVar

from config.settings import Settings, SignallingSettings
from core.auth import TokenService
from core.tasks import Tasks
from core.vocabulary import NodeId
from sfu.service import SfuService
from signalling.bus import Bus
from signalling.directory import Directory
from signalling.hub import Hub
from signalling.journal import Journal
from signalling.records import Records
from signalling.store import Store

logger = logging.getLogger(__name__)

T = TypeVar("T")

LIVENESS_HEARTBEATS = 3
"""A process's (and its node's) liveness lasts this many heartbeats without a new one."""


async def safely(aw: Awaitable[T]) -> T | None:
    """Run a cleanup step whose failure must not stop the steps after it (logged, None)."""
    try:
        return await aw
    except Exception as exc:
        logger.warning("cleanup step failed: %s", exc)
        return None


@dataclass
class Context:
    settings: Settings
    store: Store
    tokens: TokenService
    journal: Journal
    records: Records
    hub: Hub
    bus: Bus
    clock: Callable[[], float]
    proc: str
    """This process's id (its sessions, presences and envelopes are marked with it)."""
    sfu: Callable[[], SfuService | None]
    """This process's SFU, when it runs one."""
    accepting: Callable[[], bool]
    """False while the process drains: no new visits, no matching."""
    sig: SignallingSettings
    node_url: str
    """This node's base URL for clients (``teleconsult serve`` sets the bound one)."""
    tasks: Tasks = field(default_factory=Tasks)
    directory: Directory = field(default_factory=Directory)

    @property
    def liveness_s(self) -> float:
        """How long a process's liveness key (and its node's) lasts after its last heartbeat."""
        return self.sig.heartbeat_s * LIVENESS_HEARTBEATS

    @property
    def node_id(self) -> NodeId:
        """This process's SFU node id (when it runs an SFU)."""
        return NodeId(self.proc)
