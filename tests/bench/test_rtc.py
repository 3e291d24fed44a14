"""Sans-I/O pieces of the media benches."""

from __future__ import annotations

from bench.rtc import TS_MOD, match_frames, pct


def test_match_frames_finds_the_leg_origin() -> None:
    sent = {k * 3000: 100.0 + k / 30 for k in range(300)}
    origin = 4_294_000_000  # wraps around 2^32
    # the leg starts at frame 40; frames take 2 ms, a transcoder rounds some timestamps by a tick
    frames = {(origin + pts + (1 if k % 3 == 0 else 0)) % TS_MOD: t + 0.002
              for k, (pts, t) in enumerate(sorted(sent.items())) if k >= 40}
    matched = match_frames(frames, sent, 3000)
    assert len(matched) == 260
    assert all(abs(matched[pts] - sent[pts] - 0.002) < 1e-9 for pts in matched)


def test_match_frames_slow_path_is_not_mistaken_for_a_later_frame() -> None:
    sent = {k * 960: 10.0 + k * 0.02 for k in range(500)}
    frames = {(77 + pts) % TS_MOD: t + 0.05 for pts, t in sent.items() if pts >= 960 * 10}  # 50 ms > a period
    matched = match_frames(frames, sent, 960)
    assert abs(matched[960 * 20] - sent[960 * 20] - 0.05) < 1e-9


def test_pct() -> None:
    assert pct([], 50) is None
    assert pct([3.0, 1.0, 2.0], 50) == 2.0
    assert pct([1.0, float("nan"), 5.0], 100) == 5.0
