from __future__ import annotations

import hashlib
from pathlib import Path

import av
import pytest

from media.recording import ownership
from media.recording.manifest import read_manifest
from media.recording.stills import StillStore
from media.recording.store import RecordingNotFound, RecordingStore
from media.recording.vault import IntegrityError, MasterKey, Vault

from tests.media.conftest import OPUS, VP8, Clip


def record(store: RecordingStore, cid: str, vp8_clip: Clip, opus_clip: Clip, *, skip_cam: int = 0) -> None:
    now = [50.0]
    session = store.start_session(cid, started_by="dr", clock=lambda: now[0])
    session.add_track("cam", "nurse", "camera", VP8)
    session.add_track("steth", "agent", "stethoscope", OPUS)
    for i, group in enumerate(vp8_clip.packets):
        if skip_cam <= i < skip_cam + 10 and skip_cam:
            continue
        for p in group:
            session.feed("cam", p, 50.4 + i / 30)
    for i, group in enumerate(opus_clip.packets):
        for p in group:
            session.feed("steth", p, 50.1 + i * 0.02)
    session.stop("dr")


@pytest.fixture()
def store(tmp_path: Path) -> RecordingStore:
    return RecordingStore.for_data_dir(tmp_path, Vault(MasterKey.generate(), fsync=False), retention_days=30)


def test_export_is_one_file_in_sync(store: RecordingStore, tmp_path: Path, vp8_clip: Clip, opus_clip: Clip) -> None:
    record(store, "c-1", vp8_clip, opus_clip)
    assert [m.consultation_id for m in store.list()] == ["c-1"]
    out = store.export("c-1", tmp_path / "out.mkv")
    with av.open(str(out)) as c:
        assert [s.type for s in c.streams] == ["video", "audio"]
        first: dict[int, float] = {}
        counts = {0: 0, 1: 0}
        for packet in c.demux():
            if packet.size:
                counts[packet.stream.index] += 1
                assert packet.pts is not None and packet.time_base is not None
                first.setdefault(packet.stream.index, float(packet.pts * packet.time_base))
                assert packet.decode() is not None
    assert counts == {0: len(vp8_clip.frames), 1: len(opus_clip.frames)}
    # The camera's first frame arrived 0.3 s after the stethoscope's, and both are
    # placed on one timeline: within 50 ms of that.
    assert abs((first[0] - first[1]) - 0.3) < 0.05
    assert abs(first[1] - 0.1) < 0.05


def test_verify_reports_frames_duration_and_gaps(store: RecordingStore, vp8_clip: Clip, opus_clip: Clip) -> None:
    # A hole in the camera: frames 40..49 missing (and then up to the keyframe at 60).
    record(store, "c-2", vp8_clip, opus_clip, skip_cam=40)
    report = store.verify("c-2")
    assert report.ok, report.to_dict()
    cam, steth = report.tracks
    assert cam.packets == cam.decoded_frames == len(vp8_clip.frames) - 20
    assert [round(g.length_s, 2) for g in cam.gaps] == [round(21 / 30, 2)]
    assert steth.packets == steth.decoded_frames == len(opus_clip.frames)
    assert steth.gaps == () and abs(steth.duration_s - 3.0) < 0.01
    assert report.to_dict()["tracks"][0]["ok"] is True


def test_purge_expired_shreds(store: RecordingStore, tmp_path: Path, vp8_clip: Clip, opus_clip: Clip) -> None:
    record(store, "c-3", vp8_clip, opus_clip)
    stopped = store.manifest("c-3").stopped_at
    assert stopped is not None
    assert store.purge_expired(stopped + 29 * 86400) == []
    shredded = store.purge_expired(stopped + 31 * 86400)
    assert [s.consultation_id for s in shredded] == ["c-3"] and len(shredded[0].files) == 2
    assert not list((tmp_path / "recordings" / "c-3").glob("*.key"))
    assert read_manifest(tmp_path / "recordings" / "c-3").shredded_at is not None
    assert store.purge_expired(stopped + 40 * 86400) == []
    with pytest.raises(RecordingNotFound):
        store.export("c-3", tmp_path / "x.mkv")
    assert not store.verify("c-3").ok


def test_purge_of_processes_sharing_the_data_dir_shreds_each_once(store: RecordingStore, tmp_path: Path,
                                                                   vp8_clip: Clip, opus_clip: Clip) -> None:
    """Another process at a recording (its directory locked) makes this purge pass it by; the
    next purge that holds it shreds it, and no purge shreds it twice."""
    record(store, "c-5", vp8_clip, opus_clip)
    stopped = store.manifest("c-5").stopped_at
    assert stopped is not None
    other = ownership.hold(tmp_path / "recordings" / "c-5")
    assert other is not None
    try:
        assert store.purge_expired(stopped + 31 * 86400) == []
        assert read_manifest(tmp_path / "recordings" / "c-5").shredded_at is None
    finally:
        ownership.release(other)
    assert [s.consultation_id for s in store.purge_expired(stopped + 31 * 86400)] == ["c-5"]
    assert store.purge_expired(stopped + 32 * 86400) == []


def test_unknown_recording(store: RecordingStore, tmp_path: Path) -> None:
    with pytest.raises(RecordingNotFound):
        store.manifest("nope")
    with pytest.raises(ValueError):
        store.manifest("../etc")


def test_stills_sealed_round_trip(tmp_path: Path) -> None:
    vault = Vault(MasterKey.generate(), fsync=False)
    stills = StillStore.for_data_dir(tmp_path, vault, )
    image = b"\xff\xd8" + bytes(range(256)) * 40
    meta = stills.put("c-9", "dermatoscope", "image/jpeg", image, 1920, 1080)
    assert meta.sha256 == hashlib.sha256(image).hexdigest() and meta.size == len(image)
    assert stills.get("c-9", meta.still_id) == (meta, image)
    assert stills.list("c-9") == [meta]
    stored = tmp_path / "stills" / "c-9" / f"{meta.still_id}.bin"
    assert image[:64] not in stored.read_bytes()
    with pytest.raises(ValueError):
        stills.put("c-9", "camera", "image/jpeg", image, 1, 1)
    raw = bytearray(stored.read_bytes())
    raw[-5] ^= 1
    stored.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError):
        stills.get("c-9", meta.still_id)
    assert stills.purge_expired(30, now=meta.created + 31 * 86400) == [meta]
    assert stills.list("c-9") == []
