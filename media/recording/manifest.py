"""What a consultation's recording holds: its manifest, kept as JSON next to the tracks.

The file is replaced atomically on every change (:func:`write_manifest`), so that a
crash leaves either the previous manifest or the new one, never a torn one.

A recording is one or more segments (:class:`SegmentEntry`): a media node lost mid-call ends
one, and the node the room moves to writes the next into the same directory and manifest
(:mod:`media.recording.segments`); the holes between them are :class:`GapEntry`'s. The keys of
version 1 are all kept; ``segments``, ``gaps`` and the tracks' ``segment`` and
``end_offset_ms`` were added to them (a manifest without them reads as one segment).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class TrackEntry:
    """One recorded publication, as the manifest keeps it."""

    publication_id: str
    participant_identity: str
    source: str
    """camera, microphone, stethoscope, dermatoscope or otoscope."""
    codec: str
    """MIME type, e.g. ``video/VP8``."""
    clock_rate: int
    file: str
    """File name inside the consultation's directory."""
    added_at: float
    """Wall clock (Unix seconds)."""
    start_offset_ms: float | None = None
    """First written frame, in ms after the session's start (one clock for all tracks)."""
    frames: int = 0
    ended_at: float | None = None
    frames_seen: int = 0
    """Frames the SFU forwarded while this track was recorded, counted as the SFU counts
    them (video: packets with the marker bit; audio: packets). For a track recovered after a
    crash, a lower bound: what the last manifest saved before it said, or what reached the
    file if that is more."""
    frames_before_keyframe: int = 0
    """Video frames of those that came before the track's first keyframe: undecodable
    without it, so not recorded. Without packet loss, frames + frames_before_keyframe ==
    frames_seen; RED audio may have more frames than that: those of packets lost before the
    SFU, recovered from the next packet's redundancy."""
    segment: int = 0
    """The segment (:class:`SegmentEntry` ``index``) this track was recorded in."""
    end_offset_ms: float | None = None
    """Last written frame, in ms after the recording's start (the same clock as
    ``start_offset_ms``); for a track recovered after a crash, its last readable frame."""


class GapReason(StrEnum):
    """Why a recording has a hole between two segments."""

    NODE_LOST = "node_lost"
    """The media node writing it died; the room moved to another node, which resumed."""


@dataclass(frozen=True)
class SegmentEntry:
    """One stretch of a recording written by one process (media node)."""

    index: int
    node: str | None
    """The media node that wrote it (its node id); None: unknown (written elsewhere)."""
    started_at: float
    """Wall clock (Unix seconds) when this node started (or resumed) the recording."""
    ended_at: float | None = None
    end_reason: str | None = None
    """``stopped``, ``consultation_ended``, ``shutdown``, ``error: ...`` as ``stopped_reason``,
    or ``node_lost`` (a later segment resumed the recording on another node)."""


@dataclass(frozen=True)
class GapEntry:
    """A hole in the recording between segment ``after_segment`` and the next one."""

    after_segment: int
    reason: str
    """A :class:`GapReason` value."""
    start_ms: float | None
    """The last frame of the segment before, in ms after the recording's start (as the tracks'
    offsets); that segment's start when it kept no readable frame; None: not known yet (its tracks
    are being closed) or unknown (it was written elsewhere)."""
    end_ms: float | None
    """The first frame of the segment after; None: none yet."""
    duration_ms: float | None
    """``end_ms - start_ms`` when both are known."""
    start_at: float | None
    """``start_ms`` as wall clock (Unix seconds)."""
    end_at: float | None


@dataclass(frozen=True)
class Manifest:
    """What a consultation's recording holds; the JSON file is this, ``asdict``'ed."""

    consultation_id: str
    encrypted: bool
    started_at: float
    started_by: str
    tracks: tuple[TrackEntry, ...] = ()
    stopped_at: float | None = None
    stopped_by: str | None = None
    stopped_reason: str | None = None
    """``stopped``, ``recovered``, ``error: ...``."""
    shredded_at: float | None = None
    version: int = MANIFEST_VERSION
    segments: tuple[SegmentEntry, ...] = ()
    """In order; empty only in manifests written before segments existed (one segment then)."""
    gaps: tuple[GapEntry, ...] = ()
    """One per segment boundary, in order (:func:`media.recording.segments.gaps`)."""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["tracks"] = [asdict(t) for t in self.tracks]
        data["segments"] = [asdict(s) for s in self.segments]
        data["gaps"] = [asdict(g) for g in self.gaps]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        fields = dict(data)
        fields["tracks"] = tuple(TrackEntry(**t) for t in fields.get("tracks", ()))
        fields["segments"] = tuple(SegmentEntry(**s) for s in fields.get("segments", ()))
        fields["gaps"] = tuple(GapEntry(**g) for g in fields.get("gaps", ()))
        return cls(**fields)

    def track(self, publication_id: str) -> TrackEntry:
        for t in self.tracks:
            if t.publication_id == publication_id:
                return t
        raise KeyError(publication_id)


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Replace the manifest atomically (temporary file, fsync, rename, fsync dir)."""
    tmp = directory / (MANIFEST_NAME + ".tmp")
    tmp.unlink(missing_ok=True)  # a crash's leftover: created anew below, 0600
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as f:
        json.dump(manifest.to_dict(), f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / MANIFEST_NAME)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_manifest(directory: Path) -> Manifest:
    with open(directory / MANIFEST_NAME, encoding="utf-8") as f:
        return Manifest.from_dict(json.load(f))
