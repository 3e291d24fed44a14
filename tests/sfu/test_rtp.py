"""Sans-I/O RTP header work: parsing, rewriting, offsets with wraparound, RTX, history."""

from __future__ import annotations

import struct

import pytest
from aiortc.rtp import RtpPacket

from sfu.rtp import (ExtensionRewriter, LossCounter, PacketHistory, RtpError, SequenceMapper, extension_elements,
                     pack_extensions, parse_header, rewrite, seq_newer, unwrap_rtx, wrap_rtx)


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
    assert out[0] & 0x10 == 0 and len(out) == 12 + len(h and data[h.payload_start:])


@pytest.mark.parametrize("bad", [b"", b"\x80" * 5, b"\x00" * 12, b"\x90\x60\x00\x01" + b"\x00" * 8])
def test_parse_refuses_garbage(bad):
    with pytest.raises(RtpError):
        parse_header(bad)


def test_sequence_mapper_offsets_wrap_and_switch():
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


def test_input_sequence_wraparound():
    m = SequenceMapper(100, 0)
    m.start(65535, 0)
    assert m.map(65535, 0) == (100, 0)
    assert m.map(0, 0) == (101, 0)
    assert seq_newer(0, 65535) and not seq_newer(65535, 0)


def test_history_and_rtx_round_trip():
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


def test_loss_counter():
    loss = LossCounter()
    assert [loss.add(s) for s in (65534, 65535, 2, 1, 0)] == [0, 0, 2, -1, -1]
    assert loss.lost == 0
