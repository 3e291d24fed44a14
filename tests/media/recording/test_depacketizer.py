from __future__ import annotations

import random

import av
from aiortc.codecs.vpx import VpxPayloadDescriptor
from aiortc.rtp import RtpPacket

from media.recording.depacketizer import (
    Depacketizer,
    EncodedFrame,
    Event,
    Gap,
    h264_is_keyframe,
    h264_nal_units,
    vp8_descriptor_end,
    vp8_is_keyframe,
)
from media.red import RedPacker
from sfu.rtp import parse_header
from tests.media.conftest import H264, OPUS, VP8, Clip, encode_video, packetize


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


def test_vp8_descriptor_reader_agrees_with_aiortc() -> None:


    rng = random.Random(3)
    for _ in range(3000):
        payload = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 8)))
        if payload and rng.random() < 0.7:
            payload = bytes([payload[0] | 0x80]) + payload[1:]  # extended bits more often
        try:
            descriptor, data = VpxPayloadDescriptor.parse(payload)
        except ValueError:
            try:
                vp8_descriptor_end(b"xx" + payload + b"yy", 2, 2 + len(payload))
            except ValueError:
                continue
            raise AssertionError(f"accepted {payload.hex()}")
        begins, pos = vp8_descriptor_end(b"xx" + payload + b"yy", 2, 2 + len(payload))
        assert begins == bool(descriptor.partition_start and descriptor.partition_id == 0), payload.hex()
        assert (b"xx" + payload)[pos:] == data, payload.hex()


def test_push_rtp_with_parsed_headers_equals_push(vp8_clip: Clip, opus_clip: Clip) -> None:
    """The SFU tap's path (datagram + its parsed header) gives what push() gives,
    reordering, duplicates and loss included."""

    for clip, codec in ((vp8_clip, VP8), (opus_clip, OPUS)):
        packets = clip.flat()
        rng = random.Random(11)
        mixed = packets[:1]
        for i in range(1, len(packets), 6):
            block = packets[i : i + 6]
            rng.shuffle(block)
            mixed += block
        del mixed[40]  # a loss
        mixed.insert(60, mixed[50])  # a duplicate
        a, b = Depacketizer(codec, reorder_packets=16), Depacketizer(codec, reorder_packets=16)
        expected: list[Event] = []
        got: list[Event] = []
        for i, p in enumerate(mixed):
            expected += a.push(p, i * 0.001)
            data = p.serialize()
            got += b.push_rtp(data, parse_header(data), i * 0.001)
        expected += a.flush(10.0)
        got += b.flush(10.0)
        assert got == expected and frames_of(got)
        assert (b.lost, b.duplicates, b.late, b.frames_dropped) == (a.lost, a.duplicates, a.late, a.frames_dropped)


def red_packets(clip: Clip, red_pt: int = 63, distance: int = 1) -> list[bytes]:
    """The clip's Opus frames as RED (RFC 2198) RTP datagrams: each frame the primary, the
    ``distance`` before it as redundancy."""
    packer = RedPacker(OPUS.payloadType or 111, distance=distance)
    out = []
    for (group,) in clip.packets:
        packet = RtpPacket(payload_type=red_pt, sequence_number=group.sequence_number, timestamp=group.timestamp,
                           ssrc=group.ssrc)
        packet.payload = packer.pack(group.payload, group.timestamp)
        out.append(packet.serialize())
    return out


def test_red_opus_keeps_the_primary_and_recovers_lost_packets(opus_clip: Clip) -> None:
    datagrams = red_packets(opus_clip)
    dep = Depacketizer(OPUS, red_payload_type=63)
    events: list[Event] = []
    lost = {10, 41, 42, 90}  # 41 and 42 in a row: 41 is beyond a distance of 1
    for i, data in enumerate(datagrams):
        if i not in lost:
            events += dep.push_rtp(data, parse_header(data), i * 0.02)
    events += dep.flush(10.0)
    frames = frames_of(events)
    got = [(f.data, f.timestamp) for f in frames]
    expected = [(group[0].payload, group[0].timestamp) for i, group in enumerate(opus_clip.packets) if i != 41]
    assert got == expected
    assert dep.recovered == 3 and dep.lost == 1
    assert sum(g.lost_packets for g in gaps_of(events)) == 1


def test_malformed_red_is_a_loss_and_plain_opus_still_passes(opus_clip: Clip) -> None:
    datagrams = red_packets(opus_clip)[:5]
    bad = bytearray(datagrams[2])
    bad[12] = 0xFF  # the RED header: F=1 with a block that runs past the payload
    bad[13:16] = b"\xff\xff\xff"
    plain = opus_clip.packets[3][0]
    plain.payload_type = 111
    dep = Depacketizer(OPUS, red_payload_type=63)
    events: list[Event] = []
    for i, data in enumerate([datagrams[0], datagrams[1], bytes(bad), plain.serialize(), datagrams[4]]):
        events += dep.push_rtp(data, parse_header(data), i * 0.02)
    events += dep.flush(10.0)
    # The packet after the malformed one is plain Opus: nothing to recover it from.
    assert [f.data for f in frames_of(events)] == [opus_clip.frames[i][0] for i in (0, 1, 3, 4)]
    assert dep.malformed == 1 and dep.lost == 1 and dep.recovered == 0
