"""The recording component's typed app keys."""

from __future__ import annotations

from aiohttp import web

from media.recording.ports import SignallingAccess
from media.recording.service import RecordingService
from media.recording.stills import StillStore

RECORDING = web.AppKey("recording", RecordingService)
STILLS = web.AppKey("stills", StillStore)
SIGNALLING: web.AppKey[SignallingAccess] = web.AppKey("recording.signalling")
"""Signalling as the recording and stills handlers see it (:class:`~media.recording.ports.Signalling`),
handed over by the assembly through :func:`media.recording.setup`."""
