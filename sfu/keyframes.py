"""Sans-I/O keyframe handling: which packets start a keyframe, and when to ask for one.

* VP8 (RFC 7741): the packet that starts partition 0 (S=1, PID=0) of a frame whose
  payload header has P=0 (inverse key frame flag) starts a keyframe.
* H.264 (RFC 6184): a packet carrying an SPS, or an IDR slice that starts (single
  NAL unit, STAP-A aggregate, or FU-A with S=1), starts a keyframe (browsers send
  SPS/PPS in a STAP-A just before the IDR).
* Audio: every packet is independently decodable: always a "keyframe".

:class:`KeyframeRequester` decides when a PLI may go upstream: at most one per
``interval`` seconds, except that once a keyframe has arrived since the last
request, a new request (a new subscriber) goes at once.
"""

from __future__ import annotations

_NAL_IDR = 5
_NAL_SPS = 7
_NAL_STAP_A = 24
_NAL_FU_A = 28


def vp8_keyframe_start(payload: bytes) -> bool:
    """True when this VP8 RTP payload starts a keyframe."""
    if not payload:
        return False
    first = payload[0]
    pos = 1
    if first & 0x80:  # X: extended control bits
        if len(payload) < 2:
            return False
        ext = payload[1]
        pos = 2
        if ext & 0x80:  # I: picture id
            if len(payload) <= pos:
                return False
            pos += 2 if payload[pos] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX
            pos += 1
        if ext & 0x30:  # T or K: TID/KEYIDX byte
            pos += 1
    start = bool(first & 0x10)
    pid = first & 0x07
    if not start or pid != 0 or len(payload) <= pos:
        return False
    return not (payload[pos] & 0x01)  # P bit: 0 = keyframe


def h264_keyframe_start(payload: bytes) -> bool:
    """True when this H.264 RTP payload starts (or carries the parameter sets of) a keyframe."""
    if not payload:
        return False
    nal_type = payload[0] & 0x1F
    if nal_type in (_NAL_IDR, _NAL_SPS):
        return True
    if nal_type == _NAL_STAP_A:
        pos = 1
        while pos + 2 < len(payload):
            size = (payload[pos] << 8) | payload[pos + 1]
            pos += 2
            if size == 0 or pos + size > len(payload):
                return False
            if payload[pos] & 0x1F in (_NAL_IDR, _NAL_SPS):
                return True
            pos += size
        return False
    if nal_type == _NAL_FU_A and len(payload) >= 2:
        fu_header = payload[1]
        return bool(fu_header & 0x80) and (fu_header & 0x1F) == _NAL_IDR
    return False


def keyframe_start(codec: str, payload: bytes) -> bool:
    """``codec`` is the lower-case codec name: vp8, h264, opus..."""
    if codec == "vp8":
        return vp8_keyframe_start(payload)
    if codec == "h264":
        return h264_keyframe_start(payload)
    return True


class KeyframeRequester:
    """Rate limit of keyframe requests (PLI) towards one publisher."""

    def __init__(self, interval: float) -> None:
        if interval <= 0:
            raise ValueError("interval must be > 0")
        self.interval = interval
        self._last: float | None = None
        self._keyframe_since = True
        self.sent = 0
        self.suppressed = 0

    def keyframe_arrived(self) -> None:
        self._keyframe_since = True

    def request(self, now: float) -> bool:
        """May a PLI go now? (If so it counts as sent.)"""
        if self._last is None or self._keyframe_since or now - self._last >= self.interval:
            self._last = now
            self._keyframe_since = False
            self.sent += 1
            return True
        self.suppressed += 1
        return False

    def due(self, now: float) -> bool:
        """For a subscriber still waiting: is the last request old enough to repeat?"""
        return self._last is None or now - self._last >= self.interval
