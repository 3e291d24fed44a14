"""Recording of a consultation's publications, without decoding or encoding.

* :class:`TrackRecorder` writes one publication's :class:`EncodedFrame` into a live
  (streamable) Matroska/WebM file with PyAV muxing only: VP8 and Opus in WebM, H.264 in
  Matroska. The container writes into a :class:`~media.crypto.SealedWriter`, which has
  no ``seek``, so the muxer never goes back: clusters close every second
  (``cluster_time_limit``) and are sealed on disk at each flush. A process killed at any
  moment leaves a file readable up to a couple of seconds before the kill.
* :class:`RecordingSession` (one per consultation) holds the track recorders, turns RTP
  packets into frames (:class:`~media.depacketizer.Depacketizer`) and keeps a JSON
  manifest, replaced atomically on every change. A write error (disk full) stops the
  session and calls ``on_error``: the SFU's forwarding path never sees an exception.
* :func:`recover` closes, at startup, the sessions a crash left open.

Lifecycle of a session: recording → stopped | failed. ``stop()`` is idempotent.
Clocks: ``arrival`` times passed to :meth:`RecordingSession.feed` are on the session's
``clock`` (``time.monotonic`` by default, which is also what asyncio's ``loop.time()``
uses); the manifest's dates are on ``wall_clock`` (Unix seconds).
"""

from __future__ import annotations

import fractions
import json
import logging
import os
import re
import time
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import av
import av.error
from aiortc import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from media.crypto import SealedWriter, Vault, key_path
from media.depacketizer import Depacketizer, EncodedFrame, RtpHeaderLike, h264_dimensions, vp8_dimensions

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
SOURCES = ("camera", "microphone", "stethoscope", "dermatoscope", "otoscope")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_CLUSTER_TIME_LIMIT_MS = 1000

# mime type → (container format, file extension, FFmpeg codec name)
_FORMATS = {
    "video/vp8": ("webm", "webm", "vp8"),
    "audio/opus": ("webm", "webm", "opus"),
    "video/h264": ("matroska", "mkv", "h264"),
}


def check_id(value: str, what: str = "consultation id") -> str:
    """Ids become path components: refuse anything that could leave the directory."""
    if not _ID_RE.match(value) or ".." in value:
        raise ValueError(f"invalid {what}: {value!r}")
    return value


def _live_muxer_options() -> dict[str, str]:
    return {"live": "1", "cluster_time_limit": str(_CLUSTER_TIME_LIMIT_MS)}


def open_live_output(writer: SealedWriter, container_format: str) -> av.container.OutputContainer:
    """A muxer that only appends (live Matroska) and hands each closed cluster over."""
    return av.open(
        writer,
        mode="w",
        format=container_format,
        options=_live_muxer_options(),
        container_options={"flush_packets": "1"},
    )


class TrackRecorder:
    """Writes one publication's encoded frames to one file.

    Lifecycle: waiting (video: for a keyframe; the file does not exist yet) → writing →
    closed. ``write`` raises on I/O errors (the session handles them); ``close`` is
    idempotent.
    """

    def __init__(
        self,
        path: Path,
        mime_type: str,
        vault: Vault,
        *,
        flush_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sync_executor: Executor | None = None,
    ) -> None:
        mime = mime_type.lower()
        if mime not in _FORMATS:
            raise ValueError(f"cannot record {mime_type}")
        self.path = path
        self.mime = mime
        self.is_video = mime.startswith("video/")
        self._vault = vault
        self._flush_interval_s = flush_interval_s
        self._clock = clock
        self._sync_executor = sync_executor
        self._writer: SealedWriter | None = None
        self._container: av.container.OutputContainer | None = None
        self._stream: Any = None
        self._first_ts: int | None = None
        self._last_ts32 = 0
        self._last_ext = 0
        self._last_pts = -1
        self._last_flush = 0.0
        self._time_base = fractions.Fraction(1, 90000)  # set from the first frame in _open
        self._closed = False
        self.frames_written = 0
        self.first_arrival: float | None = None
        self.duration_ts = 0
        """RTP ticks from the first to the last frame written."""

    @property
    def started(self) -> bool:
        return self._container is not None

    def write(self, frame: EncodedFrame) -> bool:
        """Mux one frame; False when it was skipped (video before the first keyframe)."""
        if self._closed:
            return False
        if self._container is None:
            if self.is_video and not frame.keyframe:
                return False
            if not self._open(frame):
                return False
        assert self._container is not None
        ext = self._unwrap(frame.timestamp)
        assert self._first_ts is not None
        # The depacketizer releases frames in sequence order; a timestamp going
        # backwards (sender bug) is clamped because the muxer refuses it.
        pts = ext - self._first_ts
        if pts < self._last_pts:
            pts = self._last_pts
        packet = av.Packet(frame.data)
        packet.pts = packet.dts = pts
        packet.time_base = self._time_base
        packet.stream = self._stream
        packet.is_keyframe = frame.keyframe
        self._container.mux(packet)
        self._last_pts = pts
        self.duration_ts = pts
        self.frames_written += 1
        # Seal and sync once the interval is over and the muxer handed something over
        # (it does so per cluster): at most one fsync per interval per track.
        now = self._clock()
        if now - self._last_flush >= self._flush_interval_s and self._writer is not None and self._writer.dirty:
            self._flush(now)
        return True

    def flush(self) -> None:
        """Seal what was written so far (and sync it)."""
        if self._writer is not None and not self._closed:
            self._flush(self._clock())

    def flush_if_stale(self, now: float | None = None) -> bool:
        """The timer's flush: only when something was written and the track did not
        flush itself during the last half interval (so an active track is synced about
        once per interval, by whichever comes first, and an idle one within 1.5
        intervals). Returns whether it flushed."""
        if self._writer is None or self._closed or not self._writer.dirty:
            return False
        now = self._clock() if now is None else now
        if now - self._last_flush < self._flush_interval_s / 2:
            return False
        self._flush(now)
        return True

    def _flush(self, now: float) -> None:
        assert self._writer is not None
        self._writer.flush(self._sync_executor)
        self._last_flush = now

    def close(self) -> None:
        """Write the end of the container and seal the file."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._container is not None:
                self._container.close()
        finally:
            if self._writer is not None:
                self._writer.close()

    def abort(self) -> None:
        """After an I/O error: release what is open, write nothing more."""
        self._closed = True
        if self._writer is not None:
            self._writer.abort()
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # the container's own write fails on the aborted writer
                pass

    def _open(self, frame: EncodedFrame) -> bool:
        container_format, _, codec_name = _FORMATS[self.mime]
        kwargs: dict[str, Any] = {}
        if self.mime == "video/vp8":
            dims = vp8_dimensions(frame.data)
        elif self.mime == "video/h264":
            dims = h264_dimensions(frame.data)
        else:
            dims = None
        if self.is_video:
            if dims is None:
                # An IDR before any SPS: keep waiting for a keyframe that says its size.
                logger.warning("%s: keyframe without dimensions, skipped", self.path.name)
                return False
            kwargs = {"width": dims[0], "height": dims[1]}
        self._writer = self._vault.create(self.path)
        try:
            self._container = open_live_output(self._writer, container_format)
            if self.is_video:
                self._stream = self._container.add_mux_stream(codec_name, **kwargs)
            else:
                self._stream = self._container.add_mux_stream(codec_name, rate=frame.clock_rate)
            self._stream.time_base = fractions.Fraction(1, 1000)
        except Exception:
            self._writer.abort()
            raise
        self._time_base = fractions.Fraction(1, frame.clock_rate)
        self._first_ts = frame.timestamp
        self._last_ts32 = frame.timestamp
        self._last_ext = frame.timestamp
        self.first_arrival = frame.arrival
        self._last_flush = self._clock()
        return True

    def _unwrap(self, ts: int) -> int:
        delta = ((ts - self._last_ts32 + (1 << 31)) % (1 << 32)) - (1 << 31)
        self._last_ts32 = ts
        self._last_ext += delta
        return self._last_ext


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
    with open(tmp, "w", encoding="utf-8") as f:
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


ErrorCallback = Callable[[str, BaseException], None]


@dataclass
class _Track:
    entry: TrackEntry
    depacketizer: Depacketizer
    recorder: TrackRecorder


class RecordingSession:
    """One consultation's recording: several tracks, one manifest, one clock."""

    def __init__(
        self,
        directory: Path,
        manifest: Manifest,
        vault: Vault,
        *,
        flush_interval_s: float,
        on_error: ErrorCallback | None,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
        sync_executor: Executor | None = None,
    ) -> None:
        self.directory = directory
        self._sync_executor = sync_executor
        self._manifest = manifest
        self._vault = vault
        self._flush_interval_s = flush_interval_s
        self._on_error = on_error
        self._clock = clock
        self._wall_clock = wall_clock
        self._origin = clock()
        self._tracks: dict[str, _Track] = {}
        self._state = "recording"
        self.error: BaseException | None = None

    @classmethod
    def start(
        cls,
        recordings_dir: Path,
        consultation_id: str,
        vault: Vault,
        *,
        started_by: str,
        flush_interval_s: float = 1.0,
        on_error: ErrorCallback | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sync_executor: Executor | None = None,
    ) -> RecordingSession:
        """Create ``<recordings_dir>/<consultation_id>/`` and its manifest.

        Raises ``FileExistsError`` when that consultation already has a recording.
        ``sync_executor``: where the media files' periodic fsyncs run (off the event
        loop); inline when None. The manifest is always synced inline.
        """
        directory = Path(recordings_dir) / check_id(consultation_id)
        directory.parent.mkdir(parents=True, exist_ok=True)
        directory.mkdir()
        manifest = Manifest(
            consultation_id=consultation_id,
            encrypted=vault.encrypted,
            started_at=wall_clock(),
            started_by=started_by,
        )
        write_manifest(directory, manifest)
        logger.info("recording %s started by %s", consultation_id, started_by)
        return cls(
            directory,
            manifest,
            vault,
            flush_interval_s=flush_interval_s,
            on_error=on_error,
            clock=clock,
            wall_clock=wall_clock,
            sync_executor=sync_executor,
        )

    @property
    def consultation_id(self) -> str:
        return self._manifest.consultation_id

    @property
    def state(self) -> str:
        """``recording``, ``stopped`` or ``failed``."""
        return self._state

    @property
    def manifest(self) -> Manifest:
        """The manifest with live frame counts."""
        return self._with_counts(self._manifest)

    def add_track(
        self,
        publication_id: str,
        participant_identity: str,
        source: str,
        codec: RTCRtpCodecParameters,
    ) -> None:
        """Start recording a publication (idempotent for the same publication id)."""
        if self._state != "recording" or publication_id in self._tracks:
            return
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r}")
        mime = codec.mimeType.lower()
        if mime not in _FORMATS:
            raise ValueError(f"cannot record {codec.mimeType}")
        index = len(self._manifest.tracks)
        safe = re.sub(r"[^A-Za-z0-9_-]", "_", publication_id)[:48]
        name = f"{index:02d}-{source}-{safe}.{_FORMATS[mime][1]}"
        entry = TrackEntry(
            publication_id=publication_id,
            participant_identity=participant_identity,
            source=source,
            codec=codec.mimeType,
            clock_rate=codec.clockRate,
            file=name,
            added_at=self._wall_clock(),
        )
        recorder = TrackRecorder(
            self.directory / name,
            mime,
            self._vault,
            flush_interval_s=self._flush_interval_s,
            clock=self._clock,
            sync_executor=self._sync_executor,
        )
        self._tracks[publication_id] = _Track(entry, Depacketizer(codec), recorder)
        self._manifest = replace(self._manifest, tracks=self._manifest.tracks + (entry,))
        self._save()

    def feed(self, publication_id: str, packet: RtpPacket, arrival: float | None = None) -> bool:
        """Take one RTP packet of a recorded publication. Never raises.

        Returns True when the recording needs a keyframe from the publisher (before the
        first one, and after a loss broke the chain): the SFU sends a rate-limited PLI.
        """
        track = self._tracks.get(publication_id)
        if track is None or self._state != "recording":
            return False
        now = self._clock() if arrival is None else arrival
        try:
            for event in track.depacketizer.push(packet, now):
                if isinstance(event, EncodedFrame):
                    self._write(track, event)
            return track.depacketizer.waiting_for_keyframe
        except Exception as exc:  # disk full, I/O error, muxer error: stop, tell, go on
            self._fail(exc)
            return False

    def feed_rtp(self, publication_id: str, data: bytes, header: RtpHeaderLike, arrival: float) -> bool:
        """:meth:`feed` for a datagram whose header the SFU already parsed (the tap's
        path: no second parse, no packet object). Never raises; same answer."""
        track = self._tracks.get(publication_id)
        if track is None or self._state != "recording":
            return False
        try:
            events = track.depacketizer.push_rtp(data, header, arrival)
            if events:
                for event in events:
                    if type(event) is EncodedFrame:
                        self._write(track, event)
            return track.depacketizer.waiting_for_keyframe
        except Exception as exc:  # disk full, I/O error, muxer error: stop, tell, go on
            self._fail(exc)
            return False

    def feed_rtp_batch(self, publication_id: str, batch: list[tuple[bytes, RtpHeaderLike, float]]) -> bool:
        """:meth:`feed_rtp` for several (datagram, header, arrival) in order; the answer
        is the one after the last. Never raises."""
        track = self._tracks.get(publication_id)
        if track is None or self._state != "recording":
            return False
        push = track.depacketizer.push_rtp
        try:
            for data, header, arrival in batch:
                events = push(data, header, arrival)
                if events:
                    for event in events:
                        if type(event) is EncodedFrame:
                            self._write(track, event)
                    if self._state != "recording":  # a write error failed the session
                        return False
            return track.depacketizer.waiting_for_keyframe
        except Exception as exc:  # disk full, I/O error, muxer error: stop, tell, go on
            self._fail(exc)
            return False

    def flush(self) -> None:
        """Seal what every track has written so far. Never raises."""
        if self._state != "recording":
            return
        try:
            for track in self._tracks.values():
                track.recorder.flush()
        except Exception as exc:
            self._fail(exc)

    def flush_stale(self) -> int:
        """The timer's flush (so that an idle track is on disk too): only the tracks
        that wrote something and did not flush themselves lately
        (:meth:`TrackRecorder.flush_if_stale`). Never raises; returns how many flushed."""
        if self._state != "recording":
            return 0
        flushed = 0
        try:
            now = self._clock()
            for track in self._tracks.values():
                flushed += track.recorder.flush_if_stale(now)
        except Exception as exc:
            self._fail(exc)
        return flushed

    def remove_track(self, publication_id: str) -> None:
        """The publication ended: close its file (the manifest keeps it)."""
        track = self._tracks.pop(publication_id, None)
        if track is None or self._state != "recording":
            return
        try:
            self._close_track(track)
            self._save()
        except Exception as exc:
            self._fail(exc)

    def stop(self, stopped_by: str, reason: str = "stopped") -> Manifest:
        """Close every file and the manifest. Idempotent; returns the final manifest."""
        if self._state != "recording":
            return self._manifest
        errors: list[BaseException] = []
        for track in list(self._tracks.values()):
            try:
                self._close_track(track)
            except Exception as exc:
                errors.append(exc)
                track.recorder.abort()
        self._tracks.clear()
        self._state = "stopped"
        self._manifest = replace(
            self._manifest, stopped_at=self._wall_clock(), stopped_by=stopped_by, stopped_reason=reason
        )
        try:
            self._save()
        except Exception as exc:
            errors.append(exc)
        logger.info("recording %s stopped by %s (%s)", self.consultation_id, stopped_by, reason)
        if errors:
            self._state = "failed"
            self._notify(errors[0])
        return self._manifest

    # -- internals ---------------------------------------------------------------------

    def _write(self, track: _Track, frame: EncodedFrame) -> None:
        if track.recorder.write(frame) and track.entry.start_offset_ms is None:
            offset = (frame.arrival - self._origin) * 1000.0
            self._update_entry(track, start_offset_ms=round(offset, 3))

    def _close_track(self, track: _Track) -> None:
        for event in track.depacketizer.flush(self._clock()):
            if isinstance(event, EncodedFrame):
                self._write(track, event)
        track.recorder.close()
        self._update_entry(track, frames=track.recorder.frames_written, ended_at=self._wall_clock())

    def _update_entry(self, track: _Track, **changes: Any) -> None:
        new = replace(track.entry, **changes)
        self._manifest = replace(
            self._manifest,
            tracks=tuple(new if t.publication_id == new.publication_id else t for t in self._manifest.tracks),
        )
        track.entry = new

    def _with_counts(self, manifest: Manifest) -> Manifest:
        counts = {pid: t.recorder.frames_written for pid, t in self._tracks.items()}
        return replace(
            manifest,
            tracks=tuple(
                replace(t, frames=counts[t.publication_id]) if t.publication_id in counts else t
                for t in manifest.tracks
            ),
        )

    def _save(self) -> None:
        write_manifest(self.directory, self._with_counts(self._manifest))

    def _fail(self, exc: BaseException) -> None:
        if self._state != "recording":
            return
        self._state = "failed"
        self.error = exc
        logger.error("recording %s failed: %s", self.consultation_id, exc)
        for track in self._tracks.values():
            track.recorder.abort()
            self._update_entry(track, frames=track.recorder.frames_written, ended_at=self._wall_clock())
        self._tracks.clear()
        self._manifest = replace(
            self._manifest,
            stopped_at=self._wall_clock(),
            stopped_by="system",
            stopped_reason=f"error: {type(exc).__name__}: {exc}"[:200],
        )
        try:
            self._save()
        except Exception:  # the disk that failed the media may fail the manifest too
            logger.exception("recording %s: manifest not saved", self.consultation_id)
        self._notify(exc)

    def _notify(self, exc: BaseException) -> None:
        if self._on_error is None:
            return
        try:
            self._on_error(self.consultation_id, exc)
        except Exception:
            logger.exception("recording %s: error callback failed", self.consultation_id)


# -- reading back and recovery ---------------------------------------------------------


def iter_packets(container: av.container.InputContainer) -> Iterator[av.Packet]:
    """Demuxed packets with data; a file cut by a crash ends at its last whole packet."""
    try:
        for packet in container.demux():
            if packet.size:
                yield packet
    except (av.error.FFmpegError, EOFError) as exc:
        logger.warning("stream ends early: %s", exc)


def count_frames(path: Path, vault: Vault, *, allow_truncated: bool = False) -> int:
    """Packets in a recorded file (each is one frame), without decoding."""
    with vault.open_reader(path, allow_truncated=allow_truncated) as f, av.open(f, mode="r") as container:
        return sum(1 for _ in iter_packets(container))


def remux_file(source: Path, destination: Path, vault: Vault, *, allow_truncated: bool = False) -> int:
    """Copy a track file's packets into a new, properly closed one; returns the count."""
    count = 0
    fmt = "matroska" if source.suffix == ".mkv" else "webm"
    with vault.open_reader(source, allow_truncated=allow_truncated) as f, av.open(f, mode="r") as inp:
        writer = vault.create(destination)
        try:
            with open_live_output(writer, fmt) as out:
                src = inp.streams[0]
                ctx = src.codec_context
                if src.type == "video":
                    dst = out.add_mux_stream(ctx.name, width=ctx.width, height=ctx.height)
                else:
                    dst = out.add_mux_stream(ctx.name, rate=ctx.sample_rate or 48000)
                dst.time_base = fractions.Fraction(1, 1000)
                for packet in iter_packets(inp):
                    packet.stream = dst
                    out.mux(packet)
                    count += 1
            writer.close()
        except BaseException:
            writer.abort()
            raise
    return count


def recover(recordings_dir: Path, vault: Vault, *, wall_clock: Callable[[], float] = time.time) -> list[str]:
    """Close the recordings a crash left open; returns their consultation ids.

    Each track file is remuxed from what is readable (``allow_truncated``) into a
    properly sealed file, its frame count taken from that file, and the manifest marked
    ``stopped_reason="recovered"``.
    """
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
        recovered.append(manifest.consultation_id)
        logger.info("recording %s recovered (%d tracks)", manifest.consultation_id, len(tracks))
    return recovered


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


def bench_write(frames: list[EncodedFrame], encrypt: bool, directory: Path, mime_type: str = "video/VP8") -> float:
    """CPU seconds to record ``frames`` into one file (for bench/recording.py)."""
    from media.crypto import MasterKey

    vault = Vault(MasterKey.generate() if encrypt else None, fsync=False)
    path = directory / f"bench-{os.getpid()}-{time.monotonic_ns()}.{_FORMATS[mime_type.lower()][1]}"
    start = time.process_time()
    recorder = TrackRecorder(path, mime_type, vault)
    for frame in frames:
        recorder.write(frame)
    recorder.close()
    return time.process_time() - start
