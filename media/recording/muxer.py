"""PyAV muxing of encoded frames, never decoding or encoding.

:class:`TrackRecorder` writes one publication's :class:`EncodedFrame` into a live
(streamable) Matroska/WebM file: VP8 and Opus in WebM, H.264 in Matroska. The container
writes into a :class:`~media.recording.vault.SealedWriter`, which has no ``seek``, so
the muxer never goes back: clusters close every second (``cluster_time_limit``) and are
sealed on disk at each flush. A process killed at any moment leaves a file readable up
to a couple of seconds before the kill.

Reading back (:func:`iter_packets`, :func:`count_frames`) and copying packets into a new
file (:func:`remux_file`, used by crash recovery) demux and mux only, too.
"""

from __future__ import annotations

import fractions
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import av
import av.error
from av.audio.stream import AudioStream
from av.container import InputContainer, OutputContainer
from av.stream import Stream
from av.video.stream import VideoStream

from media.recording.depacketizer import EncodedFrame, h264_dimensions, vp8_dimensions
from media.recording.vault import SealedWriter, Vault

logger = logging.getLogger(__name__)

CLUSTER_TIME_LIMIT_MS = 1000
MUX_TIME_BASE = fractions.Fraction(1, 1000)
"""Matroska counts in milliseconds."""

FORMATS: dict[str, tuple[str, str, str]] = {
    "video/vp8": ("webm", "webm", "vp8"),
    "audio/opus": ("webm", "webm", "opus"),
    "video/h264": ("matroska", "mkv", "h264"),
}
"""Recordable MIME type (lower case) -> (container format, file extension, FFmpeg codec name)."""


def open_live_output(writer: SealedWriter, container_format: str) -> OutputContainer:
    """A muxer that only appends (live Matroska) and hands each closed cluster over."""
    return av.open(
        writer,
        mode="w",
        format=container_format,
        options={"live": "1", "cluster_time_limit": str(CLUSTER_TIME_LIMIT_MS)},
        container_options={"flush_packets": "1"},
    )


def add_stream_like(out: OutputContainer, src: Stream) -> Stream:
    """A mux stream in ``out`` for the packets of ``src`` (same codec, size or rate)."""
    if isinstance(src, VideoStream):
        ctx = src.codec_context
        dst = out.add_mux_stream(ctx.name, width=ctx.width, height=ctx.height)
    else:
        rate = src.codec_context.sample_rate if isinstance(src, AudioStream) else 0
        dst = out.add_mux_stream(src.codec_context.name, rate=rate or 48000)
    dst.time_base = MUX_TIME_BASE
    return dst


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
        if mime not in FORMATS:
            raise ValueError(f"cannot record {mime_type}")
        self.path = path
        self.mime = mime
        self.is_video = mime.startswith("video/")
        self._vault = vault
        self._flush_interval_s = flush_interval_s
        self._clock = clock
        self._sync_executor = sync_executor
        self._writer: SealedWriter | None = None
        self._container: OutputContainer | None = None
        self._stream: Stream | None = None
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
        assert self._container is not None and self._stream is not None
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
        container_format, _, codec_name = FORMATS[self.mime]
        if self.mime == "video/vp8":
            dims = vp8_dimensions(frame.data)
        elif self.mime == "video/h264":
            dims = h264_dimensions(frame.data)
        else:
            dims = None
        if self.is_video and dims is None:
            # An IDR before any SPS: keep waiting for a keyframe that says its size.
            logger.warning("%s: keyframe without dimensions, skipped", self.path.name)
            return False
        self._writer = self._vault.create(self.path)
        try:
            self._container = open_live_output(self._writer, container_format)
            if dims is not None:
                self._stream = self._container.add_mux_stream(codec_name, width=dims[0], height=dims[1])
            else:
                self._stream = self._container.add_mux_stream(codec_name, rate=frame.clock_rate)
            self._stream.time_base = MUX_TIME_BASE
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


def iter_packets(container: InputContainer) -> Iterator[av.Packet]:
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
    return remux_track(source, destination, vault, allow_truncated=allow_truncated).frames


@dataclass(frozen=True)
class Remuxed:
    """What :func:`remux_track` copied."""

    frames: int
    span_s: float
    """From the first packet's timestamp to the last one's (0 for fewer than two)."""


def remux_track(source: Path, destination: Path, vault: Vault, *, allow_truncated: bool = False) -> Remuxed:
    """:func:`remux_file`, also saying how long the copied packets span (crash recovery: where the
    track's last readable frame is)."""
    count = 0
    first: float | None = None
    last = 0.0
    fmt = "matroska" if source.suffix == ".mkv" else "webm"
    with vault.open_reader(source, allow_truncated=allow_truncated) as f, av.open(f, mode="r") as inp:
        writer = vault.create(destination)
        try:
            with open_live_output(writer, fmt) as out:
                dst = add_stream_like(out, inp.streams[0])
                for packet in iter_packets(inp):
                    if packet.pts is not None and packet.time_base is not None:
                        at = float(packet.pts * packet.time_base)
                        first = at if first is None else first
                        last = max(last, at)
                    packet.stream = dst
                    out.mux(packet)
                    count += 1
            writer.close()
        except BaseException:
            writer.abort()
            raise
    return Remuxed(count, round(last - first, 6) if first is not None else 0.0)
