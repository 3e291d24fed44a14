"""The agent's WHIP sessions as one uplink: their REMBs make one budget, the budget sets each
device's encoder, a pacer spaces what they send.

:class:`SiteUplink` is the I/O half of :mod:`devices.uplink` (the allocator) and
:mod:`devices.pacing` (the pacer). Each WHIP session attaches its sender once its answer is
applied (:meth:`SiteUplink.attach`): from then on

* a REMB for it goes to the allocator instead of its encoder
  (:func:`media.aiortc_internals.intercept_remb`);
* the stethoscope's receiver reports (the round trip of each, the loss: the allocator's
  sign that its share is at risk) go to the allocator
  (:func:`~media.aiortc_internals.watch_receiver_reports`);
* its own event loop's stalls (a CPU burst in the agent: a full-resolution still encoded)
  are measured every ``LAG_PROBE_S`` and go to the allocator, which does not read what
  they delayed as a queue on the link (:meth:`~devices.uplink.UplinkController.loop_lag`);
  what each session sent is measured across a stall, not in the ticks it split;
* every ``tick_s`` the allocator runs; each video encoder gets its target
  (:func:`~media.aiortc_internals.set_encoder_bitrate`: moved by more than 20 % only, raised
  at most every 4 s, because aiortc re-creates the VP8 codec, a keyframe, on each change over
  10 %) or is paused (:func:`~media.aiortc_internals.set_sender_paused`);
* its RTP goes through one site pacer at ``pacing_factor`` times the allocated rate
  (:func:`~media.aiortc_internals.pace_sent_rtp`), its abs-send-time written again when it
  really leaves (the SFU's estimator would read the wait as a queue);
* when what the physician should know changes (the mode, a track paused or resumed, a
  target moved by more than 15 %), ``on_change`` gets the ``uplink`` message
  (devices/agent_messages.py) to send on the room channel.

Lifecycle: new → started (``start()``: the tick, pacer and lag tasks) → closed (``close()``,
idempotent; sessions' senders are left as they are: their peer connections are closing).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional, Sequence

from aiortc import RTCRtpSender

from media.aiortc_internals import (PacedSend, intercept_remb, ntp_now, pace_sent_rtp, sender_abs_send_time_id,
                                    set_encoder_bitrate, set_sender_paused, watch_receiver_reports)
from media.eager import run_now

from .agent_messages import uplink_message
from .pacing import PacketQueue, Priority, restamp_abs_send_time
from .uplink import Allocation, TrackSpec, UplinkController, UplinkPolicy, default_spec

logger = logging.getLogger(__name__)

DSCP_EF = 46
"""Expedited forwarding: the stethoscope (RFC 4594's telephony class)."""
DSCP_AF41 = 34
"""Assured forwarding 4/1: interactive video (RFC 4594)."""
ENCODER_SHARE = 0.9
"""Of a video's target (RTP packets), what its encoder aims at: the rest is headers."""
TICK_S = 0.5
PACING_FACTOR = 2.0
RAISE_EVERY_S = 4.0
MIN_CHANGE = 0.2
"""aiortc re-creates the VP8 codec on a change of its target over 10 %, and the new codec's
first frame is a keyframe (tens of kilobytes on a thin link): the target moves only by more
than this, and goes up at most every ``RAISE_EVERY_S``."""
NOTIFY_CHANGE = 0.15
LAG_PROBE_S = 0.02
"""How often the agent's loop checks how late it wakes: a stall of the loop (nothing runs
while one callback or the GIL holds it) shows as a late wake-up, within this much."""
LAG_FLOOR_S = 0.005
"""Lateness under this is ordinary scheduling, not told to the allocator."""
RATE_STALL_S = 0.05
"""A tick window in which the loop stalled this long is no measure of what a session sends:
nothing left during the stall and the backlog leaves in the next window (a rate twice or
three times the real one, which a REMB's 1.15 headroom reads as a link that cannot carry it).
Such a window is measured together with the next."""
RATE_WINDOW_MAX_S = 2.0
"""...but a rate is measured at least this often, stalls or not."""


def tos_for(kind: str) -> int:
    """The IP TOS byte of a session sending ``kind`` (DSCP in its upper six bits)."""
    return (DSCP_EF if kind == "audio" else DSCP_AF41) << 2


@dataclass
class _Session:
    spec: TrackSpec
    sender: RTCRtpSender
    sent_bytes: int = 0
    """Since the last tick."""
    sent_kbps: float = 0.0
    applied_bps: Optional[int] = None
    paused: bool = False
    raised_at: float = float("-inf")
    remb_count: int = 0
    abs_send_time_id: Optional[int] = None


@dataclass
class SiteUplink:
    devices: Sequence[str]
    on_change: Callable[[dict[str, Any]], None]
    policy: UplinkPolicy = field(default_factory=UplinkPolicy)
    tick_s: float = TICK_S
    pacing_factor: float = PACING_FACTOR
    clock: Callable[[], float] = time.monotonic
    controller: UplinkController = field(init=False)
    queue: PacketQueue[tuple[_Session, bytes, PacedSend]] = field(init=False)
    allocation: Optional[Allocation] = None
    _sessions: dict[str, _Session] = field(default_factory=dict)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _sends: set[asyncio.Task[None]] = field(default_factory=set)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _notified: Optional[Allocation] = None
    _closed: bool = False
    _last_tick: Optional[float] = None
    _lag_since_tick: float = 0.0
    """The longest stall of the loop since what the sessions sent was last measured."""

    def __post_init__(self) -> None:
        tracks = tuple(default_spec(d) for d in self.devices)
        if self.policy.start_kbps is None:
            # Start at the stethoscope and one device at full rate (see UplinkPolicy.start_kbps).
            first_video = max((t.max_kbps for t in tracks if t.kind == "video"), default=0.0)
            start = sum(t.max_kbps for t in tracks if t.kind == "audio") + first_video
            self.policy = replace(self.policy, start_kbps=start)
        self.controller = UplinkController(tracks, self.policy)
        self.queue = PacketQueue()
        self._set_pacing_rate()

    # -- life ------------------------------------------------------------------------
    def start(self) -> None:
        if not self._tasks and not self._closed:
            self._tasks = [asyncio.create_task(self._tick_loop(), name="uplink-tick"),
                           asyncio.create_task(self._pace_loop(), name="uplink-pacer"),
                           asyncio.create_task(self._lag_loop(), name="uplink-lag")]

    async def close(self) -> None:
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self._sessions.clear()

    # -- sessions ----------------------------------------------------------------------
    def attach(self, device: str, sender: RTCRtpSender) -> None:
        """``device``'s WHIP session sends with ``sender`` (answer applied: its transport is final)."""
        spec = next((t for t in self.controller.tracks if t.device == device), None)
        if spec is None or self._closed:
            return
        session = _Session(spec, sender)
        self._sessions[device] = session
        intercept_remb(sender, lambda bps: self._remb(session, bps))
        if spec.kind == "audio":
            watch_receiver_reports(sender, lambda rtt, loss: self.controller.audio_report(self.clock(), rtt, loss))
        pace_sent_rtp(sender.transport, sender, lambda data, rtx, send: self._enqueue(session, data, rtx, send))
        if self.allocation is not None:
            self._apply_one(session, self.allocation, self.clock())

    def detach(self, device: str, sender: RTCRtpSender) -> None:
        session = self._sessions.get(device)
        if session is not None and session.sender is sender:
            del self._sessions[device]

    def view(self, device: str) -> None:
        """The physician looks at ``device``: it gets the video budget first."""
        if self.controller.view(device):
            logger.info("uplink: the physician views %s", device)
            self._update(self.clock())

    def site_share(self, share: float) -> None:
        """The SFU's ``site_share``: the agent's share of the site's uplink (the nurse's camera
        publishes, or stopped)."""
        logger.info("uplink: site share %s", share)
        self.controller.site_share(self.clock(), share)
        self._update(self.clock())

    def message(self) -> Optional[dict[str, Any]]:
        """The ``uplink`` message for the current allocation (None before the first tick)."""
        if self.allocation is None:
            return None
        return uplink_message(self.allocation, self.controller.viewed, self.controller.in_congestion(self.clock()))

    @property
    def dropped_retransmissions(self) -> int:
        return self.queue.dropped_retransmissions

    # -- estimates and ticks -------------------------------------------------------------
    def _remb(self, session: _Session, bits_per_s: int) -> None:
        session.remb_count += 1
        self.controller.estimate(session.spec.device, bits_per_s / 1000.0, self.clock())

    async def _tick_loop(self) -> None:
        while True:
            try:
                self._update(self.clock())
            except Exception:  # noqa: BLE001 - one bad tick must not leave the encoders where they are for good
                logger.exception("uplink tick failed")
            before = self.clock()
            await asyncio.sleep(self.tick_s)
            # A tick that wakes late closes a window the loop stalled in, whichever task
            # the loop runs first after the stall.
            late = self.clock() - before - self.tick_s
            if late > LAG_FLOOR_S:
                self.lagged(self.clock(), late)

    def lagged(self, now: float, lag_s: float) -> None:
        """The agent's event loop woke ``lag_s`` late just before ``now``."""
        self._lag_since_tick = max(self._lag_since_tick, lag_s)
        self.controller.loop_lag(now, lag_s)

    async def _lag_loop(self) -> None:
        while True:
            before = self.clock()
            await asyncio.sleep(LAG_PROBE_S)
            now = self.clock()
            lag = now - before - LAG_PROBE_S
            if lag > LAG_FLOOR_S:
                self.lagged(now, lag)

    def _measure_sent(self, now: float) -> None:
        """Each session's sent rate since the last measure (two windows' smoothing: a frame's
        burst lands in one tick). A window the loop stalled in waits for the next one, which
        carries what the stall held back; so does one shorter than half a tick (an update
        for ``view`` just after a tick: one frame's burst over 10 ms is no rate)."""
        if self._last_tick is None or now <= self._last_tick:
            self._last_tick = now
            return
        elapsed = now - self._last_tick
        if elapsed < self.tick_s / 2:
            return
        if self._lag_since_tick >= RATE_STALL_S and elapsed < RATE_WINDOW_MAX_S:
            self._lag_since_tick = 0.0
            return
        for session in self._sessions.values():
            rate = session.sent_bytes * 8 / 1000.0 / elapsed
            session.sent_kbps = 0.5 * session.sent_kbps + 0.5 * rate
            session.sent_bytes = 0
        self._last_tick = now
        self._lag_since_tick = 0.0

    def _update(self, now: float) -> None:
        self._measure_sent(now)
        before = self.allocation
        allocation = self.controller.step(now, {d: s.sent_kbps for d, s in self._sessions.items()})
        self.allocation = allocation
        if before is None or before.mode is not allocation.mode:
            logger.info("uplink: %s", allocation.mode.value,
                        extra={"budget_kbps": None if allocation.budget_kbps is None else round(allocation.budget_kbps)})
        for session in self._sessions.values():
            self._apply_one(session, allocation, now)
        self._set_pacing_rate()
        if self._worth_telling(allocation):
            self._notified = allocation
            message = self.message()
            if message is not None:
                self.on_change(message)

    def _apply_one(self, session: _Session, allocation: Allocation, now: float) -> None:
        if session.spec.kind != "video":
            return
        target = allocation.target(session.spec.device)
        if target is None:
            return
        if target.paused != session.paused:
            set_sender_paused(session.sender, target.paused)
            session.paused = target.paused
        if target.paused:
            return
        bps = int(target.target_kbps * 1000 * ENCODER_SHARE)
        applied = session.applied_bps
        if applied is not None:
            if abs(bps - applied) <= MIN_CHANGE * applied:
                return
            if bps > applied and now - session.raised_at < RAISE_EVERY_S:
                return
        if set_encoder_bitrate(session.sender, bps):
            if applied is None or bps > applied:
                session.raised_at = now
            session.applied_bps = bps

    def _worth_telling(self, allocation: Allocation) -> bool:
        before = self._notified
        if before is None or before.mode is not allocation.mode or len(before.targets) != len(allocation.targets):
            return True
        for old, new in zip(before.targets, allocation.targets):
            if old.paused != new.paused or old.reason is not new.reason:
                return True
            if abs(new.target_kbps - old.target_kbps) > NOTIFY_CHANGE * max(old.target_kbps, 1.0):
                return True
        return False

    # -- pacing ------------------------------------------------------------------------
    def _set_pacing_rate(self) -> None:
        allocation = self.allocation
        if allocation is None:
            kbps = sum(t.max_kbps for t in self.controller.tracks)
        else:
            kbps = sum(t.target_kbps for t in allocation.targets)
        self.queue.set_rate(kbps * self.pacing_factor * 1000 / 8)

    def _enqueue(self, session: _Session, data: bytes, retransmission: bool, send: PacedSend) -> None:
        if session.spec.kind == "audio":
            priority = Priority.AUDIO
        else:
            priority = Priority.RETRANSMISSION if retransmission else Priority.VIDEO
        self._release(self.queue.push((session, data, send), len(data), priority, self.clock()))
        if len(self.queue):
            self._wake.set()

    def _release(self, items: list[tuple[_Session, bytes, PacedSend]]) -> None:
        stamp: Optional[int] = None
        for session, data, send in items:
            session.sent_bytes += len(data)
            if session.spec.kind != "audio":
                if session.abs_send_time_id is None:
                    session.abs_send_time_id = sender_abs_send_time_id(session.sender)
                if session.abs_send_time_id is not None:
                    if stamp is None:
                        stamp = (ntp_now() >> 14) & 0xFFFFFF
                    data = restamp_abs_send_time(data, session.abs_send_time_id, stamp)
            run_now(_send(send, data), self._sends)

    async def _pace_loop(self) -> None:
        while True:
            delay = self.queue.next_due(self.clock())
            if delay is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            await asyncio.sleep(max(delay, 0.002))
            self._release(self.queue.pop_due(self.clock()))


async def _send(send: PacedSend, data: bytes) -> None:
    try:
        await send(data)
    except ConnectionError:
        pass  # the session closed while its packet waited
