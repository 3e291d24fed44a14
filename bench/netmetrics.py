"""The network bench's figures from what its probe recorded (:mod:`bench.netprobe`). Pure.

Packets are ``[arrival s, seq, ts, marker, frame start, keyframe, RED offsets or None, rtx,
padding only]`` (the last may be missing: not padding)
(arrival on ``time.monotonic()``, the clock every namespace of the machine shares).

* **Stethoscope loss** (:func:`audio_figures`): sequence numbers expected (first to last
  received, unwrapped) minus those received; a missing packet counts as recovered when a
  RED packet received carries a redundant block of its timestamp (the missing packet's
  timestamp interpolated between its received neighbours). Opus in-band FEC is not
  counted (the stethoscope's 128 kbit/s stereo Opus runs CELT-only, which has none).
* **Longest gap**: the longest run of unrecovered packets, as media time.
* **One-way delay**: from the RTP timestamp (``arrival - ts / clock``), relative to the
  smallest such offset over the first 3 s of the window (the least delayed packets then
  stand for "no queue"). The header extensions (abs-send-time) are rewritten per leg by
  the SFU, so the timestamp, which it shifts by a constant, is the honest clock.
* **Decodable video frames** (:func:`video_figures`): a frame (packets of one timestamp) is
  complete when its first packet (VP8 descriptor S=1, partition 0), its marker packet and
  every sequence number between arrived; it is decodable when complete and either a
  keyframe or the next frame after a decodable one (no frame missing between). No decoder
  runs: this is the VP8 reference chain without golden/altref recovery (what aiortc's
  encoder produces).
* **Freeze**: an interval between two decodable frames (or the window's edges) longer than
  ``max(3 x frame interval, frame interval + 150 ms)``, the frame interval being the
  median RTP timestamp step of the frames received (the sender's rate); the share of the
  window spent in such intervals.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Sequence

SEQ_MOD = 1 << 16
TS_MOD = 1 << 32
BASELINE_S = 3.0
"""Delay baseline: the least delayed stethoscope packet of the window's first seconds."""
GROWTH_SPAN_S = 5.0
AUDIO_ONLY_GAP_S = 2.0
"""No video packet at all for this long while audio flows: the agent went audio-only."""


def unwrap(values: Sequence[int], modulo: int) -> list[int]:
    """Values of a wrapping counter, in arrival order, unwrapped: each one is taken as the
    nearest value (half-range rule) to the one before it."""
    out: list[int] = []
    for v in values:
        if not out:
            out.append(v)
            continue
        delta = (v - out[-1]) % modulo
        if delta >= modulo // 2:
            delta -= modulo
        out.append(out[-1] + delta)
    return out


def percentile(values: Sequence[float], q: float) -> float | None:
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


@dataclass
class AudioFigures:
    loss_pct: float | None
    recovered: int
    lost: int
    expected: int
    longest_gap_ms: float | None
    delay_ms_p95: float | None
    delay_growth_ms: float | None
    delays: list[tuple[float, float]]
    """(arrival, delay ms) of each packet, first arrival of each sequence number."""


def audio_figures(packets: list[list[Any]], clock_rate: int, window: tuple[float, float]) -> AudioFigures:
    if not packets:
        return AudioFigures(None, 0, 0, 0, None, None, None, [])
    seqs = unwrap([p[1] for p in packets], SEQ_MOD)
    tss = unwrap([p[2] for p in packets], TS_MOD)
    first: dict[int, tuple[float, int]] = {}
    red_ts: set[int] = set()
    fillers: set[int] = set()
    for p, seq, ts in zip(packets, seqs, tss):
        if _padding(p):
            fillers.add(seq)
            continue
        if seq not in first:
            first[seq] = (p[0], ts)
        for offset in p[6] or ():
            red_ts.add(ts - offset)
    ordered = sorted(first)
    lo, hi = ordered[0], ordered[-1]
    expected = hi - lo + 1
    steps = [(first[b][1] - first[a][1]) / (b - a) for a, b in zip(ordered, ordered[1:]) if b > a]
    step: float = statistics.median(steps) if steps else clock_rate / 50
    lost = recovered = 0
    run = longest = 0
    for a, b in zip(ordered, ordered[1:]):
        for missing in range(a + 1, b):
            if missing in fillers:
                continue
            lost += 1
            est = first[a][1] + (first[b][1] - first[a][1]) * (missing - a) / (b - a)
            if any(abs(est - r) <= step / 2 for r in _near(red_ts, est, step)):
                recovered += 1
                longest = max(longest, run)
                run = 0
            else:
                run += 1
        longest = max(longest, run)
        run = 0
    expected -= len(fillers & set(range(lo, hi + 1)))
    unrecovered = lost - recovered
    offsets = [(first[s][0], first[s][0] - first[s][1] / clock_rate) for s in ordered]
    start = window[0]
    early = [o for t, o in offsets if t <= start + BASELINE_S] or [o for _, o in offsets[:50]]
    base = min(early)
    delays = [(t, (o - base) * 1000) for t, o in offsets]
    head = [d for t, d in delays if t <= start + GROWTH_SPAN_S]
    tail = [d for t, d in delays if t >= window[1] - GROWTH_SPAN_S]
    growth = statistics.median(tail) - statistics.median(head) if head and tail else None
    return AudioFigures(
        loss_pct=100 * unrecovered / expected, recovered=recovered, lost=lost, expected=expected,
        longest_gap_ms=longest * step / clock_rate * 1000,
        delay_ms_p95=percentile([d for _, d in delays], 95), delay_growth_ms=growth, delays=delays)


def _padding(packet: list[Any]) -> bool:
    return len(packet) > 8 and bool(packet[8])


def _near(red_ts: set[int], ts: float, step: float) -> list[int]:
    centre = int(round(ts))
    span = int(step // 2) + 1
    if len(red_ts) < 4 * span:
        return [r for r in red_ts if abs(r - centre) <= span]
    return [r for r in range(centre - span, centre + span + 1) if r in red_ts]


@dataclass
class Frame:
    ts: int
    seqs: set[int]
    start: int | None
    end: int | None
    key: bool
    last_arrival: float


@dataclass
class VideoFigures:
    fps: float
    freeze_pct: float
    frame_interval_s: float | None
    decodable_at: list[float]
    frames_seen: int


def padding_seqs(packets: list[list[Any]]) -> set[int]:
    """The (unwrapped, as :func:`frames_of` unwraps them) sequence numbers of padding-only packets."""
    seqs = unwrap([p[1] for p in packets], SEQ_MOD)
    return {seq for p, seq in zip(packets, seqs) if _padding(p)}


def frames_of(packets: list[list[Any]], start_flags: bool) -> list[Frame]:
    """Frames by timestamp, in timestamp order (sequence numbers and timestamps unwrapped);
    padding-only packets belong to no frame."""
    if not packets:
        return []
    seqs = unwrap([p[1] for p in packets], SEQ_MOD)
    tss = unwrap([p[2] for p in packets], TS_MOD)
    frames: dict[int, Frame] = {}
    for p, seq, ts in zip(packets, seqs, tss):
        if _padding(p):
            continue
        frame = frames.get(ts)
        if frame is None:
            frame = frames[ts] = Frame(ts, set(), None, None, False, p[0])
        frame.seqs.add(seq)
        frame.last_arrival = max(frame.last_arrival, p[0])
        if p[4] or p[5]:
            frame.start = seq if frame.start is None else min(frame.start, seq)
        if p[5]:
            frame.key = True
        if p[3]:
            frame.end = seq
    out = sorted(frames.values(), key=lambda f: f.ts)
    if not start_flags:  # no start flag in the payload: the packet after the previous marker
        ends = {f.end for f in out if f.end is not None}
        for f in out:
            low = min(f.seqs)
            if f.start is None and (low - 1) in ends:
                f.start = low
    return out


def decodable(frames: list[Frame], fillers: set[int] | frozenset[int] = frozenset()) -> list[Frame]:
    """The frames a decoder could show: complete, and a keyframe or the next after a decodable
    one (only padding-only packets, ``fillers``, between them)."""
    out: list[Frame] = []
    chain = False
    previous_end: int | None = None
    for f in frames:
        complete = (f.start is not None and f.end is not None and f.end >= f.start
                    and all(s in f.seqs for s in range(f.start, f.end + 1)))
        follows = (previous_end is not None and f.start is not None and f.start > previous_end
                   and all(s in fillers for s in range(previous_end + 1, f.start)))
        if complete and (f.key or (chain and follows)):
            out.append(f)
            chain = True
        else:
            chain = False
        previous_end = f.end if complete else None
    return out


def video_figures(packets: list[list[Any]], codec: str, clock_rate: int,
                  window: tuple[float, float]) -> VideoFigures:
    frames = frames_of(packets, start_flags=codec == "vp8")
    good = decodable(frames, padding_seqs(packets))
    steps = [b.ts - a.ts for a, b in zip(frames, frames[1:]) if b.ts > a.ts]
    interval = statistics.median(steps) / clock_rate if steps else None
    times = sorted(f.last_arrival for f in good)
    span = window[1] - window[0]
    fps = len(times) / span if span > 0 else 0.0
    freeze = span
    if interval is not None and times:
        threshold = max(3 * interval, interval + 0.150)
        edges = [window[0]] + times + [window[1]]
        freeze = sum(b - a for a, b in zip(edges, edges[1:]) if b - a > threshold)
    return VideoFigures(fps, 100 * min(freeze, span) / span if span > 0 else 100.0, interval, times, len(frames))


def rate_change_points(schedule: Sequence[tuple[float, int | None]]) -> tuple[float | None, float | None]:
    """(offset of the first drop of the uplink rate, offset of the rise after it)."""
    drop = rise = None
    for (_, before), (t, after) in zip(schedule, schedule[1:]):
        lower = after is not None and (before is None or after < before)
        if drop is None and lower:
            drop = t
        elif drop is not None and rise is None and not lower:
            rise = t
    return drop, rise


def edge_figures(video_packets: list[float], decodable_at: list[float], viewed_decodable_at: list[float],
                 window: tuple[float, float], drop: float | None, rise: float | None
                 ) -> tuple[float | None, float | None, float | None]:
    """(audio_only_after_s, video_back_after_s, video_resumed_after_s).

    * audio-only: the first silence of every video track of :data:`AUDIO_ONLY_GAP_S` or
      more that starts after the drop, seconds from the drop; None when video never stopped.
    * video back: the first 1 s window from the rise on in which the viewed device delivers
      at least 80 % of the decodable frames per second it did before the drop (from 5 s
      into the window), seconds from the rise; None when it never gets there.
    * video resumed: after an audio-only silence, the first decodable video frame, seconds
      from the rise (negative: video came back while the link was still thin)."""
    if drop is None or rise is None:
        return None, None, None
    t_drop, t_rise = window[0] + drop, window[0] + rise
    arrivals = sorted(video_packets) + [window[1]]
    previous = t_drop
    silence: tuple[float, float] | None = None
    for t in arrivals:
        if t < t_drop:
            continue
        if t - previous >= AUDIO_ONLY_GAP_S:
            silence = (previous, t)
            break
        previous = t
    audio_only = resumed = None
    if silence is not None:
        audio_only = silence[0] - t_drop
        after = [t for t in decodable_at if t >= silence[1]]
        resumed = after[0] - t_rise if after else None
    before = [t for t in viewed_decodable_at if window[0] + 5.0 <= t < t_drop]
    reference = len(before) / max(t_drop - window[0] - 5.0, 1e-9)
    back = None
    if reference > 0:
        k = 0
        while t_rise + k * 0.1 + 1.0 <= window[1]:
            t = t_rise + k * 0.1
            if sum(1 for x in viewed_decodable_at if t <= x < t + 1.0) >= 0.8 * reference:
                back = k * 0.1
                break
            k += 1
    return audio_only, back, resumed


def uplink_lag(wire: list[list[Any]], window: tuple[float, float], exclude_pts: frozenset[int],
               clock_rate: int = 48000, step: int = 960) -> tuple[int | None, float | None]:
    """(ssrc, 95th percentile lag in ms) of the stethoscope's packets leaving the cabin
    (:mod:`bench.netsniff`: ``[time, ssrc, pt, seq, ts, bytes]``), against their RTP timeline,
    above the least late packet of the window's first seconds. The stethoscope is the
    earliest stream of ``step``-tick packets whose payload types are not in ``exclude_pts``
    (the video codecs and RTX): the agent publishes before any nurse camera starts."""
    streams: dict[int, list[list[Any]]] = {}
    for p in wire:
        if p[2] not in exclude_pts:
            streams.setdefault(p[1], []).append(p)
    candidates = []
    for ssrc, packets in streams.items():
        steps = [(b[4] - a[4]) % TS_MOD for a, b in zip(packets, packets[1:]) if (b[3] - a[3]) % SEQ_MOD == 1]
        if len(steps) >= 10 and statistics.median(steps) == step:
            candidates.append((packets[0][0], ssrc))
    if not candidates:
        return None, None
    ssrc = min(candidates)[1]
    packets = streams[ssrc]
    seqs = unwrap([p[3] for p in packets], SEQ_MOD)
    tss = unwrap([p[4] for p in packets], TS_MOD)
    first: dict[int, tuple[float, int]] = {}
    for p, seq, ts in zip(packets, seqs, tss):
        if window[0] <= p[0] <= window[1] and seq not in first:
            first[seq] = (p[0], ts)
    offsets = [(t, t - ts / clock_rate) for t, ts in first.values()]
    if not offsets:
        return ssrc, None
    early = [o for t, o in offsets if t <= window[0] + BASELINE_S] or [o for _, o in offsets[:50]]
    base = min(early)
    return ssrc, percentile([(o - base) * 1000 for _, o in offsets], 95)
