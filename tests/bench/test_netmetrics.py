"""The network bench's figures (bench/netmetrics.py) on made-up recordings."""

from __future__ import annotations

from typing import Any

import pytest

from bench.netmetrics import (
    audio_figures,
    decodable,
    edge_figures,
    frames_of,
    padding_seqs,
    rate_change_points,
    unwrap,
    video_figures,
)
from bench.netprobe import red_offsets, vp8_flags

STEP = 960  # 20 ms of 48 kHz


def _audio(n: int, lost: frozenset[int] = frozenset(), red: bool = False, delay: Any = lambda i: 0.0,
           seq0: int = 65530, ts0: int = 2**32 - 5000) -> list[list[Any]]:
    packets = []
    for i in range(n):
        if i in lost:
            continue
        packets.append([100.0 + i * 0.02 + delay(i), (seq0 + i) % 65536, (ts0 + i * STEP) % 2**32, True, False,
                        False, [STEP] if red else None, False])
    return packets


def test_unwrap() -> None:
    assert unwrap([65534, 65535, 0, 1, 65535, 2], 65536) == [65534, 65535, 65536, 65537, 65535, 65538]


def test_audio_loss_gap_and_red_recovery() -> None:
    window = (100.0, 102.0)
    plain = audio_figures(_audio(100, lost=frozenset({10, 50, 51, 52})), 48000, window)
    assert plain.lost == 4 and plain.recovered == 0
    assert plain.loss_pct == pytest.approx(4.0)
    assert plain.longest_gap_ms == pytest.approx(60.0)
    # Single-level RED recovers a lone loss, not the first packets of a run of three.
    red = audio_figures(_audio(100, lost=frozenset({10, 50, 51, 52}), red=True), 48000, window)
    assert red.recovered == 2 and red.loss_pct == pytest.approx(2.0)
    assert red.longest_gap_ms == pytest.approx(40.0)


def test_delay_is_relative_to_the_early_best_and_growth_compares_the_ends() -> None:
    # 10 s of audio; from 5 s on each packet is 100 ms later.
    figures = audio_figures(_audio(500, delay=lambda i: 0.1 if i >= 250 else 0.0), 48000, (100.0, 110.0))
    assert figures.delay_ms_p95 == pytest.approx(100.0, abs=1)
    assert figures.delay_growth_ms == pytest.approx(100.0, abs=1)


def _vp8(key: bool, start: bool) -> bytes:
    return bytes([0x10 if start else 0x00]) + bytes([0x00 if key else 0x01]) + b"\x00" * 10


def _video(frames: int, drop: frozenset[tuple[int, int]] = frozenset(), key_every: int = 30,
           per_frame: int = 2) -> list[list[Any]]:
    packets = []
    seq = 100
    for f in range(frames):
        for k in range(per_frame):
            start, key = vp8_flags(_vp8(f % key_every == 0, k == 0))
            if (f, k) not in drop:
                packets.append([10.0 + f / 30, seq, f * 3000, k == per_frame - 1, start, key, None, False])
            seq += 1
    return packets


def test_vp8_flags_and_red_offsets() -> None:
    assert vp8_flags(_vp8(True, True)) == (True, True)
    assert vp8_flags(_vp8(False, True)) == (True, False)
    assert vp8_flags(_vp8(True, False)) == (False, False)
    # Extended descriptor with a 15-bit picture id: X=1, S=1; I=1; M=1.
    assert vp8_flags(bytes([0x90, 0x80, 0x81, 0x23, 0x00])) == (True, True)
    assert red_offsets(bytes([0x80 | 111, 0x0F, 0x00, 0x10, 111])) == [960]
    assert red_offsets(bytes([111])) == []


def test_a_lost_packet_breaks_the_chain_until_the_next_keyframe() -> None:
    frames = frames_of(_video(60, drop=frozenset({(5, 1)})), start_flags=True)
    good = decodable(frames)
    # Frames 0-4 decodable, 5 incomplete, 6-29 depend on it, 30 is a keyframe, then 31-59.
    assert [f.ts // 3000 for f in good] == list(range(5)) + list(range(30, 60))
    whole = decodable(frames_of(_video(60, drop=frozenset({(7, 0), (7, 1)})), start_flags=True))
    assert len(whole) == 7 + 30  # a frame lost whole breaks the chain too


def test_video_fps_and_freeze() -> None:
    window = (10.0, 12.0)
    figures = video_figures(_video(60), "vp8", 90000, window)
    assert figures.fps == pytest.approx(30.0)
    assert figures.freeze_pct < 5
    frozen = video_figures(_video(60, drop=frozenset({(5, 1)})), "vp8", 90000, window)
    assert frozen.fps == pytest.approx(17.5)
    assert frozen.freeze_pct == pytest.approx(100 * (10 + 30 / 30 - (10 + 4 / 30)) / 2, abs=1)


def test_edge_figures() -> None:
    schedule = [(0.0, 3000), (20.0, 400), (50.0, 3000)]
    assert rate_change_points(schedule) == (20.0, 50.0)
    assert rate_change_points([(0.0, 1000)]) == (None, None)
    window = (0.0, 65.0)
    # Video every 0.1 s until 23 s, nothing until 55 s, then again.
    video = [t / 10 for t in range(0, 230)] + [t / 10 for t in range(550, 650)]
    decoded = [t for t in video if t < 23 or t >= 56]
    assert edge_figures(video, decoded, decoded, window, 20.0, 50.0) == (
        pytest.approx(2.9), pytest.approx(5.8, abs=0.15), pytest.approx(6.0))
    # Video that never stops: back once the viewed device is at 80 % of its rate before the drop.
    slow = [t / 10 for t in range(0, 200)] + [t / 2 for t in range(40, 104)] + [t / 10 for t in range(530, 650)]
    assert edge_figures(slow, slow, slow, window, 20.0, 50.0) == (None, pytest.approx(2.8, abs=0.25), None)
    # Video that stops, then comes back thin before the link does: resumed early, back late.
    early = [t / 10 for t in range(0, 230)] + [t / 2 for t in range(60, 100)] + [t / 10 for t in range(520, 650)]
    assert edge_figures(early, early, early, window, 20.0, 50.0) == (
        pytest.approx(2.9), pytest.approx(2.0, abs=0.25), pytest.approx(-20.0))


def test_padding_fills_sequence_numbers_but_no_frame() -> None:
    packets = _video(10)
    # A padding-only probe packet after frame 4: the next frames' sequence numbers move on by one.
    padded = []
    for p in packets:
        if p[2] > 4 * 3000:
            p = [p[0], p[1] + 1, *p[2:]]
        padded.append(p)
    padded.append([10.2, packets[9][1] + 1, 4 * 3000, False, False, False, None, False, True])
    frames = frames_of(padded, start_flags=True)
    assert len(frames) == 10
    assert len(decodable(frames, padding_seqs(padded))) == 10
    assert len(decodable(frames)) == 5  # without knowing it was padding: a frame seems lost
    audio = _audio(50) + [[100.5, (65530 + 50) % 65536, 0, False, False, False, None, False, True]]
    figures = audio_figures(audio + [[101.02, (65530 + 51) % 65536, (2**32 - 5000 + 51 * STEP) % 2**32, True,
                                      False, False, None, False]], 48000, (100.0, 101.1))
    assert figures.lost == 0 and figures.expected == 51
