"""Typed application state of the base layer (aiohttp ``AppKey`` constants).

Each component keeps its own objects under keys it defines itself
(``sfu.appkeys``, ``signalling.appkeys``, ``media.recording.appkeys``); the
keys here are the plumbing every component reads.
"""

from __future__ import annotations

from typing import Awaitable, Callable

from aiohttp import web

from config.settings import Settings
from core.auth import TokenService
from core.keyring import Keyring
from core.lifecycle import Lifecycle
from core.mail import Mailer
from core.metrics import Metrics

ReadyProbe = Callable[[], Awaitable[tuple[str, bool]]]
"""A readiness check: its name and whether it passes (``/readyz`` lists them all)."""

SETTINGS = web.AppKey("settings", Settings)
TOKENS = web.AppKey("tokens", TokenService)
KEYRING = web.AppKey("keyring", Keyring)
"""The key of health data at rest, loaded once: every store of it (records, recordings, stills) uses it."""
METRICS = web.AppKey("metrics", Metrics)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
READY_PROBES = web.AppKey("ready_probes", list[ReadyProbe])
OUTAGES = web.AppKey("outages", list[type[BaseException]])
"""Exceptions that mean a dependency (the shared store, a disk) is down: a request that meets one
is answered 503 ``unavailable`` (retry later), not 500 ``internal``. Components add their own."""
MAILER = web.AppKey("mailer", Mailer)
"""E-mail through ``[smtp]`` (off when its url is empty): started before the components, stopped after them."""
