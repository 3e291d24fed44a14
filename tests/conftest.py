"""Fixtures that start real components: the server, redis-server, Chromium.

Every process a fixture starts is stopped by its PID. A fixture that cannot
start its component fails the test (never skips it): CI must notice.
"""

from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest

from config.settings import Settings
from tests.support import (
    RedisProcess,
    RunningServer,
    SmtpSink,
    launched_chromium,
    loopback_settings,
    spawn_redis,
    start_server,
    stop_process,
)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return loopback_settings(tmp_path / "data")


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[RunningServer]:
    """The real application on a free loopback port."""
    running = await start_server(settings)
    try:
        yield running
    finally:
        await running.server.close()


@pytest.fixture
def redis_process(tmp_path: Path) -> Iterator[RedisProcess]:
    """A real redis-server of this test's own, on a free loopback port."""
    redis = spawn_redis(tmp_path / "redis")
    try:
        yield redis
    finally:
        stop_process(redis.process)


@pytest.fixture
def redis_url(redis_process: RedisProcess) -> str:
    return redis_process.url


@pytest.fixture
async def smtp_server() -> AsyncIterator[SmtpSink]:
    """A real SMTP server (aiosmtpd) on a loopback ephemeral port that keeps what arrives."""
    sink = await SmtpSink().start()
    try:
        yield sink
    finally:
        await sink.close()


@pytest.fixture
async def chromium() -> AsyncIterator[object]:
    """Headless system Chromium with fake camera/microphone, driven by Playwright."""
    async with launched_chromium() as browser:
        yield browser
