"""Sans-I/O RTP header work: parsing, rewriting, offsets with wraparound, RTX, history."""

from __future__ import annotations

import random
import struct

import pytest
from aiortc.rtp import RtpPacket

from sfu.rtp import (
    SRTP_REPLAY_WINDOW,
    ExtensionRewriter,
    LossCounter,
    PacketHistory,
    RtpError,
    SequenceMapper,
    abs_send_time_now,
    extension_elements,
    extension_layout,
    extension_value_at,
    pack_extensions,
    parse_header,
    rewrite,
    rewrite_packet,
    seq_newer,
    unwrap_rtx,
    wrap_rtx,
)


from sfu.leg import FANOUT

MAPPERS = [SequenceMapper] + ([FANOUT.SequenceMapper] if FANOUT is not None else [])
HISTORIES = [PacketHistory] + ([FANOUT.PacketHistory] if FANOUT is not None else [])
"""sfu.rtp's classes and their C versions (sfu/_fanout.c): the same rules, the same tests."""


def packet(seq=1, ts=1000, ssrc=1234, pt=96, marker=False, payload=b"\x10\x00\x9d\x01\x2a", ext=None, csrc=()):
    p = RtpPacket(payload_type=pt, marker=int(marker), sequence_number=seq, timestamp=ts, ssrc=ssrc, payload=payload)
    p.csrc = list(csrc)
    data = p.serialize()
    if ext:
        block = pack_extensions(ext)
        data = bytes([data[0] | 0x10]) + data[1:12 + 4 * len(csrc)] + block + data[12 + 4 * len(csrc):]
    return data


def test_parse_and_rewrite_keep_payload_and_csrc():
    data = packet(seq=65535, ts=4294967295, marker=True, csrc=(7, 8), ext=[(1, b"0"), (3, b"\x01\x02\x03")])
    h = parse_header(data)
    assert (h.sequence_number, h.timestamp, h.ssrc, h.marker, h.payload_type) == (65535, 4294967295, 1234, True, 96)
    assert extension_elements(data, h) == [(1, b"0"), (3, b"\x01\x02\x03")]
    rw = ExtensionRewriter.between({"urn:ietf:params:rtp-hdrext:sdes:mid": 1, "abs": 3},
                                   {"urn:ietf:params:rtp-hdrext:sdes:mid": 4, "abs": 2}, "7")
    out = rewrite(data, h, ssrc=99, payload_type=100, sequence_number=5, timestamp=6, extensions=rw.rewrite(data, h))
    parsed = RtpPacket.parse(out)
    assert (parsed.ssrc, parsed.payload_type, parsed.sequence_number, parsed.timestamp, parsed.marker) == (
        99, 100, 5, 6, 1)
    assert parsed.csrc == [7, 8]
    assert parsed.payload == data[h.payload_start:]
    assert sorted(extension_elements(out, parse_header(out))) == [(2, b"\x01\x02\x03"), (4, b"7")]


def test_rewrite_without_extensions_drops_them():
    data = packet(ext=[(5, b"x")])
    h = parse_header(data)
    out = rewrite(data, h, ssrc=1, payload_type=96, sequence_number=1, timestamp=1, extensions=b"")
    assert out[0] & 0x10 == 0 and len(out) == 12 + len(data[h.payload_start:])


@pytest.mark.parametrize("bad", [b"", b"\x80" * 5, b"\x00" * 12, b"\x90\x60\x00\x01" + b"\x00" * 8])
def test_parse_refuses_garbage(bad):
    with pytest.raises(RtpError):
        parse_header(bad)


@pytest.mark.parametrize("SequenceMapper", MAPPERS)
def test_sequence_mapper_offsets_wrap_and_switch(SequenceMapper):
    m = SequenceMapper(first_sequence_number=65534, first_timestamp=4294967000)
    assert m.map(10, 100) is None  # not started
    m.start(10, 100)
    assert m.map(10, 100) == (65534, 4294967000)
    assert m.map(11, 100) == (65535, 4294967000)
    assert m.map(12, 3100) == (0, (4294967000 + 3000) % 2**32)
    assert m.map(9, 0) is None  # older than the start
    assert m.map(11, 100) == (65535, 4294967000)  # a late (reordered) packet keeps its place
    m.switch(timestamp_gap=900)
    assert m.map(13, 6100) is None  # waiting for the new source's start
    m.start(500, 77)  # the new source's numbering
    assert m.map(500, 77) == (1, (4294967000 + 3000 + 900) % 2**32)
    assert m.map(501, 3077) == (2, (4294967000 + 3000 + 900 + 3000) % 2**32)


@pytest.mark.parametrize("SequenceMapper", MAPPERS)
def test_sequence_mapper_drops_what_srtp_could_not_send(SequenceMapper):
    """Output more than SRTP's replay window behind the highest sent: libsrtp refuses to protect
    it ("index too old"), so the mapper drops it; within the window it keeps its place."""
    m = SequenceMapper(1000, 0)
    m.start(10, 0)
    assert m.map(10 + 3000, 0) == (4000, 0)
    assert m.map(10 + 3000 - SRTP_REPLAY_WINDOW, 0) is None
    assert m.map(10 + 3000 - SRTP_REPLAY_WINDOW + 1, 0) == (4000 - SRTP_REPLAY_WINDOW + 1, 0)
    assert m.map(20, 0) is None  # not older than the start, but 2990 behind
    assert m.map(10 + 3001, 0) == (4001, 0)


@pytest.mark.parametrize("SequenceMapper", MAPPERS)
def test_input_sequence_wraparound(SequenceMapper):
    m = SequenceMapper(100, 0)
    m.start(65535, 0)
    assert m.map(65535, 0) == (100, 0)
    assert m.map(0, 0) == (101, 0)
    assert seq_newer(0, 65535) and not seq_newer(65535, 0)


@pytest.mark.parametrize("PacketHistory", HISTORIES)
def test_history_and_rtx_round_trip(PacketHistory):
    data = packet(seq=40000, payload=b"payload-bytes")
    history = PacketHistory(16)
    history.put(40000, data)
    assert history.get(40000) == data
    assert history.get(40016) is None
    history.put(40016, b"x")
    assert history.get(40000) is None
    rtx = wrap_rtx(data, payload_type=97, ssrc=555, sequence_number=7)
    h = parse_header(rtx)
    assert (h.payload_type, h.ssrc, h.sequence_number) == (97, 555, 7)
    assert rtx[h.payload_start:h.payload_start + 2] == struct.pack("!H", 40000)
    original, oh = unwrap_rtx(rtx, h, payload_type=96, ssrc=1234)
    assert original == data


@pytest.mark.parametrize("PacketHistory", HISTORIES)
def test_history_counts_resends_per_packet_until_the_slot_is_reused(PacketHistory):
    history = PacketHistory(16)
    history.put(5, b"a")
    assert history.resent(5) == 0
    history.note_resent(5)
    history.note_resent(5)
    assert history.resent(5) == 2 and history.resent(21) == 0
    history.note_resent(21)  # not held: nothing
    history.put(21, b"b")
    assert history.resent(21) == 0 and history.resent(5) == 0


def test_abs_send_time_is_found_and_written_in_place():
    one_byte = packet(seq=1, payload=b"x", ext=[(1, b"0"), (3, b"\x01\x02\x03")])
    h = parse_header(one_byte)
    at = extension_value_at(one_byte, h, 3)
    assert one_byte[at:at + 3] == b"\x01\x02\x03"
    assert extension_value_at(one_byte, h, 5) == -1
    assert len(abs_send_time_now(0)) == 3
    # 6.18 fixed point, modulo 64 s: a quarter second later is 2^16 more
    assert (int.from_bytes(abs_send_time_now(250_000_000), "big") - int.from_bytes(abs_send_time_now(0), "big")) \
        % (1 << 24) == 1 << 16


def test_loss_counter():
    loss = LossCounter()
    assert [loss.add(s) for s in (65534, 65535, 2, 1, 0)] == [0, 0, 2, -1, -1]
    assert loss.lost == 0


def _reference_block(rewriter, data, header):
    """The extension block as the rewriter defined it before it compiled layouts: parse the
    elements, keep and renumber, add the leg's mid, pack."""
    elements = [(rewriter.id_map[i], v) for i, v in extension_elements(data, header) if i in rewriter.id_map]
    if rewriter.mid_id and rewriter.mid:
        elements.append((rewriter.mid_id, rewriter.mid))
    return pack_extensions(elements)


def test_extension_layout_matches_the_elements():
    data = packet(csrc=(5,), ext=[(1, b"0"), (3, b"\x01\x02\x03"), (2, b"\x80")])
    h = parse_header(data)
    layout = extension_layout(data, h)
    assert [(i, data[s:e]) for i, s, e in layout] == extension_elements(data, h)
    assert extension_layout(packet(), parse_header(packet())) == ()
    two = packet(ext=[(1, b""), (20, b"long" * 10)])
    h2 = parse_header(two)
    assert h2.extension_profile == 0x1000
    assert [(i, two[s:e]) for i, s, e in extension_layout(two, h2)] == extension_elements(two, h2) == [
        (1, b""), (20, b"long" * 10)]


def test_compiled_extension_blocks_are_byte_identical():
    """Every layout the rewriter compiles gives the bytes the element-by-element packing gives,
    for one-byte and two-byte forms, kept, dropped and renumbered ids, with and without mid."""

    rng = random.Random(5)
    uris = ["m", "a", "b", "c", "d"]
    for _ in range(300):
        pub_ids = rng.sample(range(1, 15), len(uris))
        publisher = dict(zip(uris, pub_ids))
        publisher["urn:ietf:params:rtp-hdrext:sdes:mid"] = publisher.pop("m")
        sub_ids = rng.sample(list(range(1, 15)) + [20, 200], len(uris))
        subscriber = {u: i for u, i in zip(uris, sub_ids) if rng.random() < 0.8}
        subscriber["urn:ietf:params:rtp-hdrext:sdes:mid" if rng.random() < 0.7 else "x"] = rng.randint(1, 14)
        rewriter = ExtensionRewriter.between(publisher, subscriber, rng.choice(["0", "1", "video-17" * 3, ""]))
        elements = [(i, rng.randbytes(rng.choice([0, 1, 1, 3, 16, 17]))) for i in rng.sample(pub_ids, rng.randint(0, 5))]
        data = packet(seq=rng.randrange(65536), csrc=tuple(range(rng.randint(0, 2))), ext=elements or None)
        h = parse_header(data)
        expected = _reference_block(rewriter, data, h)
        assert rewriter.rewrite(data, h) == expected
        assert rewriter.block(data, extension_layout(data, h)) == expected  # the compiled plan, reused
        other = packet(seq=1, csrc=tuple(range(h.csrc_end // 4 - 3)), ext=[(i, rng.randbytes(len(v)))
                                                                           for i, v in elements] or None)
        oh = parse_header(other)
        if extension_layout(other, oh) == extension_layout(data, h):  # same layout, other values
            assert rewriter.block(other, extension_layout(other, oh)) == _reference_block(rewriter, other, oh)


def test_rewrite_packet_is_rewrite():
    data = packet(seq=9, marker=True, csrc=(1, 2), ext=[(1, b"0")], payload=b"\x01" * 50)
    h = parse_header(data)
    for ext in (b"", pack_extensions([(4, b"1")])):
        assert rewrite_packet(data, h.csrc_end, h.payload_start, 7, 100, 11, 12, ext) == rewrite(
            data, h, ssrc=7, payload_type=100, sequence_number=11, timestamp=12, extensions=ext)
    plain = packet(seq=3)
    ph = parse_header(plain)
    out = rewrite_packet(plain, ph.csrc_end, ph.payload_start, 7, 100, 11, 12, b"")
    assert parse_header(out).sequence_number == 11 and out[12:] == plain[12:]
