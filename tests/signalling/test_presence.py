"""Presence is server state: in consultation from accept to end, kept across a reload (hidden from
matching meanwhile), offline only when nobody came back within the grace. Real sockets, both stores."""

from __future__ import annotations

import asyncio
from typing import Any

from signalling.presence import Presence, status_on_arrival
from signalling.protocol import PresenceStatus
from tests.signalling.client import SigClient
from tests.signalling.test_flow import VISIT, nurse, physician
from tests.support import RunningServer


def statuses(client: SigClient, who: str) -> list[tuple[str, bool]]:
    """The (status, connected) of ``who`` in the presence.changed events ``client`` got, in order."""
    return [(e["status"], e["connected"]) for e in client.events
            if e["type"] == "presence.changed" and e["physician"] == who]


async def listed(client: SigClient, who: str) -> dict[str, Any] | None:
    reply = await client.request("presence.list")
    return next((e for e in reply["physicians"] if e["physician"] == who), None)


async def test_in_consultation_from_accept_to_end(sig: RunningServer) -> None:
    watcher = await nurse(sig, sub="nurse-watching")
    n = await nurse(sig)
    d = await physician(sig, "dr-cardio")
    try:
        cid = (await n.request("visit.request", **VISIT))["consultation"]["id"]
        await d.event("offer.received", consultation__id=cid)
        await d.request("offer.accept", consultation_id=cid)
        changed = await n.event("presence.changed", physician="dr-cardio", status="in_consultation")
        assert changed["name"] == "Dr Cardio" and changed["connected"] is True
        assert (await listed(n, "dr-cardio"))["status"] == "in_consultation"  # type: ignore[index]
        # Server values are not a physician's to set; available waits for the end.
        await d.error("presence.set", "bad_message", status="in_consultation")
        await d.error("presence.set", "bad_message", status="offline")
        await d.error("presence.set", "conflict", status="available")
        # Away during the call: still in consultation now, away at its end.
        during = await d.request("presence.set", status="away")
        assert (during["status"], during["after"]) == ("in_consultation", "away")
        await d.request("consultation.end", consultation_id=cid)
        await n.event("presence.changed", physician="dr-cardio", status="away")
        # Available again; the next consultation ends back to available.
        await d.request("presence.set", status="available")
        cid2 = (await n.request("visit.request", **VISIT))["consultation"]["id"]
        await d.event("offer.received", consultation__id=cid2)
        await d.request("offer.accept", consultation_id=cid2)
        await n.request("consultation.end", consultation_id=cid2)
        await n.event("presence.changed", physician="dr-cardio", status="available")
        expected = ["away", "available", "in_consultation", "in_consultation", "away", "available", "in_consultation",
                    "available"]
        await watcher.wait(lambda: len(statuses(watcher, "dr-cardio")) >= len(expected))
        assert [s for s, _ in statuses(watcher, "dr-cardio")] == expected
    finally:
        for c in (watcher, n, d):
            await c.close()


async def test_a_reload_keeps_presence_and_hides_from_matching(sig: RunningServer) -> None:
    """A physician's page reloads (a new socket, a new session, no resume): never away, never
    offline; matched again once back."""
    n = await nurse(sig)
    d = await physician(sig, "dr-cardio")
    try:
        await n.event("presence.changed", physician="dr-cardio", status="away")  # a first arrival
        await n.event("presence.changed", physician="dr-cardio", status="available")
        await d.drop()
        dropped = await n.event("presence.changed", physician="dr-cardio", status="available", connected=False)
        assert dropped["name"] == "Dr Cardio"
        assert (await listed(n, "dr-cardio"))["connected"] is False  # type: ignore[index]
        # Hidden from matching meanwhile: the request waits, the nurse is told nobody is looked for.
        cid = (await n.request("visit.request", **VISIT))["consultation"]["id"]
        waiting = await n.event("visit.status", consultation_id=cid, status="waiting")
        assert waiting["looking"] is False
        await asyncio.sleep(0.5)  # deliberately idle: proving that no offer is made needs the time
        got = await n.request("consultation.get", consultation_id=cid)
        assert got["consultation"]["state"] == "requested"
        # Back on a new page (no resume) within the grace: the same status, and the request rings.
        d2 = await SigClient.connect(sig.ws_url, sig.tokens.issue_access("physician", "dr-cardio"))
        try:
            assert d2.hello["resumed"] is False and d2.hello["state"]["presence"] == "available"
            await n.event("presence.changed", physician="dr-cardio", status="available", connected=True)
            offer = await d2.event("offer.received", consultation__id=cid)
            assert offer["consultation"]["patient_ref"] == VISIT["patient_ref"]
            await asyncio.sleep(2.5)  # past the first session's grace (2 s): it must not turn offline
            assert (await listed(n, "dr-cardio"))["status"] == "available"  # type: ignore[index]
            assert ("offline", False) not in statuses(n, "dr-cardio")
            assert all(s != "away" for s, _ in statuses(n, "dr-cardio"))
        finally:
            await d2.close()
    finally:
        await n.close()


async def test_resume_mid_call_keeps_in_consultation(sig: RunningServer) -> None:
    n = await nurse(sig)
    d = await physician(sig, "dr-cardio")
    try:
        cid = (await n.request("visit.request", **VISIT))["consultation"]["id"]
        await d.event("offer.received", consultation__id=cid)
        await d.request("offer.accept", consultation_id=cid)
        await d.drop()
        await n.event("presence.changed", physician="dr-cardio", status="in_consultation", connected=False)
        d2 = await SigClient.connect(sig.ws_url, sig.tokens.issue_access("physician", "dr-cardio"),
                                     resume=d.hello["session"])
        try:
            assert d2.hello["resumed"] is True
            assert d2.hello["state"]["presence"] == "in_consultation"
            assert [c["id"] for c in d2.hello["state"]["consultations"]] == [cid]
            await n.event("presence.changed", physician="dr-cardio", status="in_consultation", connected=True)
            await d2.request("consultation.end", consultation_id=cid)
            await n.event("presence.changed", physician="dr-cardio", status="available", connected=True)
        finally:
            await d2.close()
    finally:
        await n.close()


async def test_a_call_ended_while_reloading_restores_available(sig: RunningServer) -> None:
    n = await nurse(sig)
    d = await physician(sig, "dr-cardio")
    try:
        cid = (await n.request("visit.request", **VISIT))["consultation"]["id"]
        await d.event("offer.received", consultation__id=cid)
        await d.request("offer.accept", consultation_id=cid)
        await n.event("consultation.started", consultation__id=cid)
        await d.drop()
        await n.event("presence.changed", physician="dr-cardio", status="in_consultation", connected=False)
        await n.request("consultation.end", consultation_id=cid)
        await n.event("presence.changed", physician="dr-cardio", status="available", connected=False)
        d2 = await SigClient.connect(sig.ws_url, sig.tokens.issue_access("physician", "dr-cardio"))
        try:
            assert d2.hello["state"]["presence"] == "available" and d2.hello["state"]["consultations"] == []
        finally:
            await d2.close()
    finally:
        await n.close()


async def test_offline_when_the_grace_passes(sig: RunningServer) -> None:
    n = await nurse(sig)
    d = await physician(sig, "dr-cardio")
    try:
        await d.drop()
        await n.event("presence.changed", physician="dr-cardio", status="available", connected=False)
        gone = await n.event("presence.changed", physician="dr-cardio", status="offline", timeout=10)
        assert gone["connected"] is False and gone["name"] == "Dr Cardio"
        assert await listed(n, "dr-cardio") is None
        # Back after the grace: a first arrival again (away), with no consultation to restore.
        d2 = await SigClient.connect(sig.ws_url, sig.tokens.issue_access("physician", "dr-cardio"))
        assert d2.hello["state"]["presence"] == "away"
        await d2.close()
    finally:
        await n.close()


async def test_peers_hear_a_reload_without_resume_as_resumed(sig: RunningServer) -> None:
    n = await nurse(sig)
    d = await physician(sig, "dr-cardio")
    try:
        cid = (await n.request("visit.request", **VISIT))["consultation"]["id"]
        await d.event("offer.received", consultation__id=cid)
        await d.request("offer.accept", consultation_id=cid)
        await d.drop()
        await n.event("peer.connection", consultation_id=cid, role="physician", state="dropped")
        d2 = await SigClient.connect(sig.ws_url, sig.tokens.issue_access("physician", "dr-cardio"))
        try:
            assert d2.hello["resumed"] is False and [c["id"] for c in d2.hello["state"]["consultations"]] == [cid]
            await n.event("peer.connection", consultation_id=cid, role="physician", state="resumed")
            await asyncio.sleep(2.5)  # past the first session's grace: the call goes on, nobody is lost
            assert not n.has_event("peer.connection", state="lost")
            assert (await n.request("consultation.get", consultation_id=cid))["consultation"]["state"] == "active"
        finally:
            await d2.close()
    finally:
        await n.close()


async def test_an_old_socket_closing_after_the_reload_said_hello_is_no_drop(sig: RunningServer) -> None:
    """A reload's new socket can say hello before the old one is seen to close: the other side
    must not be left on "dropped" while the party is back (clinic_day found it)."""
    n = await nurse(sig)
    d = await physician(sig, "dr-cardio")
    try:
        cid = (await n.request("visit.request", **VISIT))["consultation"]["id"]
        await d.event("offer.received", consultation__id=cid)
        await d.request("offer.accept", consultation_id=cid)
        n2 = await nurse(sig)
        try:
            await n.drop()
            await asyncio.sleep(1.0)
            assert not d.has_event("peer.connection", role="nurse", state="dropped")
        finally:
            await n2.close()
    finally:
        await d.close()


async def test_a_closed_second_tab_ending_its_grace_while_the_first_reloads_ends_no_call(sig: RunningServer) -> None:
    """Two nurse tabs; the second is closed, the first reloads. The second's grace ends while the
    first is between its old and new socket: the first may still come back, so the call goes on
    (it ended with connection_lost: clinic_day)."""
    n = await nurse(sig)
    d = await physician(sig, "dr-cardio")
    try:
        cid = (await n.request("visit.request", **VISIT))["consultation"]["id"]
        await d.event("offer.received", consultation__id=cid)
        await d.request("offer.accept", consultation_id=cid)
        second = await nurse(sig)
        await second.drop()  # the second tab closed: its grace (2 s) starts
        await asyncio.sleep(1.2)
        await n.drop()  # the first tab reloads: its grace runs to 3.2 s
        await asyncio.sleep(1.4)  # the second tab's grace is over, the first's is not
        back = await SigClient.connect(sig.ws_url, sig.tokens.issue_access("nurse", "nurse-1", site="cabin-demo"),
                                       resume=n.hello["session"])
        try:
            assert back.hello["resumed"] is True
            assert [c["id"] for c in back.hello["state"]["consultations"]] == [cid]
            assert not d.has_event("consultation.ended", consultation_id=cid)
            await back.request("consultation.end", consultation_id=cid)
        finally:
            await back.close()
    finally:
        await d.close()


def test_status_on_arrival_table() -> None:
    def entry(status: PresenceStatus, after: PresenceStatus | None = None) -> Presence:
        return Presence("dr", status, ("general",), (), 0.0, "s", "p", False, after)

    A, B, W, IC, OFF = (PresenceStatus.AVAILABLE, PresenceStatus.BUSY, PresenceStatus.AWAY,
                        PresenceStatus.IN_CONSULTATION, PresenceStatus.OFFLINE)
    assert status_on_arrival(None, live=False) == (W, None)  # a first arrival
    assert status_on_arrival(None, live=True) == (IC, None)
    assert status_on_arrival(entry(A), live=False) == (A, None)  # a reload: what they had
    assert status_on_arrival(entry(B), live=False) == (B, None)
    assert status_on_arrival(entry(IC), live=True) == (IC, None)
    assert status_on_arrival(entry(IC, W), live=True) == (IC, W)
    assert status_on_arrival(entry(IC, W), live=False) == (W, None)  # the call ended meanwhile
    assert status_on_arrival(entry(IC), live=False) == (A, None)
    assert status_on_arrival(entry(OFF), live=False) == (A, None)
    assert status_on_arrival(entry(A), live=True) == (IC, None)
