"""TURN credentials of coturn's REST API scheme."""

from __future__ import annotations

import base64
import hashlib
import hmac

from config.settings import IceSettings
from signalling.turn import ice_servers, turn_credentials


def test_coturn_rest_scheme() -> None:
    username, password = turn_credentials("secret", "dr-demo", 600, now=1000.0)
    assert username == "1600:dr-demo"
    assert password == base64.b64encode(hmac.new(b"secret", b"1600:dr-demo", hashlib.sha1).digest()).decode()


def test_ice_servers_from_settings() -> None:
    settings = IceSettings(stun_urls=["stun:127.0.0.1:3478"], turn_urls=["turn:127.0.0.1:3478?transport=udp"],
                           turn_secret="s3cret", turn_ttl_s=60)
    servers = ice_servers(settings, "n1", 100.0)
    assert servers[0] == {"urls": ["stun:127.0.0.1:3478"]}
    assert servers[1]["username"] == "160:n1" and servers[1]["credential"]
    assert ice_servers(IceSettings(), "n1", 0.0) == []
