"""Declines and waits, real server, both stores: a declined request goes back to matching and stays in
the queue (where its decliner can still pick it), the nurse is told what happens, and the wait estimate
comes from the physicians connected and recent consultations' lengths, or is null."""

from __future__ import annotations

import asyncio

from signalling.appkeys import SIGNALLING
from tests.signalling.test_flow import VISIT, nurse, physician
from tests.support import RunningServer


async def test_a_declined_request_goes_on_and_can_be_picked(sig: RunningServer) -> None:
    n = await nurse(sig)
    a = await physician(sig, "dr-cardio")
    b = await physician(sig, "dr-demo")
    try:
        cid = (await n.request("visit.request", **VISIT))["consultation"]["id"]
        # Whoever it rings first declines; the nurse hears it, and that another is looked for.
        offered = await n.event("visit.status", consultation_id=cid, status="offered")
        first, second = (a, b) if offered["physician"] == "dr-cardio" else (b, a)
        assert offered["physician_name"] in ("Dr Cardio", "Dr Demo")
        await first.event("offer.received", consultation__id=cid)
        await first.request("offer.decline", consultation_id=cid)
        declined = await n.event("visit.status", consultation_id=cid, status="declined")
        assert declined["physician"] == offered["physician"] and declined["looking"] is True
        assert declined["position"] == 1
        await second.event("offer.received", consultation__id=cid)
        await n.event("visit.status", consultation_id=cid, status="offered", physician=second.hello["principal"]["sub"])
        # The second declines too: nobody else, the nurse is told it waits.
        await second.request("offer.decline", consultation_id=cid)
        last = await n.event("visit.status", consultation_id=cid, status="declined")
        assert last["looking"] is False and last["position"] == 1
        # It stays in the queue, visible to both, marked as declined by the reader; physicians hear the
        # queue changed.
        await first.event("queue.changed")
        for client in (first, second):
            waiting = (await client.request("queue.list"))["waiting"]
            assert [(w["consultation_id"], w["declined_by_me"], w["site_name"]) for w in waiting] == \
                [(cid, True, "Demo cabin")]
        assert not first.has_event("offer.received", consultation__id=cid)
        # A decliner can still take it from the queue: accepted at once, no ringing.
        picked = await first.request("queue.pick", consultation_id=cid)
        assert picked["consultation"]["state"] == "active" and picked["room"] == cid
        assert picked["consultation"]["physician"] == first.hello["principal"]["sub"]
        await n.event("consultation.started", consultation__id=cid)
        await n.event("presence.changed", physician=first.hello["principal"]["sub"], status="in_consultation")
        assert not first.has_event("offer.received", consultation__id=cid)
        await second.error("queue.pick", "conflict", consultation_id=cid)
        await second.error("queue.pick", "not_found", consultation_id="c-nope")
        acts = [e["act"] for e in await sig.app[SIGNALLING].journal.read(cid)]
        assert acts.count("offer.decline") == 2 and acts[-2:] == ["offer.accept", "consultation.start"]
    finally:
        for c in (n, a, b):
            await c.close()


async def test_pick_rules(sig: RunningServer) -> None:
    n = await nurse(sig)
    derma = await physician(sig, "dr-derma", available=False)
    cardio = await physician(sig, "dr-cardio", available=False)
    try:
        cid = (await n.request("visit.request", **VISIT))["consultation"]["id"]  # cardiology
        await derma.error("queue.pick", "forbidden", consultation_id=cid)
        await cardio.error("queue.pick", "conflict", consultation_id=cid)  # away: not taking patients
        await cardio.request("presence.set", status="available")
        await cardio.event("offer.received", consultation__id=cid)
        await cardio.error("queue.pick", "conflict", consultation_id=cid)  # ringing, not waiting
    finally:
        for c in (n, derma, cardio):
            await c.close()


async def test_a_vanished_physician_is_rung_again_once_back(sig: RunningServer) -> None:
    n = await nurse(sig)
    d = await physician(sig, "dr-cardio")
    try:
        cid = (await n.request("visit.request", **VISIT))["consultation"]["id"]
        await d.event("offer.received", consultation__id=cid)
        await d.drop()
        left = await n.event("visit.status", consultation_id=cid, status="physician_left")
        assert left["looking"] is False and left["physician_name"] == "Dr Cardio"
        back = await physician(sig, "dr-cardio", available=False)
        try:
            assert back.hello["state"]["presence"] == "available"
            await back.event("offer.received", consultation__id=cid)  # a reload is no answer
        finally:
            await back.close()
    finally:
        await n.close()


async def test_wait_estimates_from_real_figures(sig: RunningServer) -> None:
    service = sig.app[SIGNALLING]
    n = await nurse(sig)
    try:
        # Nobody connected for the specialty: no estimate (not a flat 10 minutes).
        first = await n.request("visit.request", **VISIT)
        assert first["estimated_wait_s"] is None
        await n.request("visit.cancel", consultation_id=first["consultation"]["id"])
        d = await physician(sig, "dr-cardio")
        try:
            # A physician free for it: no wait.
            c1 = await n.request("visit.request", **VISIT)
            assert c1["estimated_wait_s"] == 0
            cid1 = c1["consultation"]["id"]
            await d.event("offer.received", consultation__id=cid1)
            await d.request("offer.accept", consultation_id=cid1)
            # Busy, and no consultation length known yet: it cannot say.
            c2 = await n.request("visit.request", **VISIT)
            assert c2["estimated_wait_s"] is None
            await asyncio.sleep(0.3)  # a consultation of a known (short) length
            await d.request("consultation.end", consultation_id=cid1)
            await d.event("offer.received", consultation__id=c2["consultation"]["id"])
            await n.wait(lambda: service.visits.mean_length_s() is not None, what="the length noted")
            length = service.visits.mean_length_s()
            assert length is not None and 0.3 <= length < 10
            await d.request("offer.accept", consultation_id=c2["consultation"]["id"])
            # In consultation with one length known: the request ahead waits about that long.
            c3 = await n.request("visit.request", **VISIT)
            assert c3["position"] == 1 and c3["estimated_wait_s"] == round(length, 1)
            c4 = await n.request("visit.request", **VISIT)
            assert c4["position"] == 2 and c4["estimated_wait_s"] == round(2 * length, 1)
            # The one ahead is cancelled: the next moves up, with its new estimate.
            await n.request("visit.cancel", consultation_id=c3["consultation"]["id"])
            moved = await n.event("visit.position", consultation_id=c4["consultation"]["id"], position=1)
            assert moved["estimated_wait_s"] == round(length, 1)
        finally:
            await d.close()
    finally:
        await n.close()
