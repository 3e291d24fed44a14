from __future__ import annotations

import random

import av

from aiortc.rtp import RtpPacket

from media.depacketizer import (
    Depacketizer,
    EncodedFrame,
    Event,
    Gap,
    h264_is_keyframe,
    h264_nal_units,
    vp8_is_keyframe,
)

from .conftest import H264, OPUS, VP8, Clip, encode_video, packetize


def run(dep: Depacketizer, packets: list[RtpPacket], start: float = 0.0) -> list[Event]:
    events: list[Event] = []
    for i, p in enumerate(packets):
        events += dep.push(p, start + i * 0.001)
    events += dep.flush(start + len(packets) * 0.001 + 10)
    return events


def frames_of(events: list[Event]) -> list[EncodedFrame]:
    return [e for e in events if isinstance(e, EncodedFrame)]


def gaps_of(events: list[Event]) -> list[Gap]:
    return [e for e in events if isinstance(e, Gap)]


def test_vp8_round_trip_is_byte_identical(vp8_clip: Clip) -> None:
    frames = frames_of(run(Depacketizer(VP8), vp8_clip.flat()))
    assert [(f.data, f.timestamp, f.keyframe) for f in frames] == vp8_clip.frames
    assert all(f.clock_rate == 90000 for f in frames)
    assert frames[0].keyframe and vp8_is_keyframe(frames[0].data)
    assert sum(f.keyframe for f in frames) == 3


def test_h264_round_trip_keeps_nal_units(h264_clip: Clip) -> None:
    assert any(len(g) > 1 for g in h264_clip.packets), "want some FU-A frames"
    frames = frames_of(run(Depacketizer(H264), h264_clip.flat()))
    assert len(frames) == len(h264_clip.frames)
    for got, (data, ts, key) in zip(frames, h264_clip.frames):
        assert h264_nal_units(got.data) == h264_nal_units(data)
        assert got.timestamp == ts
        assert got.keyframe == key == h264_is_keyframe(data)


def test_h264_keyframe_gets_stored_sps_pps() -> None:
    encoded = encode_video("libx264", 31, gop=30)
    idr = bytes(encoded[30])
    idr_only = b"".join(b"\x00\x00\x00\x01" + n for n in h264_nal_units(idr) if n[0] & 0x1F not in (7, 8))
    clip = packetize(H264, [encoded[0], av.Packet(idr_only)])
    frames = frames_of(run(Depacketizer(H264), clip.flat()))
    assert len(frames) == 2 and frames[1].keyframe
    types = [n[0] & 0x1F for n in h264_nal_units(frames[1].data)]
    assert types[:2] == [7, 8] and 5 in types


def test_opus_one_packet_one_frame(opus_clip: Clip) -> None:
    frames = frames_of(run(Depacketizer(OPUS), opus_clip.flat()))
    assert [(f.data, f.timestamp) for f in frames] == [(d, t) for d, t, _ in opus_clip.frames]
    assert all(f.keyframe and f.clock_rate == 48000 for f in frames)


def test_reordering_and_duplicates_within_window(vp8_clip: Clip) -> None:
    packets = vp8_clip.flat()
    rng = random.Random(7)
    shuffled: list[RtpPacket] = []
    # Shuffle within blocks of 8 (not the very first packet, which sets the origin) and
    # duplicate some packets.
    shuffled.append(packets[0])
    for i in range(1, len(packets), 8):
        block = packets[i : i + 8]
        rng.shuffle(block)
        shuffled += block
        if i % 24 == 1:
            shuffled.append(block[0])
    dep = Depacketizer(VP8)
    frames = frames_of(run(dep, shuffled))
    assert [f.data for f in frames] == [f[0] for f in vp8_clip.frames]
    assert dep.duplicates + dep.late > 0 and dep.lost == 0


def test_loss_drops_frame_and_waits_for_keyframe(vp8_clip: Clip) -> None:
    # Lose one packet of frame 5: frames 5..29 are undecodable, the keyframe at 30 resumes.
    lost = vp8_clip.packets[5][0]
    packets = [p for p in vp8_clip.flat() if p is not lost]
    dep = Depacketizer(VP8, reorder_packets=16)
    events = run(dep, packets)
    frames = frames_of(events)
    expected = [f[0] for i, f in enumerate(vp8_clip.frames) if i < 5 or i >= 30]
    assert [f.data for f in frames] == expected
    gaps = gaps_of(events)
    assert gaps and gaps[0].lost_packets == 1 and gaps[0].needs_keyframe
    # Frame 5 was one packet, never seen: 6..29 are the ones received and thrown away.
    assert len(vp8_clip.packets[5]) == 1 and dep.frames_dropped == 24


def test_wait_for_first_keyframe_when_joining_late(vp8_clip: Clip) -> None:
    packets = [p for g in vp8_clip.packets[10:] for p in g]
    frames = frames_of(run(Depacketizer(VP8), packets))
    assert frames[0].keyframe and frames[0].data == vp8_clip.frames[30][0]


def test_opus_loss_reports_gap_and_continues(opus_clip: Clip) -> None:
    packets = opus_clip.flat()
    del packets[20:23]
    events = run(Depacketizer(OPUS, reorder_packets=8), packets)
    assert len(frames_of(events)) == len(opus_clip.frames) - 3
    assert [(g.lost_packets, g.needs_keyframe) for g in gaps_of(events)] == [(3, False)]


def test_sequence_and_timestamp_wrap() -> None:
    clip = packetize(VP8, encode_video("libvpx", 20), seq0=65530, ts0=(1 << 32) - 6000)
    frames = frames_of(run(Depacketizer(VP8), clip.flat()))
    assert [f.data for f in frames] == [f[0] for f in clip.frames]
    assert frames[2].timestamp == 0


def test_loss_found_by_time_without_more_packets(opus_clip: Clip) -> None:
    packets = opus_clip.flat()[:10]
    dep = Depacketizer(OPUS, reorder_packets=1000, reorder_delay_s=0.1)
    events = dep.push(packets[0], 0.0)
    events += dep.push(packets[2], 0.01)  # packet 1 missing
    assert len(frames_of(events)) == 1
    events = dep.push(packets[3], 0.2)
    assert len(frames_of(events)) == 2 and gaps_of(events)[0].lost_packets == 1


def test_malformed_payload_is_a_loss() -> None:
    dep = Depacketizer(H264)
    bad = RtpPacket(payload_type=102, sequence_number=1, timestamp=1, marker=1, payload=b"\x1e\x00")
    assert frames_of(dep.push(bad, 0.0)) == []
    assert dep.lost == 1
