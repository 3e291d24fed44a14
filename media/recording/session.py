"""One consultation's recording: its tracks, its manifest, one clock.

:class:`RecordingSession` holds a :class:`~media.recording.muxer.TrackRecorder` per
recorded publication, turns RTP packets into frames
(:class:`~media.recording.depacketizer.Depacketizer`) and keeps the
:class:`~media.recording.manifest.Manifest`, replaced atomically on every change. A
write error (disk full) stops the session and calls ``on_error``: the SFU's forwarding
path never sees an exception.

Lifecycle: recording → stopped | failed. ``stop()`` is idempotent.
Segments: :meth:`RecordingSession.resume` takes over a recording whose media node was lost (the
room moved here): it closes what the lost node left open and writes a new segment of the same
recording, in the same directory and manifest (:mod:`media.recording.segments`).
Clocks: ``arrival`` times passed to :meth:`RecordingSession.feed` are on the session's
``clock`` (``time.monotonic`` by default, which is also what asyncio's ``loop.time()``
uses); the manifest's dates are on ``wall_clock`` (Unix seconds).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from aiortc import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from core.vocabulary import RECORDED
from media.recording.depacketizer import Depacketizer, EncodedFrame, RtpHeaderLike
from media.recording import ownership, segments
from media.recording.ids import check_id
from media.recording.manifest import Manifest, TrackEntry, read_manifest, write_manifest
from media.recording.recovery import recover_track, shred
from media.recording.muxer import FORMATS, TrackRecorder
from media.recording.vault import Vault

logger = logging.getLogger(__name__)

ErrorCallback = Callable[[str, BaseException], None]


@dataclass
class _Track:
    entry: TrackEntry
    depacketizer: Depacketizer
    recorder: TrackRecorder
    last_arrival: float | None = None
    """Arrival of the last frame written (the track's ``end_offset_ms`` when it closes)."""


class RecordingBusy(Exception):
    """Another live process holds the recording's directory (it is writing it, or recovering it)."""


class NotResumable(Exception):
    """The recording was stopped (or shredded): nothing to resume."""


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
        owner: int | None = None,
        origin: float | None = None,
    ) -> None:
        self.directory = directory
        self._sync_executor = sync_executor
        self._manifest = manifest
        self._vault = vault
        self._flush_interval_s = flush_interval_s
        self._on_error = on_error
        self._clock = clock
        self._wall_clock = wall_clock
        self._origin = clock() if origin is None else origin
        """The recording's start on ``clock``: the tracks' offsets count from it (a resumed
        session's origin is the first segment's start, carried over by the wall clock)."""
        self._tracks: dict[str, _Track] = {}
        self._state = "recording"
        self.error: BaseException | None = None
        self._owner = owner if owner is not None else ownership.hold(directory)
        """This process writes the recording while it holds this lock (recovery elsewhere skips it)."""
        self.segment = segments.segments_of(manifest)[-1].index
        """The segment this session writes."""
        self._lost = tuple(t for t in manifest.tracks if t.segment < self.segment and t.ended_at is None)
        """Tracks of earlier segments their lost node left open, to close (:meth:`close_lost_tracks`)."""
        self._lost_lock = threading.Lock()
        self._lost_closed: list[tuple[TrackEntry, TrackEntry, Path | None]] | None = None
        """(open entry, closed entry, torn file) per lost track, remuxed and not yet in the manifest."""

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
        node: str | None = None,
    ) -> RecordingSession:
        """Create ``<recordings_dir>/<consultation_id>/`` and its manifest (``node``: the media
        node writing it, named in its first segment).

        Raises ``FileExistsError`` when that consultation already has a recording.
        ``sync_executor``: where the media files' periodic fsyncs run (off the event
        loop); inline when None. The manifest is always synced inline.
        """
        directory = Path(recordings_dir) / check_id(consultation_id)
        directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.mkdir(mode=0o700)
        started_at = wall_clock()
        manifest = Manifest(
            consultation_id=consultation_id,
            encrypted=vault.encrypted,
            started_at=started_at,
            started_by=started_by,
            segments=segments.first_segment(node, started_at),
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

    @classmethod
    def resume(
        cls,
        recordings_dir: Path,
        consultation_id: str,
        vault: Vault,
        *,
        node: str | None,
        started_at: float,
        started_by: str,
        flush_interval_s: float = 1.0,
        on_error: ErrorCallback | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sync_executor: Executor | None = None,
    ) -> tuple[RecordingSession, int]:
        """Take over the recording a lost node was writing: a new segment of it, written here.

        Locks ``<recordings_dir>/<consultation_id>/`` (raises :class:`RecordingBusy` while another
        live process holds it), ends the lost node's segment (``node_lost``) and starts the next;
        the manifest's ``gaps`` say where the hole is once both sides are known. The tracks the
        lost node left open are closed later, off the parties' way back (remuxing them costs CPU
        while they reconnect here): :meth:`close_lost_tracks`, or at the latest when this session
        stops. Raises :class:`NotResumable` for a recording someone stopped, or that was shredded.
        A directory this node cannot see (a data_dir not shared with the lost node) is started
        anew, its earlier segments marked as written elsewhere (``started_at``, ``started_by``: the
        recording's, as the consultation keeps them). Returns (the session, the tracks to close).
        """
        directory = Path(recordings_dir) / check_id(consultation_id)
        directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.mkdir(mode=0o700, exist_ok=True)
        owner = ownership.hold(directory)
        if owner is None:
            raise RecordingBusy(consultation_id)
        try:
            now = wall_clock()
            try:
                manifest = read_manifest(directory)
            except FileNotFoundError:
                manifest = segments.elsewhere(Manifest(consultation_id, vault.encrypted, started_at, started_by),
                                              node=node, now=now)
            else:
                if not segments.resumable(manifest):
                    raise NotResumable(f"{consultation_id}: {manifest.stopped_reason or 'shredded'}")
                manifest = segments.resumed(manifest, node=node, now=now)
            write_manifest(directory, manifest)
        except BaseException:
            ownership.release(owner)
            raise
        # The tracks' offsets stay on the first segment's clock: its start, as this clock has it.
        origin = clock() - (wall_clock() - manifest.started_at)
        session = cls(directory, manifest, vault, flush_interval_s=flush_interval_s, on_error=on_error, clock=clock,
                      wall_clock=wall_clock, sync_executor=sync_executor, owner=owner, origin=origin)
        logger.info("recording %s resumed in segment %d (%d tracks of the lost one to close)", consultation_id,
                    session.segment, len(session._lost))
        return session, len(session._lost)

    # -- the lost segment's tracks -------------------------------------------------------------

    def remux_lost_tracks(self) -> None:
        """The I/O of :meth:`close_lost_tracks` (any thread: the service runs it off the event
        loop): remux each track the lost node left open into a closed file. Once."""
        with self._lost_lock:
            if not self._lost:
                return
            lost, self._lost = self._lost, ()
            closed = [(entry, *recover_track(self.directory, entry, self._vault, self._wall_clock))
                      for entry in lost]
            self._lost_closed = (self._lost_closed or []) + closed

    def _merge_lost(self) -> tuple[int, list[Path]]:
        """Put the remuxed lost tracks in the manifest (the event loop's thread): (how many, the
        torn files to shred once it is saved)."""
        with self._lost_lock:
            closed, self._lost_closed = self._lost_closed or [], None
        if not closed:
            return 0, []
        by_file = {old.file: new for old, new, _ in closed}
        tracks = tuple(by_file.get(t.file, t) if t.ended_at is None else t for t in self._manifest.tracks)
        self._manifest = segments.settled(replace(self._manifest, tracks=tracks))
        return len(closed), [torn for _, _, torn in closed if torn is not None]

    def close_lost_tracks(self) -> int:
        """Close the tracks of the lost segment (:meth:`remux_lost_tracks`, then into the manifest,
        which now says where the lost segment ends, and the gap). Returns how many; never raises
        (a failure leaves them to the next recovery)."""
        try:
            self.remux_lost_tracks()
            merged, torn = self._merge_lost()
            if merged and self._state == "recording":
                self._save()
                shred(self._vault, torn)
            return merged
        except Exception:
            logger.exception("recording %s: tracks of the lost segment not closed", self.consultation_id)
            return 0

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
        red_payload_type: int | None = None,
    ) -> None:
        """Start recording a publication (idempotent for the same publication id).
        ``red_payload_type``: the publication's RED (RFC 2198) packets, recorded as their
        primary Opus frames (a lost packet's frame taken from the next one's redundancy)."""
        if self._state != "recording" or publication_id in self._tracks:
            return
        if source not in RECORDED:
            raise ValueError(f"unknown source {source!r}")
        mime = codec.mimeType.lower()
        if mime not in FORMATS:
            raise ValueError(f"cannot record {codec.mimeType}")
        index = len(self._manifest.tracks)
        safe = re.sub(r"[^A-Za-z0-9_-]", "_", publication_id)[:48]
        name = f"{index:02d}-{source}-{safe}.{FORMATS[mime][1]}"
        entry = TrackEntry(
            publication_id=publication_id,
            participant_identity=participant_identity,
            source=source,
            codec=codec.mimeType,
            clock_rate=codec.clockRate,
            file=name,
            added_at=self._wall_clock(),
            segment=self.segment,
        )
        recorder = TrackRecorder(
            self.directory / name,
            mime,
            self._vault,
            flush_interval_s=self._flush_interval_s,
            clock=self._clock,
            sync_executor=self._sync_executor,
        )
        self._tracks[publication_id] = _Track(entry, Depacketizer(codec, red_payload_type=red_payload_type), recorder)
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

    def feed_rtp_batch(self, publication_id: str, batch: Sequence[tuple[bytes, RtpHeaderLike, float]]) -> bool:
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
        torn: list[Path] = []
        try:  # the lost segment's tracks, if they are still open: closed with the recording
            self.remux_lost_tracks()
            torn = self._merge_lost()[1]
        except Exception as exc:
            errors.append(exc)
        self._state = "stopped"
        now = self._wall_clock()
        self._manifest = segments.ended(replace(
            self._manifest, stopped_at=now, stopped_by=stopped_by, stopped_reason=reason
        ), at=now, reason=reason)
        try:
            self._save()
            shred(self._vault, torn)
        except Exception as exc:
            errors.append(exc)
        logger.info("recording %s stopped by %s (%s)", self.consultation_id, stopped_by, reason)
        self._let_go()
        if errors:
            self._state = "failed"
            self._notify(errors[0])
        return self._manifest

    def fail(self, exc: BaseException) -> None:
        """Fail the session for an error met outside it (its manifest could not be
        saved while adding a track): the same as a write error."""
        self._fail(exc)

    # -- internals ---------------------------------------------------------------------

    def _write(self, track: _Track, frame: EncodedFrame) -> None:
        if track.recorder.write(frame):
            track.last_arrival = frame.arrival
            if track.entry.start_offset_ms is None:
                offset = (frame.arrival - self._origin) * 1000.0
                self._update_entry(track, start_offset_ms=round(offset, 3))
                # Once per track: a crash keeps where the track starts (recovery finds where it
                # ends from the file), and a resumed segment's first frame closes its gap.
                self._save()

    def _close_track(self, track: _Track) -> None:
        for event in track.depacketizer.flush(self._clock()):
            if isinstance(event, EncodedFrame):
                self._write(track, event)
        track.recorder.close()
        self._update_entry(track, frames=track.recorder.frames_written, ended_at=self._wall_clock(),
                           end_offset_ms=self._end_offset(track))

    def _end_offset(self, track: _Track) -> float | None:
        if track.last_arrival is None:
            return None
        return round((track.last_arrival - self._origin) * 1000.0, 3)

    def _update_entry(self, track: _Track, **changes: Any) -> None:
        new = replace(self._counted(track.entry, track), **changes)
        self._manifest = replace(
            self._manifest,
            tracks=tuple(new if t.publication_id == new.publication_id else t for t in self._manifest.tracks),
        )
        track.entry = new

    @staticmethod
    def _counted(entry: TrackEntry, track: _Track) -> TrackEntry:
        """``entry`` with the track's live counts."""
        return replace(entry, frames=track.recorder.frames_written, frames_seen=track.depacketizer.frames_seen,
                       frames_before_keyframe=track.depacketizer.frames_before_keyframe)

    def _with_counts(self, manifest: Manifest) -> Manifest:
        tracks = self._tracks
        return replace(
            manifest,
            tracks=tuple(
                self._counted(t, tracks[t.publication_id]) if t.publication_id in tracks else t
                for t in manifest.tracks
            ),
        )

    def _save(self) -> None:
        self._manifest = segments.with_gaps(self._manifest)
        write_manifest(self.directory, self._with_counts(self._manifest))

    def _fail(self, exc: BaseException) -> None:
        if self._state != "recording":
            return
        self._state = "failed"
        self.error = exc
        logger.error("recording %s failed: %s", self.consultation_id, exc)
        for track in self._tracks.values():
            track.recorder.abort()
            self._update_entry(track, frames=track.recorder.frames_written, ended_at=self._wall_clock(),
                               end_offset_ms=self._end_offset(track))
        self._tracks.clear()
        now = self._wall_clock()
        reason = f"error: {type(exc).__name__}: {exc}"[:200]
        self._manifest = segments.ended(replace(
            self._manifest,
            stopped_at=now,
            stopped_by="system",
            stopped_reason=reason,
        ), at=now, reason=reason)
        try:
            self._save()
        except Exception:  # the disk that failed the media may fail the manifest too
            logger.exception("recording %s: manifest not saved", self.consultation_id)
        self._let_go()
        self._notify(exc)

    def _let_go(self) -> None:
        """Closed or failed: the recording is no longer being written."""
        ownership.release(self._owner)
        self._owner = None

    def _notify(self, exc: BaseException) -> None:
        if self._on_error is None:
            return
        try:
            self._on_error(self.consultation_id, exc)
        except Exception:
            logger.exception("recording %s: error callback failed", self.consultation_id)
