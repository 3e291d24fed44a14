"""The SFU tests open rooms with room tokens they make by hand, with no consultation behind them:
their server opens standalone rooms (``[sfu] standalone_rooms``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.settings import Settings
from tests.support import loopback_settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return loopback_settings(tmp_path / "data", sfu={"standalone_rooms": True})
