"""ICE servers for clients: STUN, and TURN credentials of coturn's REST API scheme.

coturn's ``use-auth-secret``: the username is ``<expiry unix time>:<user>``
and the password ``base64(HMAC-SHA1(secret, username))``; coturn recomputes
it and refuses it after the expiry.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from config.settings import IceSettings


def turn_credentials(secret: str, user: str, ttl_s: int, now: float) -> tuple[str, str]:
    username = f"{int(now) + int(ttl_s)}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def ice_servers(settings: IceSettings, user: str, now: float) -> list[dict[str, Any]]:
    """RTCIceServer dicts (``urls``, ``username``, ``credential``) for one user."""
    out: list[dict[str, Any]] = []
    if settings.stun_urls:
        out.append({"urls": list(settings.stun_urls)})
    if settings.turn_urls and settings.turn_secret:
        username, password = turn_credentials(settings.turn_secret, user, settings.turn_ttl_s, now)
        out.append({"urls": list(settings.turn_urls), "username": username, "credential": password})
    return out
