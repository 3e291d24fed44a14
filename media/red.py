"""RED (RFC 2198) for Opus: redundant audio payloads, bytes in and bytes out.

A RED payload carries the current Opus frame (the *primary* block) and copies of one or
more earlier frames (the *redundant* blocks), so that a receiver recovers a lost packet
from the next one without a retransmission. Its header is a chain of block headers::

    F=1 | block PT (7) | timestamp offset (14) | block length (10)    one per redundant block
    F=0 | block PT (7)                                                 the primary's, last
    redundant block data..., primary block data

The blocks are oldest first; each redundant block's timestamp is the packet's minus its
offset; the primary's is the packet's own. In SDP, RED is ``a=rtpmap:<pt> red/48000/2`` with
``a=fmtp:<pt> <opus pt>/<opus pt>`` (one Opus PT per level: primary, then redundancy).

Everything here is free of I/O and clocks:

* :func:`parse` / :func:`build` / :func:`primary` / :func:`retag` on one payload;
* :class:`RedPacker`, the sender's side: each new frame packed with the previous ones;
* :class:`RedReceiver`, the receiver's side: primaries in, and a lost packet's frame out of
  the next packet's redundancy;
* :func:`set_red_fmtp` / :func:`red_payload_types`: the SDP lines, as text.

Hostile input: every malformed payload raises :class:`RedError` (a ``ValueError``), never
anything else, so that a packet path drops it with one ``except``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

MAX_TIMESTAMP_OFFSET = (1 << 14) - 1
MAX_BLOCK_LENGTH = (1 << 10) - 1
MAX_BLOCKS = 8
"""Blocks one payload may carry (primary included); more is hostile, not audio."""
DEFAULT_DISTANCE = 1
"""Earlier frames each packet repeats: one brings back any isolated loss, at twice the
audio rate; two also a 40 ms burst, at three times."""
DEFAULT_MAX_PAYLOAD = 1200
"""Bytes of RED payload a packet may take (headers included): the oldest redundancy is left
out beyond it, so that a packet stays under a path MTU with RTP, header extensions, SRTP,
UDP/IP and a TURN relay's framing (~1.3 kB). Two 128 kbit/s stereo frames (~370 bytes
each once libopus's VBR settles) always fit; three mostly do."""
SEQ_MOD = 1 << 16
TS_MOD = 1 << 32


class RedError(ValueError):
    """A payload that is not a well-formed RED payload."""


@dataclass(frozen=True, slots=True)
class RedBlock:
    payload_type: int
    timestamp_offset: int
    """Ticks before the packet's timestamp (0 for the primary)."""
    data: bytes


def parse(payload: bytes) -> list[RedBlock]:
    """The blocks of ``payload``, oldest first, the primary last."""
    headers: list[tuple[int, int, int]] = []
    pos = 0
    size = len(payload)
    while True:
        if pos >= size:
            raise RedError("RED header truncated")
        first = payload[pos]
        if not first & 0x80:
            headers.append((first & 0x7F, 0, -1))
            pos += 1
            break
        if pos + 4 > size:
            raise RedError("RED block header truncated")
        word = int.from_bytes(payload[pos + 1:pos + 4], "big")
        headers.append((first & 0x7F, word >> 10, word & 0x3FF))
        pos += 4
        if len(headers) >= MAX_BLOCKS:
            raise RedError(f"more than {MAX_BLOCKS} RED blocks")
    blocks: list[RedBlock] = []
    for payload_type, offset, length in headers:
        if length < 0:
            length = size - pos
        elif pos + length > size:
            raise RedError("RED block longer than the payload")
        blocks.append(RedBlock(payload_type, offset, payload[pos:pos + length]))
        pos += length
    return blocks


def primary(payload: bytes) -> tuple[int, bytes]:
    """(payload type, data) of the primary block of ``payload``, without the redundancy."""
    pos = 0
    skip = 0
    size = len(payload)
    count = 0
    while True:
        if pos >= size:
            raise RedError("RED header truncated")
        first = payload[pos]
        if not first & 0x80:
            start = pos + 1 + skip
            if start > size:
                raise RedError("RED block longer than the payload")
            return first & 0x7F, payload[start:]
        if pos + 4 > size:
            raise RedError("RED block header truncated")
        skip += ((payload[pos + 2] & 0x03) << 8) | payload[pos + 3]
        pos += 4
        count += 1
        if count >= MAX_BLOCKS:
            raise RedError(f"more than {MAX_BLOCKS} RED blocks")


def build(blocks: Iterable[RedBlock]) -> bytes:
    """The RED payload of ``blocks`` (oldest first, the primary last, offset 0)."""
    blocks = list(blocks)
    if not blocks:
        raise RedError("a RED payload needs a primary block")
    if len(blocks) > MAX_BLOCKS:
        raise RedError(f"more than {MAX_BLOCKS} RED blocks")
    head = bytearray()
    for block in blocks[:-1]:
        _check_type(block.payload_type)
        if not 0 <= block.timestamp_offset <= MAX_TIMESTAMP_OFFSET:
            raise RedError("RED timestamp offset out of range")
        if len(block.data) > MAX_BLOCK_LENGTH:
            raise RedError("RED block longer than 1023 bytes")
        head.append(0x80 | block.payload_type)
        head += ((block.timestamp_offset << 10) | len(block.data)).to_bytes(3, "big")
    last = blocks[-1]
    _check_type(last.payload_type)
    head.append(last.payload_type)
    return bytes(head) + b"".join(block.data for block in blocks)


def retag(payload: bytes, payload_types: dict[int, int]) -> bytes:
    """``payload`` with each block's payload type mapped through ``payload_types`` (one leg's
    numbering to another's); blocks of a type not in it are left out. RedError when the
    primary's is not in it (nothing the other leg could decode)."""
    blocks = parse(payload)
    out: list[RedBlock] = []
    for block in blocks[:-1]:
        mapped = payload_types.get(block.payload_type)
        if mapped is not None:
            out.append(RedBlock(mapped, block.timestamp_offset, block.data))
    last = blocks[-1]
    mapped = payload_types.get(last.payload_type)
    if mapped is None:
        raise RedError("RED primary of a payload type not negotiated")
    out.append(RedBlock(mapped, 0, last.data))
    return build(out)


def valid(payload: bytes, payload_type: int) -> bool:
    """Whether ``payload`` is a well-formed RED payload whose blocks are all of
    ``payload_type`` (the one codec RED was negotiated over) and whose primary is not empty."""
    try:
        blocks = parse(payload)
    except RedError:
        return False
    return bool(blocks[-1].data) and all(block.payload_type == payload_type for block in blocks)


def _check_type(payload_type: int) -> None:
    if not 0 <= payload_type <= 127:
        raise RedError("RTP payload type out of range")


class RedPacker:
    """The sender's side: each frame goes out as the primary of a RED payload, with the
    ``distance`` frames before it as redundancy (fewer when they do not fit
    ``max_payload`` or the 14-bit timestamp offset)."""

    def __init__(self, payload_type: int, distance: int = DEFAULT_DISTANCE,
                 max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        _check_type(payload_type)
        if not 0 <= distance < MAX_BLOCKS:
            raise ValueError(f"RED distance must be between 0 and {MAX_BLOCKS - 1}")
        self.payload_type = payload_type
        """The primary codec's (Opus's) payload type, written in every block header."""
        self.distance = distance
        """May change between packets (an uplink too thin for the redundancy)."""
        self.max_payload = max_payload
        self._previous: list[tuple[int, bytes]] = []
        """(timestamp, frame) of the last ``distance`` frames, oldest first."""

    def pack(self, frame: bytes, timestamp: int) -> bytes:
        """The RED payload for ``frame`` (RTP timestamp ``timestamp``)."""
        redundant: list[RedBlock] = []
        budget = self.max_payload - 1 - len(frame)
        earlier = self._previous[-self.distance:] if self.distance else []
        for earlier_ts, data in reversed(earlier):  # newest first: the most useful
            offset = (timestamp - earlier_ts) % TS_MOD
            if not 0 < offset <= MAX_TIMESTAMP_OFFSET or len(data) > MAX_BLOCK_LENGTH:
                break
            if budget < 4 + len(data):
                break
            budget -= 4 + len(data)
            redundant.insert(0, RedBlock(self.payload_type, offset, data))
        if self.distance:
            self._previous.append((timestamp, frame))
            del self._previous[:-self.distance]
        else:
            self._previous.clear()
        return build([*redundant, RedBlock(self.payload_type, 0, frame)])


@dataclass(frozen=True, slots=True)
class Frame:
    """One Opus frame out of :class:`RedReceiver`."""

    sequence_number: int
    """The RTP sequence number of the packet that carried it as primary (for a recovered
    frame: the lost packet's)."""
    timestamp: int
    payload_type: int
    """The block's (-1 for a packet pushed with ``red=False``: its type is the caller's)."""
    data: bytes
    recovered: bool


class RedReceiver:
    """The receiver's side, for one stream in arrival order: each packet's primary, and, when
    packets before it are missing, their frames out of its redundancy.

    The ``i``-th redundant block from the primary backwards stands for the packet ``i``
    sequence numbers earlier (each packet carries one frame), checked against the timestamp
    offsets, which must grow going back. A recovered frame comes out before the primary that
    brought it, in order; a packet that arrives after its frame was recovered is a duplicate.
    """

    WINDOW = 64
    """Sequence numbers remembered as delivered (for recovery and duplicates)."""

    def __init__(self) -> None:
        self.highest: int | None = None
        self._delivered: dict[int, None] = {}
        """Sequence numbers delivered lately, oldest first (bounded by ``WINDOW``)."""
        self.recovered = 0
        self.duplicates = 0

    def push(self, sequence_number: int, timestamp: int, payload: bytes, *, red: bool = True) -> list[Frame]:
        """The frames ``payload`` (one packet's) delivers; RedError when it is malformed
        (nothing delivered). ``red=False``: a plain (primary-only) packet."""
        if red:
            blocks = parse(payload)
        else:
            blocks = [RedBlock(-1, 0, payload)]
        if sequence_number in self._delivered:
            self.duplicates += 1
            return []
        out: list[Frame] = []
        highest = self.highest
        if highest is not None:
            gap = (sequence_number - highest) % SEQ_MOD
            if 1 < gap < SEQ_MOD // 2:
                previous_offset = 0
                for back, block in enumerate(reversed(blocks[:-1]), start=1):
                    if back >= gap or block.timestamp_offset <= previous_offset:
                        break
                    previous_offset = block.timestamp_offset
                    seq = (sequence_number - back) % SEQ_MOD
                    if seq in self._delivered or not block.data:
                        continue
                    out.insert(0, Frame(seq, (timestamp - block.timestamp_offset) % TS_MOD, block.payload_type,
                                        block.data, True))
            if gap < SEQ_MOD // 2:
                self.highest = sequence_number
        else:
            self.highest = sequence_number
        primary_block = blocks[-1]
        out.append(Frame(sequence_number, timestamp, primary_block.payload_type, primary_block.data, False))
        for frame in out:
            self._deliver(frame.sequence_number)
        self.recovered += len(out) - 1
        return out

    def _deliver(self, sequence_number: int) -> None:
        self._delivered[sequence_number] = None
        while len(self._delivered) > self.WINDOW:
            del self._delivered[next(iter(self._delivered))]


# -- SDP -------------------------------------------------------------------------------------
_RTPMAP = re.compile(r"a=rtpmap:(\d+) ([A-Za-z0-9_.-]+)/(\d+)(?:/\d+)?$")


def red_payload_types(sdp: str, mid: str) -> tuple[int, int] | None:
    """(RED payload type, Opus payload type) of the media section ``mid``, in the order the
    section lists them; None when it has no RED or no Opus."""
    for section in _sections(sdp.replace("\r\n", "\n").split("\n"))[1]:
        if f"a=mid:{mid}" in section:
            red, opus = _types(section)
            return (red, opus) if red is not None and opus is not None else None
    return None


def set_red_fmtp(sdp: str, levels: int | None = None) -> str:
    """``sdp`` with ``a=fmtp:<red> <opus>/<opus>...`` in every media section listing both RED
    and Opus: ``levels`` Opus types (primary + redundancy, at least 2), or, when None, the
    section's own fmtp kept if it has one, else two. Sections without RED are unchanged."""
    newline = "\r\n" if "\r\n" in sdp else "\n"
    head, sections = _sections(sdp.split(newline))
    out = list(head)
    for section in sections:
        red, opus = _types(section)
        if red is None or opus is None:
            out.extend(section)
            continue
        prefix = f"a=fmtp:{red} "
        existing = next((i for i, line in enumerate(section) if line.startswith(prefix)), None)
        if existing is not None and levels is None:
            out.extend(section)
            continue
        line = prefix + "/".join([str(opus)] * max(2, levels or 2))
        section = list(section)
        if existing is not None:
            section[existing] = line
        else:
            at = next(i for i, text in enumerate(section) if text.startswith(f"a=rtpmap:{red} "))
            section.insert(at + 1, line)
        out.extend(section)
    return newline.join(out)


def _sections(lines: list[str]) -> tuple[list[str], list[list[str]]]:
    head: list[str] = []
    sections: list[list[str]] = []
    for line in lines:
        if line.startswith("m="):
            sections.append([])
        (sections[-1] if sections else head).append(line)
    return head, sections


def _types(section: list[str]) -> tuple[int | None, int | None]:
    red = opus = None
    for line in section:
        match = _RTPMAP.match(line.strip())
        if match is None or match.group(3) != "48000":
            continue
        name = match.group(2).lower()
        if name == "red" and red is None:
            red = int(match.group(1))
        elif name == "opus" and opus is None:
            opus = int(match.group(1))
    return red, opus
