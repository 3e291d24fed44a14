"""Retry delays: doubling from 0.25 s up to the cap, each drawn in [d/2, d]."""

from __future__ import annotations

import random

import pytest

from core.backoff import retry_delay


@pytest.mark.parametrize(("failures", "full"), [(0, 0.25), (1, 0.5), (2, 1.0), (3, 2.0), (5, 8.0), (6, 10.0),
                                                (40, 10.0), (-1, 0.25)])
def test_delay_doubles_up_to_the_cap_and_stays_within_half_of_it(failures: int, full: float) -> None:
    rng = random.Random(7)
    delays = [retry_delay(failures, 10.0, rng) for _ in range(500)]
    assert all(full / 2 <= d <= full for d in delays)
    assert max(delays) - min(delays) > full / 3  # spread: clients that failed together come back apart


def test_clients_that_failed_together_come_back_spread_out() -> None:
    rng = random.Random(19)
    first = sorted(retry_delay(0, 10.0, rng) for _ in range(200))
    # 200 clients losing one process (without jitter: all 200 at 250 ms): about 16 per 10 ms.
    assert max(sum(1 for d in first if t <= d < t + 0.010) for t in first) <= 40
