"""What a publisher may send: its own uplink estimate, capped by what its subscribers take.

The SFU forwards packets without re-encoding, so the only lever it has on a congested
link is the sender's encoder, through REMB (RFC draft-alvestrand-rmcat-remb; Chromium
obeys it when transport-cc is not negotiated, aiortc's sender sets its encoder's target
from it). The numbers combine as follows (all bit/s):

* **uplink estimate** of a publisher transport: aiortc's ``RemoteBitrateEstimator``
  (abs-send-time inter-arrival, overuse detector, AIMD), fed from the SFU's packet tap;
* **subscriber share** of one subscription, once its subscriber's link is congested (its
  latest REMB, one estimate for its whole transport, below what that transport receives
  now): the REMB split over what arrives, this subscription's part of the measured
  rates, at least an equal split (a track still waiting for its keyframe is not starved);
* **publication cap**: the smallest share over its congested subscribers (the
  worst-placed viewer sets the rate, there being no simulcast layer to pick); none when
  no subscriber is congested;
* **site cap**, for the nurse's browser only: ``nurse_share`` of the site's estimate
  (the sum of the uplink estimates of the site's publishers in the room: nurse and
  device agent, who share one uplink), when the agent publishes too. The agent splits
  its own part by priority; the browser, which the agent does not control, is held to
  its share so that the stethoscope and the viewed device keep theirs;
* **agent site share**: the rest of the site's uplink, told to the device agent on its
  ``room`` channel (``site_share``) whenever the nurse's camera starts or stops: the agent
  makes room at once, before the camera's first packets meet its own in the bottleneck's
  queue (the estimators would tell only once that queue overflows);
* **REMB** to a publisher: its uplink estimate, at most the sum of its video
  publications' caps (when each has one), at most its site cap, never below
  :data:`MIN_REMB_BPS`.

Retransmissions are held to ``retransmit_share`` of an estimate: the subscriber's for
what the SFU resends to it, the publisher's for what the SFU asks it to resend.

Sans-I/O: times in seconds from any monotonic clock, given by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
MIN_REMB_BPS = 30_000
"""Below this an encoder cannot keep a picture going (libwebrtc's minimum video bitrate)."""
ESTIMATE_MAX_AGE_S = 5.0
"""A subscriber's REMB older than this is ignored (its sender refreshes it every second)."""
RATE_INTERVAL_S = 0.5
"""Rates are measured over at least this long."""
CONGESTION_HEADROOM = 1.25
"""A subscriber's REMB below this many times what it receives says its link is near capacity.
On a clean link a receiver's estimate climbs to ~1.5 times what arrives; a publisher held to a
subscriber's cap sends about the cap, which stays below this headroom: the cap holds steady
instead of lifting as soon as the publisher obeys it."""
TYPICAL_PACKET_BYTES = 1200
"""Turns a retransmission budget in bit/s into packets (a video packet is near the MTU)."""


@dataclass(slots=True)
class LinkEstimate:
    """The latest bandwidth estimate of one transport (a REMB it sent, or our own)."""

    bps: int | None = None
    at: float = 0.0

    def update(self, bps: int, now: float) -> None:
        self.bps = bps
        self.at = now

    def current(self, now: float, max_age_s: float = ESTIMATE_MAX_AGE_S) -> int | None:
        if self.bps is None or now - self.at > max_age_s:
            return None
        return self.bps


class RateMeter:
    """The rate of a growing byte count, resampled at most every :data:`RATE_INTERVAL_S`."""

    __slots__ = ("_bytes", "_at", "bps")

    def __init__(self) -> None:
        self._bytes: int | None = None
        self._at = 0.0
        self.bps = 0.0

    def sample(self, total_bytes: int, now: float) -> float:
        if self._bytes is None or total_bytes < self._bytes:
            self._bytes, self._at = total_bytes, now
            return self.bps
        elapsed = now - self._at
        if elapsed >= RATE_INTERVAL_S:
            self.bps = (total_bytes - self._bytes) * 8 / elapsed
            self._bytes, self._at = total_bytes, now
        return self.bps


def subscriber_share(estimate_bps: float, own_bps: float, total_bps: float, count: int) -> float | None:
    """What one of a subscriber's ``count`` subscriptions may take of its estimate: its part
    of what the subscriber receives now (``own_bps`` of ``total_bps``), at least an equal split.

    None (no cap) while the estimate is well above what the subscriber receives
    (:data:`CONGESTION_HEADROOM`): a receiver's REMB is at most ~1.5 times what arrives (it
    cannot see capacity it is not offered), so taken as a capacity it held a clean link's
    publishers at a fraction of their uplink and kept a paused track from coming back. Near
    or below what arrives, the subscriber's link is at capacity: then it caps."""
    if total_bps <= 0 or estimate_bps >= CONGESTION_HEADROOM * total_bps:
        return None
    equal = estimate_bps / max(1, count)
    return max(equal, estimate_bps * min(1.0, own_bps / total_bps))


def publication_cap(shares: Iterable[float | None]) -> float | None:
    """The smallest subscriber share; None when no subscriber's link is congested."""
    return min((s for s in shares if s is not None), default=None)


def site_cap(site_estimates: Sequence[int], share: float) -> float | None:
    """The nurse browser's cap: ``share`` of the site's estimate; None unless another
    publisher of the site (the device agent) has an estimate too."""
    if len(site_estimates) < 2:
        return None
    return share * sum(site_estimates)


def agent_site_share(nurse_camera: bool, nurse_share: float) -> float:
    """The device agent's share of its site's uplink: what the nurse's camera is not held to
    while it publishes (``site_share`` on the agent's ``room`` channel), else all of it."""
    return 1.0 - nurse_share if nurse_camera else 1.0


def remb_bps(uplink_bps: int, caps: Sequence[float | None], site: float | None = None) -> int:
    """The REMB of one publisher transport (the rules of the module docstring)."""
    value = float(uplink_bps)
    if caps and all(cap is not None for cap in caps):
        value = min(value, sum(cap for cap in caps if cap is not None))
    if site is not None:
        value = min(value, site)
    return int(max(MIN_REMB_BPS, value))


def retransmit_packets_per_s(estimate_bps: float, share: float) -> float:
    """Retransmissions per second that fit in ``share`` of an estimate."""
    return max(1.0, share * estimate_bps / (8 * TYPICAL_PACKET_BYTES))


NACK_BURST_PACKETS = 16.0
"""Retransmissions a publisher may be asked for at once, whatever its rate: a queue that
overflows drops a run of packets (a keyframe's burst, another device's), and a run the burst
does not cover is never asked for, so every subscriber waits for a keyframe instead. With a
burst of 4, bench.network's 4g-weak lost 33-54 dermatoscope packets for good in 30 s; with 16,
10-13. The long-run rate stays ``retransmit_share`` of the estimate."""


def retransmit_burst(packets_per_s: float) -> float:
    """The burst of a publisher's NACK budget that refills at ``packets_per_s``: two seconds'
    worth, at least :data:`NACK_BURST_PACKETS`."""
    return max(NACK_BURST_PACKETS, 2 * packets_per_s)


@dataclass(slots=True)
class PublicationFeedback:
    """What the SFU last worked out for one publication (metrics, :meth:`SfuService.congestion`)."""

    uplink_bps: int | None = None
    """The publisher transport's own estimate (aiortc's ``RemoteBitrateEstimator``)."""
    subscribers_cap_bps: float | None = None
    """The publication cap from its subscribers' REMB (None: none sent one)."""
    site_cap_bps: float | None = None
    remb_bps: int | None = None
    """The REMB last sent to the publisher's transport (covers all its video)."""
