"""Crash recovery at startup: close the recordings a killed process left open.

A recording whose manifest has no ``stopped_at`` was running when the process died.
Each of its track files is remuxed from what is readable (``allow_truncated``: the last
sealed chunk) into a properly closed file, its frame count taken from that file, and
the manifest marked ``stopped_reason="recovered"``. The torn files go only once the
manifest names the recovered ones. A recording another live process is writing (its
directory locked: ``ownership``; processes sharing one data_dir) is left alone.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from media.recording import ownership
from media.recording.manifest import Manifest, TrackEntry, read_manifest, write_manifest
from media.recording.muxer import remux_file
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
        if manifest.stopped_at is not None:
            continue
        owner = ownership.hold(directory)
        if owner is None:
            # Another live process (a media worker on the same data_dir) is writing it.
            logger.info("recording dir %s: being written by a live process, left as it is", directory.name)
            continue
        try:
            recovered.append(_recover(directory, manifest, vault, wall_clock))
        finally:
            ownership.release(owner)
    return recovered


def _recover(directory: Path, manifest: Manifest, vault: Vault, wall_clock: Callable[[], float]) -> str:
    """Close one recording (its directory locked by this process); its consultation id."""
    tracks = []
    superseded: list[Path] = []
    for entry in manifest.tracks:
        new_entry, old = _recover_track(directory, entry, vault, wall_clock)
        tracks.append(new_entry)
        if old is not None:
            superseded.append(old)
    manifest = replace(
        manifest,
        tracks=tuple(tracks),
        stopped_at=wall_clock(),
        stopped_by="system",
        stopped_reason="recovered",
    )
    write_manifest(directory, manifest)
    # Only once the manifest names the recovered files do the torn ones go.
    for old in superseded:
        vault.shred(old)
    logger.info("recording %s recovered (%d tracks)", manifest.consultation_id, len(tracks))
    return manifest.consultation_id


def _recover_track(
    directory: Path, entry: TrackEntry, vault: Vault, wall_clock: Callable[[], float]
) -> tuple[TrackEntry, Path | None]:
    """(the entry as recovered, the torn file to delete once the manifest is saved)."""
    path = directory / entry.file
    ended = entry.ended_at if entry.ended_at is not None else wall_clock()
    if not path.exists():
        return replace(entry, frames=0, ended_at=ended), None
    new = path.with_name(f"{path.stem}-recovered{path.suffix}")
    for stale in (new, key_path(new)):
        stale.unlink(missing_ok=True)
    try:
        frames = remux_file(path, new, vault, allow_truncated=True)
    except Exception as exc:
        logger.warning("recording %s: %s not recoverable: %s", directory.name, entry.file, exc)
        vault.shred(new)
        return replace(entry, frames=0, ended_at=ended), None
    return replace(entry, file=new.name, frames=frames, ended_at=ended), path
