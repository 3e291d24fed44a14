"""A recording's segments and the gaps between them (sans-I/O: manifests in, manifests out).

A media node that dies mid-call takes its recording session with it; the room is re-placed on
another node, and that node resumes the recording (the patient's consent and the physician's
request stand: the consultation's ``recording`` state in the store says so). It writes a new
segment into the same directory and manifest. The manifest then says, per segment, which node
wrote it and why it ended, and per boundary where the hole is (:func:`gaps`): from the last frame
the lost segment has on disk to the first frame of the next, on the tracks' clock (ms after the
recording's start) and as wall clock.
"""

from __future__ import annotations

from dataclasses import replace

from media.recording.manifest import GapEntry, GapReason, Manifest, SegmentEntry

RESUMABLE_REASONS = (None, "recovered")
"""``stopped_reason`` of a recording a lost node left: still open, or closed by the crash
recovery of some process sharing the data_dir (not by anyone's decision to stop)."""


def segments_of(manifest: Manifest) -> tuple[SegmentEntry, ...]:
    """The manifest's segments; one (index 0) for a manifest written before segments existed."""
    if manifest.segments:
        return manifest.segments
    return (SegmentEntry(0, None, manifest.started_at, manifest.stopped_at, manifest.stopped_reason),)


def first_frame_ms(manifest: Manifest, segment: int) -> float | None:
    """The earliest first frame of the segment's tracks (ms after the recording's start)."""
    found = [t.start_offset_ms for t in manifest.tracks if t.segment == segment and t.start_offset_ms is not None]
    return min(found) if found else None


def last_frame_ms(manifest: Manifest, segment: int) -> float | None:
    """The latest last frame of the segment's tracks (ms after the recording's start)."""
    found = [t.end_offset_ms for t in manifest.tracks if t.segment == segment and t.end_offset_ms is not None]
    return max(found) if found else None


def closed(manifest: Manifest, segment: int) -> bool:
    """Every track of the segment is closed (a lost one's: recovered), so its last frame is known."""
    return all(t.ended_at is not None for t in manifest.tracks if t.segment == segment)


def gaps(manifest: Manifest) -> tuple[GapEntry, ...]:
    """One gap per boundary between two segments, in order."""
    out = []
    segments = segments_of(manifest)
    for before, after in zip(segments, segments[1:]):
        start = last_frame_ms(manifest, before.index)
        if start is None and before.node is not None and closed(manifest, before.index):
            # A segment written here whose tracks, all closed, kept no readable frame (lost before
            # its first seal): the hole starts where it started.
            start = round((before.started_at - manifest.started_at) * 1000.0, 3)
        end = first_frame_ms(manifest, after.index)
        reason = before.end_reason if before.end_reason in {r.value for r in GapReason} else GapReason.NODE_LOST.value
        out.append(GapEntry(
            after_segment=before.index, reason=str(reason), start_ms=start, end_ms=end,
            duration_ms=round(end - start, 3) if start is not None and end is not None else None,
            start_at=None if start is None else round(manifest.started_at + start / 1000.0, 3),
            end_at=None if end is None else round(manifest.started_at + end / 1000.0, 3)))
    return tuple(out)


def with_gaps(manifest: Manifest) -> Manifest:
    """``manifest`` with its ``gaps`` computed from its segments and tracks."""
    return replace(manifest, gaps=gaps(manifest))


def first_segment(node: str | None, started_at: float) -> tuple[SegmentEntry, ...]:
    """The segments of a recording that starts now."""
    return (SegmentEntry(0, node, started_at),)


def resumable(manifest: Manifest) -> bool:
    """Whether another node may resume this recording: not shredded, and not stopped by anyone
    (a crash recovery's close is no decision to stop)."""
    return manifest.shredded_at is None and manifest.stopped_reason in RESUMABLE_REASONS


def resumed(manifest: Manifest, *, node: str | None, now: float) -> Manifest:
    """The manifest of a recording a lost node was writing, taken over by ``node`` at ``now``: the
    last segment ends (``node_lost``) at its last frame on disk (else when its end was noted, else
    now; :func:`settled` moves it to its last frame once its tracks are closed), a new segment
    starts, and the recording is open again (``stopped_*`` cleared)."""
    if not resumable(manifest):
        raise ValueError(f"recording {manifest.consultation_id} was {manifest.stopped_reason}: not resumable")
    segments = segments_of(manifest)
    last = segments[-1]
    last_ms = last_frame_ms(manifest, last.index)
    if last_ms is not None:
        ended = round(manifest.started_at + last_ms / 1000.0, 3)
    else:
        ended = last.ended_at if last.ended_at is not None else now
    closed = replace(last, ended_at=ended, end_reason=GapReason.NODE_LOST.value)
    return with_gaps(replace(manifest, segments=segments[:-1] + (closed, SegmentEntry(last.index + 1, node, now)),
                             stopped_at=None, stopped_by=None, stopped_reason=None))


def settled(manifest: Manifest) -> Manifest:
    """Each segment lost with its node ends at its last frame on disk, once its tracks are closed
    (recovered) and say where that is."""
    out = []
    for segment in segments_of(manifest):
        last_ms = last_frame_ms(manifest, segment.index) if segment.end_reason == GapReason.NODE_LOST else None
        out.append(segment if last_ms is None else
                   replace(segment, ended_at=round(manifest.started_at + last_ms / 1000.0, 3)))
    return replace(manifest, segments=tuple(out)) if manifest.segments else manifest


def elsewhere(manifest: Manifest, *, node: str | None, now: float) -> Manifest:
    """The manifest a node starts when it resumes a recording whose directory it cannot see (a
    ``server.data_dir`` not shared with the lost node): the earlier segments were written
    elsewhere (one placeholder segment, node unknown, no tracks here), this node's is the next."""
    lost = SegmentEntry(0, None, manifest.started_at, None, GapReason.NODE_LOST.value)
    return with_gaps(replace(manifest, tracks=(), segments=(lost, SegmentEntry(1, node, now))))


def ended(manifest: Manifest, *, at: float, reason: str) -> Manifest:
    """The last segment ends with the recording (stopped, failed, the consultation over)."""
    segments = segments_of(manifest)
    last = segments[-1]
    if last.ended_at is not None and last.end_reason is not None:
        return manifest
    return replace(manifest, segments=segments[:-1] + (replace(last, ended_at=at, end_reason=reason),))


__all__ = ["RESUMABLE_REASONS", "closed", "elsewhere", "ended", "first_frame_ms", "first_segment", "gaps", "last_frame_ms",
           "resumable", "resumed", "segments_of", "settled", "with_gaps"]
