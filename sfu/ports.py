"""What the SFU needs from the layers above it, as small Protocols (``teleconsult/app.py`` passes
the implementations in: the SFU imports neither signalling nor the assembly).

* :class:`RoomGate`: whether a room's consultation is live. A room opens only for a live
  consultation, and media for a room whose consultation ended is refused (403): a room token
  dies with its consultation. ``[sfu] standalone_rooms = true`` opens rooms for any valid room
  token instead (benches and SFU tests that make tokens by hand). A room token works only on
  the node that hosts its room (or the node it moved to): elsewhere the answer is 409
  ``wrong_node``, so that a second room of the same name never opens on another node.
"""

from __future__ import annotations

from typing import Protocol

from core.vocabulary import ParticipantId, RoomId


class RoomGate(Protocol):
    async def is_live(self, room_id: RoomId, identity: ParticipantId | None = None) -> bool:
        """True while the consultation the room is named after is live (accepted or active) and,
        given ``identity``, that identity holds a seat in it now (a removed guest does not)."""
        ...

    async def hosted_here(self, room_id: RoomId) -> bool:
        """False when the room is placed on another media node (the store's placement)."""
        ...


__all__ = ["RoomGate"]
