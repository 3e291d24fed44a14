"""sfu/_fanout.c (and sfu/leg.py): one publisher packet to all its subscriptions' C legs gives,
per leg, the bytes the Python path gives (sfu.rtp's mapper, extension rewriter and header
rewrite), keeps them for NACKs, queues them and counts them; what it does not handle it hands
back."""

from __future__ import annotations

import random

import pytest

from media.aiortc_internals import ntp_now
from sfu.leg import FANOUT, Leg
from sfu.rtp import ExtensionRewriter, SequenceMapper, extension_layout, pack_extensions, parse_header, rewrite_packet

MID = "urn:ietf:params:rtp-hdrext:sdes:mid"


def test_the_extension_is_built():
    """The test command builds it (scripts/install.sh); without it forwarding costs twice as
    much (docs/performance.md), so the suite fails loudly."""
    assert FANOUT is not None, "sfu._fanout was not built: are gcc and the Python headers installed?"


def rtp(rng: random.Random, seq: int, ts: int, pt: int = 96, elements: list[tuple[int, bytes]] | None = None,
        csrc: int = 0, padding: int = 0, size: int = 300) -> bytes:
    first = 0x80 | csrc | (0x20 if padding else 0) | (0x10 if elements else 0)
    header = bytes([first, (0x80 if rng.random() < 0.2 else 0) | pt]) + seq.to_bytes(2, "big") \
        + ts.to_bytes(4, "big") + (0x11223344).to_bytes(4, "big") + rng.randbytes(4 * csrc)
    block = pack_extensions(elements) if elements else b""
    tail = bytes(padding - 1) + bytes([padding]) if padding else b""
    return header + block + rng.randbytes(size) + tail


def fan_out(data: bytes, keyframe: bool, legs: list, now: float = 1.0):
    assert FANOUT is not None
    h = parse_header(data)
    return FANOUT.fan_out(data, h.csrc_end, h.extension_profile, h.extension_start, h.payload_start, h.payload_end,
                          h.sequence_number, h.timestamp, keyframe, now, legs)


def new_leg(pending: list[bytes], enqueued: list[int], ssrc: int = 0xCAFE, pt: int = 100, seq: int = 65530,
            ts: int = 4294967000, history: int = 64):
    assert FANOUT is not None
    leg = FANOUT.Leg(ssrc=ssrc, payload_type=pt, history_size=history, first_sequence_number=seq,
                     first_timestamp=ts, pending=pending, enqueue=lambda: enqueued.append(len(pending)))
    leg.active = True
    return leg


def test_each_leg_gets_the_bytes_the_python_path_makes():
    """Random legs (extension ids kept, dropped, renumbered past 14, a mid or none) and packets
    (one-byte and two-byte extension blocks, empty and 17-byte values, CSRCs, padding): every
    packet of every leg is byte for byte sfu.rtp's rewrite, and is in its history."""
    assert FANOUT is not None
    rng = random.Random(7)
    uris = ["a", "b", "c", "d"]
    for _ in range(200):
        pub_ids = rng.sample(range(1, 15), 5)
        publisher = dict(zip(uris + [MID], pub_ids))
        legs, rewriters, pendings = [], [], []
        for n in range(rng.randint(1, 4)):
            subscriber = {u: i for u, i in zip(uris, rng.sample(list(range(1, 15)) + [20, 200], 4))
                          if rng.random() < 0.8}
            if rng.random() < 0.7:
                subscriber[MID] = rng.randint(1, 14)
            mid = rng.choice(["0", "1", "video-17" * 3, ""])
            rewriter = ExtensionRewriter.between(publisher, subscriber, mid)
            pending: list[bytes] = []
            leg = new_leg(pending, [], ssrc=rng.randrange(1 << 32), pt=rng.randrange(128),
                          seq=rng.randrange(65536), ts=rng.randrange(1 << 32))
            leg.set_rewriter(rewriter.id_map, rewriter.mid_id, rewriter.mid)
            legs.append(leg)
            pendings.append(pending)
            rewriters.append(rewriter)
        seq, ts = rng.randrange(65536), rng.randrange(1 << 32)
        for k in range(6):
            elements = [(i, rng.randbytes(rng.choice([0, 1, 1, 3, 16, 17])))
                        for i in rng.sample(pub_ids, rng.randint(0, 5))]
            data = rtp(rng, (seq + k) & 0xFFFF, (ts + 3000 * (k // 3)) & 0xFFFFFFFF, elements=elements or None,
                       csrc=rng.randint(0, 2), padding=rng.choice([0, 0, 1, 4]))
            h = parse_header(data)
            waiting, packets, octets, handed_back = fan_out(data, k == 0, legs)
            assert not waiting and handed_back is None and packets == len(legs)
            for leg, pending, rewriter in zip(legs, pendings, rewriters):
                out = pending[-1]
                oh = parse_header(out)
                assert oh.sequence_number == (parse_header(pending[0]).sequence_number + k) & 0xFFFF
                assert leg.history.get(oh.sequence_number) is out
                expected = rewrite_packet(data, h.csrc_end, h.payload_start, leg.ssrc, leg.payload_type,
                                          oh.sequence_number, oh.timestamp,
                                          rewriter.block(data, extension_layout(data, h)))
                assert out == expected
            assert octets == sum(len(p[-1]) for p in pendings)


def test_sequence_numbers_and_timestamps_follow_the_mapper_rules():
    """Mapping in fan_out is the mapper's: the first keyframe starts it, before it the leg waits,
    older packets are dropped, numbers wrap."""
    pending: list[bytes] = []
    leg = new_leg(pending, [], seq=65534, ts=4294967000)
    reference = SequenceMapper(65534, 4294967000)
    rng = random.Random(1)
    assert fan_out(rtp(rng, 10, 100), False, [leg])[:3] == (True, 0, 0)  # waits for a keyframe
    assert fan_out(rtp(rng, 11, 100), True, [leg])[:3][1] == 1
    reference.start(11, 100)
    for seq, ts in ((12, 100), (13, 3100), (9, 0), (12, 100), (14, 6100)):
        before = len(pending)
        fan_out(rtp(rng, seq, ts), False, [leg])
        mapped = reference.map(seq, ts)
        if mapped is None:
            assert len(pending) == before
        else:
            h = parse_header(pending[-1])
            assert (h.sequence_number, h.timestamp) == mapped
    assert leg.mapper.last_seq == reference.last_seq and leg.mapper.last_ts == reference.last_ts


def test_what_it_does_not_handle_is_handed_back_untouched():
    """An inactive leg (transport not ready) and a RED packet for a leg that converts RED go
    back to Python, by index; the other legs are forwarded."""
    rng = random.Random(2)
    pa: list[bytes] = []
    pb: list[bytes] = []
    pc: list[bytes] = []
    a, b, c = new_leg(pa, []), new_leg(pb, []), new_leg(pc, [])
    b.active = False
    c.red_in = 63
    assert fan_out(rtp(rng, 1, 1), True, [a, b, c])[3] == [1]
    assert fan_out(rtp(rng, 2, 1, pt=63), True, [a, b, c])[3] == [1, 2]
    assert (len(pa), len(pb), len(pc)) == (2, 0, 1)
    many = [(1 + i % 14, b"x") for i in range(70)]  # more elements than C takes: Python's
    data = rtp(rng, 3, 1, elements=many)
    assert fan_out(data, True, [a])[3] == [0] and len(pa) == 2


def test_queueing_counting_and_sender_report_counts():
    """The first packet of a turn calls enqueue (the batch's due), later ones only append; each
    packet is counted for the leg and for its Sender Reports as the Python leg counts it."""
    rng = random.Random(3)
    pending: list[bytes] = []
    enqueued: list[int] = []
    leg = new_leg(pending, enqueued)
    python = Leg(64, 0, 0)
    before = ntp_now()
    sizes = []
    for k in range(6):
        if k == 5:
            pending.clear()  # the end of the turn: the batch sent them
        data = rtp(rng, 100 + k, 9000 if k < 3 else 12000, size=200 + k)
        h = parse_header(data)
        fan_out(data, True, [leg], now=5.0 + k)
        sizes.append(len(pending[-1]))
        python.note_sent(parse_header(pending[-1]).timestamp, h.payload_end - h.payload_start)
    assert enqueued == [1, 1]  # once a turn, on its first packet
    assert leg.bytes_out == sum(sizes)
    assert (leg.sr_packets, leg.sr_octets, leg.sr_timestamp) == (6, python.sr_octets, python.sr_timestamp)
    assert before <= leg.sr_ntp <= ntp_now()
    assert leg.last_sent_at == 10.0


def test_bad_arguments_raise_and_change_nothing():
    rng = random.Random(4)
    pending: list[bytes] = []
    leg = new_leg(pending, [])
    data = rtp(rng, 1, 1)
    assert FANOUT is not None
    with pytest.raises(ValueError):
        FANOUT.fan_out(data, 12, 0, 12, len(data) + 1, len(data) + 1, 1, 1, True, 0.0, [leg])
    with pytest.raises(TypeError):
        FANOUT.fan_out(data, 12, 0, 12, 12, len(data), 1, 1, True, 0.0, [object()])
    with pytest.raises(ValueError):
        leg.set_rewriter({0: 3}, 1, b"0")
    assert pending == [] and not leg.mapper.started
