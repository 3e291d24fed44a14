"""Room tokens die with their consultation (both backends): after the end, the old room tokens
got 201 on WHIP and WHEP and the room was made again, with no journal and no recording. Now
media for a room whose consultation is not live is refused (403) and no room is made for it;
``[sfu] standalone_rooms`` (the SFU tests and benches) opens rooms for any valid token."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from sfu.appkeys import SFU
from tests.sfu.clients import FlatVideoTrack, client_pc, play, post_offer, publish
from tests.signalling.conftest import sig_settings
from tests.signalling.test_flow import VISIT, nurse, physician
from tests.support import RunningServer, start_server, wait_for


async def offer_sdp(kind: str, direction: str) -> str:
    pc = client_pc()
    pc.addTransceiver(FlatVideoTrack(160, 120) if direction == "sendonly" else kind, direction=direction)
    await pc.setLocalDescription(await pc.createOffer())
    sdp: str = pc.localDescription.sdp
    await pc.close()
    return sdp


async def test_room_tokens_die_with_their_consultation(sig: RunningServer) -> None:
    n = await nurse(sig)
    d = await physician(sig, "dr-cardio")
    sfu = sig.app[SFU]
    try:
        cid = (await n.request("visit.request", **VISIT))["consultation"]["id"]
        await d.event("offer.received", consultation__id=cid)
        doctor = (await d.request("offer.accept", consultation_id=cid))["room_token"]
        cabin = (await n.event("consultation.started"))["room_token"]
        async with aiohttp.ClientSession() as http:
            # Live: the seats' tokens work.
            pub = await publish(http, sig.url, cid, cabin, [FlatVideoTrack(160, 120)])
            view = await play(http, sig.url, cid, doctor, ["video"])
            await d.request("consultation.end", consultation_id=cid)
            await wait_for(lambda: cid not in sfu.rooms(), what="the room closed")
            for kind, token, direction in (("whip", cabin, "sendonly"), ("whep", doctor, "recvonly")):
                r = await post_offer(http, f"{sig.url}/{kind}/{cid}", token, await offer_sdp("video", direction))
                assert r.status == 403, (kind, r.status, await r.text())
                body = await r.json()
                assert body["error"] == "forbidden" and "not live" in body["reason"]
            assert cid not in sfu.rooms()  # not made again
            # A valid token for a room that never had a consultation: refused too.
            stray = sig.tokens.issue_room("c-stray", "nurse", role="nurse", publish=["camera"])
            r = await post_offer(http, f"{sig.url}/whip/c-stray", stray, await offer_sdp("video", "sendonly"))
            assert r.status == 403
            assert "c-stray" not in sfu.rooms()
            for session in (pub, view):
                await session.close()
    finally:
        for c in (n, d):
            await c.close()


async def test_standalone_rooms_open_for_any_valid_token(tmp_path: Path) -> None:
    sig = await start_server(sig_settings(tmp_path, "memory", None).replace(sfu={"standalone_rooms": True}))
    try:
        token = sig.tokens.issue_room("bench-room", "cabin", role="nurse", publish=["camera"])
        async with aiohttp.ClientSession() as http:
            session = await publish(http, sig.url, "bench-room", token, [FlatVideoTrack(160, 120)])
            assert "bench-room" in sig.app[SFU].rooms()
            await session.close()
    finally:
        await sig.server.close()
