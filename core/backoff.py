"""How long to wait before trying again, after ``failures`` failures in a row.

Exponential (0.25 s, doubling, capped), with jitter: the delay is drawn in [d/2, d]. When a
signalling process or a media node goes away, every client it held (pages, device agents)
loses its connection at the same instant; without jitter they would all come back at the same
instants too, one burst per step of the schedule, on the processes that are left ("Exponential
Backoff And Jitter", AWS Architecture Blog, 2015; bench.signalling measured what 200 physicians
asking at the same instant cost: the first decisions wait a quarter of a second).
"""

from __future__ import annotations

import random

BASE_S = 0.25
DOUBLINGS = 6
"""The delay stops doubling after this many failures (0.25 * 2**6 = 16 s, above the caps used)."""


def retry_delay(failures: int, cap_s: float, rng: random.Random | None = None) -> float:
    """Seconds to wait after ``failures`` (>= 0) failures in a row, at most ``cap_s``."""
    full = min(cap_s, BASE_S * 2 ** min(max(failures, 0), DOUBLINGS))
    return full * (1 - (rng or random).random() / 2)
