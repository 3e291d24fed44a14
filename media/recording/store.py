"""The recordings at rest: listing, export, verification, retention.

Layout under ``ServerSettings.data_dir``::

    recordings/<consultation_id>/manifest.json
    recordings/<consultation_id>/<NN>-<source>-<publication>.webm|mkv (+ .key when sealed)

(Stills, sealed by the same vault, are :mod:`media.recording.stills`.)

Export remuxes every track into one Matroska file, each track shifted by its start offset
so that they play in sync; nothing is decoded or encoded. A recording of several segments (a
media node lost mid-call, ``media.recording.segments``) exports as one timeline: a party's
source continues in one stream across segments (the gap is a hole in it), in order. Verification decodes
everything (it is the one place that does) to prove the files are usable.
"""

from __future__ import annotations

import builtins
import contextlib
import heapq
import logging
import os
import statistics
import time
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import av
import av.error
from av.audio.codeccontext import AudioCodecContext
from av.container import InputContainer
from av.stream import Stream
from av.video.codeccontext import VideoCodecContext

from media.recording import ownership
from media.recording.ids import check_id
from media.recording.manifest import MANIFEST_NAME, Manifest, TrackEntry, read_manifest, write_manifest
from media.recording.muxer import add_stream_like, iter_packets
from media.recording.session import ErrorCallback, RecordingSession
from media.recording.vault import IntegrityError, Vault

logger = logging.getLogger(__name__)


class RecordingNotFound(KeyError):
    """No recording (or no still) with that id."""


@dataclass(frozen=True)
class TimelineGap:
    """A hole in a track's timeline."""

    at_s: float
    """Where it starts, in seconds from the track's first frame."""
    length_s: float


@dataclass(frozen=True)
class TrackReport:
    """What :meth:`RecordingStore.verify` found in one track."""

    publication_id: str
    source: str
    codec: str
    file: str
    frames_expected: int
    """The manifest's count."""
    packets: int
    decoded_frames: int
    duration_s: float
    gaps: tuple[TimelineGap, ...]
    """Holes longer than two frame intervals."""
    decode_errors: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.decode_errors == 0 and self.packets == self.frames_expected


@dataclass(frozen=True)
class VerifyReport:
    consultation_id: str
    tracks: tuple[TrackReport, ...]

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.tracks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "consultation_id": self.consultation_id,
            "ok": self.ok,
            "tracks": [{**asdict(t), "ok": t.ok} for t in self.tracks],
        }


@dataclass(frozen=True)
class Shredded:
    """A recording whose keys were destroyed by retention (for the journal)."""

    consultation_id: str
    files: tuple[str, ...]
    stopped_at: float
    shredded_at: float


class RecordingStore:
    """All consultations' recordings under one directory."""

    def __init__(self, recordings_dir: Path, vault: Vault, *, retention_days: int = 30) -> None:
        self.root = Path(recordings_dir)
        self._vault = vault
        self._retention_s = retention_days * 86400.0

    @classmethod
    def for_data_dir(cls, data_dir: str | Path, vault: Vault, *, retention_days: int = 30) -> RecordingStore:
        return cls(Path(data_dir) / "recordings", vault, retention_days=retention_days)

    def start_session(
        self,
        consultation_id: str,
        *,
        started_by: str,
        flush_interval_s: float = 1.0,
        on_error: ErrorCallback | None = None,
        clock: Callable[[], float] = time.monotonic,
        sync_executor: Executor | None = None,
        node: str | None = None,
    ) -> RecordingSession:
        return RecordingSession.start(
            self.root,
            consultation_id,
            self._vault,
            started_by=started_by,
            flush_interval_s=flush_interval_s,
            on_error=on_error,
            sync_executor=sync_executor,
            clock=clock,
            node=node,
        )

    def resume_session(
        self,
        consultation_id: str,
        *,
        node: str | None,
        started_at: float,
        started_by: str,
        flush_interval_s: float = 1.0,
        on_error: ErrorCallback | None = None,
        clock: Callable[[], float] = time.monotonic,
        sync_executor: Executor | None = None,
    ) -> tuple[RecordingSession, int]:
        """:meth:`RecordingSession.resume`: a new segment of a recording whose node was lost."""
        return RecordingSession.resume(
            self.root, consultation_id, self._vault, node=node, started_at=started_at, started_by=started_by,
            flush_interval_s=flush_interval_s, on_error=on_error, clock=clock, sync_executor=sync_executor)

    def list(self) -> builtins.list[Manifest]:
        if not self.root.is_dir():
            return []
        out = []
        for directory in sorted(self.root.iterdir()):
            if (directory / MANIFEST_NAME).is_file():
                try:
                    out.append(read_manifest(directory))
                except (OSError, ValueError, TypeError) as exc:
                    logger.warning("recording %s: unreadable manifest: %s", directory.name, exc)
        return out

    def manifest(self, consultation_id: str) -> Manifest:
        directory = self.root / check_id(consultation_id)
        try:
            return read_manifest(directory)
        except FileNotFoundError:
            raise RecordingNotFound(consultation_id) from None

    def _readable_tracks(self, manifest: Manifest) -> builtins.list[TrackEntry]:
        directory = self.root / manifest.consultation_id
        return [t for t in manifest.tracks if t.frames > 0 and (directory / t.file).exists()]

    def export(self, consultation_id: str, out_path: Path) -> Path:
        """One Matroska file with every track, in sync, remuxed (not transcoded)."""
        manifest = self.manifest(consultation_id)
        if manifest.shredded_at is not None:
            raise RecordingNotFound(f"{consultation_id} was shredded")
        if manifest.stopped_at is None:
            raise ValueError(f"recording {consultation_id} is still running")
        directory = self.root / consultation_id
        tracks = self._readable_tracks(manifest)
        out_path = Path(out_path)
        tmp = out_path.with_name(out_path.name + ".part")
        tmp.unlink(missing_ok=True)
        # Plaintext health data: 0600 whatever the umask (FFmpeg keeps an existing file's mode).
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            with contextlib.ExitStack() as inputs, av.open(str(tmp), mode="w", format="matroska") as out:
                sources: builtins.list[Iterator[tuple[float, int, av.Packet]]] = []
                streams: dict[int, Stream] = {}
                for index, (track, follows) in enumerate(zip(tracks, continued_streams(tracks))):
                    reader = inputs.enter_context(self._vault.open_reader(directory / track.file))
                    inp = inputs.enter_context(av.open(reader, mode="r"))
                    if follows is None:
                        dst = add_stream_like(out, inp.streams[0])
                        dst.metadata["title"] = track.source
                    else:  # the same party's source in a later segment: the same stream, later
                        dst = streams[follows]
                    streams[index] = dst
                    sources.append(_shifted(inp, dst, index, (track.start_offset_ms or 0.0) / 1000.0))
                for _, _, packet in heapq.merge(*sources, key=lambda item: (item[0], item[1])):
                    out.mux(packet)
            os.replace(tmp, out_path)
        finally:
            tmp.unlink(missing_ok=True)
        logger.info("recording %s exported (%d tracks)", consultation_id, len(tracks))
        return out_path

    def verify(self, consultation_id: str) -> VerifyReport:
        """Decode every track and report frames, duration and gaps."""
        manifest = self.manifest(consultation_id)
        directory = self.root / consultation_id
        return VerifyReport(
            consultation_id,
            tuple(_verify_track(self._vault, directory, track) for track in manifest.tracks),
        )

    def purge_expired(self, now: float | None = None) -> builtins.list[Shredded]:
        """Crypto-shred the recordings stopped more than ``retention_days`` ago.

        The manifest stays (marked ``shredded_at``) so that the audit trail can say what
        existed; the keys and the data go. Running recordings are never touched.
        """
        now = time.time() if now is None else now
        shredded = []
        for manifest in self.list():
            if manifest.stopped_at is None or manifest.shredded_at is not None:
                continue
            if now - manifest.stopped_at < self._retention_s:
                continue
            directory = self.root / manifest.consultation_id
            # Processes sharing this data_dir purge too: one of them shreds (and journals) each.
            owner = ownership.hold(directory)
            if owner is None:
                continue
            try:
                done = self._shred(directory, now)
            finally:
                ownership.release(owner)
            if done is not None:
                shredded.append(done)
        return shredded

    def _shred(self, directory: Path, now: float) -> Shredded | None:
        manifest = read_manifest(directory)  # as it is now that this process holds it
        if manifest.stopped_at is None or manifest.shredded_at is not None:
            return None
        files = []
        for track in manifest.tracks:
            if self._vault.shred(directory / track.file):
                files.append(track.file)
        manifest = replace(manifest, shredded_at=now)
        write_manifest(directory, manifest)
        assert manifest.stopped_at is not None
        logger.info("recording %s shredded (retention)", manifest.consultation_id)
        return Shredded(manifest.consultation_id, tuple(files), manifest.stopped_at, now)


def continued_streams(tracks: builtins.list[TrackEntry]) -> builtins.list[int | None]:
    """Per track, the earlier track (its index in ``tracks``) whose export stream it continues, or
    None for a stream of its own: a track continues the latest earlier track of the same party,
    source and codec when that one was recorded in an earlier segment and ended before this one
    starts (a stream's timestamps only go forward). Tracks of one segment never share a stream."""
    out: builtins.list[int | None] = []
    latest: dict[tuple[str, str, str], int] = {}
    """(identity, source, codec) -> the index of its latest track so far."""
    for index, track in enumerate(tracks):
        key = (track.participant_identity, track.source, track.codec.lower())
        before = latest.get(key)
        prev = tracks[before] if before is not None else None
        continues = (prev is not None and prev.segment < track.segment and prev.end_offset_ms is not None
                     and track.start_offset_ms is not None and track.start_offset_ms > prev.end_offset_ms)
        out.append(before if continues else None)
        latest[key] = index
    return out


def _shifted(
    inp: InputContainer, dst: Stream, index: int, offset_s: float
) -> Iterator[tuple[float, int, av.Packet]]:
    """The packets of ``inp`` moved to ``dst`` and shifted by the track's start offset."""
    for packet in iter_packets(inp):
        tb = packet.time_base
        shift = round(offset_s / tb)
        if packet.pts is not None:
            packet.pts += shift
        if packet.dts is not None:
            packet.dts += shift
        at = float((packet.dts if packet.dts is not None else packet.pts or 0) * tb)
        packet.stream = dst
        yield at, index, packet


def _verify_track(vault: Vault, directory: Path, track: TrackEntry) -> TrackReport:
    packets = decoded = errors = 0
    times: list[float] = []
    error: str | None = None
    path = directory / track.file
    try:
        with vault.open_reader(path) as f, av.open(f, mode="r") as container:
            stream = container.streams[0]
            for packet in container.demux(stream):
                if not packet.size:
                    continue
                packets += 1
                if packet.pts is not None:
                    times.append(float(packet.pts * packet.time_base))
                try:
                    decoded += len(packet.decode())
                except av.error.FFmpegError:
                    errors += 1
            ctx = stream.codec_context
            if isinstance(ctx, (VideoCodecContext, AudioCodecContext)):
                try:
                    decoded += len(ctx.decode(None))  # drain the decoder
                except av.error.FFmpegError:
                    pass
    except FileNotFoundError:
        error = "missing" if track.frames else None
    except (IntegrityError, av.error.FFmpegError, OSError, ValueError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    gaps: list[TimelineGap] = []
    duration = 0.0
    if len(times) >= 2:
        diffs = [b - a for a, b in zip(times, times[1:])]
        interval = statistics.median(diffs) or 0.001
        duration = times[-1] - times[0] + interval
        gaps = [TimelineGap(round(a - times[0], 3), round(d, 3)) for a, d in zip(times, diffs) if d > 2 * interval]
    return TrackReport(
        publication_id=track.publication_id,
        source=track.source,
        codec=track.codec,
        file=track.file,
        frames_expected=track.frames,
        packets=packets,
        decoded_frames=decoded,
        duration_s=round(duration, 3),
        gaps=tuple(gaps),
        decode_errors=errors,
        error=error,
    )
