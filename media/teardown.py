"""Closing a peer connection within a deadline.

aiortc's ``RTCPeerConnection.close`` stops each transceiver, then SCTP, then the DTLS and
ICE transports, awaiting each in turn. One part that never finishes (a receiver whose RTCP
task died: issue 17) keeps every later part, its sockets and tasks alive, and whoever awaits
the close (a room closing, a consultation ending, a socket handler) waits for ever.

:func:`close_peer_connection` gives aiortc ``deadline_s``; past it, the parts are stopped
directly, all at once, each phase bounded, and the sockets closed whatever happened
(:func:`media.aiortc_internals.release_peer_connection`). Both facts are logged with the
ids the caller names (session, room, check), never more.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Mapping

from aiortc import RTCPeerConnection

from media import aiortc_internals

logger = logging.getLogger(__name__)

RELEASE_STEP_S = 1.0
"""The most each phase of a forced release waits (stopping transceivers, DTLS, ICE)."""


async def close_peer_connection(pc: RTCPeerConnection, deadline_s: float, ids: Mapping[str, str]) -> bool:
    """Close ``pc``; True when aiortc closed it within ``deadline_s``. Otherwise its
    resources are released (at most ``3 * RELEASE_STEP_S`` more) and False is returned.
    Never raises but for the caller's own cancellation."""
    try:
        await asyncio.wait_for(pc.close(), deadline_s)
        return True
    except asyncio.TimeoutError:
        logger.warning("peer connection close timed out", extra={**ids, "deadline_s": deadline_s})
    except Exception as exc:  # noqa: BLE001 - a close that fails still releases what it holds
        logger.warning("peer connection close failed", extra={**ids, "error": type(exc).__name__})
    await aiortc_internals.release_peer_connection(pc, min(RELEASE_STEP_S, deadline_s))
    logger.info("peer connection released", extra=dict(ids))
    return False
