"""RED (RFC 2198) payloads: parse, build, primary, retag, the packer and the receiver's recovery,
checked against payloads built by hand from the RFC's layout; and hostile payloads, which give
RedError (a ValueError) and nothing else."""

from __future__ import annotations

import random

import pytest

from media import red
from media.red import RedBlock, RedError, RedPacker, RedReceiver


def header(pt: int, offset: int, length: int) -> bytes:
    """One 4-byte RFC 2198 block header, F=1."""
    return bytes([0x80 | pt]) + ((offset << 10) | length).to_bytes(3, "big")


def by_hand() -> bytes:
    """Two redundant Opus (PT 111) blocks at 1920 and 960 ticks back, then the primary."""
    return header(111, 1920, 3) + header(111, 960, 2) + bytes([111]) + b"abc" + b"de" + b"primary"


def test_parse_reads_a_payload_built_by_hand():
    blocks = red.parse(by_hand())
    assert blocks == [RedBlock(111, 1920, b"abc"), RedBlock(111, 960, b"de"), RedBlock(111, 0, b"primary")]
    assert red.primary(by_hand()) == (111, b"primary")


def test_build_writes_the_same_bytes():
    assert red.build(red.parse(by_hand())) == by_hand()
    assert red.build([RedBlock(96, 0, b"x")]) == b"\x60x"


def test_a_payload_with_only_a_primary():
    assert red.parse(b"\x6fhello") == [RedBlock(111, 0, b"hello")]
    assert red.primary(b"\x6f") == (111, b"")


def test_retag_renumbers_every_block_for_another_leg():
    out = red.retag(by_hand(), {111: 96})
    assert [b.payload_type for b in red.parse(out)] == [96, 96, 96]
    assert [b.data for b in red.parse(out)] == [b"abc", b"de", b"primary"]
    with pytest.raises(RedError):
        red.retag(by_hand(), {100: 96})  # the primary's type is not the other leg's


def test_retag_leaves_out_redundancy_of_other_types():
    payload = header(13, 960, 1) + bytes([111]) + b"z" + b"primary"  # comfort noise as redundancy
    assert red.parse(red.retag(payload, {111: 96})) == [RedBlock(96, 0, b"primary")]


def test_valid_checks_types_and_primary():
    assert red.valid(by_hand(), 111)
    assert not red.valid(by_hand(), 96)
    assert not red.valid(b"\x6f", 111)  # empty primary
    assert not red.valid(b"\xef", 111)  # truncated


@pytest.mark.parametrize("payload", [
    b"",  # nothing
    b"\xef",  # F=1 and no room for the rest of its header
    b"\xef\x00\x00",  # truncated block header
    header(111, 960, 10) + b"\x6f" + b"short",  # block longer than the payload
    header(111, 960, 0) * 9 + b"\x6f",  # more blocks than any sender makes
    header(111, 960, 0) * 3,  # no primary header at all
])
def test_malformed_payloads_raise_red_error_only(payload):
    with pytest.raises(RedError):
        red.parse(payload)
    with pytest.raises(RedError):
        red.primary(payload)
    assert not red.valid(payload, 111)


def test_random_bytes_never_raise_anything_but_red_error():
    rng = random.Random(2198)
    for _ in range(5000):
        payload = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
        for f in (red.parse, red.primary):
            try:
                f(payload)
            except RedError:
                pass
        red.valid(payload, 111)
        try:
            red.retag(payload, {111: 96})
        except RedError:
            pass


def test_build_refuses_what_the_header_cannot_say():
    with pytest.raises(RedError):
        red.build([])
    with pytest.raises(RedError):
        red.build([RedBlock(111, 1 << 14, b"x"), RedBlock(111, 0, b"p")])
    with pytest.raises(RedError):
        red.build([RedBlock(111, 960, b"x" * 1024), RedBlock(111, 0, b"p")])
    with pytest.raises(RedError):
        red.build([RedBlock(128, 0, b"p")])


def test_packer_repeats_the_previous_frames():
    packer = RedPacker(111, distance=2)
    first = packer.pack(b"f0", 1000)
    assert red.parse(first) == [RedBlock(111, 0, b"f0")]
    second = packer.pack(b"f1", 1960)
    assert red.parse(second) == [RedBlock(111, 960, b"f0"), RedBlock(111, 0, b"f1")]
    third = packer.pack(b"f2", 2920)
    assert red.parse(third) == [RedBlock(111, 1920, b"f0"), RedBlock(111, 960, b"f1"), RedBlock(111, 0, b"f2")]
    fourth = packer.pack(b"f3", 3880)
    assert [b.data for b in red.parse(fourth)] == [b"f1", b"f2", b"f3"]


def test_packer_wraps_timestamps_and_keeps_under_its_size():
    packer = RedPacker(111, distance=2, max_payload=300)
    packer.pack(b"a" * 200, (1 << 32) - 960)
    packer.pack(b"b" * 50, 0)
    blocks = red.parse(packer.pack(b"c" * 50, 960))
    # The 200-byte frame no longer fits beside the others: only the newest redundancy stays.
    assert blocks == [RedBlock(111, 960, b"b" * 50), RedBlock(111, 0, b"c" * 50)]


def test_packer_with_distance_zero_sends_the_primary_alone_and_may_change():
    packer = RedPacker(111, distance=0)
    packer.pack(b"x", 0)
    assert red.parse(packer.pack(b"y", 960)) == [RedBlock(111, 0, b"y")]
    packer.distance = 2
    packer.pack(b"z", 1920)
    assert [b.data for b in red.parse(packer.pack(b"w", 2880))] == [b"z", b"w"]
    packer.distance = 1
    packer.pack(b"v", 3840)
    assert [b.data for b in red.parse(packer.pack(b"u", 4800))] == [b"v", b"u"]


def stream(count: int, distance: int = 2) -> list[tuple[int, int, bytes]]:
    """(seq, ts, RED payload) of ``count`` 20 ms frames ``f<i>``, sequence numbers wrapping."""
    packer = RedPacker(111, distance=distance)
    out = []
    for i in range(count):
        seq, ts = (65530 + i) % 65536, (4294966000 + 960 * i) % (1 << 32)
        out.append((seq, ts, packer.pack(f"f{i}".encode(), ts)))
    return out


def test_receiver_recovers_lost_packets_from_the_next_one():
    packets = stream(12)
    receiver = RedReceiver()
    frames = []
    for i, (seq, ts, payload) in enumerate(packets):
        if i in (3, 7, 8):  # a single loss, then two in a row
            continue
        frames += receiver.push(seq, ts, payload)
    assert [f.data for f in frames] == [f"f{i}".encode() for i in range(12)]
    assert [f.sequence_number for f in frames] == [s for s, _, _ in packets]
    assert [f.timestamp for f in frames] == [t for _, t, _ in packets]
    assert [f.recovered for f in frames].count(True) == 3 == receiver.recovered


def test_receiver_cannot_recover_beyond_the_distance():
    packets = stream(8, distance=1)
    receiver = RedReceiver()
    frames = []
    for i, (seq, ts, payload) in enumerate(packets):
        if i in (3, 4):
            continue
        frames += receiver.push(seq, ts, payload)
    assert [f.data for f in frames] == [f"f{i}".encode() for i in (0, 1, 2, 4, 5, 6, 7)]


def test_receiver_drops_duplicates_and_a_late_original():
    packets = stream(5)
    receiver = RedReceiver()
    for i in (0, 1, 3, 2, 3, 4):  # 2 comes after its frame was recovered from 3
        receiver.push(*packets[i])
    assert receiver.duplicates == 2 and receiver.recovered == 1


def test_receiver_takes_plain_packets_and_refuses_malformed_ones():
    receiver = RedReceiver()
    assert [f.data for f in receiver.push(1, 960, b"plain", red=False)] == [b"plain"]
    with pytest.raises(RedError):
        receiver.push(2, 1920, b"\xff")
    # Offsets that do not grow going back are not trusted for recovery.
    bad = header(111, 960, 1) + header(111, 960, 1) + b"\x6f" + b"ab" + b"p"
    assert [f.data for f in receiver.push(5, 4800, bad)] == [b"b", b"p"]


SDP = "\r\n".join([
    "v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "t=0 0",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 0", "a=mid:0",
    "a=rtpmap:111 opus/48000/2", "a=fmtp:111 minptime=10;useinbandfec=1",
    "a=rtpmap:63 red/48000/2", "a=rtpmap:0 PCMU/8000",
    "m=video 9 UDP/TLS/RTP/SAVPF 96", "a=mid:1", "a=rtpmap:96 VP8/90000", "",
])


def test_set_red_fmtp_writes_the_opus_type_once_per_level():
    out = red.set_red_fmtp(SDP)
    assert "a=rtpmap:63 red/48000/2\r\na=fmtp:63 111/111\r\n" in out
    assert out.count("a=fmtp:63") == 1 and out.endswith("\r\n")
    assert red.set_red_fmtp(out) == out  # an fmtp it has is kept
    three = red.set_red_fmtp(out, levels=3)
    assert "a=fmtp:63 111/111/111" in three and three.count("a=fmtp:63") == 1
    assert red.set_red_fmtp(SDP.replace("a=rtpmap:63 red/48000/2\r\n", "")) == SDP.replace(
        "a=rtpmap:63 red/48000/2\r\n", "")


def test_red_payload_types():
    assert red.red_payload_types(SDP, "0") == (63, 111)
    assert red.red_payload_types(SDP, "1") is None
    assert red.red_payload_types(SDP, "2") is None
