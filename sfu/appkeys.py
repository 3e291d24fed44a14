"""The SFU's typed application state."""

from __future__ import annotations

from aiohttp import web

from sfu.service import SfuService

SFU = web.AppKey("sfu", SfuService)
