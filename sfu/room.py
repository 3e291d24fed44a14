"""One consultation's media session: participants, publications, and who listens to it.

Rules:

* Publications are kept in publication order (WHEP plays them in that order).
* A participant publishing a source it (same identity) already publishes
  replaces the old publication: the new one adopts its subscriptions, which
  continue (same SSRC, continuous sequence numbers and timestamps) from the
  new publication's next keyframe. Subscriptions of a publication that ended
  without replacement wait, idle, for the same identity and source to publish
  again (a reconnecting device), or for their own participant to leave.
* Data messages (channel ``room``) are JSON; the room wraps them in an
  envelope ``{"from": identity, "role": role, "data": <message>}`` stamped from
  the sender's grant, so receivers can trust who sent it. ``"type": "command"``
  needs the ``command`` grant; refused messages get an error envelope back
  (``from`` = ``"sfu"``) and go nowhere. The devices' messages (of a seat publishing a
  device: the agent) and commands reach only the seats that see the devices (the
  physician, the nurse, a specialist, the agent: ``RoomGrant.sees_devices``).
* Listeners get :class:`sfu.events.RoomEvent` callbacks; a failing listener is
  logged and does not stop the others.

Lifecycle: open -> closed (``close()`` is idempotent and closes every participant, all
at once, each within ``[media] close_timeout_s``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable

from core import json_limits
from core.vocabulary import Source
from sfu.events import PublicationInfo, RoomEvent, RoomEventType, RoomListener
from sfu.publication import Publication

if TYPE_CHECKING:
    from sfu.participant import Participant
    from sfu.subscription import Subscription

logger = logging.getLogger(__name__)

MAX_DATA_BYTES = 16 * 1024
SERVER_IDENTITY = "sfu"


def envelope(identity: str, role: str, data: Any) -> str:
    return json.dumps({"from": identity, "role": role, "data": data}, separators=(",", ":"))


class Room:
    def __init__(self, name: str) -> None:
        self.name = name
        self.participants: dict[str, "Participant"] = {}
        self.publications: dict[str, Publication] = {}
        self.listeners: list[RoomListener] = []
        self._orphans: dict[tuple[str, str], list["Subscription"]] = {}
        self.closed = False

    # -- listeners ---------------------------------------------------------
    def listen(self, callback: RoomListener) -> Callable[[], None]:
        self.listeners.append(callback)

        def unsubscribe() -> None:
            if callback in self.listeners:
                self.listeners.remove(callback)

        return unsubscribe

    def emit(self, event: RoomEvent) -> None:
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:
                logger.exception("room listener failed", extra={"room": self.name})

    # -- participants --------------------------------------------------------
    def join(self, participant: "Participant") -> None:
        self.participants[participant.id] = participant
        self.emit(RoomEvent(RoomEventType.PARTICIPANT_JOINED, self.name, participant=participant.info))

    async def leave(self, participant: "Participant") -> None:
        if self.participants.pop(participant.id, None) is None:
            return
        await participant.close()
        for key, subscriptions in list(self._orphans.items()):
            alive = [s for s in subscriptions if not s.closed]
            if alive:
                self._orphans[key] = alive
            else:
                del self._orphans[key]
        self.emit(RoomEvent(RoomEventType.PARTICIPANT_LEFT, self.name, participant=participant.info))

    # -- publications ------------------------------------------------------
    def publication(self, publication_id: str) -> Publication | None:
        return self.publications.get(publication_id)

    def infos(self) -> list[PublicationInfo]:
        return [p.info for p in self.publications.values()]

    def add_publication(self, publication: Publication) -> None:
        old = next((p for p in self.publications.values() if p.key == publication.key), None)
        adopted: list["Subscription"] = []
        if old is not None:
            del self.publications[old.id]
            adopted = old.close()
            self.emit(RoomEvent(RoomEventType.PUBLICATION_REMOVED, self.name, publication=old.info))
            publication.info = _replacing(publication.info, old.info.id)
        adopted += [s for s in self._orphans.pop(publication.key, []) if not s.closed]
        self.publications[publication.id] = publication
        for subscription in adopted:
            subscription.attach(publication.forwarder, publication.id, publication.extensions)
        logger.info("publication added", extra={"room": self.name, "publication": publication.id,
                                                  "adopted": len(adopted)})
        self.emit(RoomEvent(RoomEventType.PUBLICATION_ADDED, self.name, publication=publication.info))

    def remove_publication(self, publication: Publication) -> None:
        if self.publications.pop(publication.id, None) is None:
            publication.close()
            return
        waiting = [s for s in publication.close() if not s.closed]
        if waiting:
            self._orphans.setdefault(publication.key, []).extend(waiting)
        self.emit(RoomEvent(RoomEventType.PUBLICATION_REMOVED, self.name, publication=publication.info))

    # -- data ----------------------------------------------------------------
    def relay_data(self, sender: "Participant", message: Any) -> None:
        """A message from ``sender``'s ``room`` channel."""
        if isinstance(message, bytes):
            self._refuse(sender, "binary messages are not relayed")
            return
        if len(message.encode()) > MAX_DATA_BYTES:
            self._refuse(sender, f"message larger than {MAX_DATA_BYTES} bytes")
            return
        try:
            data = json_limits.loads(message)
        except ValueError:
            self._refuse(sender, "message is not JSON")
            return
        if isinstance(data, dict) and data.get("type") == "command" and not sender.grant.command:
            self._refuse(sender, "command not granted")
            return
        text = envelope(sender.grant.identity, sender.grant.role.value, data)
        # The devices' talk (the agent's status, vitals, still previews; commands to it) is for the
        # seats that see the devices only: an interpreter or a family member gets none of it.
        devices_only = any(Source(s).is_device for s in sender.grant.publish) or (
            isinstance(data, dict) and data.get("type") == "command")
        for participant in list(self.participants.values()):
            if participant is not sender and (participant.grant.sees_devices or not devices_only):
                participant.send_data(text)

    def send_data(self, data: Any) -> int:
        """A message from the server to every participant; returns how many got it."""
        text = envelope(SERVER_IDENTITY, "server", data)
        return sum(1 for p in list(self.participants.values()) if p.send_data(text))

    def _refuse(self, sender: "Participant", reason: str) -> None:
        logger.info("data message refused", extra={"room": self.name, "session": sender.id, "reason": reason})
        sender.send_data(envelope(SERVER_IDENTITY, "server", {"type": "error", "reason": reason}))

    # -- closing ---------------------------------------------------------------
    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        # Together: each participant's close is bounded ([media] close_timeout_s), so is the room's.
        left = await asyncio.gather(*(self.leave(p) for p in list(self.participants.values())),
                                    return_exceptions=True)
        for failure in left:
            if isinstance(failure, Exception):
                logger.error("a participant did not leave cleanly", exc_info=failure, extra={"room": self.name})
        for publication in list(self.publications.values()):
            publication.close()
        self.publications.clear()
        self._orphans.clear()
        self.emit(RoomEvent(RoomEventType.ROOM_CLOSED, self.name))
        self.listeners.clear()


def _replacing(info: PublicationInfo, old_id: str) -> PublicationInfo:
    return replace(info, replaces=old_id)
