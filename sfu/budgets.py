"""Budgets that bound what one peer can make the SFU do, whatever it sends.

* :class:`TokenBucket`: ``rate`` tokens a second, at most ``burst`` saved up.
* :class:`RetransmitBudget`: what one subscriber's NACKs may have retransmitted, in
  packets and bytes a second (issue 17: 1,334 NACKs once caused about 24k
  retransmissions). A NACKed packet beyond the budget is not resent. Once the subscriber's
  bandwidth estimate (REMB) is known, both rates follow ``[media] retransmit_share`` of it
  (:meth:`RetransmitBudget.follow_estimate`, issue 13).

Sans-I/O: the caller gives the time (seconds, any monotonic clock).
"""

from __future__ import annotations

from config.settings import MediaSettings


class TokenBucket:
    """``rate`` tokens a second, at most ``burst``; starts full."""

    __slots__ = ("rate", "burst", "tokens", "_at")

    def __init__(self, rate: float, burst: float) -> None:
        if rate < 0 or burst <= 0:
            raise ValueError("a token bucket needs rate >= 0 and burst > 0")
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self._at: float | None = None

    def refill(self, now: float) -> float:
        """The tokens available at ``now``."""
        if self._at is not None and now > self._at:
            self.tokens = min(self.burst, self.tokens + (now - self._at) * self.rate)
        if self._at is None or now > self._at:
            self._at = now
        return self.tokens

    def take(self, now: float, amount: float = 1.0) -> bool:
        """Take ``amount`` tokens if there are that many; False (nothing taken) otherwise."""
        if self.refill(now) < amount:
            return False
        self.tokens -= amount
        return True


class RetransmitBudget:
    """Retransmissions one subscriber may cause: ``packets_per_s`` and ``bytes_per_s``, with
    ``burst_s`` seconds of each saved up. Shared by every subscription of the subscriber."""

    __slots__ = ("packets", "bytes", "_limits", "_burst_s")

    def __init__(self, packets_per_s: float, bytes_per_s: float, burst_s: float = 1.0) -> None:
        self.packets = TokenBucket(packets_per_s, max(1.0, packets_per_s * burst_s))
        self.bytes = TokenBucket(bytes_per_s, max(1500.0, bytes_per_s * burst_s))
        self._limits = (packets_per_s, bytes_per_s)
        self._burst_s = burst_s

    def follow_estimate(self, estimate_bps: float, share: float) -> None:
        """Hold the byte rate to ``share`` of the subscriber's bandwidth estimate (issue 13),
        never above the configured one; what is saved up shrinks with the burst. The packet
        rate stays as configured: it bounds the work, bytes bound the link."""
        bytes_per_s = min(self._limits[1], max(1500.0, share * estimate_bps / 8))
        bucket = self.bytes
        bucket.rate = bytes_per_s
        bucket.burst = max(1500.0, bytes_per_s * self._burst_s)
        bucket.tokens = min(bucket.tokens, bucket.burst)

    @classmethod
    def from_settings(cls, media: MediaSettings) -> "RetransmitBudget":
        return cls(media.retransmit_packets_per_s, media.retransmit_bytes_per_s)

    def allow(self, size: int, now: float) -> bool:
        """Whether one retransmission of ``size`` bytes fits; if so it is counted against both."""
        if self.packets.refill(now) < 1 or self.bytes.refill(now) < size:
            return False
        self.packets.tokens -= 1
        self.bytes.tokens -= size
        return True
