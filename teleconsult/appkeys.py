"""Typed application state shared across packages (aiohttp ``AppKey`` constants).

Each package keeps its own objects under its own key here, so that one module
lists everything an application holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from config.settings import Settings
    from signalling.auth import TokenService
    from teleconsult.lifecycle import Lifecycle
    from teleconsult.metrics import Metrics

SETTINGS = web.AppKey("settings", "Settings")
TOKENS = web.AppKey("tokens", "TokenService")
METRICS = web.AppKey("metrics", "Metrics")
LIFECYCLE = web.AppKey("lifecycle", "Lifecycle")
# Set by sfu.setup / signalling.setup; typed as Any here to keep this module import-light.
SFU = web.AppKey("sfu", Any)
SIGNALLING = web.AppKey("signalling", Any)
STORE = web.AppKey("store", Any)
