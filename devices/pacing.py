"""The agent's send pacer, sans I/O: a leaky bucket over every RTP packet of the site.

aiortc sends each frame's packets in one burst, and its retransmissions as soon as a NACK
comes; on a thin uplink a keyframe's burst (tens of packets at once) fills the bottleneck's
queue, delays the stethoscope behind it and loses packets at the tail. As in Chromium's and
Pion's pacers (a budget that refills at a pacing rate, a few times the target, spent in
short intervals, audio first), packets wait here in priority order and leave as the bucket
allows:

* audio is never held back (it is small and steady), but spends the bucket's credit;
* retransmissions go before new video, within a share of the pacing rate (a storm of NACKs
  beyond it is dropped: those packets would arrive too late anyway);
* video last. The queue never holds more than ``max_queue_s`` at the pacing rate: a longer
  queue raises the rate to drain it in that time (Chromium's queue time limit), so that
  pacing never adds seconds of delay.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from typing import Generic, Optional, TypeVar

T = TypeVar("T")


class Priority(enum.IntEnum):
    AUDIO = 0
    RETRANSMISSION = 1
    VIDEO = 2


@dataclass
class _Bucket:
    rate: float
    """Bytes per second."""
    burst: float
    """Bytes: the most credit kept while idle."""
    credit: float = 0.0
    at: Optional[float] = None

    def refill(self, now: float) -> None:
        if self.at is not None:
            self.credit = min(self.burst, self.credit + self.rate * max(0.0, now - self.at))
        self.at = now


@dataclass
class PacketQueue(Generic[T]):
    """Packets (any payload ``T``, sized by the caller) released at a pacing rate."""

    rate_bytes_per_s: float = 300_000.0
    burst_s: float = 0.01
    """Credit kept while idle, in seconds at the pacing rate (a small burst after a pause)."""
    max_queue_s: float = 0.25
    retransmit_share: float = 0.25
    """Of the pacing rate, what retransmissions may use (one second of burst)."""
    sent_bytes: int = 0
    dropped_retransmissions: int = 0
    _queues: dict[Priority, deque[tuple[T, int, float]]] = field(default_factory=lambda: {
        p: deque() for p in (Priority.RETRANSMISSION, Priority.VIDEO)})
    _queued_bytes: int = 0
    _bucket: _Bucket = field(default_factory=lambda: _Bucket(300_000.0, 3000.0))
    _rtx: _Bucket = field(default_factory=lambda: _Bucket(75_000.0, 75_000.0, credit=75_000.0))

    def __post_init__(self) -> None:
        self.set_rate(self.rate_bytes_per_s)
        self._rtx.credit = self._rtx.burst

    def set_rate(self, bytes_per_s: float) -> None:
        self.rate_bytes_per_s = max(1000.0, bytes_per_s)
        self._bucket.rate = self.rate_bytes_per_s
        self._bucket.burst = max(1500.0, self.rate_bytes_per_s * self.burst_s)
        self._rtx.rate = self.rate_bytes_per_s * self.retransmit_share
        self._rtx.burst = self._rtx.rate
        self._rtx.credit = min(self._rtx.credit, self._rtx.burst)

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def push(self, item: T, size: int, priority: Priority, now: float) -> list[T]:
        """Queue ``item``; returns what may go at once (audio goes through, spending credit;
        a retransmission over its share is dropped and counted)."""
        self._bucket.refill(now)
        if priority is Priority.AUDIO:
            self._bucket.credit -= size
            self.sent_bytes += size
            return [item]
        if priority is Priority.RETRANSMISSION:
            self._rtx.refill(now)
            if self._rtx.credit < size:
                self.dropped_retransmissions += 1
                return []
            self._rtx.credit -= size
        self._queues[priority].append((item, size, now))
        self._queued_bytes += size
        return self.pop_due(now)

    def _effective_rate(self, now: float) -> float:
        """The pacing rate, or faster: fast enough for the oldest packet to leave within
        ``max_queue_s`` of its arrival, with everything queued before it."""
        oldest = min((q[0][2] for q in self._queues.values() if q), default=None)
        if oldest is None:
            return self.rate_bytes_per_s
        left_s = max(0.005, self.max_queue_s - (now - oldest))
        return max(self.rate_bytes_per_s, self._queued_bytes / left_s)

    def pop_due(self, now: float) -> list[T]:
        """What may leave now, retransmissions first."""
        bucket = self._bucket
        bucket.rate = self._effective_rate(now)
        bucket.refill(now)
        out: list[T] = []
        for priority in (Priority.RETRANSMISSION, Priority.VIDEO):
            queue = self._queues[priority]
            while queue and bucket.credit >= 0:
                item, size, _ = queue.popleft()
                bucket.credit -= size
                self._queued_bytes -= size
                self.sent_bytes += size
                out.append(item)
        bucket.rate = self.rate_bytes_per_s
        return out

    def next_due(self, now: float) -> Optional[float]:
        """Seconds until the next queued packet may leave (None: nothing queued)."""
        if not self._queued_bytes:
            return None
        deficit = -self._bucket.credit
        return max(0.0, deficit / self._effective_rate(now)) if deficit >= 0 else 0.0


ONE_BYTE_PROFILE = 0xBEDE


def restamp_abs_send_time(data: bytes, ext_id: int, abs_send_time: int) -> bytes:
    """``data`` (an RTP packet) with its abs-send-time header extension (one-byte form,
    RFC 8285; id ``ext_id``) set to ``abs_send_time`` (24 bits, 6.18 fixed-point seconds).
    The sender stamps it when it makes the packet; a packet that waited here must carry the
    time it really left, or the receiver's estimator reads the wait as a growing queue
    (Chromium stamps at the pacer too). Unchanged when the packet has no such extension."""
    if len(data) < 12 or not data[0] & 0x10:
        return data
    start = 12 + 4 * (data[0] & 0x0F)
    if len(data) < start + 4 or int.from_bytes(data[start:start + 2], "big") != ONE_BYTE_PROFILE:
        return data
    end = min(len(data), start + 4 + 4 * int.from_bytes(data[start + 2:start + 4], "big"))
    i = start + 4
    while i < end:
        header = data[i]
        if header == 0:  # padding
            i += 1
            continue
        element_id, length = header >> 4, (header & 0x0F) + 1
        if element_id == 15:
            break
        if element_id == ext_id and length == 3 and i + 4 <= end:
            return data[:i + 1] + (abs_send_time & 0xFFFFFF).to_bytes(3, "big") + data[i + 4:]
        i += 1 + length
    return data
