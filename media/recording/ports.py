"""What recording sees of the components above it: the SFU and signalling.

Recording sits in ``media/``, below ``sfu/`` and ``signalling/``, so it never imports
them: it names here, as small Protocols, the little it uses of each. The assembly
(``teleconsult/app.py``) hands it the SFU and signalling services, which match these
structurally; mypy checks that they do where the assembly wires them.

The SFU, as recording sees it::

    MediaServer.create_room(name) -> Room
    Room: publications, publication(id), listen(callback) -> remover
    Publication: info (id, room, identity, source, kind), codec, red_payload_type, closed,
                 add_packet_listener(listener) -> remover, request_keyframe(reason)
    RoomEvent: type (publication added / removed, room closed), publication info

Signalling, as recording and stills see it::

    Signalling.get_any(consultation id) -> Consultation | None
    Signalling.journal.append(act, actor=..., consultation_id=..., **ids)
    Signalling.emit(targets, message)   (also keeps ``recording.*`` state in the consultation)
    Consultation: id, site, physician, room, state, consent_recording

Attributes are read-only properties (a plain attribute of the same type matches);
ids given to the other side are the vocabulary's distinct types.
"""

from __future__ import annotations

import enum
from typing import Any, Awaitable, Callable, Iterable, Mapping, Protocol

from aiortc import RTCRtpCodecParameters

from core.vocabulary import Act, ConsultationId
from media.recording.depacketizer import RtpHeaderLike

PacketListener = Callable[[bytes, RtpHeaderLike], None]
"""Gets each media packet of a publication (RTX unwrapped) with the header the SFU
parsed; called on the forwarding path, so it must not raise."""


class RoomEventType(enum.StrEnum):
    """The room events recording follows (the SFU sends others too)."""

    PUBLICATION_ADDED = "publication_added"
    PUBLICATION_REMOVED = "publication_removed"
    ROOM_CLOSED = "room_closed"


class PublicationInfo(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def room(self) -> str: ...

    @property
    def identity(self) -> str:
        """The publishing participant."""

    @property
    def source(self) -> str:
        """A :class:`core.vocabulary.Source` value."""

    @property
    def kind(self) -> str:
        """A :class:`core.vocabulary.MediaKind` value."""


class Publication(Protocol):
    """One incoming track on the SFU."""

    @property
    def info(self) -> PublicationInfo: ...

    @property
    def codec(self) -> RTCRtpCodecParameters: ...

    @property
    def red_payload_type(self) -> int | None:
        """The publisher's RED (RFC 2198) payload type over ``codec`` (None: plain only)."""

    @property
    def closed(self) -> bool: ...

    def add_packet_listener(self, listener: PacketListener, /) -> Callable[[], None]:
        """Tap the publication's packets; returns the remover."""

    def request_keyframe(self, reason: str, /) -> None:
        """Ask the publisher for a keyframe (the SFU rate-limits its PLIs)."""


class RoomEvent(Protocol):
    @property
    def type(self) -> str:
        """A :class:`RoomEventType` value, or another kind recording ignores."""

    @property
    def publication(self) -> PublicationInfo | None: ...


class Room(Protocol):
    """One consultation's media session on the SFU."""

    @property
    def publications(self) -> Mapping[str, Publication]: ...

    def publication(self, publication_id: str, /) -> Publication | None: ...

    def listen(self, callback: Callable[[RoomEvent], None], /) -> Callable[[], None]:
        """Follow the room's events (called synchronously); returns the remover."""


class MediaServer(Protocol):
    """The SFU of this process."""

    def create_room(self, room: str, /) -> Room:
        """The room of that name, made if needed."""


JournalValue = str | int | float | bool | None


class Journal(Protocol):
    """The audit journal: ids and codes only."""

    async def append(self, act: Act, *, actor: str, consultation_id: ConsultationId | None = None,
                     about: None = None, **ids: JournalValue) -> object:
        """Record ``act``. Recording's acts are about their consultation only: ``about``
        (the journal's other subjects) stays None, and is named so that ``ids`` never
        carries it."""


class Consultation(Protocol):
    """What recording and stills read of a consultation."""

    @property
    def id(self) -> str: ...

    @property
    def site(self) -> str: ...

    @property
    def physician(self) -> str | None: ...

    @property
    def room(self) -> str | None:
        """Its SFU room (None: the room is named after the consultation)."""

    @property
    def state(self) -> str:
        """The consultation's state (``active``...)."""

    @property
    def consent_recording(self) -> bool:
        """The patient consented to recording at check-in."""

    @property
    def recording(self) -> Mapping[str, Any] | None:
        """The recording's state as the ``recording.*`` events left it (``active``, ``started_by``,
        ``started_at``...): kept in the store, so that the node a room moves to knows whether the
        room was being recorded."""


class Signalling(Protocol):
    """The signalling service of this process."""

    @property
    def journal(self) -> Journal: ...

    async def get_any(self, consultation_id: ConsultationId, /) -> Consultation | None:
        """A consultation, open or finished."""

    async def emit(self, targets: Iterable[tuple[str, str]], message: dict[str, Any], /) -> None:
        """Send an event to those ``targets`` (``("site", "<site>/nurse")``, ``("user", id)``);
        a ``recording.*`` event is also kept in the consultation's ``recording`` state."""

    async def room_node_elsewhere(self, consultation_id: ConsultationId, /) -> str | None:
        """The base URL of the media node hosting the consultation's room when that is another
        process (a recording taps the room where its packets are); None: here, or nowhere."""

    @property
    def node_id(self) -> str:
        """This process's media node (named in the segments it records)."""

    def on_room_opened(self, callback: Callable[[str], Awaitable[object]], /) -> None:
        """Call ``callback(room)`` each time this process's media node opens a room: placed here,
        or re-placed here because its node was lost (a recording then resumes here)."""


MediaServerAccess = Callable[[], MediaServer | None]
"""The SFU of this process, or None where it runs none (asked at each use: the
components are set up in order, and a process may run without one)."""
SignallingAccess = Callable[[], Signalling | None]
"""Signalling of this process, or None where it runs none."""
