"""The télé-expertise component's typed app key."""

from __future__ import annotations

from aiohttp import web

from signalling.expertise.service import ExpertiseService

EXPERTISE = web.AppKey("expertise", ExpertiseService)
