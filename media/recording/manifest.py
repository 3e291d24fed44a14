"""What a consultation's recording holds: its manifest, kept as JSON next to the tracks.

The file is replaced atomically on every change (:func:`write_manifest`), so that a
crash leaves either the previous manifest or the new one, never a torn one.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
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
    them (video: packets with the marker bit; audio: packets)."""
    frames_before_keyframe: int = 0
    """Video frames of those that came before the track's first keyframe: undecodable
    without it, so not recorded. Without packet loss, frames + frames_before_keyframe ==
    frames_seen; RED audio may have more frames than that: those of packets lost before the
    SFU, recovered from the next packet's redundancy."""


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

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["tracks"] = [asdict(t) for t in self.tracks]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        fields = dict(data)
        fields["tracks"] = tuple(TrackEntry(**t) for t in fields.get("tracks", ()))
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
