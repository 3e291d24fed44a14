"""Bounded NACK: which lost packets of one publisher's stream the SFU asks for, and when.

aiortc's ``NackGenerator`` re-sent its whole list (up to 128 sequence numbers) on every
new gap, forever, and the publisher resent all of it unpaced: on a congested uplink that
was ~9 Mbit/s of retransmissions offered into 1 Mbit/s (issue 13). Here each missing
packet is a row of a small table, asked for a bounded number of times and only while a
retransmission can still be useful:

==============  ================================  =====================================
event           condition                         effect on the row of ``seq``
==============  ================================  =====================================
gap seen        ``seq`` skipped by a newer one    new row: first missed now, tries 0
packet arrives  row exists                        row removed (repaired); when it was
                                                  asked for exactly once, ``now - asked``
                                                  is a round-trip sample (Karn's rule)
:meth:`due`     tries 0, or ``now - asked`` >=    asked now: tries + 1 (returned, within
                the retry interval                the allowance)
:meth:`due`     tries == ``max_retries`` and one   row removed, ``gave_up`` + 1
                retry interval since, or
                ``now - missed`` > ``max_age_ms``
table full      more than ``max_tracked`` rows    the oldest rows removed, ``gave_up``
==============  ================================  =====================================

The retry interval is the round-trip time (smoothed from the samples above, clamped to
[``MIN_RTT_MS``, ``MAX_RTT_MS``], ``DEFAULT_RTT_MS`` until the first one): asking again
sooner would only ask for a retransmission already on its way.

Sans-I/O: the caller gives the time (ms, any monotonic clock) and sends what :meth:`due`
returns. One requester per media SSRC; :meth:`reset` when the SSRC changes.
"""

from __future__ import annotations

from dataclasses import dataclass

from sfu.rtp import SEQ_MOD, seq_newer

DEFAULT_RTT_MS = 100.0
"""Round trip assumed until one is measured (libwebrtc's ``kDefaultRtt``)."""
MIN_RTT_MS = 10.0
MAX_RTT_MS = 1000.0
CHECK_INTERVAL_MS = 5.0
"""Rows waiting for a retry are looked at this often at most (on packet arrival)."""
RTT_ALPHA = 0.85
"""Weight of the smoothed round trip against a new sample (aiortc's sender uses the same)."""


@dataclass(frozen=True)
class NackPolicy:
    max_retries: int = 3
    """Times one lost packet is asked for."""
    max_age_ms: float = 1000.0
    """A packet missing for longer is no longer asked for (too late to be played)."""
    max_tracked: int = 256
    """Missing packets remembered at once (a larger gap: the oldest are given up)."""
    max_per_nack: int = 64
    """Sequence numbers one call to :meth:`NackRequester.due` returns at most."""


class _Row:
    __slots__ = ("missed_ms", "tries", "asked_ms")

    def __init__(self, missed_ms: float) -> None:
        self.missed_ms = missed_ms
        self.tries = 0
        self.asked_ms = 0.0


class NackRequester:
    """The missing packets of one media SSRC and when to ask for each (the table above)."""

    def __init__(self, policy: NackPolicy) -> None:
        self.policy = policy
        self.highest: int | None = None
        self._missing: dict[int, _Row] = {}
        """seq -> row, oldest gap first (insertion order)."""
        self.rtt_ms: float | None = None
        """Smoothed round trip (NACK sent -> retransmission received); None until sampled."""
        self.asked = 0
        """Sequence numbers asked for so far (each try counts)."""
        self.gave_up = 0
        """Missing packets no longer asked for (retries or age exhausted, table full)."""
        self.repaired = 0
        """Missing packets that arrived after all."""
        self._reported_gave_up = 0
        self._fresh_gap = False
        self._checked_ms = 0.0

    def pop_given_up(self) -> int:
        """``gave_up`` since the last call (for a counter shared with other requesters)."""
        count, self._reported_gave_up = self.gave_up - self._reported_gave_up, self.gave_up
        return count

    def wants_check(self, now_ms: float) -> bool:
        """Whether :meth:`due` may have something now: a new gap at once, else rows waiting,
        looked at every :data:`CHECK_INTERVAL_MS` (not on every packet)."""
        if not self._missing:
            return False
        return self._fresh_gap or now_ms - self._checked_ms >= CHECK_INTERVAL_MS

    @property
    def missing(self) -> list[int]:
        return list(self._missing)

    def retry_interval_ms(self) -> float:
        rtt = DEFAULT_RTT_MS if self.rtt_ms is None else self.rtt_ms
        return min(MAX_RTT_MS, max(MIN_RTT_MS, rtt))

    def reset(self) -> None:
        """A new source (SSRC): its numbering is no gap; forget everything but the counters."""
        self.highest = None
        self._missing.clear()

    def received(self, seq: int, now_ms: float) -> None:
        """A packet of this stream arrived (directly, or unwrapped from RTX)."""
        highest = self.highest
        if highest is None:
            self.highest = seq
            return
        if seq_newer(seq, highest):
            gap = (seq - highest - 1) % SEQ_MOD
            if gap:
                first = (seq - min(gap, self.policy.max_tracked)) % SEQ_MOD
                self.gave_up += gap - min(gap, self.policy.max_tracked)
                missing = self._missing
                s = first
                while s != seq:
                    missing[s] = _Row(now_ms)
                    s = (s + 1) % SEQ_MOD
                self._trim()
                self._fresh_gap = True
            self.highest = seq
            return
        row = self._missing.pop(seq, None)
        if row is None:
            return
        self.repaired += 1
        if row.tries == 1:
            sample = now_ms - row.asked_ms
            if sample >= 0:
                self.rtt_ms = sample if self.rtt_ms is None else RTT_ALPHA * self.rtt_ms + (1 - RTT_ALPHA) * sample

    def _trim(self) -> None:
        missing = self._missing
        while len(missing) > self.policy.max_tracked:
            del missing[next(iter(missing))]
            self.gave_up += 1

    def due(self, now_ms: float, allowance: int | None = None) -> list[int]:
        """Sequence numbers to ask for now (each counted as one try), oldest first, at most
        ``allowance`` (None: the policy's ``max_per_nack``); rows past their retries or age
        are dropped here."""
        self._fresh_gap = False
        self._checked_ms = now_ms
        if not self._missing:
            return []
        policy = self.policy
        limit = policy.max_per_nack if allowance is None else min(allowance, policy.max_per_nack)
        interval = self.retry_interval_ms()
        out: list[int] = []
        expired: list[int] = []
        for seq, row in self._missing.items():
            if now_ms - row.missed_ms > policy.max_age_ms or (
                    row.tries >= policy.max_retries and now_ms - row.asked_ms >= interval):
                expired.append(seq)
                continue
            if row.tries >= policy.max_retries:
                continue  # the last answer may still be on its way
            if len(out) >= limit:
                continue
            if row.tries and now_ms - row.asked_ms < interval:
                continue
            row.tries += 1
            row.asked_ms = now_ms
            out.append(seq)
        for seq in expired:
            del self._missing[seq]
        self.gave_up += len(expired)
        self.asked += len(out)
        return out
