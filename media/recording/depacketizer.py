"""Sans-I/O frame assembly: RTP packets of one publication in, encoded frames out.

Rules:

* Packets are put back in sequence order within a window (``reorder_packets`` packets
  or ``reorder_delay_s`` seconds of arrival time, whichever comes first); duplicates and
  packets older than what was already released are dropped.
* A packet still missing when the window moves past it is lost. Video: the frame it
  belonged to is dropped, a :class:`Gap` is reported with ``needs_keyframe=True``, and
  nothing more is emitted until a keyframe (the decoder chain is broken). Opus: one
  packet is one frame, so only the lost packets are missing; a :class:`Gap` says how
  many.
* The first packet received sets the sequence origin: a packet older than it is late.
  Retransmissions must arrive with their original sequence numbers (RTX unwrapped).
* Video frames end on the RTP marker bit (RFC 3550 / 7741 / 6184), or when the
  timestamp changes, and must start with a start-of-frame packet.
* Opus may arrive as RED (RFC 2198, ``red_payload_type``): each packet's primary block is
  the frame; when packets before it are still missing, the frames its redundant blocks
  carry take their place (``recovered``), so a lost packet costs nothing if the next one
  arrives. A RED payload that does not parse counts as lost (``malformed``).
* VP8 payloads keep their bytes exactly (RFC 7741 descriptor stripped); H.264 payloads
  become Annex-B access units (RFC 6184 single NAL, STAP-A, FU-A), and a keyframe
  without SPS/PPS gets the last seen ones put in front.

The H.264 payload descriptor comes from aiortc's own codec (``H264PayloadDescriptor``),
so sender and receiver agree by construction; the VP8 one is read in place
(:func:`vp8_descriptor_end`, the rules of aiortc's ``VpxPayloadDescriptor``, checked
against it by the tests) because it is on the per-packet path.

Two entry points: :meth:`Depacketizer.push` takes an aiortc ``RtpPacket``;
:meth:`Depacketizer.push_rtp` takes the datagram and a header the SFU already parsed
(offsets), and costs no per-packet object in the common case (in order, nothing
waiting).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol, Union

from aiortc import RTCRtpCodecParameters
from aiortc.codecs.h264 import H264PayloadDescriptor
from aiortc.rtp import RtpPacket

from media.aiortc_internals import split_h264_nal_units
from media.red import RedError
from media.red import parse as parse_red

logger = logging.getLogger(__name__)

_SEQ_MOD = 1 << 16
_NAL_IDR = 5
_NAL_SPS = 7
_NAL_PPS = 8
_NAL_FU_A = 28
_START_CODE = b"\x00\x00\x00\x01"


@dataclass(frozen=True)
class EncodedFrame:
    """One encoded picture or audio frame, as the decoder wants it."""

    data: bytes
    """VP8 frame, H.264 Annex-B access unit, or one Opus packet."""
    timestamp: int
    """RTP timestamp (32 bits, wraps)."""
    clock_rate: int
    """RTP clock rate: 90000 for video, 48000 for Opus."""
    keyframe: bool
    arrival: float
    """Arrival time of the frame's last packet, on the caller's clock."""


@dataclass(frozen=True)
class Gap:
    """Packets were lost: what was dropped, and whether a keyframe is needed."""

    lost_packets: int
    """Sequence numbers that never came (within the window)."""
    dropped_frames: int
    """Frames thrown away since the last gap report (incomplete or waiting for a keyframe)."""
    needs_keyframe: bool
    """Video only: nothing is emitted until the next keyframe; ask the publisher (PLI)."""
    arrival: float


Event = Union[EncodedFrame, Gap]


def vp8_is_keyframe(frame: bytes) -> bool:
    """RFC 6386 §9.1: the P bit of the frame tag (first bit of the first byte) is 0."""
    return bool(frame) and not frame[0] & 0x01


def vp8_dimensions(frame: bytes) -> tuple[int, int] | None:
    """Width and height from a VP8 keyframe header, None for an interframe."""
    if len(frame) < 10 or not vp8_is_keyframe(frame) or frame[3:6] != b"\x9d\x01\x2a":
        return None
    width = int.from_bytes(frame[6:8], "little") & 0x3FFF
    height = int.from_bytes(frame[8:10], "little") & 0x3FFF
    return width, height


def h264_nal_units(access_unit: bytes) -> list[bytes]:
    """The NAL units of an Annex-B access unit (aiortc's splitter)."""
    return split_h264_nal_units(access_unit)


def h264_is_keyframe(access_unit: bytes) -> bool:
    return any(nal and nal[0] & 0x1F == _NAL_IDR for nal in h264_nal_units(access_unit))


def h264_dimensions(access_unit: bytes) -> tuple[int, int] | None:
    """Width and height from the first SPS of an access unit (H.264 §7.3.2.1.1)."""
    for nal in h264_nal_units(access_unit):
        if nal and nal[0] & 0x1F == _NAL_SPS:
            try:
                return _sps_dimensions(nal)
            except IndexError:
                return None
    return None


class _BitReader:
    def __init__(self, data: bytes) -> None:
        # Emulation prevention bytes (00 00 03) are not part of the syntax.
        self._data = data.replace(b"\x00\x00\x03", b"\x00\x00")
        self._pos = 0

    def u(self, n: int) -> int:
        value = 0
        for _ in range(n):
            byte = self._data[self._pos >> 3]
            value = (value << 1) | ((byte >> (7 - (self._pos & 7))) & 1)
            self._pos += 1
        return value

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise IndexError("bad exp-Golomb code")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


_HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})


def _sps_dimensions(nal: bytes) -> tuple[int, int]:
    r = _BitReader(nal[1:])
    profile_idc = r.u(8)
    r.u(16)  # constraint flags, level_idc
    r.ue()  # seq_parameter_set_id
    chroma_format_idc = 1
    if profile_idc in _HIGH_PROFILES:
        chroma_format_idc = r.ue()
        if chroma_format_idc == 3:
            r.u(1)  # separate_colour_plane_flag
        r.ue()  # bit_depth_luma_minus8
        r.ue()  # bit_depth_chroma_minus8
        r.u(1)  # qpprime_y_zero_transform_bypass_flag
        if r.u(1):  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma_format_idc != 3 else 12):
                if r.u(1):
                    last, nxt = 8, 8
                    for _ in range(16 if i < 6 else 64):
                        if nxt:
                            nxt = (last + r.se() + 256) % 256
                        last = nxt or last
    r.ue()  # log2_max_frame_num_minus4
    poc_type = r.ue()
    if poc_type == 0:
        r.ue()
    elif poc_type == 1:
        r.u(1)
        r.se()
        r.se()
        for _ in range(r.ue()):
            r.se()
    r.ue()  # max_num_ref_frames
    r.u(1)  # gaps_in_frame_num_value_allowed_flag
    width_mbs = r.ue() + 1
    height_units = r.ue() + 1
    frame_mbs_only = r.u(1)
    if not frame_mbs_only:
        r.u(1)
    r.u(1)  # direct_8x8_inference_flag
    crop = (r.ue(), r.ue(), r.ue(), r.ue()) if r.u(1) else (0, 0, 0, 0)
    sub_w, sub_h = {0: (1, 1), 1: (2, 2), 2: (2, 1)}.get(chroma_format_idc, (1, 1))
    unit_x = 1 if chroma_format_idc == 0 else sub_w
    unit_y = (2 - frame_mbs_only) * (1 if chroma_format_idc == 0 else sub_h)
    width = width_mbs * 16 - unit_x * (crop[0] + crop[1])
    height = (2 - frame_mbs_only) * height_units * 16 - unit_y * (crop[2] + crop[3])
    return width, height


@dataclass(slots=True)
class _Assembly:
    timestamp: int
    payloads: list[bytes]
    broken: bool
    arrival: float


class RtpHeaderLike(Protocol):
    """What :meth:`Depacketizer.push_rtp` reads of a parsed header (``sfu.rtp.RtpHeader``):
    offsets into the datagram, so that the payload is sliced once, without re-parsing."""

    @property
    def payload_type(self) -> int: ...

    @property
    def sequence_number(self) -> int: ...

    @property
    def timestamp(self) -> int: ...

    @property
    def marker(self) -> bool: ...

    @property
    def payload_start(self) -> int: ...

    @property
    def payload_end(self) -> int: ...


# A packet waiting in the reorder window: (datagram, payload start, payload end,
# timestamp, marker, arrival). Plain tuples: one allocation per out-of-order packet.
_Pending = tuple[bytes, int, int, int, bool, float]
_NO_EVENTS: tuple[Event, ...] = ()


def vp8_descriptor_end(data: bytes, start: int, end: int) -> tuple[bool, int]:
    """(starts a frame, offset of the VP8 bytes) of the RFC 7741 payload descriptor at
    ``data[start:end]``; the same rules (and errors) as aiortc's ``VpxPayloadDescriptor``,
    without building one."""
    if end - start < 1:
        raise ValueError("VPX descriptor is too short")
    octet = data[start]
    pos = start + 1
    if octet & 0x80:
        if end < pos + 1:
            raise ValueError("VPX descriptor has truncated extended bits")
        ext = data[pos]
        pos += 1
        if ext & 0x80:  # I: picture id
            if end < pos + 1:
                raise ValueError("VPX descriptor has truncated PictureID")
            if data[pos] & 0x80:
                if end < pos + 2:
                    raise ValueError("VPX descriptor has truncated long PictureID")
                pos += 2
            else:
                pos += 1
        if ext & 0x40:  # L: TL0PICIDX
            if end < pos + 1:
                raise ValueError("VPX descriptor has truncated TL0PICIDX")
            pos += 1
        if ext & 0x30:  # T or K
            if end < pos + 1:
                raise ValueError("VPX descriptor has truncated T/K")
            pos += 1
    # Partition start (S) of partition 0.
    return (octet & 0x1F) == 0x10, pos


class Depacketizer:
    """Assembles one publication's RTP packets into :class:`EncodedFrame`.

    Not thread-safe; one per publication. ``push`` never raises on bad input: a
    malformed packet counts as lost.
    """

    def __init__(
        self,
        codec: RTCRtpCodecParameters,
        *,
        reorder_packets: int = 256,
        reorder_delay_s: float = 0.5,
        red_payload_type: int | None = None,
    ) -> None:
        mime = codec.mimeType.lower()
        if mime not in ("video/vp8", "video/h264", "audio/opus"):
            raise ValueError(f"cannot depacketize {codec.mimeType}")
        self._red = red_payload_type if mime == "audio/opus" else None
        """RED (RFC 2198) packets of this type carry Opus frames: unwrapped."""
        self.mime = mime
        self.clock_rate = codec.clockRate
        self.is_video = mime.startswith("video/")
        self._reorder_packets = reorder_packets
        self._reorder_delay_s = reorder_delay_s
        self._next_seq: int | None = None
        """Extended sequence number of the next packet to release."""
        self._pending: dict[int, _Pending] = {}
        self._vp8 = mime == "video/vp8"
        self._current: _Assembly | None = None
        self._need_keyframe = self.is_video
        self._lost_since_report = 0
        self._dropped_since_report = 0
        self._sps: bytes | None = None
        self._pps: bytes | None = None
        # Counters for stats and tests.
        self.packets_in = 0
        self.duplicates = 0
        self.late = 0
        self.lost = 0
        self.frames_out = 0
        self.frames_dropped = 0
        self.frames_seen = 0
        """Frames handed in, counted as the SFU counts the frames it forwards: video packets
        with the marker bit, every audio packet (retransmissions included)."""
        self.frames_before_keyframe = 0
        """Video frames dropped before the first keyframe: undecodable without it."""
        self.recovered = 0
        """Opus frames of lost packets taken from a later packet's RED redundancy."""
        self.malformed = 0
        """RED payloads that did not parse (dropped: lost)."""

    @property
    def waiting_for_keyframe(self) -> bool:
        return self._need_keyframe

    def push(self, packet: RtpPacket, arrival: float) -> list[Event]:
        """Take one packet; return what became complete."""
        payload = packet.payload
        if packet.marker or not self.is_video:
            self.frames_seen += 1
        if self._red is not None and packet.payload_type == self._red:
            return list(self._push_red(payload, 0, len(payload), packet.sequence_number, packet.timestamp,
                                       arrival))
        return list(
            self._push(payload, 0, len(payload), packet.sequence_number, packet.timestamp,
                       bool(packet.marker), arrival)
        )

    def push_rtp(self, data: bytes, header: RtpHeaderLike, arrival: float) -> list[Event] | tuple[Event, ...]:
        """Take one RTP datagram whose header is already parsed (the SFU's); return what
        became complete (an empty tuple, not a list, when nothing did)."""
        seq16 = header.sequence_number
        if header.marker or not self.is_video:
            self.frames_seen += 1
        if self._red is not None and header.payload_type == self._red:
            return self._push_red(data, header.payload_start, header.payload_end, seq16, header.timestamp, arrival)
        next_seq = self._next_seq
        if next_seq is not None and not self._pending and seq16 == next_seq & (_SEQ_MOD - 1):
            # In order, nothing waiting (the common case): straight to assembly. The
            # same as _push, one call less on the forwarding path.
            self.packets_in += 1
            self._next_seq = next_seq + 1
            events: list[Event] = []
            self._consume(data, header.payload_start, header.payload_end, header.timestamp, header.marker, seq16,
                          arrival, events)
            if self._lost_since_report:
                self._report(arrival, events)
            return events or _NO_EVENTS
        return self._push(data, header.payload_start, header.payload_end, seq16, header.timestamp, header.marker,
                          arrival)

    def _push(self, data: bytes, start: int, end: int, seq16: int, timestamp: int, marker: bool,
              arrival: float) -> list[Event] | tuple[Event, ...]:
        self.packets_in += 1
        next_seq = self._next_seq
        if next_seq is None:
            next_seq = self._next_seq = seq16
        delta = ((seq16 - next_seq + _SEQ_MOD // 2) & (_SEQ_MOD - 1)) - _SEQ_MOD // 2
        if delta == 0 and not self._pending:
            # In order, nothing waiting: the common case, straight to assembly.
            self._next_seq = next_seq + 1
            events: list[Event] = []
            self._consume(data, start, end, timestamp, marker, seq16, arrival, events)
            if self._lost_since_report:
                self._report(arrival, events)
            return events or _NO_EVENTS
        if delta < 0:
            self.late += 1
            return _NO_EVENTS
        seq = next_seq + delta
        if seq in self._pending:
            self.duplicates += 1
            return _NO_EVENTS
        self._pending[seq] = (data, start, end, timestamp, marker, arrival)
        events = []
        self._release(arrival, events)
        return events or _NO_EVENTS

    def _push_red(self, data: bytes, start: int, end: int, seq16: int, timestamp: int,
                  arrival: float) -> list[Event] | tuple[Event, ...]:
        """One RED packet: the frames of missing packets its redundancy carries (oldest first:
        the ``i``-th block back stands for the packet ``i`` sequence numbers earlier, with
        timestamp offsets growing going back), then its primary."""
        try:
            blocks = parse_red(data[start:end])
        except RedError:
            self.malformed += 1
            return _NO_EVENTS  # its sequence number stays missing: a loss
        events: list[Event] = []
        next_seq = self._next_seq
        if next_seq is not None:
            recovered: list[tuple[int, int, bytes]] = []
            previous_offset = 0
            for back, block in enumerate(reversed(blocks[:-1]), start=1):
                if block.timestamp_offset <= previous_offset:
                    break
                previous_offset = block.timestamp_offset
                lost16 = (seq16 - back) & (_SEQ_MOD - 1)
                delta = ((lost16 - next_seq + _SEQ_MOD // 2) & (_SEQ_MOD - 1)) - _SEQ_MOD // 2
                if delta < 0:
                    break  # released already (arrived, or given up)
                if next_seq + delta in self._pending or not block.data:
                    continue
                recovered.insert(0, (lost16, (timestamp - block.timestamp_offset) & 0xFFFFFFFF, block.data))
            for lost16, lost_ts, frame in recovered:
                self.recovered += 1
                events.extend(self._push(frame, 0, len(frame), lost16, lost_ts, False, arrival))
        primary = blocks[-1].data
        events.extend(self._push(primary, 0, len(primary), seq16, timestamp, False, arrival))
        return events or _NO_EVENTS

    def flush(self, now: float) -> list[Event]:
        """Release everything (end of the publication): missing packets count as lost."""
        events: list[Event] = []
        while self._pending:
            self._skip_to_oldest(now, events)
            self._release(now, events)
        if self._current is not None:
            current, self._current = self._current, None
            self._finish(current, events, complete=False)
        self._report(now, events)
        return events

    # -- ordering ----------------------------------------------------------------------

    def _release(self, now: float, events: list[Event]) -> None:
        assert self._next_seq is not None
        while True:
            item = self._pending.pop(self._next_seq, None)
            if item is not None:
                seq16 = self._next_seq & (_SEQ_MOD - 1)
                self._next_seq += 1
                self._consume(item[0], item[1], item[2], item[3], item[4], seq16, item[5], events)
                continue
            if not self._pending:
                break
            newest = max(self._pending)
            oldest_arrival = min(p[5] for p in self._pending.values())
            if newest - self._next_seq >= self._reorder_packets or now - oldest_arrival >= self._reorder_delay_s:
                self._skip_to_oldest(now, events)
                continue
            break
        self._report(now, events)

    def _skip_to_oldest(self, now: float, events: list[Event]) -> None:
        assert self._next_seq is not None
        oldest = min(self._pending)
        missing = oldest - self._next_seq
        self._next_seq = oldest
        if missing > 0:
            self._on_loss(missing)

    def _on_loss(self, missing: int) -> None:
        self.lost += missing
        self._lost_since_report += missing
        if self.is_video:
            if self._current is not None:
                self._current.broken = True
            self._need_keyframe = True

    def _report(self, now: float, events: list[Event]) -> None:
        if self._lost_since_report:
            events.append(
                Gap(
                    lost_packets=self._lost_since_report,
                    dropped_frames=self._dropped_since_report,
                    needs_keyframe=self._need_keyframe,
                    arrival=now,
                )
            )
            self._lost_since_report = 0
            self._dropped_since_report = 0

    # -- assembly ----------------------------------------------------------------------

    def _consume(self, data: bytes, start: int, end: int, timestamp: int, marker: bool, seq16: int,
                 arrival: float, events: list[Event]) -> None:
        if not self.is_video:
            if end > start:
                payload = data if start == 0 and end == len(data) else data[start:end]
                self._emit(events, payload, timestamp, True, arrival)
            return
        try:
            if self._vp8:
                begins, pos = vp8_descriptor_end(data, start, end)
                payload = data[pos:end]
            else:
                begins, payload = self._depayload(data[start:end])
        except ValueError as exc:
            logger.debug("malformed %s payload seq=%d: %s", self.mime, seq16, exc)
            self._on_loss(1)
            return
        current = self._current
        if current is not None and current.timestamp != timestamp:
            # A sender that forgot the marker: the timestamp change ends the frame.
            self._current = None
            self._finish(current, events, complete=not current.broken)
            current = None
        if current is None:
            current = self._current = _Assembly(timestamp, [], not begins, arrival)
        current.payloads.append(payload)
        current.arrival = arrival
        if marker:
            self._current = None
            self._finish(current, events, complete=not current.broken)

    def _depayload(self, payload: bytes) -> tuple[bool, bytes]:
        """(starts a frame, bytes to append) for one packet."""
        if self.mime == "video/vp8":
            begins, pos = vp8_descriptor_end(payload, 0, len(payload))
            return begins, payload[pos:]
        h264_descriptor, data = H264PayloadDescriptor.parse(payload)
        # Only the first FU-A fragment may begin an access unit; single NALs and STAP-A
        # always start NAL units, which is as much as RTP tells us.
        return bool(h264_descriptor.first_fragment), data

    def _finish(self, assembly: _Assembly, events: list[Event], *, complete: bool) -> None:
        payloads = assembly.payloads
        data = payloads[0] if len(payloads) == 1 else b"".join(payloads)
        if not complete or not data:
            self._drop()
            return
        if self._vp8:
            keyframe = not data[0] & 0x01
        else:
            data, keyframe = self._complete_h264(data)
        if self._need_keyframe and not keyframe:
            self._drop()
            return
        self._need_keyframe = False
        self._emit(events, data, assembly.timestamp, keyframe, assembly.arrival)

    def _complete_h264(self, access_unit: bytes) -> tuple[bytes, bool]:
        nals = h264_nal_units(access_unit)
        types = {nal[0] & 0x1F for nal in nals if nal}
        for nal in nals:
            if nal and nal[0] & 0x1F == _NAL_SPS:
                self._sps = nal
            elif nal and nal[0] & 0x1F == _NAL_PPS:
                self._pps = nal
        keyframe = _NAL_IDR in types
        if keyframe and not (_NAL_SPS in types and _NAL_PPS in types) and self._sps and self._pps:
            # Browsers send SPS/PPS once in a while; a file needs them at each keyframe
            # that a reader may start from.
            access_unit = _START_CODE + self._sps + _START_CODE + self._pps + access_unit
        return access_unit, keyframe

    def _drop(self) -> None:
        self.frames_dropped += 1
        self._dropped_since_report += 1
        if not self.frames_out:
            self.frames_before_keyframe += 1

    def _emit(self, events: list[Event], data: bytes, timestamp: int, keyframe: bool, arrival: float) -> None:
        self.frames_out += 1
        events.append(EncodedFrame(data, timestamp, self.clock_rate, keyframe, arrival))
