"""Sans-I/O RTP header work for packet-level forwarding.

Everything here takes bytes (or ints) in and gives bytes (or ints) out; no
sockets, no clocks of its own. The forwarding path per packet and subscription
is: :func:`parse_header` once per packet, then per subscription
:meth:`SequenceMapper.map` (sequence number and timestamp offsets, with
wraparound), :meth:`ExtensionRewriter.rewrite` (extension ids of the
subscriber's leg, its own ``mid``), :func:`rewrite` (the new header in front of
the untouched payload), :meth:`PacketHistory.put` (to answer NACKs) and, on a
NACK, :func:`wrap_rtx` (RFC 4588).

Rules:

* The payload is never touched here: bytes in = bytes out (Opus in-band FEC, VP8
  and H.264 payloads arrive as the publisher sent them). RED (RFC 2198) is the one
  exception, made by the subscription with media/red.py for a leg that needs it.
* Sequence numbers are 16 bits and timestamps 32 bits; all arithmetic is
  modulo those, and "newer" is the RFC 3550 half-range comparison.
* When the source behind a subscription changes (a publication replaced by a
  new one of the same participant and source), :meth:`SequenceMapper.switch`
  makes the outgoing stream continue: next sequence number, timestamp advanced
  by the wall-clock time elapsed, so the subscriber sees one continuous stream.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Callable

SEQ_MOD = 1 << 16
TS_MOD = 1 << 32
_HALF_SEQ = SEQ_MOD // 2
_HALF_TS = TS_MOD // 2
SRTP_REPLAY_WINDOW = 1024
"""Packets behind the highest one an aiortc SRTP session protected so far that it still
protects (its policy's ``window_size``, ``RTCDtlsTransport._setup_srtp``); further behind,
libsrtp refuses ("replay check failed (index too old)")."""

ONE_BYTE_PROFILE = 0xBEDE
TWO_BYTE_PROFILE = 0x1000  # 0x100X: the low 4 bits are "appbits"

_FIXED = struct.Struct("!BBHII")
_SEQ = struct.Struct("!H")
_HH = struct.Struct("!HH")


class RtpError(ValueError):
    """A datagram that is not a well-formed RTP packet."""


def seq_newer(a: int, b: int) -> bool:
    """True when sequence number ``a`` comes after ``b`` (modulo 2^16)."""
    return a != b and ((a - b) % SEQ_MOD) < _HALF_SEQ


def ts_newer(a: int, b: int) -> bool:
    """True when timestamp ``a`` comes after ``b`` (modulo 2^32)."""
    return a != b and ((a - b) % TS_MOD) < _HALF_TS


@dataclass(slots=True)
class RtpHeader:
    """The parsed header of one RTP packet (offsets into the datagram it came from).

    Read-only by convention (not ``frozen``: a frozen dataclass's ``__init__`` costs a
    ``object.__setattr__`` per field, and one is made per packet)."""

    marker: bool
    payload_type: int
    sequence_number: int
    timestamp: int
    ssrc: int
    csrc_end: int
    """Offset of the end of the CSRC list (12 + 4 * CC)."""
    extension_profile: int
    """0 when the packet has no header extension."""
    extension_start: int
    """Offset of the extension elements (after profile and length), or csrc_end."""
    payload_start: int
    payload_end: int
    """Offset of the end of the payload (padding excluded)."""


def parse_header(data: bytes) -> RtpHeader:
    """Parse the header of ``data``; raise :class:`RtpError` when it is not RTP v2."""
    if len(data) < 12:
        raise RtpError("shorter than an RTP header")
    first, second, seq, ts, ssrc = _FIXED.unpack_from(data)
    if first >> 6 != 2:
        raise RtpError("not RTP version 2")
    cc = first & 0x0F
    pos = 12 + 4 * cc
    csrc_end = pos
    profile = 0
    ext_start = pos
    if first & 0x10:
        if len(data) < pos + 4:
            raise RtpError("truncated header extension")
        profile, words = _HH.unpack_from(data, pos)
        ext_start = pos + 4
        pos = ext_start + 4 * words
    end = len(data)
    if first & 0x20:
        if end <= pos:
            raise RtpError("padding without payload")
        end -= data[-1]
    if pos > end:
        raise RtpError("header longer than the packet")
    return RtpHeader(second > 127, second & 0x7F, seq, ts, ssrc, csrc_end, profile, ext_start, pos, end)


def payload(data: bytes, header: RtpHeader) -> bytes:
    return data[header.payload_start:header.payload_end]


def extension_elements(data: bytes, header: RtpHeader) -> list[tuple[int, bytes]]:
    """(id, value) of each RFC 8285 element (one-byte or two-byte form)."""
    if not header.extension_profile:
        return []
    out: list[tuple[int, bytes]] = []
    pos, end = header.extension_start, header.payload_start
    if header.extension_profile == ONE_BYTE_PROFILE:
        while pos < end:
            byte = data[pos]
            if byte == 0:  # padding
                pos += 1
                continue
            ext_id, length = byte >> 4, (byte & 0x0F) + 1
            if ext_id == 15:
                break
            out.append((ext_id, data[pos + 1:pos + 1 + length]))
            pos += 1 + length
    elif header.extension_profile & 0xFFF0 == TWO_BYTE_PROFILE:
        while pos + 1 < end:
            ext_id = data[pos]
            if ext_id == 0:
                pos += 1
                continue
            length = data[pos + 1]
            out.append((ext_id, data[pos + 2:pos + 2 + length]))
            pos += 2 + length
    return out


def pack_extensions(elements: list[tuple[int, bytes]]) -> bytes:
    """The header extension block (profile, length, elements, padding) for ``elements``."""
    if not elements:
        return b""
    if all(1 <= i <= 14 and 1 <= len(v) <= 16 for i, v in elements):
        profile = ONE_BYTE_PROFILE
        body = b"".join(bytes([(i << 4) | (len(v) - 1)]) + v for i, v in elements)
    else:
        profile = TWO_BYTE_PROFILE
        body = b"".join(bytes([i, len(v)]) + v for i, v in elements)
    body += b"\x00" * (-len(body) % 4)
    return struct.pack("!HH", profile, len(body) // 4) + body


Layout = tuple[tuple[int, int, int], ...]
"""(id, value start, value end) of each header extension element of one packet, offsets
into the datagram: what an :class:`ExtensionRewriter` needs to know of a packet, worked
out once per packet (:func:`extension_layout`) for all its subscriptions."""


def extension_layout(data: bytes, header: RtpHeader) -> Layout:
    """The :data:`Layout` of ``data`` (empty without header extension); the same elements
    as :func:`extension_elements`, as offsets."""
    profile = header.extension_profile
    if not profile:
        return ()
    out: list[tuple[int, int, int]] = []
    pos, end = header.extension_start, header.payload_start
    size = len(data)  # an element running past the block is cut where the datagram ends, as slicing does
    if profile == ONE_BYTE_PROFILE:
        while pos < end:
            byte = data[pos]
            if byte == 0:  # padding
                pos += 1
                continue
            ext_id = byte >> 4
            if ext_id == 15:
                break
            start = pos + 1
            pos = start + (byte & 0x0F) + 1
            out.append((ext_id, start, min(pos, size)))
    elif profile & 0xFFF0 == TWO_BYTE_PROFILE:
        while pos + 1 < end:
            ext_id = data[pos]
            if ext_id == 0:
                pos += 1
                continue
            start = pos + 2
            pos = start + data[pos + 1]
            out.append((ext_id, start, min(pos, size)))
    return tuple(out)


BlockBuilder = Callable[[bytes], bytes]


def _compile_block(pieces: list[bytes | tuple[int, int]]) -> BlockBuilder:
    """A function of the datagram that joins ``pieces``: constant bytes, and (start, end)
    slices of the datagram; adjacent constants are merged."""
    merged: list[bytes | tuple[int, int]] = []
    for piece in pieces:
        if isinstance(piece, bytes) and merged and isinstance(merged[-1], bytes):
            merged[-1] = merged[-1] + piece
        elif piece != b"":
            merged.append(piece)
    spans = [p for p in merged if isinstance(p, tuple)]
    if not spans:
        constant = b"".join(p for p in merged if isinstance(p, bytes))
        return lambda data: constant
    consts = [p for p in merged if isinstance(p, bytes)]
    if len(merged) == 3 and len(consts) == 2 and isinstance(merged[1], tuple):  # const, span, const
        (c0, c1), ((s0, e0),) = consts, spans
        return lambda data: b"".join((c0, data[s0:e0], c1))
    if len(merged) == 5 and len(consts) == 3 and isinstance(merged[1], tuple) and isinstance(merged[3], tuple):
        (c0, c1, c2), ((s0, e0), (s1, e1)) = consts, spans
        return lambda data: b"".join((c0, data[s0:e0], c1, data[s1:e1], c2))
    parts = tuple(slice(*p) if isinstance(p, tuple) else p for p in merged)
    return lambda data: b"".join([data[p] if p.__class__ is slice else p for p in parts])  # type: ignore[misc]


_MAX_PLANS = 64
"""Layouts an :class:`ExtensionRewriter` keeps compiled (a publisher uses one or a few)."""


@dataclass(frozen=True)
class ExtensionRewriter:
    """Carries a publisher leg's header extensions over to one subscriber leg.

    Extensions both legs negotiated are renumbered (``id_map``: publisher id ->
    subscriber id); the publisher's ``mid`` is replaced by the subscriber's
    own; anything else is dropped (it was negotiated for another leg).
    """

    id_map: dict[int, int]
    mid_id: int = 0
    """The subscriber leg's id for ``urn:ietf:params:rtp-hdrext:sdes:mid`` (0: none)."""
    mid: bytes = b""
    _plans: dict[Layout, BlockBuilder] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def between(cls, publisher: dict[str, int], subscriber: dict[str, int], mid: str) -> "ExtensionRewriter":
        """From the uri -> id maps of both legs."""
        mid_uri = "urn:ietf:params:rtp-hdrext:sdes:mid"
        id_map = {pid: subscriber[uri] for uri, pid in publisher.items() if uri in subscriber and uri != mid_uri}
        return cls(id_map=id_map, mid_id=subscriber.get(mid_uri, 0), mid=mid.encode())

    def rewrite(self, data: bytes, header: RtpHeader) -> bytes:
        """The extension block of this leg for ``data``: :func:`pack_extensions` of the kept,
        renumbered elements plus this leg's ``mid``."""
        return self.block(data, extension_layout(data, header))

    def block(self, data: bytes, layout: Layout) -> bytes:
        """:meth:`rewrite` with the packet's :func:`extension_layout` already worked out.
        Per layout, the block is compiled once into constants and slices of the datagram."""
        builder = self._plans.get(layout)
        if builder is None:
            builder = self._compile(layout)
        return builder(data)

    def _compile(self, layout: Layout) -> BlockBuilder:
        id_map = self.id_map
        kept = [(id_map[i], start, end) for i, start, end in layout if i in id_map]
        lengths = [end - start for _, start, end in kept]
        if self.mid_id and self.mid:
            kept.append((self.mid_id, -1, -1))
            lengths.append(len(self.mid))
        if not kept:
            builder: BlockBuilder = lambda data: b""  # noqa: E731
        else:
            one_byte = all(1 <= i <= 14 and 1 <= n <= 16 for (i, _, _), n in zip(kept, lengths))
            body: list[bytes | tuple[int, int]] = []
            for (ext_id, start, end), n in zip(kept, lengths):
                body.append(bytes([(ext_id << 4) | (n - 1)]) if one_byte else bytes([ext_id, n]))
                body.append(self.mid if start < 0 else (start, end))
            size = (1 if one_byte else 2) * len(kept) + sum(lengths)
            padding = -size % 4
            profile = ONE_BYTE_PROFILE if one_byte else TWO_BYTE_PROFILE
            builder = _compile_block([_HH.pack(profile, (size + padding) // 4), *body, b"\x00" * padding])
        if len(self._plans) >= _MAX_PLANS:
            self._plans.clear()
        self._plans[layout] = builder
        return builder


def rewrite(data: bytes, header: RtpHeader, *, ssrc: int, payload_type: int, sequence_number: int,
            timestamp: int, extensions: bytes) -> bytes:
    """``data`` with a new fixed header and extension block; CSRCs, payload and padding kept."""
    return rewrite_packet(data, header.csrc_end, header.payload_start, ssrc, payload_type, sequence_number,
                          timestamp, extensions)


def rewrite_packet(data: bytes, csrc_end: int, payload_start: int, ssrc: int, payload_type: int,
                   sequence_number: int, timestamp: int, extensions: bytes) -> bytes:
    """:func:`rewrite` with positional arguments (the forwarding path: once per packet and
    subscription)."""
    # version, padding, CC kept; X set when there are extensions
    first = (data[0] & 0xEF) | 0x10 if extensions else data[0] & 0xEF
    fixed = _FIXED.pack(first, (data[1] & 0x80) | payload_type, sequence_number, timestamp, ssrc)
    if csrc_end == 12:
        return b"".join((fixed, extensions, data[payload_start:]))
    return b"".join((fixed, data[12:csrc_end], extensions, data[payload_start:]))


def wrap_rtx(data: bytes, *, payload_type: int, ssrc: int, sequence_number: int) -> bytes:
    """The RFC 4588 retransmission of ``data`` (an already rewritten packet): the original
    sequence number in front of the payload, the RTX stream's ssrc, type and sequence number."""
    header = parse_header(data)
    first = data[0] & 0xDF  # the retransmission carries no padding
    second = (data[1] & 0x80) | payload_type
    return b"".join((
        _FIXED.pack(first, second, sequence_number, header.timestamp, ssrc),
        data[12:header.payload_start],
        _SEQ.pack(header.sequence_number),
        data[header.payload_start:header.payload_end],
    ))


def unwrap_rtx(data: bytes, header: RtpHeader, *, payload_type: int, ssrc: int) -> tuple[bytes, RtpHeader]:
    """The original packet inside an RFC 4588 retransmission (``header`` is the RTX one)."""
    if header.payload_end - header.payload_start < 2:
        raise RtpError("RTX packet without original sequence number")
    (osn,) = _SEQ.unpack_from(data, header.payload_start)
    first = data[0] & 0xDF
    second = (data[1] & 0x80) | payload_type
    original = b"".join((
        _FIXED.pack(first, second, osn, header.timestamp, ssrc),
        data[12:header.payload_start],
        data[header.payload_start + 2:header.payload_end],
    ))
    return original, parse_header(original)


class SequenceMapper:
    """Input (sequence number, timestamp) of the current source -> output of one subscription.

    Lifecycle: unstarted -> :meth:`start` (first forwarded packet, normally a
    keyframe's first) -> :meth:`map` per packet -> :meth:`switch` when the
    source changes (then :meth:`start` again on the new source's first packet).
    """

    def __init__(self, first_sequence_number: int, first_timestamp: int) -> None:
        self._seq_offset = 0
        self._ts_offset = 0
        self._next_seq = first_sequence_number % SEQ_MOD
        self._next_ts = first_timestamp % TS_MOD
        self._start_seq: int | None = None
        self.last_seq: int | None = None
        """Highest output sequence number so far."""
        self.last_ts: int | None = None
        """Output timestamp of the packet with the highest sequence number."""

    @property
    def started(self) -> bool:
        return self._start_seq is not None

    def start(self, sequence_number: int, timestamp: int) -> None:
        """Make input (``sequence_number``, ``timestamp``) come out as the next output values."""
        self._seq_offset = (self._next_seq - sequence_number) % SEQ_MOD
        self._ts_offset = (self._next_ts - timestamp) % TS_MOD
        self._start_seq = sequence_number

    def switch(self, timestamp_gap: int) -> None:
        """The source is about to change: the next :meth:`start` continues after the last
        output packet, ``timestamp_gap`` (>= 1) ticks later."""
        if self.last_seq is not None and self.last_ts is not None:
            self._next_seq = (self.last_seq + 1) % SEQ_MOD
            self._next_ts = (self.last_ts + max(1, timestamp_gap)) % TS_MOD
        self._start_seq = None

    def map(self, sequence_number: int, timestamp: int) -> tuple[int, int] | None:
        """Output values for an input packet, or None for a packet older than the start, or
        :data:`SRTP_REPLAY_WINDOW` or more behind the highest output so far: SRTP would refuse
        to send it. Only a publisher's own hostile packets come out that far behind (numbering
        that jumps on packets the SFU does not forward: another payload type, another SSRC);
        they raised out of the forwarding path, each an ERROR with a traceback (bench.fuzz)."""
        start = self._start_seq
        if start is None:
            return None
        if start != sequence_number and (start - sequence_number) & 0xFFFF < _HALF_SEQ:
            return None  # older than the start
        seq = (sequence_number + self._seq_offset) & 0xFFFF
        last = self.last_seq
        if last is not None and SRTP_REPLAY_WINDOW <= (last - seq) & 0xFFFF < _HALF_SEQ:
            return None
        ts = (timestamp + self._ts_offset) & 0xFFFFFFFF
        if last is None or (last != seq and (seq - last) & 0xFFFF < _HALF_SEQ):
            self.last_seq = seq
            self.last_ts = ts
        return seq, ts


class PacketHistory:
    """The last ``size`` packets sent on one subscription, by output sequence number, and how
    many times each was resent."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("history size must be >= 1")
        self._size = size
        self._seqs: list[int] = [-1] * size
        self._data: list[bytes | None] = [None] * size
        self._resent: list[int] = [0] * size

    def put(self, sequence_number: int, data: bytes) -> None:
        i = sequence_number % self._size
        self._seqs[i] = sequence_number
        self._data[i] = data
        self._resent[i] = 0

    def get(self, sequence_number: int) -> bytes | None:
        i = sequence_number % self._size
        if self._seqs[i] == sequence_number:
            return self._data[i]
        return None

    def resent(self, sequence_number: int) -> int:
        """Times the packet was resent (:meth:`note_resent`); 0 when not held."""
        i = sequence_number % self._size
        return self._resent[i] if self._seqs[i] == sequence_number else 0

    def note_resent(self, sequence_number: int) -> None:
        i = sequence_number % self._size
        if self._seqs[i] == sequence_number:
            self._resent[i] += 1


class LossCounter:
    """Counts input packets missing from one source (gaps in sequence numbers, late arrivals
    that fill a gap are subtracted)."""

    def __init__(self) -> None:
        self.highest: int | None = None
        self.lost = 0

    def add(self, sequence_number: int) -> int:
        """Record a packet; returns how many more packets are now missing (may be negative
        when a late packet fills a gap)."""
        if self.highest is None:
            self.highest = sequence_number
            return 0
        if seq_newer(sequence_number, self.highest):
            gap = (sequence_number - self.highest - 1) % SEQ_MOD
            self.highest = sequence_number
            self.lost += gap
            return gap
        if sequence_number != self.highest and self.lost > 0:
            self.lost -= 1
            return -1
        return 0


def extension_value_at(data: bytes, header: RtpHeader, ext_id: int) -> int:
    """Offset of the value of header extension element ``ext_id`` in ``data``; -1 when the
    packet has none (one-byte or two-byte form). Once per video packet: the one-byte form,
    which browsers and aiortc send, is scanned without building the layout."""
    pos, end = header.extension_start, header.payload_start
    if header.extension_profile == ONE_BYTE_PROFILE:
        while pos < end:
            byte = data[pos]
            if byte == 0:  # padding
                pos += 1
                continue
            element = byte >> 4
            if element == 15:
                return -1
            if element == ext_id:
                return pos + 1
            pos += 2 + (byte & 0x0F)
        return -1
    for element, start, _ in extension_layout(data, header):
        if element == ext_id:
            return start
    return -1


_NTP_EPOCH_OFFSET_NS = 2208988800 * 1_000_000_000


def abs_send_time_now(unix_ns: int) -> bytes:
    """The 3-byte abs-send-time (6.18 fixed-point seconds of NTP time, modulo 64 s) at
    ``unix_ns`` (``time.time_ns()``): what aiortc's sender writes, without its datetimes."""
    return ((((unix_ns + _NTP_EPOCH_OFFSET_NS) << 18) // 1_000_000_000) & 0xFFFFFF).to_bytes(3, "big")
