"""SFU tests run the real application with the SFU as its only component, so that they
do not depend on other packages' work in progress."""

from __future__ import annotations

from typing import AsyncIterator

import pytest

from config.settings import Settings
from teleconsult import app as app_module
from tests.support import RunningServer, start_server


@pytest.fixture
async def server(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[RunningServer]:
    monkeypatch.setattr(app_module, "_COMPONENTS", ["sfu"])
    running = await start_server(settings)
    try:
        yield running
    finally:
        await running.server.close()
