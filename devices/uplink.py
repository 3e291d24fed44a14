"""The cabin's uplink, shared by the agent's WHIP sessions: one budget, split by priority.

Sans I/O. The agent runs one WHIP session (one peer connection) per device, all on the
site's one uplink. The SFU sends each session a REMB (its estimate of what arrives); this
module adds them into one site budget and splits it:

1. the stethoscope first, at its full rate;
2. then the device the physician is viewing (``viewing`` on the room channel), up to its
   maximum;
3. then the others, in device order, each down to its minimum, else paused.

When even that leaves the stethoscope at risk (the budget is below the stethoscope's rate
plus the viewed device's minimum, congested, and the stethoscope's path hurting now: below),
every video pauses and audio goes on (``audio_only``).
It comes back through a probe: every ``probe_interval_s`` (doubling after each failure up to
``probe_interval_max_s``) the viewed device resumes at its minimum for ``probe_s``; when the
estimates received meanwhile add up to ``resume_factor`` times the need, video is back.

The SFU sends REMB to video sessions only (its estimator measures each transport alone):
a stethoscope without one counts at its full rate in the budget.

The REMB governs only once congestion was seen (for ``congestion_hold_s``), which takes two
signs at once:

* some session sends more than its REMB (an estimator lowers its REMB under what arrives
  when it sees a queue build up). A REMB well above what a session sends (aiortc's estimator
  caps it at 1.5 times what arrives) is only a ceiling: an encoder that undershoots (a still
  scene) is no weak link;
* the stethoscope's own path suffers: the SFU's receiver reports for it show its round trip
  grown (the queue) or a loss rate above a radio link's random loss (the queue overflows).
  That is what "the stethoscope's share is at risk" means, measured, and it keeps a REMB
  that is low for other reasons (subscribers' caps) from pausing video on a good link.

A stall of the agent's own event loop (a CPU burst in its process: a full-resolution still
encoded) is no congestion, though it looks like one: packets and reports wait it out, so a
report's round trip grows by the stall (the SFU in the same process on loopback stalls
too, and its estimator cuts its REMB). The agent measures how late its loop wakes
(``loop_lag``) and a round trip is judged less twice the longest stall of the last
``own_lag_s`` (a sender's estimator likewise ignores its own send gaps).

Until congestion is seen there is no limit (every track at its maximum), or the budget
grows from ``start_kbps`` (once there is an estimate, or ``estimate_wait_s`` passed without
one). While it lasts,
the budget follows the REMBs; after, it grows ``step_up`` every ``step_every_s`` until every
track is at its maximum again or congestion comes back. Once the link has shown where it
ends (congestion was seen, or the nurse's camera shares it), not past the site's estimate
while that estimate is close to what the sessions send
(under ``estimate_free_ratio`` times it: the estimators saw where the link ends): they rise
with what they see arrive, so the budget climbs with them, and a budget far above them
would have every encoder probe the link at once (another device turned on, with its
keyframe), an overflow that only the stethoscope's next reports would tell. Growing never
lowers the budget: a REMB under it is a ceiling only while congestion is seen (above). A
probe also succeeds when the stethoscope's reports stayed clean all along it.

The SFU tells the agent its share of the site's uplink (``site_share``: less than all of it
while the nurse's camera publishes): a smaller share cuts the budget at once
(:meth:`UplinkController.site_share`).

Rates are kbit/s as the estimator counts them (RTP packets before SRTP).
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Mapping, Optional, Sequence


class Mode(str, enum.Enum):
    NORMAL = "normal"
    AUDIO_ONLY = "audio_only"
    """Every video paused: the budget does not cover the stethoscope and the viewed device."""
    PROBING = "probing"
    """Audio-only, with the viewed device sent at its minimum to find out whether the link is back."""


class Reason(str, enum.Enum):
    FULL = "full"
    """At its maximum rate."""
    REDUCED = "reduced"
    """Below its maximum: the budget is short."""
    PAUSED = "paused"
    """Nothing sent: what is left after higher priorities is under its minimum."""
    AUDIO_ONLY = "audio_only"
    """Nothing sent: the stethoscope's share is at risk."""
    PROBE = "probe"
    """Sent at its minimum for a moment, to find out whether the link recovered."""


@dataclass(frozen=True)
class TrackSpec:
    device: str
    kind: str
    """``audio`` or ``video``."""
    min_kbps: float
    """Below this a video track is paused instead (audio always gets its full rate)."""
    max_kbps: float


@dataclass(frozen=True)
class TrackTarget:
    device: str
    kind: str
    target_kbps: float
    """0 when paused."""
    paused: bool
    reason: Reason

    def to_json(self) -> dict[str, object]:
        return {"device": self.device, "kind": self.kind, "target_kbps": round(self.target_kbps),
                "paused": self.paused, "reason": self.reason.value}


@dataclass(frozen=True)
class Allocation:
    mode: Mode
    budget_kbps: Optional[float]
    """None: no estimate yet (every track at its maximum)."""
    targets: tuple[TrackTarget, ...]

    def target(self, device: str) -> Optional[TrackTarget]:
        return next((t for t in self.targets if t.device == device), None)

    @property
    def degraded(self) -> bool:
        """Some video is reduced or paused (what the physician's page says)."""
        return any(t.kind == "video" and t.reason is not Reason.FULL for t in self.targets)


STETHOSCOPE = TrackSpec("stethoscope", "audio", 140.0, 140.0)
"""Opus 128 kbit/s stereo and its RTP headers: the least the stethoscope is counted at; the
controller counts it at what it sends when that is more (RED carries each frame twice)."""
VIDEO_MAX_KBPS = 540.0
"""aiortc's VP8 default (500 kbit/s) and its RTP headers: what a device sends on a good link."""
VIEWED_MIN_KBPS = 250.0
"""Below this the device being examined would not be worth watching: audio only instead."""
OTHER_MIN_KBPS = 150.0


def default_spec(device: str) -> TrackSpec:
    if device == STETHOSCOPE.device:
        return STETHOSCOPE
    return TrackSpec(device, "video", OTHER_MIN_KBPS, VIDEO_MAX_KBPS)


def allocate(budget_kbps: Optional[float], tracks: Sequence[TrackSpec], viewed: Optional[str], *,
             viewed_min_kbps: float = VIEWED_MIN_KBPS, keep_viewed: bool = False) -> list[TrackTarget]:
    """The split of one budget (the priority order above), without the audio-only state: a
    video whose share is under its minimum is paused (``viewed_min_kbps`` for the viewed one);
    when the viewed one is paused, so are the others (no other device instead of the one
    being examined: the controller goes audio-only). With ``keep_viewed`` the viewed one
    keeps its minimum however short the budget (what the controller does in normal mode:
    only the stethoscope's own distress pauses the device being examined, and a budget can
    be short for other reasons: a REMB from before a queue drained, another device's
    burst); the others are paused."""
    if budget_kbps is None:
        return [TrackTarget(t.device, t.kind, t.max_kbps, False, Reason.FULL) for t in tracks]
    order = ([t for t in tracks if t.kind == "audio"] + [t for t in tracks if t.kind != "audio" and t.device == viewed]
             + [t for t in tracks if t.kind != "audio" and t.device != viewed])
    left = budget_kbps
    out: dict[str, TrackTarget] = {}
    for track in order:
        if track.kind == "audio":
            out[track.device] = TrackTarget(track.device, track.kind, track.max_kbps, False, Reason.FULL)
            left -= track.max_kbps
            continue
        minimum = max(track.min_kbps, viewed_min_kbps) if track.device == viewed else track.min_kbps
        share = min(track.max_kbps, left)
        if keep_viewed and track.device == viewed:
            share = max(share, minimum)
        viewed_paused = viewed in out and out[viewed].paused
        if share < minimum or viewed_paused:
            out[track.device] = TrackTarget(track.device, track.kind, 0.0, True, Reason.PAUSED)
            continue
        reason = Reason.FULL if share >= track.max_kbps else Reason.REDUCED
        out[track.device] = TrackTarget(track.device, track.kind, share, False, reason)
        left -= share
    return [out[t.device] for t in tracks]


@dataclass(frozen=True)
class UplinkPolicy:
    utilization: float = 0.9
    """Of the estimate, what is allocated: room for retransmissions and the estimate's error."""
    congested_ratio: float = 1.15
    """A REMB under this times what its session sends is capacity; above, a lower bound."""
    step_up: float = 1.08
    """Once congestion is over, the budget grows this much every ``step_every_s`` until every
    track has its maximum (or congestion is seen again): the probing while video runs."""
    step_every_s: float = 1.0
    estimate_free_ratio: float = 1.3
    """Estimates this far above what the sessions send saw no queue (aiortc's climbs to 1.5
    times what arrives while it sees none, and drops to 0.85 times it on a queue): the link
    has room beyond them, and the encoders merely undershoot (a still scene, a low frame
    rate); the ceiling grows regardless. Closer to what is sent, they are where the link
    ends, and the ceiling grows no further than they say."""
    estimate_wait_s: float = 5.0
    """No growth before the first estimate for this long from the start (the SFU's estimator
    sends its first REMB a second or two after the first packets): growing blind turned
    another device on, at full rate, before anything had measured the link. Past it, with no
    estimate at all (an SFU that sends no REMB), the budget grows unchecked."""
    resume_factor: float = 1.15
    """A probe succeeds when the estimates reach this times the stethoscope's and the viewed
    device's need."""
    probe_interval_s: float = 3.0
    probe_interval_max_s: float = 5.0
    probe_s: float = 2.0
    hold_s: float = 1.0
    """A need for audio-only must last this long (one low REMB is not a trend)."""
    estimate_ttl_s: float = 5.0
    """An estimate older than this is forgotten (its session sends nothing, or is gone)."""
    viewed_min_kbps: float = VIEWED_MIN_KBPS
    rtt_rise_s: float = 0.04
    rtt_rise_reports: int = 2
    """Reports in a row that must show the rise: a queue lasts. (Two in a row do not make a CPU
    burst of the agent a queue: the SFU may echo the Sender Report that waited out the stall in
    two reports, each with the stall in its round trip. That is ``own_lag_s``'s part.)"""
    distress_loss: float = 0.1
    """Above a lossy radio link's random loss: a queue that overflows. In two reports in a
    row (3 % random loss shows in one report of ~50 packets as 8 % now and then, 10 or 12 %
    now and again: with a REMB that is low because the encoder undershoots a still scene,
    that one report paused the device being examined for seconds), or twice this in one
    report (an overflow at once)."""
    report_ttl_s: float = 3.0
    own_lag_s: float = 3.0
    """How long a stall of the agent's own event loop (:meth:`UplinkController.loop_lag`)
    counts against what is measured after it: a receiver report's round trip runs from its
    Sender Report (sent up to 1.5 s before the report) to the report's arrival (up to 1.5 s
    after the Sender Report's)."""
    congestion_hold_s: float = 10.0
    """Once congestion was seen, the REMB governs this long (no stepping past it)."""
    start_kbps: Optional[float] = None
    """The budget to start from, growing by ``step_up`` while nothing is congested (None: no
    limit until congestion is seen). A cabin starts at the stethoscope and the viewed
    device: the others come as the link proves itself, not in a burst that fills it."""

    def __post_init__(self) -> None:
        if not 0 < self.utilization <= 1:
            raise ValueError("utilization must be in (0, 1]")
        if self.step_up < 1 or self.resume_factor < 1 or self.congested_ratio < 1:
            raise ValueError("step_up, resume_factor and congested_ratio must be >= 1")
        if not 0 < self.probe_interval_s <= self.probe_interval_max_s or self.probe_s <= 0:
            raise ValueError("probe intervals must be > 0 and ordered")
        if self.rtt_rise_reports < 1:
            raise ValueError("rtt_rise_reports must be >= 1")
        if self.own_lag_s < 0:
            raise ValueError("own_lag_s must be >= 0")


@dataclass
class _Estimate:
    kbps: float
    at: float


@dataclass
class UplinkController:
    """The site's uplink state: estimates in, allocations out (``step`` with the time now and
    what each session sent lately)."""

    tracks: tuple[TrackSpec, ...]
    policy: UplinkPolicy = field(default_factory=UplinkPolicy)
    viewed: Optional[str] = None
    mode: Mode = Mode.NORMAL
    _estimates: dict[str, _Estimate] = field(default_factory=dict)
    _ceiling: Optional[float] = None
    """What the allocation may use: None, no limit (no congestion seen, or grown past every
    maximum since); the REMB-based budget while congested; then growing."""
    _ceiling_at: float = 0.0
    _rtt_base: Optional[float] = None
    _loss: Optional[float] = None
    """The loss fraction of the latest report."""
    _loss_before: Optional[float] = None
    """The report's before it (a report without a fraction resets both)."""
    _report_at: Optional[float] = None
    _distress_at: float = float("-inf")
    _congested_until: float = float("-inf")
    _current: tuple[TrackSpec, ...] = ()
    """``tracks`` with each audio track at what it sends now, when that is more."""
    _low_since: Optional[float] = None
    _mode_since: float = 0.0
    _probe_interval_s: float = 0.0
    _normal_since: Optional[float] = None
    _rtt_rises: int = 0
    """Reports in a row whose round trip rose past ``rtt_rise_s``."""
    _rtt_at: Optional[float] = None
    """When the last report with a round trip came (a report that echoes no Sender Report
    has none, and must not keep older rises alive)."""
    share: float = 1.0
    """The agent's share of the site's uplink, as the SFU last said (``site_share``)."""
    _first_step: Optional[float] = None
    _grow_after: float = float("-inf")
    """No growth before this: the budget was just cut to make room for the nurse's camera."""
    _lags: deque[tuple[float, float]] = field(default_factory=deque)
    """(when, how late) of the agent's own event loop's stalls within ``own_lag_s``."""

    def __post_init__(self) -> None:
        self._probe_interval_s = self.policy.probe_interval_s
        self._current = self.tracks
        self._ceiling = self.policy.start_kbps
        if self.viewed is None:
            self.viewed = next((t.device for t in self.tracks if t.kind == "video"), None)

    def in_congestion(self, now: float) -> bool:
        """Congestion was seen within ``congestion_hold_s``: what is reduced is reduced by the link
        (not by the start's ramp, which the physician's page must not call a weak network)."""
        return now < self._congested_until

    def view(self, device: Optional[str]) -> bool:
        """The physician views ``device`` (True when that changes anything)."""
        if device not in {t.device for t in self.tracks if t.kind == "video"} or device == self.viewed:
            return False
        self.viewed = device
        return True

    def estimate(self, device: str, kbps: float, now: float) -> None:
        """A REMB for ``device``'s session."""
        self._estimates[device] = _Estimate(max(0.0, kbps), now)

    def site_share(self, now: float, share: float) -> None:
        """The SFU says what share of the site's uplink is the agent's: less than all of it
        while the nurse's camera publishes (the SFU holds the camera to the rest). A smaller
        share cuts the budget at once to that share of the site's estimate (of the ceiling
        without one), and it stays there ``congestion_hold_s``: the camera's first packets are
        on their way, and the estimators see the shared link only once they meet ours in its
        queue; an overflow then costs the device being examined a keyframe or more. A larger
        share (the camera stopped) only lets the budget grow again."""
        share = min(1.0, max(0.0, share))
        if share < self.share:
            base = self.budget(now)
            if base is None:
                base = self._ceiling if self._ceiling is not None else sum(t.max_kbps for t in self._current)
            cut = base * share
            self._ceiling = cut if self._ceiling is None else min(self._ceiling, cut)
            self._ceiling_at = now
            self._grow_after = now + self.policy.congestion_hold_s
        else:
            self._grow_after = float("-inf")
        self.share = share

    def budget(self, now: float) -> Optional[float]:
        """The site's estimate: the sum of the sessions' fresh REMBs (a paused session's last
        one too, until it is stale: the capacity it measured is the site's, which the
        sessions still sending have not yet grown into), None when there is none."""
        fresh = {d: e for d, e in self._estimates.items() if now - e.at <= self.policy.estimate_ttl_s}
        if not fresh:
            return None
        total = sum(e.kbps for e in fresh.values())
        for track in self._current:
            if track.kind == "audio" and track.device not in fresh:
                # The SFU sends REMB for video only: the stethoscope's share is what it sends.
                total += track.max_kbps
        return total

    def congested(self, now: float, sent_kbps: Mapping[str, float]) -> bool:
        """Some session sends more than its fresh REMB allows (an estimator lowers its REMB
        under what arrives when it sees a queue). A REMB well above what a session sends is
        only a ceiling (aiortc's estimator says at most 1.5 times what arrives): a still scene
        that its encoder sends at a fraction of its target is no sign of a weak link."""
        for device, est in self._estimates.items():
            sent = sent_kbps.get(device, 0.0)
            if now - est.at <= self.policy.estimate_ttl_s and sent > 0 and est.kbps < self.policy.congested_ratio * sent:
                return True
        return False

    def loop_lag(self, now: float, lag_s: float) -> None:
        """The agent's own event loop woke ``lag_s`` late just before ``now``: a CPU burst in
        its process (a full-resolution still encoded, a keyframe), during which nothing it
        sends leaves and nothing it receives is read. What spans that stall measures the
        agent, not the link (as a sender-side estimator ignores its own send gaps)."""
        if lag_s > 0:
            self._lags.append((now, lag_s))
        while self._lags and now - self._lags[0][0] > self.policy.own_lag_s:
            self._lags.popleft()

    def own_delay(self, now: float) -> float:
        """How much of a round trip measured now may be the agent's own stalls: twice the
        longest within ``own_lag_s`` (a report's Sender Report waits out a stall on its way
        out or, with the SFU in the same process, in, and the report on its way back)."""
        return 2 * max((lag for at, lag in self._lags if now - at <= self.policy.own_lag_s), default=0.0)

    def audio_report(self, now: float, rtt_s: Optional[float], loss_fraction: Optional[float]) -> None:
        """The stethoscope session's latest receiver report from the SFU: its round-trip time
        and the fraction of its packets lost since the report before. The round trip is
        judged less the agent's own stalls (``own_delay``): a stall is no queue."""
        if rtt_s is not None:
            # The least seen stays a plain minimum: a stall only adds to a round trip.
            self._rtt_base = rtt_s if self._rtt_base is None else min(self._rtt_base, rtt_s)
            risen = rtt_s - self.own_delay(now) - self._rtt_base > self.policy.rtt_rise_s
            self._rtt_rises = self._rtt_rises + 1 if risen else 0
            self._rtt_at = now
        self._loss_before = self._loss if loss_fraction is not None else None
        self._loss, self._report_at = loss_fraction, now
        if self._audio_distressed(now):
            self._distress_at = now

    def _audio_distressed(self, now: float) -> bool:
        """The stethoscope's own path shows the queue: its round trip grew past
        ``rtt_rise_s`` over the least seen, or it lost ``distress_loss`` of its packets (in
        its last two reports, or twice that in one). Without a stethoscope the REMB alone
        decides; without a report yet, no."""
        if not any(t.kind == "audio" for t in self.tracks):
            return True
        if self._report_at is None or now - self._report_at > self.policy.report_ttl_s:
            return False
        rising = (self._rtt_rises >= self.policy.rtt_rise_reports and self._rtt_at is not None
                  and now - self._rtt_at <= self.policy.report_ttl_s)
        return rising or self._lossy()

    def _lossy(self) -> bool:
        limit = self.policy.distress_loss
        if self._loss is None:
            return False
        if self._loss >= 2 * limit:
            return True
        return self._loss >= limit and self._loss_before is not None and self._loss_before >= limit

    def _link_known(self) -> bool:
        """The link has shown where it ends: congestion was seen on it, or the nurse's camera
        shares it. (Before, an estimate under what is sent is the estimator's own start: aiortc's
        climbs 8 % a second from what first arrived, seconds behind a link with room.)"""
        return self._congested_until > float("-inf") or self.share < 1.0

    def _need(self) -> float:
        audio = sum(t.max_kbps for t in self._current if t.kind == "audio")
        has_video = any(t.kind == "video" for t in self.tracks)
        return audio + (self.policy.viewed_min_kbps if has_video else 0.0)

    def step(self, now: float, sent_kbps: Mapping[str, float]) -> Allocation:
        policy = self.policy
        if self._first_step is None:
            self._first_step = now
        # Audio counts at what it sends when that is more than its nominal rate (RED doubles it).
        self._current = tuple(replace(t, min_kbps=max(t.min_kbps, sent_kbps.get(t.device, 0.0)),
                                      max_kbps=max(t.max_kbps, sent_kbps.get(t.device, 0.0)))
                              if t.kind == "audio" else t for t in self.tracks)
        raw = self.budget(now)
        if self.congested(now, sent_kbps) and self._audio_distressed(now):
            self._congested_until = now + policy.congestion_hold_s
        congested = now < self._congested_until
        if congested and raw is not None:
            self._ceiling, self._ceiling_at = raw * policy.utilization, now
        elif (self._ceiling is not None and not congested and now - self._ceiling_at >= policy.step_every_s
              and now >= self._grow_after and (raw is not None or now - self._first_step >= policy.estimate_wait_s)):
            # No congestion lately: try a little more, as far as the estimators have followed
            # (each sees its own queue and says at most 1.5 times what arrives): a ceiling far
            # above them is a probe of the link by every encoder at once, whose overflow only the
            # stethoscope's reports would tell, a second or more later.
            grown = self._ceiling * policy.step_up
            if self._link_known() and raw is not None and raw < policy.estimate_free_ratio * sum(sent_kbps.values()):
                grown = max(self._ceiling, min(grown, raw))
            self._ceiling, self._ceiling_at = grown, now
            if self._ceiling >= sum(t.max_kbps for t in self._current):
                self._ceiling = None
        usable = self._ceiling
        need = self._need()
        has_video = any(t.kind == "video" for t in self.tracks)
        entered_normal = False
        if self.mode is Mode.NORMAL:
            # Pausing every video takes the stethoscope hurting now, not only the latch.
            if has_video and usable is not None and usable < need and congested and self._audio_distressed(now):
                if self._low_since is None:
                    self._low_since = now
                if now - self._low_since >= policy.hold_s:
                    self._enter(Mode.AUDIO_ONLY, now)
                    if self._normal_since is not None and now - self._normal_since < 10 * policy.probe_interval_s:
                        self._probe_interval_s = min(policy.probe_interval_max_s, self._probe_interval_s * 2)
            else:
                self._low_since = None
                if self._normal_since is not None and now - self._normal_since >= 10 * policy.probe_interval_s:
                    self._probe_interval_s = policy.probe_interval_s
        elif self.mode is Mode.AUDIO_ONLY:
            if now - self._mode_since >= self._probe_interval_s:
                self._enter(Mode.PROBING, now)
                # Estimates from before the probe describe the audio alone.
                self._estimates = {d: e for d, e in self._estimates.items() if d == STETHOSCOPE.device}
        elif self.mode is Mode.PROBING and now - self._mode_since >= policy.probe_s:
            quiet = (self._report_at is not None and self._report_at > self._mode_since
                     and self._distress_at < self._mode_since and any(t.kind == "audio" for t in self.tracks))
            if quiet or (raw is not None and raw >= need * policy.resume_factor):
                self._enter(Mode.NORMAL, now)
                entered_normal = True
                self._normal_since = now
                self._low_since = None
            else:
                self._enter(Mode.AUDIO_ONLY, now)
                self._probe_interval_s = min(policy.probe_interval_max_s, self._probe_interval_s * 2)
        if entered_normal:
            # The probe found the link back: start from what it showed, at least the need.
            self._congested_until = float("-inf")
            self._ceiling = max(need, 0.0 if raw is None else raw * policy.utilization)
            self._ceiling_at = now
            usable = self._ceiling
        return Allocation(self.mode, usable, tuple(self._targets(usable)))

    def _enter(self, mode: Mode, now: float) -> None:
        self.mode = mode
        self._mode_since = now

    def _targets(self, usable: Optional[float]) -> list[TrackTarget]:
        if self.mode is Mode.NORMAL:
            return allocate(usable, self._current, self.viewed, viewed_min_kbps=self.policy.viewed_min_kbps,
                            keep_viewed=True)
        out = []
        for t in self._current:
            if t.kind == "audio":
                out.append(TrackTarget(t.device, t.kind, t.max_kbps, False, Reason.FULL))
            elif self.mode is Mode.PROBING and t.device == self.viewed:
                out.append(TrackTarget(t.device, t.kind, self.policy.viewed_min_kbps, False, Reason.PROBE))
            else:
                out.append(TrackTarget(t.device, t.kind, 0.0, True, Reason.AUDIO_ONLY))
        return out
