"""The SFU tests open rooms with room tokens they make by hand, with no consultation behind them:
their server opens standalone rooms (``[sfu] standalone_rooms``).

Each such test runs on both ways of writing forwarded packets (``[media] send_path``): the C
extension's batched SRTP and ``sendmmsg``, and pylibsrtp with one ``sendto`` per packet."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.settings import Settings
from tests.support import loopback_settings


@pytest.fixture(params=["native", "python"])
def settings(tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    return loopback_settings(tmp_path / "data", sfu={"standalone_rooms": True},
                             media={"send_path": request.param})
