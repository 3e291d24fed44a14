"""Incremental matching: a freed physician gets the best waiting request at once (no whole-queue round)."""

from __future__ import annotations

from tests.signalling.test_flow import VISIT, nurse, physician
from tests.support import RunningServer


async def test_freed_physician_gets_requests_in_queue_order(sig: RunningServer) -> None:
    n = await nurse(sig)
    d = await physician(sig, available=False)
    try:
        ids: dict[str, list[str]] = {}
        for priority in ("routine", "urgent", "emergency", "urgent"):
            reply = await n.request("visit.request", **{**VISIT, "priority": priority})
            ids.setdefault(priority, []).append(reply["consultation"]["id"])
        await d.request("presence.set", status="available")
        order = []
        for _ in range(4):
            offer = await d.event("offer.received", timeout=2)  # well before the periodic full round
            cid = offer["consultation"]["id"]
            order.append(cid)
            await d.request("offer.accept", consultation_id=cid)
            await d.request("consultation.end", consultation_id=cid)
        assert order == [ids["emergency"][0], ids["urgent"][0], ids["urgent"][1], ids["routine"][0]]
        # A new request while the physician is free is offered to them at once.
        cid = (await n.request("visit.request", **VISIT))["consultation"]["id"]
        await d.event("offer.received", timeout=2, consultation__id=cid)
    finally:
        await n.close()
        await d.close()
