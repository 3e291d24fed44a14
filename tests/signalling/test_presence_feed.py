"""Who gets which physician's ``presence.changed`` (``hello.presence``): admins and nurses every
physician's unless they ask for their own only, a physician their own unless they ask for all, the
other roles never anyone's. Real sockets, both stores."""

from __future__ import annotations

from typing import Any

from core.vocabulary import Role
from signalling.presence import presence_feed
from signalling.protocol import PresenceFeed
from tests.signalling.client import SigClient
from tests.support import RunningServer


def seen(client: SigClient) -> set[str]:
    return {e["physician"] for e in client.events if e["type"] == "presence.changed"}


async def connect(sig: RunningServer, role: str, sub: str, presence: str | None = None,
                  **claims: Any) -> SigClient:
    client = await SigClient.connect(sig.ws_url)
    fields: dict[str, Any] = {"version": 1, "token": sig.tokens.issue_access(role, sub, **claims)}
    if presence is not None:
        fields["presence"] = presence
    client.hello = await client.request("hello", **fields)
    return client


async def test_who_gets_which_presence(sig: RunningServer) -> None:
    admin = await connect(sig, "admin", "admin-1")
    nurse = await connect(sig, "nurse", "nurse-1", site="cabin-demo")
    nurse_own = await connect(sig, "nurse", "nurse-2", presence="own", site="cabin-demo")
    agent = await connect(sig, "agent", "agent-1", presence="all", site="cabin-demo")
    watching = await connect(sig, "physician", "dr-watch", presence="all")
    cardio = await connect(sig, "physician", "dr-cardio")
    demo = await connect(sig, "physician", "dr-demo", presence="own")
    clients = [admin, nurse, nurse_own, agent, watching, cardio, demo]
    try:
        await cardio.request("presence.set", status="available")
        await demo.request("presence.set", status="busy")
        await admin.event("presence.changed", physician="dr-demo", status="busy")
        await nurse.event("presence.changed", physician="dr-demo", status="busy", pop=False)
        await watching.event("presence.changed", physician="dr-demo", status="busy", pop=False)
        for client in clients:  # what was sent before these replies has arrived
            await client.request("ping")
        assert {"dr-cardio", "dr-demo", "dr-watch"} <= seen(nurse) and "dr-cardio" in seen(admin)
        assert {"dr-cardio", "dr-demo"} <= seen(watching)
        assert seen(cardio) == {"dr-cardio"}
        assert seen(demo) == {"dr-demo"}
        assert seen(nurse_own) == set() and seen(agent) == set()
        # The list still tells anyone allowed to ask (the admin console, a nurse on "own").
        listed = (await nurse_own.request("presence.list"))["physicians"]
        assert {e["physician"] for e in listed} >= {"dr-cardio", "dr-demo"}
        bad = await SigClient.connect(sig.ws_url)
        clients.append(bad)
        reply = await bad.call("hello", version=1, token=sig.tokens.issue_access("nurse", "n3", site="cabin-demo"),
                               presence="everyone")
        assert reply["type"] == "error" and reply["code"] == "bad_message"
    finally:
        for client in clients:
            await client.close()


def test_presence_feed_defaults_and_limits() -> None:
    assert presence_feed(Role.ADMIN, None) is PresenceFeed.ALL
    assert presence_feed(Role.NURSE, None) is PresenceFeed.ALL
    assert presence_feed(Role.PHYSICIAN, None) is PresenceFeed.OWN
    assert presence_feed(Role.AGENT, None) is PresenceFeed.OWN
    assert presence_feed(Role.PHYSICIAN, PresenceFeed.ALL) is PresenceFeed.ALL
    assert presence_feed(Role.NURSE, PresenceFeed.OWN) is PresenceFeed.OWN
    assert presence_feed(Role.AGENT, PresenceFeed.ALL) is PresenceFeed.OWN
    assert presence_feed(Role.GUEST, PresenceFeed.ALL) is PresenceFeed.OWN
