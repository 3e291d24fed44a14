"""The socket handler's end: a request stuck on anything never keeps its socket's session.

Issue 17, finding 1: ``consultation.end`` waited for good on a media close that never
finished, and the physician's socket handler with it: after closing the page the
physician stayed attached and "available", and the next emergency was offered to them.
Here the media close is wedged on purpose (the publisher's receiver can no longer send
its reports, as when libsrtp refused them); the physician ends the consultation and
closes the socket at once.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pylibsrtp
import pytest
from aiortc import RTCSessionDescription

from media import aiortc_internals
from sfu.appkeys import SFU
from signalling.appkeys import SIGNALLING
from tests.sfu.clients import FlatVideoTrack, client_pc
from tests.signalling.client import SigClient
from tests.signalling.conftest import sig_settings
from tests.signalling.test_flow import VISIT, agent, nurse, physician
from tests.support import RunningServer, start_server, wait_for

pytestmark = pytest.mark.timeout(90)

CLOSE_TIMEOUT_S = 4.0


def refuse_receiver_reports(data: bytes) -> bytes:
    if data[1] == 201:  # RTCP RR
        raise pylibsrtp.Error("packet is too long")
    return data


def matchable(entry: dict[str, Any] | None) -> bool:
    return entry is not None and entry.get("status") == "available" and entry.get("connected", True)


async def test_a_socket_closing_during_a_stuck_request_detaches_at_once(tmp_path: Path, caplog: Any) -> None:
    caplog.set_level(logging.INFO)
    sig: RunningServer = await start_server(sig_settings(tmp_path, "memory", None).replace(
        media={"close_timeout_s": CLOSE_TIMEOUT_S}))
    service = sig.app[SIGNALLING]
    sfu = sig.app[SFU]
    n = await nurse(sig)
    d: SigClient = await physician(sig)
    npc = client_pc()
    try:
        cid = (await n.request("visit.request", **VISIT))["consultation"]["id"]
        await d.event("offer.received", consultation__id=cid)
        await d.request("offer.accept", consultation_id=cid)
        await n.event("consultation.started")
        cam = npc.addTransceiver(FlatVideoTrack(), direction="sendonly")
        await npc.setLocalDescription(await npc.createOffer())
        reply = await n.request("media.offer", timeout=20, consultation_id=cid, sdp=npc.localDescription.sdp,
                                publish={cam.mid: "camera"})
        await npc.setRemoteDescription(RTCSessionDescription(sdp=reply["sdp"], type="answer"))
        await wait_for(lambda: sfu.metrics.totals().packets_in > 30, 15, what="media at the SFU")

        participant = sfu.session(reply["media_session"])
        assert participant is not None
        (transceiver,) = participant.pc.getTransceivers()
        aiortc_internals.rewrite_sent_rtp(transceiver.receiver.transport, refuse_receiver_reports)
        await wait_for(transceiver.receiver._RTCRtpReceiver__rtcp_task.done, 5,  # type: ignore[attr-defined]
                       what="the receiver's RTCP task to die")

        session_id = d.hello["session"]
        loop = asyncio.get_running_loop()
        await d.send({"type": "consultation.end", "id": 99, "consultation_id": cid})
        await asyncio.sleep(0.2)  # the request is running, stuck on the media close
        started = loop.time()
        await d.close()
        await wait_for(lambda: service.sessions.local[session_id].conn is None, 1.5,
                       what="the physician's session detached")
        entry = (await service.store.presences()).get("dr-demo")
        assert not matchable(entry), f"the physician is still matched: {entry}"
        assert loop.time() - started < 1.5

        # The abandoned request still ends the consultation, and the room closes, within the deadline.
        await n.event("consultation.ended", timeout=CLOSE_TIMEOUT_S + 8)
        await wait_for(lambda: cid not in sfu.rooms(), CLOSE_TIMEOUT_S + 8, what="the SFU room closed")
        assert any(r.getMessage() == "peer connection close timed out" and getattr(r, "session", None) ==
                   participant.id for r in caplog.records)
    finally:
        await npc.close()
        await n.close()
        await sig.server.close()


async def test_lone_surrogates_are_bad_json_not_internal_errors(sig: RunningServer, caplog: Any) -> None:
    """A JSON ``\\ud800`` escape makes a string no store, SQL driver or JWT library can
    encode: a hello's token and an agent's ``consultation_id`` answered ``internal`` with an
    ERROR and a traceback (bench.fuzz, ws). Now ``bad_json``, and the socket goes on."""
    caplog.set_level(logging.WARNING)

    async def refused(client: SigClient, frame: str) -> None:
        seen = len(client.events)
        await client.send(frame)
        error = await client.wait(lambda: next((e for e in client.events[seen:] if e["type"] == "error"), None), 5,
                                  "an error")
        assert error["code"] == "bad_json", error

    a = await agent(sig)
    good = sig.tokens.issue_access("physician", "dr-surrogate")
    stranger = await SigClient.connect(sig.ws_url)
    try:
        await refused(stranger, '{"type": "hello", "id": 1, "version": 1, "token": "%s\\ud800%s"}'
                      % (good[:24], good[24:]))
        for field in ('"consultation_id": "\\udfff"', '"consultation_id": "c-\\ud800\\ud800"'):
            await refused(a, '{"type": "media.leave", "id": 10, %s}' % field)
        # A surrogate pair is a character like any other.
        await a.send('{"type": "media.leave", "id": 20, "consultation_id": "c-\\ud83d\\ude00"}')
        reply = await a.wait(lambda: a.replies.pop(20, None), 5, "reply to media.leave")
        assert reply["type"] == "error" and reply["code"] not in ("bad_json", "internal"), reply
        await a.request("ping")
        assert not a.closed.is_set()
    finally:
        await stranger.close()
        await a.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
