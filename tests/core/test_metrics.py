"""The application's metrics: the live asyncio tasks gauge the soak bench watches."""

from __future__ import annotations

import asyncio
import re

from core.metrics import Metrics


def tasks_gauge(text: str) -> float | None:
    found = re.search(r"^teleconsult_asyncio_tasks (\S+)$", text, re.M)
    return float(found.group(1)) if found else None


async def test_tasks_gauge_counts_live_tasks_at_scrape_time() -> None:
    metrics = Metrics()
    before = tasks_gauge(metrics.render().decode())
    assert before is not None and before >= 1  # this test's own task at least
    gate = asyncio.Event()
    spawned = [asyncio.ensure_future(gate.wait()) for _ in range(5)]
    await asyncio.sleep(0)
    assert tasks_gauge(metrics.render().decode()) == before + 5
    gate.set()
    await asyncio.gather(*spawned)
    assert tasks_gauge(metrics.render().decode()) == before


def test_tasks_gauge_is_absent_outside_an_event_loop() -> None:
    text = Metrics().render().decode()
    assert tasks_gauge(text) is None
    assert "process_open_fds" in text  # the process figures are there (Linux)
