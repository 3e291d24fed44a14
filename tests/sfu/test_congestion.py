"""How the SFU combines estimates into the REMB a publisher gets (sfu/congestion.py, sans-I/O)."""

from __future__ import annotations

import pytest

from config.settings import MediaSettings
from sfu.budgets import RetransmitBudget
from sfu.congestion import (
    MIN_REMB_BPS,
    LinkEstimate,
    RateMeter,
    publication_cap,
    remb_bps,
    retransmit_burst,
    retransmit_packets_per_s,
    site_cap,
    subscriber_share,
)


def test_a_subscription_gets_its_part_of_what_the_subscriber_receives_at_least_an_equal_split() -> None:
    assert subscriber_share(1_000_000, 900_000, 1_200_000, 2) == pytest.approx(750_000)
    assert subscriber_share(1_000_000, 0, 1_200_000, 4) == 250_000  # waiting for its keyframe: not starved
    assert subscriber_share(300_000, 500_000, 500_000, 1) == 300_000


def test_a_subscriber_estimate_that_covers_what_it_receives_is_no_cap() -> None:
    """A receiver's REMB is ~1.5 times what arrives on a clean link: no capacity figure. Taken
    as one, it held the agent's sessions at 40-400 kbit/s on a clean link (and kept a paused
    track paused)."""
    assert subscriber_share(1_500_000, 600_000, 1_000_000, 2) is None
    assert subscriber_share(1_000_000, 0, 0, 2) is None  # nothing arrives yet: nothing to judge
    assert publication_cap([None, 4e5, None]) == 4e5
    assert publication_cap([None]) is None


def test_the_worst_placed_subscriber_sets_the_publication_cap() -> None:
    assert publication_cap([2e6, 4e5, 9e5]) == 4e5
    assert publication_cap([]) is None


@pytest.mark.parametrize(("uplink", "caps", "site", "expected"), [
    (800_000, [], None, 800_000),  # no video subscriber estimate: the uplink alone
    (800_000, [None], None, 800_000),
    (800_000, [300_000], None, 300_000),  # a subscriber that takes less lowers it
    (800_000, [2_000_000], None, 800_000),  # never above the uplink estimate
    (800_000, [300_000, None], None, 800_000),  # one video uncapped: the transport's total is the uplink's
    (800_000, [300_000, 200_000], None, 500_000),
    (800_000, [], 350_000, 350_000),  # the nurse's share of the site
    (800_000, [1_000], None, MIN_REMB_BPS),
])
def test_the_remb_of_a_publisher(uplink: int, caps: list[float | None], site: float | None, expected: int) -> None:
    assert remb_bps(uplink, caps, site) == expected


def test_the_site_cap_applies_only_when_another_publisher_of_the_site_has_an_estimate() -> None:
    assert site_cap([600_000], 0.35) is None
    assert site_cap([400_000, 600_000], 0.35) == pytest.approx(350_000)


def test_estimates_go_stale_and_rates_are_measured_over_half_a_second() -> None:
    estimate = LinkEstimate()
    assert estimate.current(0.0) is None
    estimate.update(500_000, 10.0)
    assert estimate.current(12.0) == 500_000 and estimate.current(16.0) is None
    meter = RateMeter()
    assert meter.sample(0, 0.0) == 0.0
    assert meter.sample(50_000, 0.2) == 0.0  # too soon
    assert meter.sample(125_000, 1.0) == pytest.approx(1_000_000)


def test_retransmissions_follow_a_share_of_the_subscriber_estimate() -> None:
    budget = RetransmitBudget.from_settings(MediaSettings())
    budget.follow_estimate(1_000_000, 0.1)  # 12.5 kB/s
    assert budget.bytes.rate == pytest.approx(12_500)
    sent = sum(budget.allow(1200, 0.0) for _ in range(100))
    assert sent * 1200 <= 12_500
    assert sum(budget.allow(1200, 1.0) for _ in range(100)) == 10
    budget.follow_estimate(1e12, 0.1)  # never above the configured budget
    assert budget.bytes.rate == MediaSettings().retransmit_bytes_per_s
    assert retransmit_packets_per_s(960_000, 0.1) == pytest.approx(10)


def test_a_publishers_nack_budget_covers_a_run_of_drops() -> None:
    """A queue overflow drops a run of packets: at a thin uplink's rate (2-3 a second) the
    budget still asks for a run of 16 at once, and for two seconds' worth at higher rates."""
    rate = retransmit_packets_per_s(300_000, 0.1)
    assert rate < 4
    assert retransmit_burst(rate) == 16
    assert retransmit_burst(retransmit_packets_per_s(9_600_000, 0.1)) == pytest.approx(200)
