"""Sans-I/O pieces of the media benches."""

from __future__ import annotations

from bench.rtc import TS_MOD, marked, match_frames, pct


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
    """A path slower than several frame periods: the marked frames decide the origin."""
    sent = {k * 3000 + (1500 if marked(k) else 0): 10.0 + k / 30 for k in range(500)}
    frames = {(77 + pts) % TS_MOD: t + 0.250 for pts, t in sent.items() if pts >= 3000 * 10}  # 250 ms
    matched = match_frames(frames, sent, 3000)
    assert len(matched) == 490
    assert all(abs(matched[pts] - sent[pts] - 0.250) < 1e-9 for pts in matched)


def test_pct() -> None:
    assert pct([], 50) is None
    assert pct([3.0, 1.0, 2.0], 50) == 2.0
    assert pct([1.0, float("nan"), 5.0], 100) == 5.0
