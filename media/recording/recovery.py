"""Crash recovery at startup: close the recordings a killed process left open.

A recording whose manifest has no ``stopped_at`` was running when the process died.
Each of its open track files (no ``ended_at``: a track closed before the crash is a whole
file already) is remuxed from what is readable (``allow_truncated``: the last sealed chunk)
into a properly closed file, its frame count and last frame taken from that file, and the
manifest marked ``stopped_reason="recovered"``. The torn files go only once the manifest
names the recovered ones. A recording another live process is writing (its directory
locked: ``ownership``; processes sharing one data_dir) is left alone.

The node that resumes a recording whose node was lost (``media.recording.segments``) closes
the lost segment's tracks the same way (:func:`recover_track`), a while after it resumed. A
recording stopped with such tracks still open (its writer failed or died before) is recovered
too, keeping why it stopped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from media.recording import ownership, segments
from media.recording.manifest import Manifest, TrackEntry, read_manifest, write_manifest
from media.recording.muxer import remux_track
from media.recording.vault import Vault, key_path

logger = logging.getLogger(__name__)


def recover(recordings_dir: Path, vault: Vault, *, wall_clock: Callable[[], float] = time.time) -> list[str]:
    """Close the recordings a crash left open; returns their consultation ids."""
    recovered: list[str] = []
    root = Path(recordings_dir)
    if not root.is_dir():
        return recovered
    for directory in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            manifest = read_manifest(directory)
        except (OSError, ValueError, TypeError) as exc:
            logger.warning("recording dir %s: unreadable manifest: %s", directory.name, exc)
            continue
        if not _left_open(manifest):
            continue
        owner = ownership.hold(directory)
        if owner is None:
            # Another live process (a media worker on the same data_dir) is writing it.
            logger.info("recording dir %s: being written by a live process, left as it is", directory.name)
            continue
        try:
            manifest = read_manifest(directory)  # as it is now that this process holds it
            if _left_open(manifest):
                recovered.append(_recover(directory, manifest, vault, wall_clock))
        finally:
            ownership.release(owner)
    return recovered


def _left_open(manifest: Manifest) -> bool:
    """Running when its process died, or stopped with tracks of a lost segment still open (a
    resumed recording whose writer died, or failed, before it closed them)."""
    return manifest.stopped_at is None or (manifest.shredded_at is None
                                           and any(t.ended_at is None for t in manifest.tracks))


def _recover(directory: Path, manifest: Manifest, vault: Vault, wall_clock: Callable[[], float]) -> str:
    """Close one recording (its directory locked by this process); its consultation id."""
    manifest, superseded = close_open_tracks(directory, manifest, vault, wall_clock)
    manifest = segments.settled(manifest)
    if manifest.stopped_at is None:
        now = wall_clock()
        manifest = segments.ended(replace(
            manifest,
            stopped_at=now,
            stopped_by="system",
            stopped_reason="recovered",
        ), at=now, reason="recovered")
    manifest = segments.with_gaps(manifest)
    write_manifest(directory, manifest)
    # Only once the manifest names the recovered files do the torn ones go.
    shred(vault, superseded)
    logger.info("recording %s recovered (%d tracks)", manifest.consultation_id, len(manifest.tracks))
    return manifest.consultation_id


def close_open_tracks(directory: Path, manifest: Manifest, vault: Vault,
                      wall_clock: Callable[[], float] = time.time) -> tuple[Manifest, list[Path]]:
    """Each track a dead process left open remuxed into a closed file (the caller holds the
    directory's lock): (the manifest naming them, the torn files to :func:`shred` once it is saved)."""
    tracks = []
    superseded: list[Path] = []
    for entry in manifest.tracks:
        if entry.ended_at is not None:
            tracks.append(entry)
            continue
        new_entry, old = recover_track(directory, entry, vault, wall_clock)
        tracks.append(new_entry)
        if old is not None:
            superseded.append(old)
    return replace(manifest, tracks=tuple(tracks)), superseded


def shred(vault: Vault, paths: list[Path]) -> None:
    for old in paths:
        vault.shred(old)


def recover_track(
    directory: Path, entry: TrackEntry, vault: Vault, wall_clock: Callable[[], float] = time.time
) -> tuple[TrackEntry, Path | None]:
    """One track a dead process left open, remuxed into a closed file: (the entry as recovered,
    the torn file to delete once the manifest naming the new one is saved)."""
    path = directory / entry.file
    ended = entry.ended_at if entry.ended_at is not None else wall_clock()
    if not path.exists():
        return replace(entry, frames=0, ended_at=ended), None
    new = path.with_name(f"{path.stem}-recovered{path.suffix}")
    for stale in (new, key_path(new)):
        stale.unlink(missing_ok=True)
    try:
        copied = remux_track(path, new, vault, allow_truncated=True)
    except Exception as exc:
        logger.warning("recording %s: %s not recoverable: %s", directory.name, entry.file, exc)
        vault.shred(new)
        return replace(entry, frames=0, ended_at=ended), None
    # The last readable frame: the first one's arrival plus the span of the readable packets.
    end_ms = (None if entry.start_offset_ms is None or not copied.frames
              else round(entry.start_offset_ms + copied.span_s * 1000.0, 3))
    # The SFU saw at least what reached the file. The count the manifest held is from its last
    # save (tracks coming and going, a track's first frame): far behind, 1 of 570 in a test.
    seen = max(entry.frames_seen, copied.frames + entry.frames_before_keyframe)
    return replace(entry, file=new.name, frames=copied.frames, frames_seen=seen, ended_at=ended,
                   end_offset_ms=end_ms), path
