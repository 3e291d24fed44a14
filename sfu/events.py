"""What a room tells those who listen to it (the signalling layer relays these to browsers)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable


class RoomEventType(str, enum.Enum):
    PARTICIPANT_JOINED = "participant_joined"
    PARTICIPANT_LEFT = "participant_left"
    PUBLICATION_ADDED = "publication_added"
    PUBLICATION_REMOVED = "publication_removed"
    ROOM_CLOSED = "room_closed"


@dataclass(frozen=True)
class PublicationInfo:
    """A publication as others see it."""

    id: str
    room: str
    identity: str
    """The publishing participant's identity (the msid stream id subscribers see)."""
    role: str
    session_id: str
    """The peer connection (participant session) it arrives on."""
    kind: str
    source: str
    """One of :data:`core.vocabulary.MEDIA_SOURCES`."""
    codec: str
    """MIME type, e.g. video/VP8, video/H264, audio/opus."""
    published_at: float
    """Unix time; WHEP plays publications in this order."""
    replaces: str | None = None
    """Id of the publication (same identity and source) this one replaced."""


@dataclass(frozen=True)
class ParticipantInfo:
    session_id: str
    identity: str
    role: str


@dataclass(frozen=True)
class RoomEvent:
    type: RoomEventType
    room: str
    participant: ParticipantInfo | None = None
    publication: PublicationInfo | None = None


RoomListener = Callable[[RoomEvent], None]
