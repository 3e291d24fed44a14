"""The bus between signalling processes: events for sockets, and control notes.

Every envelope goes through the store's pub/sub, so that it reaches every
process (this one included):

* an event ``{"t": [[kind, key], ...], "m": message, "o": process}``: this
  process delivers it to its own sockets at once (:meth:`Bus.emit`) and skips its
  own envelope when it comes back; the others deliver it to theirs (``hub``);
* a control note, one key among :class:`Note` (``{"kick": 1}``,
  ``{"place": room, "node": id}``...): handed to the handler the service set
  for that note with :meth:`Bus.on`.
"""

from __future__ import annotations

import asyncio
import enum
from typing import Any, Callable, Iterable, Sequence

from signalling.hub import Hub, Target
from signalling.store import Store
from signalling.store.base import Envelope


class Note(str, enum.Enum):
    """Control notes between processes (the envelope's one key)."""

    POSITIONS = "positions"
    """The queue changed: refresh the positions sent to nurses."""
    KICK = "kick"
    """Run the whole matcher."""
    DIRECTORY = "directory"
    """The directory changed in the store: reload it."""
    PLACE = "place"
    """``{"place": room, "node": id}``: that node opens the room."""
    CLOSE_ROOM = "close_room"
    """``{"close_room": room, "node": id}``: that node closes the room."""
    REMOVE = "remove"
    """``{"remove": room, "node": id, "identity": guest}``: that node ends the guest's media."""
    ENDED = "ended"
    """``{"ended": consultation}``: it left the store; forget its timers."""


NoteHandler = Callable[[Envelope], None]


class Bus:
    def __init__(self, hub: Hub, store: Store, proc: str) -> None:
        self.hub = hub
        self.store = store
        self.proc = proc
        self._handlers: dict[Note, NoteHandler] = {}

    def start(self) -> None:
        self.store.subscribe(self.receive)

    def on(self, note: Note, handler: NoteHandler) -> None:
        self._handlers[note] = handler

    async def emit(self, targets: Iterable[Target], message: dict[str, Any]) -> None:
        """Deliver to this process's sockets now, and to the other processes' through the store."""
        await self.store.publish(self._deliver(targets, message))

    async def emit_all(self, events: Sequence[tuple[Iterable[Target], dict[str, Any]]]) -> None:
        """:meth:`emit` each event, in order, and wait for them together: their envelopes leave in one
        batch (one round trip to the store) instead of one after the other."""
        await asyncio.gather(*[self.store.publish(self._deliver(targets, message)) for targets, message in events])

    def _deliver(self, targets: Iterable[Target], message: dict[str, Any]) -> Envelope:
        """Deliver to this process's sockets; the envelope for the others."""
        wire = [list(t) for t in targets]
        self.hub.deliver(wire, message)
        return {"t": wire, "m": message, "o": self.proc}

    async def note(self, note: Note, value: str | int = 1, **fields: str) -> None:
        await self.store.publish({note.value: value, **fields})

    def receive(self, envelope: Envelope) -> None:
        for note in Note:
            if note.value in envelope:
                handler = self._handlers.get(note)
                if handler is not None:
                    handler(envelope)
                return
        if envelope.get("o") == self.proc:
            return  # delivered locally when emitted
        self.hub.deliver(envelope.get("t", ()), envelope.get("m", {}))
