"""A room's state as every process reads it: who is in the room and what it publishes (issue 19).

Only the SFU of the node hosting a room knows its participants and publications; the other
processes (signalling-only ones, other media nodes) know what the store holds. So the hosting
node writes one small document per room into the store whenever the room changes
(``Store.put_room_state``), and a process that does not host the room answers from it
(:meth:`RoomStates.view`), the same as the hosting node answers from its SFU.

Rules:

* The document is a snapshot of the SFU taken when it is written, not a sum of events: a burst
  of events (a participant joining with three tracks) is one or two writes, and a write lost to
  a store outage is made good by the next change. Writes of one room are serialized here and
  numbered; the store keeps only a newer number, and only from the node the room is placed on
  (a node that lost the room writes nothing).
* The node writes it before relaying the event that announced the change (``Rooms._relay``): a
  party that hears ``room.event`` and asks ``room.publications`` on any process reads that
  change or a later one.
* It lives as long as its node's heartbeat (three heartbeats, extended by each), goes with a node
  known dead (``Store.expire_node``) and when the room is placed anew (moved) or unplaced
  (closed): a dead node's rooms show nothing stale.
* It holds what the SFU says (``sfu.events.ParticipantInfo``, ``PublicationInfo``), no patient
  data; the seat's grants filter what a caller is shown (``Rooms.publications``) on every
  process alike.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from sfu.service import SfuService
from signalling.context import Context

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoomView:
    """A room's participants and publications now (as dicts of the SFU's infos), wherever read."""

    participants: list[dict[str, Any]] = field(default_factory=list)
    """``{session_id, identity, role}`` of each media session, in join order."""
    publications: list[dict[str, Any]] = field(default_factory=list)
    """``sfu.events.PublicationInfo`` as a dict, in publication order."""

    def to_doc(self, room: str, node: str, at: float) -> dict[str, Any]:
        return {"room": room, "node": node, "at": at, "participants": self.participants,
                "publications": self.publications}

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> "RoomView":
        return cls([dict(p) for p in doc.get("participants") or () if isinstance(p, dict)],
                   [dict(p) for p in doc.get("publications") or () if isinstance(p, dict)])

    @classmethod
    def of(cls, sfu: SfuService, room: str) -> "RoomView":
        """What this process's SFU holds of ``room``."""
        return cls([dataclasses.asdict(p) for p in sfu.participants(room)],
                   [dataclasses.asdict(p) for p in sfu.publications(room)])


class RoomStates:
    """The documents of the rooms this node hosts (written), and any room's view (read)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._changes: dict[str, int] = {}
        """Room -> changes seen on this node (the version the next snapshot gets)."""
        self._written: dict[str, int] = {}
        """Room -> the version last written to the store."""
        self._locks: dict[str, asyncio.Lock] = {}

    def changed(self, room: str) -> int:
        """A change of a room this node hosts (called by its SFU's event, synchronously): its number."""
        self._changes[room] = self._changes.get(room, 0) + 1
        return self._changes[room]

    async def write(self, room: str, change: int) -> None:
        """Make the store's document at least as new as ``change``: one snapshot of the SFU now, unless
        one taken after that change is written already."""
        lock = self._locks.setdefault(room, asyncio.Lock())
        async with lock:
            version = self._changes.get(room)
            sfu = self.ctx.sfu()
            if version is None or sfu is None or self._written.get(room, 0) >= change:
                return  # forgotten (closed here), or a later snapshot covers it
            doc = RoomView.of(sfu, room).to_doc(room, self.ctx.node_id, self.ctx.clock())
            written = await self.ctx.store.put_room_state(room, self.ctx.node_id, version, doc,
                                                          self.ctx.liveness_s)
            if room in self._changes:
                self._written[room] = max(self._written.get(room, 0), version)
            if not written:
                logger.info("room state not written: the room is placed elsewhere or a newer one is",
                            extra={"room": room, "version": version})

    def hosted(self) -> list[str]:
        """Rooms whose document this node keeps (its heartbeat extends their life)."""
        return list(self._changes)

    def forget(self, room: str) -> None:
        """The room closed here (its document left the store with its placement)."""
        self._changes.pop(room, None)
        self._written.pop(room, None)
        self._locks.pop(room, None)

    async def view(self, room: str) -> RoomView:
        """The room's state as its node last wrote it; empty when placed nowhere or nothing written."""
        got = await self.ctx.store.room_state(room)
        return RoomView.from_doc(got.doc) if got is not None else RoomView()


__all__ = ["RoomStates", "RoomView"]
