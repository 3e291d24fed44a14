"""Signalling fixtures: a server per store backend (memory, and Redis against a real redis-server)."""

from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator

import pytest

from config.settings import Settings
from tests.signalling.procs import shared_master_key
from tests.support import RunningServer, loopback_settings, start_server


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def sig_settings(tmp_path: Path, backend: str, redis_url: str | None, name: str = "data",
                 **signalling: object) -> Settings:
    store: dict[str, object] = {"backend": backend}
    sections: dict[str, dict[str, object]] = {}
    if backend == "redis":
        assert redis_url
        store.update(redis_url=redis_url, key_prefix="tc:")
        # The processes of a test on one Redis share one master key, as a deployment's do.
        sections["recording"] = {"master_key_file": str(shared_master_key(tmp_path))}
    values: dict[str, object] = {"offer_timeout_s": 5.0, "resume_grace_s": 2.0, "heartbeat_s": 5.0}
    values.update(signalling)
    return loopback_settings(tmp_path / name, store=store, signalling=values,
                             auth={"signing_key": "k" * 40}, **sections)


@pytest.fixture
def store_url(request: pytest.FixtureRequest, backend: str) -> str | None:
    if backend == "redis":
        return str(request.getfixturevalue("redis_url"))
    return None


@pytest.fixture
async def sig(tmp_path: Path, backend: str, store_url: str | None) -> AsyncIterator[RunningServer]:
    """The whole app with signalling on ``backend`` (short offer timeout and resume grace)."""
    running = await start_server(sig_settings(tmp_path, backend, store_url))
    try:
        yield running
    finally:
        await running.server.close()
