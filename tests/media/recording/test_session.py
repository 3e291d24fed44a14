from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import pytest
from aiortc.rtp import RtpPacket

from media.recording.manifest import read_manifest
from media.recording.muxer import count_frames
from media.recording.recovery import recover
from media.recording.session import RecordingSession
from media.recording.vault import MasterKey, SealedWriter, Vault
from media.red import RedPacker
from sfu.rtp import parse_header
from tests.media.conftest import H264, OPUS, VP8, Clip

HERE = Path(__file__).parents[1]


def decode_all(vault: Vault, path: Path) -> tuple[int, int]:
    """(packets, decoded frames) of a recorded file."""
    with vault.open_reader(path) as f, av.open(f, "r") as c:
        packets = decoded = 0
        for packet in c.demux():
            if packet.size:
                packets += 1
                decoded += len(packet.decode())
        return packets, decoded


def feed_clip(session: RecordingSession, pub: str, clip: Clip, t0: float) -> None:
    step = 1 / 30 if clip.codec.clockRate == 90000 else 0.02
    for i, group in enumerate(clip.packets):
        for p in group:
            session.feed(pub, p, t0 + i * step)


@pytest.mark.parametrize("encrypted", [True, False])
def test_session_records_every_frame(
    tmp_path: Path, vp8_clip: Clip, opus_clip: Clip, h264_clip: Clip, encrypted: bool
) -> None:
    vault = Vault(MasterKey.generate() if encrypted else None, fsync=False)
    now = [100.0]
    session = RecordingSession.start(
        tmp_path, "c-1", vault, started_by="dr-a", clock=lambda: now[0], wall_clock=lambda: 1.7e9
    )
    session.add_track("cam", "nurse-1", "camera", VP8)
    session.add_track("mic", "nurse-1", "microphone", OPUS)
    session.add_track("oto", "agent-1", "otoscope", H264)
    feed_clip(session, "cam", vp8_clip, 100.0)
    feed_clip(session, "mic", opus_clip, 100.25)
    feed_clip(session, "oto", h264_clip, 101.0)
    manifest = session.stop("dr-a")
    assert session.state == "stopped"
    assert manifest == read_manifest(tmp_path / "c-1")
    assert manifest.stopped_by == "dr-a" and manifest.stopped_reason == "stopped"
    assert manifest.encrypted == encrypted
    expected = {"cam": len(vp8_clip.frames), "mic": len(opus_clip.frames), "oto": len(h264_clip.frames)}
    for track in manifest.tracks:
        path = tmp_path / "c-1" / track.file
        assert track.frames == expected[track.publication_id]
        assert decode_all(vault, path) == (track.frames, track.frames)
    offsets = {t.publication_id: t.start_offset_ms for t in manifest.tracks}
    assert offsets == {"cam": 0.0, "mic": 250.0, "oto": 1000.0}
    assert {t.source for t in manifest.tracks} == {"camera", "microphone", "otoscope"}
    assert session.stop("dr-b").stopped_by == "dr-a"  # idempotent


def test_video_starts_at_first_keyframe(tmp_path: Path, vp8_clip: Clip, plain_vault: Vault) -> None:
    session = RecordingSession.start(tmp_path, "c-2", plain_vault, started_by="dr")
    session.add_track("cam", "n", "camera", VP8)
    needs = [session.feed("cam", p, 1.0) for g in vp8_clip.packets[5:] for p in g]
    assert needs[0] and not needs[-1]
    manifest = session.stop("dr")
    assert manifest.tracks[0].frames == len(vp8_clip.frames) - 30


def test_every_frame_seen_is_recorded_or_came_before_the_first_keyframe(
        tmp_path: Path, vp8_clip: Clip, opus_clip: Clip, plain_vault: Vault) -> None:
    """A recording that starts mid-GOP (from the middle of a frame, even) cannot record the
    frames before its first keyframe: they reference pictures it never saw. The manifest
    counts them apart, so that frames seen = frames recorded + frames before the keyframe."""
    session = RecordingSession.start(tmp_path, "c-k", plain_vault, started_by="dr")
    session.add_track("cam", "n", "camera", VP8)
    session.add_track("mic", "n", "microphone", OPUS)
    start = next(i for i, g in enumerate(vp8_clip.packets) if i > 5 and len(g) > 1)
    assert start < 30  # within the first GOP: its keyframe is frame 30
    video = vp8_clip.packets[start][1:] + [p for g in vp8_clip.packets[start + 1:] for p in g]  # mid-frame
    for packet in video:
        session.feed("cam", packet, 1.0)
    for packet in opus_clip.flat():
        session.feed("mic", packet, 1.0)
    live = session.manifest.track("cam")
    assert live.frames_seen == len(vp8_clip.frames) - start and live.frames_before_keyframe == 30 - start
    cam, mic = session.stop("dr").tracks
    assert cam.frames == len(vp8_clip.frames) - 30
    assert cam.frames_seen == len(vp8_clip.frames) - start  # the SFU's count: one per marker bit
    assert cam.frames_before_keyframe == 30 - start
    assert cam.frames + cam.frames_before_keyframe == cam.frames_seen
    assert mic.frames == mic.frames_seen == len(opus_clip.frames) and mic.frames_before_keyframe == 0


class FailingVault(Vault):
    """Disk full after a few bytes."""

    def create(self, path: Path) -> SealedWriter:
        writer = super().create(path)
        original = writer.write
        written = [0]

        def write(data: bytes | bytearray | memoryview) -> int:
            written[0] += len(data)
            if written[0] > 5000:
                raise OSError(28, "No space left on device")
            return original(data)

        writer.write = write  # type: ignore[method-assign]
        return writer


def test_write_error_stops_session_and_calls_back(tmp_path: Path, vp8_clip: Clip) -> None:
    errors: list[tuple[str, BaseException]] = []
    session = RecordingSession.start(
        tmp_path, "c-3", FailingVault(None, fsync=False), started_by="dr", on_error=lambda c, e: errors.append((c, e))
    )
    session.add_track("cam", "n", "camera", VP8)
    feed_clip(session, "cam", vp8_clip, 0.0)  # must not raise
    assert session.state == "failed"
    assert len(errors) == 1 and errors[0][0] == "c-3"
    manifest = read_manifest(tmp_path / "c-3")
    assert manifest.stopped_reason is not None and manifest.stopped_reason.startswith("error")
    assert session.feed("cam", vp8_clip.packets[0][0]) is False


def test_bad_ids_rejected(tmp_path: Path, plain_vault: Vault) -> None:
    with pytest.raises(ValueError):
        RecordingSession.start(tmp_path, "../x", plain_vault, started_by="dr")
    session = RecordingSession.start(tmp_path, "c-4", plain_vault, started_by="dr")
    with pytest.raises(ValueError):
        session.add_track("p", "n", "webcam", VP8)
    with pytest.raises(FileExistsError):
        RecordingSession.start(tmp_path, "c-4", plain_vault, started_by="dr")


CHILD = textwrap.dedent(
    """
    import sys, time
    sys.path[:0] = [sys.argv[1], sys.argv[2]]
    from aiortc.rtp import RtpPacket
    from conftest import VP8, encode_video, packetize
    from media.recording.session import RecordingSession
    from media.recording.vault import MasterKey, Vault
    from pathlib import Path

    clip = packetize(VP8, encode_video("libvpx", 90, gop=30))
    vault = Vault(MasterKey(bytes.fromhex(sys.argv[4])), fsync=False)
    speed = 10.0  # media runs 10x faster than the wall clock: 5 s of media = 0.5 s here
    clock = lambda: time.monotonic() * speed
    session = RecordingSession.start(Path(sys.argv[3]), "crash", vault, started_by="dr", clock=clock)
    session.add_track("cam", "n", "camera", VP8)
    seq, n, t0 = 0, 0, time.monotonic()
    while True:
        for i, group in enumerate(clip.packets):
            for p in group:
                q = RtpPacket(payload_type=96, marker=p.marker, sequence_number=seq % 65536,
                              timestamp=(n * 3000) % (1 << 32), ssrc=1, payload=p.payload)
                seq += 1
                session.feed("cam", q, clock())
            n += 1
            print(n, flush=True)
            # pace at 30 media frames per media second
            delay = t0 + n / 30 / speed - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    """
)


def test_sigkill_mid_recording_is_readable(tmp_path: Path) -> None:
    key = MasterKey.generate()
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    root = str(Path(__file__).resolve().parents[3])
    proc = subprocess.Popen(
        [sys.executable, str(script), root, str(HERE), str(tmp_path), key.key.hex()],
        stdout=subprocess.PIPE,
        text=True,
    )
    written = 0
    deadline = time.monotonic() + 30
    assert proc.stdout is not None
    checked_live = False
    while written < 600 and time.monotonic() < deadline:  # 20 s of media
        line = proc.stdout.readline()
        if not line:
            break
        written = int(line)
        if written >= 300 and not checked_live:
            # Another process sharing the data_dir (a media worker starting) leaves the live one alone.
            assert recover(tmp_path, Vault(key, fsync=False)) == []
            assert read_manifest(tmp_path / "crash").stopped_at is None
            checked_live = True
    assert checked_live
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert written >= 600
    vault = Vault(key, fsync=False)
    manifest = json.loads((tmp_path / "crash" / "manifest.json").read_text())
    path = tmp_path / "crash" / manifest["tracks"][0]["file"]
    with pytest.raises(Exception):
        count_frames(path, vault)  # a normal read refuses a truncated file
    readable = count_frames(path, vault, allow_truncated=True)
    # Within 5 s of media (150 frames) of what the child had fed when it was killed.
    assert written - 150 <= readable <= written, (written, readable)

    assert recover(tmp_path, vault) == ["crash"]
    recovered = read_manifest(tmp_path / "crash")
    assert recovered.stopped_reason == "recovered"
    track = recovered.tracks[0]
    assert track.frames == readable
    # Every frame in the file was seen by the SFU: the count the last manifest saved before the kill
    # held (at the track's first frame) is raised to it, and the track's figures stay consistent.
    assert track.frames + track.frames_before_keyframe <= track.frames_seen
    assert decode_all(vault, tmp_path / "crash" / track.file) == (readable, readable)
    assert not path.exists()
    assert recover(tmp_path, vault) == []


def test_recovery_leaves_a_recording_being_written_alone(tmp_path: Path, vp8_clip: Clip,
                                                        plain_vault: Vault) -> None:
    """Recovery takes only the recordings no live session holds (its directory's lock)."""
    session = RecordingSession.start(tmp_path, "live", plain_vault, started_by="dr")
    session.add_track("cam", "n", "camera", VP8)
    feed_clip(session, "cam", vp8_clip, 0.0)
    assert recover(tmp_path, plain_vault) == []
    assert read_manifest(tmp_path / "live").stopped_at is None and session.state == "recording"
    manifest = session.stop("dr")
    assert manifest.stopped_reason == "stopped" and recover(tmp_path, plain_vault) == []
    assert read_manifest(tmp_path / "live").stopped_reason == "stopped"


class CountingVault(Vault):
    """Counts the flushes that reached the files (each one an fsync in production)."""

    def __init__(self, master: MasterKey | None) -> None:
        super().__init__(master, fsync=False)
        self.flushes: list[str] = []

    def create(self, path: Path) -> SealedWriter:
        writer = super().create(path)
        original = writer.flush

        def flush(executor: object = None) -> None:
            self.flushes.append(path.name)
            original(executor)  # type: ignore[arg-type]

        writer.flush = flush  # type: ignore[method-assign]
        return writer


def test_one_flush_per_interval_and_track_whoever_does_it(tmp_path: Path, vp8_clip: Clip, opus_clip: Clip) -> None:
    """The recorder flushes on write once an interval is over; the timer only flushes
    the tracks that did not (idle ones), and never a track with nothing new."""
    vault = CountingVault(MasterKey.generate())
    now = [0.0]
    session = RecordingSession.start(tmp_path, "c-f", vault, started_by="dr", clock=lambda: now[0])
    session.add_track("cam", "n", "camera", VP8)
    session.add_track("mic", "n", "microphone", OPUS)
    video, audio = vp8_clip.packets, opus_clip.packets  # 3 s of video, 3 s of audio
    timer_flushes = 0
    for tick in range(300):  # 10 ms steps over 3 s, the timer every second
        now[0] = tick / 100
        if tick and tick % 100 == 0:
            timer_flushes += session.flush_stale()
        if tick % 2 == 0 and tick // 2 < len(opus_clip.packets):
            for p in audio[tick // 2]:
                session.feed("mic", p, now[0])
        if tick % 10 == 0 and tick // 10 * 3 < len(vp8_clip.packets):
            for i in range(3):  # 30 fps in bursts of 3
                for p in video[tick // 10 * 3 + i]:
                    session.feed("cam", p, now[0])
    per_track = {name: vault.flushes.count(name) for name in set(vault.flushes)}
    assert len(per_track) == 2 and all(1 <= n <= 3 for n in per_track.values()), per_track
    # Idle now: the timer seals what the muxer handed over since, once; then nothing.
    now[0] = 10.0
    before = len(vault.flushes)
    session.flush_stale()
    session.flush_stale()
    assert len(vault.flushes) - before <= 2
    now[0] = 20.0
    assert session.flush_stale() == 0
    manifest = session.stop("dr")
    assert [t.frames for t in manifest.tracks] == [len(video), len(audio)]
    assert timer_flushes <= 2 * 2


def test_background_fsync_off_the_caller_and_its_errors_surface(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:

    synced: list[int] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        synced.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    vault = Vault(MasterKey.generate())
    with ThreadPoolExecutor(max_workers=1) as executor:
        writer = vault.create(tmp_path / "a.webm")
        writer.write(b"x" * 1000)
        assert writer.dirty
        writer.flush(executor)
        assert not writer.dirty
        executor.submit(lambda: None).result()  # the sync ran (in order) on the executor
        assert len(synced) == 1
        # The fsync ran on a duplicate of the descriptor, closed after: the file's own is open.
        writer.write(b"y" * 1000)

        def failing(fd: int) -> None:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(os, "fdatasync", failing)
        writer.flush(executor)
        executor.submit(lambda: None).result()
        with pytest.raises(OSError):
            writer.flush(executor)  # the background error comes back to the recorder
        monkeypatch.setattr(os, "fdatasync", fdatasync)
        writer.close()
    assert b"".join(vault.read_chunks(tmp_path / "a.webm")) == b"x" * 1000 + b"y" * 1000


def test_feed_rtp_batches_with_sfu_headers_record_the_same(tmp_path: Path, vp8_clip: Clip, opus_clip: Clip) -> None:
    """The service's tap path: datagrams with the SFU's parsed headers, in batches."""

    vault = Vault(MasterKey.generate(), fsync=False)
    session = RecordingSession.start(tmp_path, "c-b", vault, started_by="dr", clock=lambda: 5.0)
    session.add_track("cam", "n", "camera", VP8)
    session.add_track("mic", "n", "microphone", OPUS)
    for pub, clip in (("cam", vp8_clip), ("mic", opus_clip)):
        items = [(d, parse_header(d), 5.0) for d in (p.serialize() for p in clip.flat())]
        for i in range(0, len(items), 7):
            session.feed_rtp_batch(pub, items[i : i + 7])
    manifest = session.stop("dr")
    assert [t.frames for t in manifest.tracks] == [len(vp8_clip.frames), len(opus_clip.frames)]
    for track in manifest.tracks:
        assert decode_all(vault, tmp_path / "c-b" / track.file) == (track.frames, track.frames)


def test_red_stethoscope_is_recorded_as_its_primary_opus(tmp_path: Path, opus_clip: Clip) -> None:
    """A stethoscope publishing RED (RFC 2198): the file holds the primary Opus frames, byte for
    byte, a lost packet's frame taken from the next packet's redundancy."""
    vault = Vault(None, fsync=False)
    session = RecordingSession.start(tmp_path, "c-red", vault, started_by="dr", clock=lambda: 5.0)
    session.add_track("steth", "agent", "stethoscope", OPUS, red_payload_type=63)
    packer = RedPacker(111, distance=1)
    for i, (packet,) in enumerate(opus_clip.packets):
        red = RtpPacket(payload_type=63, sequence_number=packet.sequence_number, timestamp=packet.timestamp,
                        ssrc=packet.ssrc)
        red.payload = packer.pack(packet.payload, packet.timestamp)
        if i % 25 == 7:
            continue  # lost on the way; the next packet brings it back
        data = red.serialize()
        session.feed_rtp("steth", data, parse_header(data), 5.0 + i * 0.02)
    manifest = session.stop("dr")
    (track,) = manifest.tracks
    assert track.frames == len(opus_clip.frames)
    with vault.open_reader(tmp_path / "c-red" / track.file) as f, av.open(f, "r") as container:
        recorded = [bytes(p) for p in container.demux() if p.size]
    assert recorded == [data for data, _, _ in opus_clip.frames]
    assert decode_all(vault, tmp_path / "c-red" / track.file) == (track.frames, track.frames)
