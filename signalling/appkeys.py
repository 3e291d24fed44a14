"""Signalling's typed application state."""

from __future__ import annotations

from aiohttp import web

from signalling.service import SignallingService
from signalling.store.base import Store

SIGNALLING = web.AppKey("signalling", SignallingService)
STORE = web.AppKey("store", Store)
