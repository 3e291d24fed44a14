"""A recording in segments: the node writing it is killed, another resumes it in a new segment of
the same recording; the manifest says where the gap is; recovery, export and verify cope."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import av
import pytest
from aiortc.rtp import RtpPacket

from media.recording import ownership, segments
from media.recording.manifest import GapEntry, Manifest, SegmentEntry, TrackEntry, read_manifest
from media.recording.recovery import recover
from media.recording.session import NotResumable, RecordingBusy, RecordingSession
from media.recording.store import RecordingStore, continued_streams
from media.recording.vault import MasterKey, Vault
from tests.media.conftest import VP8, Clip

HERE = Path(__file__).parents[1]


def _track(pid: str, segment: int, start: float | None, end: float | None, source: str = "camera",
           identity: str = "nurse") -> TrackEntry:
    return TrackEntry(publication_id=pid, participant_identity=identity, source=source, codec="video/VP8",
                      clock_rate=90000, file=f"{pid}.webm", added_at=0.0, start_offset_ms=start, frames=10,
                      segment=segment, end_offset_ms=end)


def test_a_manifest_without_segments_reads_as_one_and_keeps_its_keys() -> None:
    v1 = {"consultation_id": "c", "encrypted": True, "started_at": 100.0, "started_by": "dr", "tracks": [
        {"publication_id": "p", "participant_identity": "nurse", "source": "camera", "codec": "video/VP8",
         "clock_rate": 90000, "file": "00-camera-p.webm", "added_at": 100.0}],
        "stopped_at": 200.0, "stopped_by": "dr", "stopped_reason": "stopped", "shredded_at": None, "version": 1}
    manifest = Manifest.from_dict(v1)
    assert segments.segments_of(manifest) == (SegmentEntry(0, None, 100.0, 200.0, "stopped"),)
    assert segments.gaps(manifest) == ()
    out = manifest.to_dict()
    assert set(v1) < set(out) and {k: out[k] for k in v1 if k != "tracks"} == {k: v for k, v in v1.items()
                                                                               if k != "tracks"}
    assert set(v1["tracks"][0]) < set(out["tracks"][0])  # type: ignore[index]
    assert out["segments"] == [] and out["gaps"] == []
    assert Manifest.from_dict(out) == manifest


def test_resumed_ends_the_lost_segment_at_its_last_frame_and_the_gap_closes_with_the_next_first() -> None:
    started = 1000.0
    manifest = Manifest("c", True, started, "dr", tracks=(_track("a", 0, 0.0, 4000.0), _track("m", 0, 20.0, 4200.0)),
                        segments=segments.first_segment("node-a", started))
    assert segments.resumable(manifest)
    moved = segments.resumed(manifest, node="node-b", now=started + 6.0)
    assert moved.stopped_at is None and moved.stopped_reason is None
    assert moved.segments == (SegmentEntry(0, "node-a", started, started + 4.2, "node_lost"),
                              SegmentEntry(1, "node-b", started + 6.0))
    # No frame of the new segment yet: the gap's end is unknown.
    assert moved.gaps == (GapEntry(0, "node_lost", 4200.0, None, None, started + 4.2, None),)
    recorded = replace(moved, tracks=moved.tracks + (_track("b", 1, 6500.0, 9000.0),))
    assert segments.gaps(recorded) == (GapEntry(0, "node_lost", 4200.0, 6500.0, 2300.0, started + 4.2,
                                                started + 6.5),)
    done = segments.ended(recorded, at=started + 9.0, reason="stopped")
    assert done.segments[-1] == SegmentEntry(1, "node-b", started + 6.0, started + 9.0, "stopped")
    assert segments.ended(done, at=started + 99.0, reason="shutdown") == done  # the first end stands
    # A recording closed by a crash recovery is resumable; one someone stopped is not.
    assert segments.resumable(replace(manifest, stopped_at=1.0, stopped_reason="recovered"))
    for reason in ("stopped", "consultation_ended", "shutdown", "error: OSError: disk full"):
        assert not segments.resumable(replace(manifest, stopped_at=1.0, stopped_reason=reason))
        with pytest.raises(ValueError):
            segments.resumed(replace(manifest, stopped_at=1.0, stopped_reason=reason), node="x", now=1.0)
    assert not segments.resumable(replace(manifest, shredded_at=5.0))


def test_a_lost_segment_that_kept_nothing_is_all_gap_and_one_written_elsewhere_has_an_unknown_start() -> None:
    manifest = Manifest("c", False, 10.0, "dr", segments=segments.first_segment("node-a", 10.0))
    moved = segments.resumed(manifest, node="node-b", now=13.0)
    assert moved.segments[0] == SegmentEntry(0, "node-a", 10.0, 13.0, "node_lost")
    # The lost segment's tracks not closed yet: where it ends is not known yet.
    lost = _track("a", 0, 200.0, None)
    unclosed = replace(moved, tracks=(replace(lost, ended_at=None), _track("b", 1, 3500.0, None)))
    assert segments.gaps(unclosed) == (GapEntry(0, "node_lost", None, 3500.0, None, None, 13.5),)
    # Closed, nothing readable of it (killed before its first seal): the hole starts with it.
    unreadable = replace(unclosed, tracks=(replace(lost, ended_at=12.0), _track("b", 1, 3500.0, None)))
    assert segments.gaps(unreadable) == (GapEntry(0, "node_lost", 0.0, 3500.0, 3500.0, 10.0, 13.5),)
    elsewhere = segments.elsewhere(Manifest("c", False, 10.0, "dr"), node="node-c", now=20.0)
    assert [(s.index, s.node, s.end_reason) for s in elsewhere.segments] == [(0, None, "node_lost"), (1, "node-c", None)]
    assert elsewhere.gaps == (GapEntry(0, "node_lost", None, None, None, None, None),)


def test_export_continues_a_partys_source_across_segments_only() -> None:
    tracks = [_track("cam0", 0, 0.0, 4000.0), _track("mic0", 0, 0.0, 4000.0, source="microphone"),
              _track("doc0", 0, 0.0, 4000.0, identity="physician"),
              _track("cam0b", 0, 3000.0, 3500.0),  # the same camera twice in one segment: its own stream
              _track("cam1", 1, 6000.0, 9000.0), _track("mic1", 1, 6000.0, 9000.0, source="microphone"),
              _track("early", 2, 3900.0, 9500.0, identity="physician")]  # starts before its earlier one ended
    assert continued_streams(tracks) == [None, None, None, None, 3, 1, None]
    # the chain: a third segment's camera continues the second's, which continued the first's
    assert continued_streams([_track("a", 0, 0, 10), _track("b", 1, 20, 30), _track("c", 2, 40, 50)]) == [None, 0, 1]


CHILD = textwrap.dedent(
    """
    import sys, time
    sys.path[:0] = [sys.argv[1], sys.argv[2]]
    from aiortc.rtp import RtpPacket
    from conftest import VP8, encode_video, packetize
    from media.recording.session import RecordingSession
    from media.recording.vault import MasterKey, Vault
    from pathlib import Path

    clip = packetize(VP8, encode_video("libvpx", 60, gop=30))
    vault = Vault(MasterKey(bytes.fromhex(sys.argv[4])), fsync=False)
    session = RecordingSession.start(Path(sys.argv[3]), "moved", vault, started_by="dr", node="node-a",
                                     flush_interval_s=0.2)
    session.add_track("cam-a", "nurse", "camera", VP8)
    seq, n, t0 = 0, 0, time.monotonic()
    while True:
        for group in clip.packets:
            for p in group:
                q = RtpPacket(payload_type=96, marker=p.marker, sequence_number=seq % 65536,
                              timestamp=(n * 3000) % (1 << 32), ssrc=1, payload=p.payload)
                seq += 1
                session.feed("cam-a", q)
            n += 1
            print(n, flush=True)
            delay = t0 + n / 30 - time.monotonic()  # 30 frames a second, in real time
            if delay > 0:
                time.sleep(delay)
    """
)


def _killed_mid_recording(tmp_path: Path, key: MasterKey, frames: int = 45) -> int:
    """A process records a camera into ``tmp_path/moved`` and is SIGKILLed after ``frames`` frames
    (1.5 s); returns how many it had fed."""
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    root = str(Path(__file__).resolve().parents[3])
    proc = subprocess.Popen([sys.executable, str(script), root, str(HERE), str(tmp_path), key.key.hex()],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    written = 0
    deadline = time.monotonic() + 30
    while written < frames and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        written = int(line)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert written >= frames
    return written


def _feed(session: RecordingSession, pid: str, clip: Clip, t0: float) -> None:
    for i, group in enumerate(clip.packets):
        for p in group:
            session.feed(pid, p, t0 + i / 30)


@pytest.mark.parametrize("lost_closed_by", ["the restart's recovery first", "the session later", "the stop"])
def test_a_killed_nodes_recording_resumes_in_a_new_segment_with_its_gap(tmp_path: Path, vp8_clip: Clip,
                                                                        lost_closed_by: str) -> None:
    recovered_first = lost_closed_by == "the restart's recovery first"
    key = MasterKey.generate()
    vault = Vault(key, fsync=False)
    fed = _killed_mid_recording(tmp_path, key)
    lost = read_manifest(tmp_path / "moved")
    assert lost.stopped_at is None and lost.tracks[0].start_offset_ms is not None  # saved at its first frame
    if recovered_first:  # the lost node's restart recovered it before the room's new node came
        assert recover(tmp_path, vault) == ["moved"]
        assert read_manifest(tmp_path / "moved").stopped_reason == "recovered"

    # Someone else holds the directory (recovering it, say): the new node waits for it.
    held = ownership.hold(tmp_path / "moved")
    with pytest.raises(RecordingBusy):
        RecordingSession.resume(tmp_path, "moved", vault, node="node-b", started_at=lost.started_at, started_by="dr")
    ownership.release(held)

    session, closed = RecordingSession.resume(tmp_path, "moved", vault, node="node-b", started_at=lost.started_at,
                                              started_by="dr")
    assert closed == (0 if recovered_first else 1) and session.segment == 1
    assert recover(tmp_path, vault) == []  # being written again: nobody recovers it now
    open_gap = read_manifest(tmp_path / "moved").gaps
    # Where the lost segment ends is known once its tracks are closed (recovered).
    assert len(open_gap) == 1 and open_gap[0].end_ms is None and (open_gap[0].start_ms is not None) == recovered_first
    session.add_track("cam-b", "nurse", "camera", VP8)
    resumed_at = time.monotonic()
    _feed(session, "cam-b", vp8_clip, resumed_at)
    # The first frame of the new segment closes the gap's end, in the manifest on disk.
    assert read_manifest(tmp_path / "moved").gaps[0].end_ms is not None
    if lost_closed_by == "the session later":
        assert session.close_lost_tracks() == 1 and session.close_lost_tracks() == 0
        gap = read_manifest(tmp_path / "moved").gaps[0]
        assert gap.start_ms is not None and gap.duration_ms is not None and gap.duration_ms > 0
        assert not (tmp_path / "moved" / lost.tracks[0].file).exists()
    manifest = session.stop("dr")

    old, new = manifest.tracks
    assert (old.segment, new.segment) == (0, 1)
    assert old.file.endswith("-recovered.webm") and not (tmp_path / "moved" / lost.tracks[0].file).exists()
    assert 0 < old.frames <= fed  # what the killed writer had sealed (the muxer hands over clusters of <= 1 s)
    assert old.end_offset_ms is not None and old.start_offset_ms is not None
    assert old.end_offset_ms == pytest.approx(old.start_offset_ms + (old.frames - 1) * 1000 / 30, abs=1)
    assert new.frames == len(vp8_clip.frames) and new.end_offset_ms is not None
    assert [(s.index, s.node, s.end_reason) for s in manifest.segments] == [(0, "node-a", "node_lost"),
                                                                           (1, "node-b", "stopped")]
    assert manifest.gaps == (GapEntry(0, "node_lost", old.end_offset_ms, new.start_offset_ms,
                                      round(new.start_offset_ms - old.end_offset_ms, 3),  # type: ignore[operator]
                                      round(manifest.started_at + old.end_offset_ms / 1000, 3),
                                      round(manifest.started_at + new.start_offset_ms / 1000, 3)),)  # type: ignore[operator]
    assert manifest.stopped_reason == "stopped" and read_manifest(tmp_path / "moved") == manifest
    # One clock for both segments: the new one starts after the old one, by the wall clock's gap.
    assert manifest.gaps[0].start_at is not None and manifest.gaps[0].start_at < time.time()
    with pytest.raises(NotResumable):
        RecordingSession.resume(tmp_path, "moved", vault, node="node-c", started_at=lost.started_at, started_by="dr")

    store = RecordingStore(tmp_path, vault)
    report = store.verify("moved")
    assert report.ok, report.to_dict()
    out = store.export("moved", tmp_path / "moved.mkv")
    with av.open(str(out)) as container:
        assert len(container.streams) == 1  # the nurse's camera, continued across the segments
        times = [float(p.pts * p.time_base) for p in container.demux() if p.size and p.pts is not None]
    assert len(times) == old.frames + new.frames
    assert times == sorted(times)
    hole = max(b - a for a, b in zip(times, times[1:]))
    assert hole * 1000 == pytest.approx(manifest.gaps[0].duration_ms, abs=2)


def test_a_node_that_cannot_see_the_lost_nodes_directory_starts_the_next_segment_anew(
        tmp_path: Path, vp8_clip: Clip, plain_vault: Vault) -> None:
    session, closed = RecordingSession.resume(tmp_path, "elsewhere", plain_vault, node="node-c",
                                              started_at=time.time() - 5, started_by="dr")
    assert closed == 0 and session.segment == 1
    session.add_track("cam", "nurse", "camera", VP8)
    _feed(session, "cam", vp8_clip, time.monotonic())
    manifest = session.stop("dr")
    assert [s.node for s in manifest.segments] == [None, "node-c"]
    assert manifest.tracks[0].start_offset_ms is not None and manifest.tracks[0].start_offset_ms >= 4900
    assert manifest.gaps[0].start_ms is None and manifest.gaps[0].end_ms == manifest.tracks[0].start_offset_ms


def test_a_fresh_recording_is_one_segment_naming_its_node(tmp_path: Path, vp8_clip: Clip,
                                                          plain_vault: Vault) -> None:
    session = RecordingSession.start(tmp_path, "one", plain_vault, started_by="dr", node="node-a",
                                     wall_clock=lambda: 50.0)
    session.add_track("cam", "nurse", "camera", VP8)
    _feed(session, "cam", vp8_clip, time.monotonic())
    manifest = session.stop("dr")
    assert manifest.segments == (SegmentEntry(0, "node-a", 50.0, 50.0, "stopped"),)
    assert manifest.gaps == () and manifest.tracks[0].segment == 0
    assert manifest.tracks[0].end_offset_ms == pytest.approx(
        manifest.tracks[0].start_offset_ms + (len(vp8_clip.frames) - 1) * 1000 / 30, abs=0.01)  # type: ignore[operator]


__all__ = ["RtpPacket"]


def test_a_resumed_recording_that_fails_before_closing_the_lost_tracks_leaves_them_to_recovery(
        tmp_path: Path) -> None:
    key = MasterKey.generate()
    vault = Vault(key, fsync=False)
    _killed_mid_recording(tmp_path, key)
    session, lost = RecordingSession.resume(tmp_path, "moved", vault, node="node-b", started_at=time.time(),
                                            started_by="dr")
    assert lost == 1
    session.fail(OSError(28, "No space left on device"))  # a write error, before the lost tracks were closed
    failed = read_manifest(tmp_path / "moved")
    assert failed.stopped_reason is not None and failed.stopped_reason.startswith("error: ")
    assert failed.tracks[0].ended_at is None
    # The next start's recovery closes them, and keeps why the recording stopped.
    assert recover(tmp_path, vault) == ["moved"]
    recovered = read_manifest(tmp_path / "moved")
    assert recovered.stopped_reason == failed.stopped_reason and recovered.tracks[0].ended_at is not None
    assert recovered.tracks[0].frames > 0 and recovered.gaps[0].start_ms == recovered.tracks[0].end_offset_ms
    assert recover(tmp_path, vault) == []
