"""Bounded NACK (sfu/nack.py): each lost packet asked for a limited number of times, at RTT
intervals, while it can still be useful (sans-I/O: the time is given)."""

from __future__ import annotations

from sfu.nack import DEFAULT_RTT_MS, MIN_RTT_MS, NackPolicy, NackRequester


def requester(**policy: float) -> NackRequester:
    return NackRequester(NackPolicy(**policy))  # type: ignore[arg-type]


def feed(r: NackRequester, seqs: list[int], now: float) -> None:
    for seq in seqs:
        r.received(seq, now)


def test_a_gap_is_asked_for_at_once_and_not_again_within_the_round_trip() -> None:
    r = requester()
    feed(r, [10, 11, 14], 0.0)
    assert r.wants_check(0.0)
    assert r.due(0.0) == [12, 13]
    assert not r.wants_check(1.0)  # no new gap, checked just now
    assert r.due(DEFAULT_RTT_MS - 1) == []
    assert r.due(DEFAULT_RTT_MS) == [12, 13]


def test_each_packet_is_asked_for_at_most_max_retries_times_then_given_up() -> None:
    r = requester(max_retries=3, max_age_ms=10_000)
    feed(r, [1, 3], 0.0)
    asked = [seq for t in range(0, 2000, 10) for seq in r.due(float(t))]
    assert asked == [2, 2, 2]
    assert r.missing == [] and r.gave_up == 1 and r.asked == 3
    assert r.pop_given_up() == 1 and r.pop_given_up() == 0


def test_the_last_try_gets_one_more_round_trip_before_the_packet_is_given_up() -> None:
    r = requester(max_retries=1, max_age_ms=10_000)
    feed(r, [1, 3], 0.0)
    assert r.due(0.0) == [2]
    assert r.due(50.0) == [] and r.missing == [2]  # its answer may still come
    r.received(2, 60.0)
    assert r.gave_up == 0 and r.repaired == 1


def test_a_packet_too_old_to_be_played_is_no_longer_asked_for() -> None:
    r = requester(max_retries=10, max_age_ms=250)
    feed(r, [1, 3], 0.0)
    assert r.due(0.0) == [2]
    assert r.due(200.0) == [2]
    assert r.due(251.0) == [] and r.gave_up == 1


def test_a_retransmission_answering_a_single_ask_measures_the_round_trip() -> None:
    r = requester()
    feed(r, [1, 3, 6], 0.0)
    assert r.due(0.0) == [2, 4, 5]
    r.received(2, 40.0)
    assert r.rtt_ms == 40.0
    assert r.retry_interval_ms() == 40.0
    assert r.due(41.0) == [4, 5]  # asked again after one measured round trip, not the default
    r.received(4, 60.0)  # asked twice: ambiguous, no sample (Karn)
    assert r.rtt_ms == 40.0
    r.received(7, 61.0)
    r.received(7, 62.0)  # a duplicate is nothing
    assert r.missing == [5]


def test_the_retry_interval_is_clamped() -> None:
    r = requester()
    feed(r, [1, 3], 0.0)
    r.due(0.0)
    r.received(2, 0.0)
    assert r.retry_interval_ms() == MIN_RTT_MS


def test_a_huge_gap_tracks_only_the_newest_packets() -> None:
    r = requester(max_tracked=8, max_per_nack=64)
    feed(r, [0, 1000], 0.0)
    assert r.due(0.0) == list(range(992, 1000))
    assert r.gave_up == 1000 - 1 - 8


def test_sequence_numbers_wrap_around() -> None:
    r = requester()
    feed(r, [65534, 1], 0.0)
    assert r.due(0.0) == [65535, 0]


def test_the_allowance_bounds_what_is_asked_now_and_the_rest_waits() -> None:
    r = requester(max_age_ms=10_000)
    feed(r, [0, 11], 0.0)
    assert r.due(0.0, allowance=4) == [1, 2, 3, 4]
    assert r.due(1.0, allowance=4) == [5, 6, 7, 8]  # never asked yet: no round trip to wait
    assert r.due(2.0, allowance=0) == []
    assert r.asked == 8


def test_late_packets_fill_gaps_and_reset_forgets_the_numbering() -> None:
    r = requester()
    feed(r, [1, 5], 0.0)
    feed(r, [2, 3], 1.0)
    assert r.missing == [4]
    r.reset()
    feed(r, [40000, 40001], 2.0)
    assert r.missing == [] and r.due(3.0) == []
