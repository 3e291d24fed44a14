"""Token buckets of the media path (sans-I/O: the time is given)."""

from __future__ import annotations

import pytest

from config.settings import MediaSettings
from sfu.budgets import RetransmitBudget, TokenBucket


def test_a_bucket_starts_full_refills_at_its_rate_and_never_beyond_its_burst() -> None:
    bucket = TokenBucket(rate=2.0, burst=3.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(0.4)
    assert bucket.take(0.5)  # 0.5 s at 2/s: one token
    assert bucket.refill(100.0) == 3.0
    assert bucket.take(100.0, 3.0) and not bucket.take(100.0)


def test_time_going_backwards_gives_nothing() -> None:
    bucket = TokenBucket(rate=1.0, burst=1.0)
    assert bucket.take(10.0)
    assert not bucket.take(5.0)
    assert not bucket.take(10.5)
    assert bucket.take(11.0)


def test_a_bucket_needs_a_rate_and_a_burst() -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=-1.0, burst=1.0)
    with pytest.raises(ValueError):
        TokenBucket(rate=1.0, burst=0.0)


def test_retransmissions_are_bounded_in_packets_and_in_bytes() -> None:
    by_packets = RetransmitBudget(packets_per_s=10.0, bytes_per_s=1e9)
    assert sum(by_packets.allow(100, 0.0) for _ in range(50)) == 10
    assert sum(by_packets.allow(100, 1.0) for _ in range(50)) == 10
    by_bytes = RetransmitBudget(packets_per_s=1e6, bytes_per_s=10_000.0)
    assert sum(by_bytes.allow(1_000, 0.0) for _ in range(50)) == 10
    assert not by_bytes.allow(1_000, 0.05)
    assert by_bytes.allow(1_000, 0.1)


def test_a_refused_retransmission_costs_nothing() -> None:
    budget = RetransmitBudget(packets_per_s=100.0, bytes_per_s=2_000.0)
    assert not budget.allow(5_000, 0.0)  # larger than the byte burst (2 000, at least 1 500)
    assert budget.allow(1_200, 0.0)
    assert budget.packets.tokens == 99.0


def test_the_budget_of_the_settings() -> None:
    budget = RetransmitBudget.from_settings(MediaSettings())
    assert budget.packets.rate == MediaSettings().retransmit_packets_per_s
    assert budget.bytes.rate == MediaSettings().retransmit_bytes_per_s
