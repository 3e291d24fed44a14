"""The device agent against the real server: WHIP per track, the room channel, stills, site mode.

Simulated devices at 5 frames per second keep the VP8 encoders affordable on two cores.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest
from av import AudioFrame, VideoFrame

from config.settings import Settings
from core.vocabulary import DEVICES
from config.settings import load_settings
from devices.agent import AgentConfig, DeviceAgent, client_network, media_node_url, room_of
from devices.agent_messages import PREVIEW_MAX_CHARS
from sfu.appkeys import SFU
from signalling.appkeys import SIGNALLING
from tests.devices.agent_clients import AGENT_SOURCES, Consultation, start_consultation, view, wait_publications
from tests.support import RunningServer, loopback_settings, wait_for


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return loopback_settings(tmp_path / "data", devices={"framerate": 5},
                             signalling={"offer_timeout_s": 10.0, "resume_grace_s": 5.0},
                             auth={"signing_key": "k" * 40})


def forwarded(server: RunningServer, source: str) -> int:
    """Packets of ``source`` the SFU has forwarded to subscribers so far (all publications)."""
    counts = server.app[SFU].metrics.tracks.get(("audio" if source == "stethoscope" else "video", source))
    return 0 if counts is None else int(counts.packets_out)


async def media_flows_again(server: RunningServer, sources: tuple[str, ...]) -> None:
    """Call once the old publications are gone: the new ones' packets reach the viewers."""
    base = {s: forwarded(server, s) for s in sources}
    for source in sources:
        await wait_for(lambda: forwarded(server, source) > base[source] + 10, 20,
                       what=f"{source} packets forwarded to the viewers")


def agent_room_token(server: RunningServer, cid: str) -> str:
    return server.tokens.issue_room(cid, "agent", role="agent", publish=AGENT_SOURCES)


async def run_agent(agent: DeviceAgent) -> asyncio.Task[None]:
    return asyncio.create_task(agent.run())


async def stop_agent(agent: DeviceAgent, task: asyncio.Task[None]) -> None:
    agent.stop()
    await asyncio.wait_for(task, 20)


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        AgentConfig(server="http://x", devices=("stethoscope",))
    with pytest.raises(ValueError, match="unknown device"):
        AgentConfig(server="http://x", devices=("thermometer",), room_token="t")
    with pytest.raises(ValueError, match="at least one"):
        AgentConfig(server="http://x", devices=("vitals",), room_token="t")
    with pytest.raises(ValueError, match="not a JWT"):
        room_of("nope")
    assert set(DEVICES) >= set(AGENT_SOURCES)
    # sfu_url: where WHIP goes; unusable ones (none, port 0, not http) mean the server's URL.
    assert media_node_url("https://sfu-2.example.org:8443/") == "https://sfu-2.example.org:8443"
    assert media_node_url("http://10.0.0.2") == "http://10.0.0.2"
    for bad in (None, "", "http://127.0.0.1:0", "ws://x:1", "http://:80", "http://x:99999"):
        assert media_node_url(bad) is None, bad


async def test_room_token_agent_publishes_obeys_the_physician_and_sends_stills(server: RunningServer) -> None:
    c = await start_consultation(server)
    agent = DeviceAgent(server.settings, AgentConfig(server=server.url, devices=AGENT_SOURCES + ("vitals",),
                                                     simulate=True, room_token=agent_room_token(server, c.id)))
    task = await run_agent(agent)
    http = aiohttp.ClientSession()
    viewers: list[Any] = []
    try:
        pubs = await wait_publications(server, c.id, AGENT_SOURCES)
        assert {p.identity for p in pubs.values()} == {"agent"}
        assert pubs["stethoscope"].codec.lower() == "audio/opus"
        physician = await view(http, server, c.id, c.physician_room_token)
        viewers.append(physician)
        # Each device is its own labelled track.
        assert sorted(physician.labels.values()) == sorted(f"agent {s}" for s in AGENT_SOURCES)
        audio = await asyncio.wait_for(physician.tracks["agent stethoscope"].recv(), 15)
        assert isinstance(audio, AudioFrame)
        assert audio.sample_rate == 48000
        for label, size in (("agent dermatoscope", (1280, 720)), ("agent otoscope", (720, 480))):
            frame = await asyncio.wait_for(physician.tracks[label].recv(), 20)
            assert isinstance(frame, VideoFrame)
            assert (frame.width, frame.height) == size, label

        # The physician came after the agent: it asks for the devices' status.
        physician.send({"type": "status_request"})
        await physician.wait_message(lambda e: {d["device"] for d in physician.of_type("device_status")}
                                     >= set(AGENT_SOURCES) | {"vitals"}, what="device_status of each device")
        status = {d["device"]: d for d in physician.of_type("device_status")}
        assert status["stethoscope"]["mode"] == "wide" and status["stethoscope"]["on"] is True
        assert status["dermatoscope"]["capabilities"]["still_size"] == [1920, 1080]
        envelope = next(e for e in physician.messages if e["data"].get("type") == "device_status")
        assert (envelope["from"], envelope["role"]) == ("agent", "agent")
        # The cuff's reading came before the physician (the simulated cuff reads at once, then every 30 s):
        # the status answer carries the last one, with the time it was measured.
        await physician.wait_message(lambda e: e["data"].get("type") == "measurement"
                                     and e["data"].get("name") == "systolic", timeout=5,
                                     what="the last blood pressure, replayed")
        bp = next(m for m in physician.of_type("measurement") if m["name"] == "systolic")
        assert time.time() - bp["ts"] > 1.0, bp  # the reading's own time, not the replay's

        # Drive the stethoscope: command_result ok, then device_status with the new mode.
        steth = agent.links[c.id].adapters["stethoscope"]
        physician.messages.clear()
        result = await physician.command("stethoscope", "set_mode", mode="bell")
        assert result["ok"] is True and result["status"]["mode"] == "bell", result
        await physician.wait_message(lambda e: e["data"].get("type") == "device_status"
                                     and e["data"].get("device") == "stethoscope" and e["data"]["mode"] == "bell")
        assert steth.mode == "bell"
        result = await physician.command("stethoscope", "set_gain", gain_db=6)
        assert result["ok"] and result["status"]["gain_db"] == 6.0

        # Bad commands get an error reply and change nothing.
        for device, action, fields in (("thermometer", "set_mode", {"mode": "bell"}),
                                       ("stethoscope", "set_mode", {"mode": "loud"}),
                                       ("stethoscope", "set_gain", {"gain_db": 99}),
                                       ("stethoscope", "set_gain", {"gain_db": "6"}),
                                       ("stethoscope", "explode", {}),
                                       ("otoscope", "power", {"on": "yes"})):
            result = await physician.command(device, action, **fields)
            assert result["ok"] is False and result["error"], result
        assert (steth.mode, steth.gain_db) == ("bell", 6.0)
        assert agent.links[c.id].adapters["otoscope"].powered is True

        # Measurements reach the physician (vitals every second).
        await physician.wait_message(lambda e: e["data"].get("type") == "measurement"
                                     and e["data"].get("device") == "vitals", what="a vitals measurement")
        measurement = physician.of_type("measurement")[0]
        assert {"name", "value", "unit", "ts"} <= set(measurement)

        # A full-resolution dermatoscope still: announced with a preview, downloaded by REST.
        result = await physician.command("dermatoscope", "still", timeout=30)
        assert result["ok"] is True, result
        ready = (await physician.wait_message(lambda e: e["data"].get("type") == "still_ready"))["data"]
        assert ready["still_id"] == result["status"]["still_id"] and ready["device"] == "dermatoscope"
        assert ready["preview"].startswith("data:image/jpeg;base64,") and len(ready["preview"]) <= PREVIEW_MAX_CHARS
        assert ready["url"] == f"/api/consultations/{c.id}/stills/{ready['still_id']}"
        headers = {"Authorization": f"Bearer {c.physician_access}"}
        async with http.get(server.url + ready["url"], headers=headers) as r:
            assert r.status == 200 and r.content_type == "image/png"
            image = cv2.imdecode(np.frombuffer(await r.read(), np.uint8), cv2.IMREAD_COLOR)
        assert image is not None
        assert image.shape == (1080, 1920, 3) == (ready["height"], ready["width"], 3)
        async with http.get(f"{server.url}/api/consultations/{c.id}/stills", headers=headers) as r:
            listed = (await r.json())["stills"]
        assert [s["still_id"] for s in listed] == [ready["still_id"]]

        # A nurse has no command grant: the SFU refuses, the agent never sees it.
        nurse = await view(http, server, c.id, c.nurse_room_token)
        viewers.append(nurse)
        nurse.send({"type": "command", "id": "n1", "device": "stethoscope", "action": "set_mode", "mode": "wide"})
        refused = await nurse.wait_message(lambda e: e.get("from") == "sfu")
        assert refused["data"]["type"] == "error"
        # A token with the command grant but not the physician's role: the agent refuses.
        # (The nurse's seat identity: the room admits only its seats' identities and admitted guests'.)
        odd = server.tokens.issue_room(c.id, "nurse", role="nurse", subscribe=True, command=True)
        intruder = await view(http, server, c.id, odd)
        viewers.append(intruder)
        result = await intruder.command("stethoscope", "set_mode", mode="wide")
        assert result["ok"] is False and "physician" in result["error"]
        assert steth.mode == "bell"

        # A network drop of one WHIP session: the agent publishes again.
        sfu = server.app[SFU]
        publisher = agent.links[c.id].publishers["otoscope"]
        old = pubs["otoscope"].id
        await sfu.leave(pubs["otoscope"].session_id)
        await wait_for(lambda: publisher.publishes >= 2, 30, what="the otoscope published again")
        again = await wait_publications(server, c.id, AGENT_SOURCES)
        assert again["otoscope"].id != old
        # ... with its media: the device track outlives the dropped session (tests/sfu: the
        # viewers' subscriptions follow the new publication).
        await media_flows_again(server, ("otoscope",))

        # Stopping deletes every WHIP session.
        await stop_agent(agent, task)
        await wait_for(lambda: not [p for p in sfu.publications(c.id) if p.identity == "agent"], 10,
                       what="the agent's publications gone")
    finally:
        for v in viewers:
            await v.close()
        agent.stop()
        await asyncio.wait_for(task, 20)
        await http.close()
        await c.close()


async def test_site_agent_joins_when_its_consultation_starts_and_leaves_when_it_ends(server: RunningServer) -> None:
    token = server.tokens.issue_access("agent", "agent-cabin-demo", site="cabin-demo")
    agent = DeviceAgent(server.settings, AgentConfig(server=server.url, devices=("stethoscope",), simulate=True,
                                                     site_token=token))
    task = await run_agent(agent)
    c: Consultation | None = None
    try:
        await asyncio.wait_for(agent.connected.wait(), 15)
        c = await start_consultation(server)
        pubs = await wait_publications(server, c.id, ("stethoscope",))
        assert pubs["stethoscope"].identity == "agent"
        # A dropped socket: the agent resumes its session and keeps its room.
        first_session = agent.session_id
        assert agent._ws is not None
        transport = agent._ws._response.connection.transport if agent._ws._response.connection else None
        assert transport is not None
        transport.abort()
        await wait_for(lambda: agent.sockets_opened >= 2 and agent.connected.is_set(), 20,
                       what="the agent's socket back")
        assert agent.session_id == first_session and c.id in agent.links
        await c.end()
        await wait_for(lambda: not agent.links, 15, what="the agent left")
        sfu = server.app[SFU]
        await wait_for(lambda: not sfu.publications(c.id), 10, what="no publication left")
        # A consultation of another site is none of its business.
        other = await start_consultation(server, site="ehpad-demo", nurse="nurse-2")
        try:
            await asyncio.sleep(1.0)
            assert not agent.links
        finally:
            await other.end()
            await other.close()
    finally:
        await stop_agent(agent, task)
        if c is not None:
            await c.close()


async def test_site_agent_follows_room_moved_to_the_new_node(server: RunningServer) -> None:
    """room.moved (the node died, the room re-placed): the agent deletes its WHIP sessions and
    publishes every device again at the new sfu_url with the new room token; the physician's
    viewer keeps receiving the devices' tracks and can still command them."""
    token = server.tokens.issue_access("agent", "agent-cabin-demo", site="cabin-demo")
    agent = DeviceAgent(server.settings, AgentConfig(server=server.url, devices=AGENT_SOURCES, simulate=True,
                                                     site_token=token))
    task = await run_agent(agent)
    http = aiohttp.ClientSession()
    viewers: list[Any] = []
    c: Consultation | None = None
    try:
        await asyncio.wait_for(agent.connected.wait(), 15)
        c = await start_consultation(server)
        before = await wait_publications(server, c.id, AGENT_SOURCES)
        link = agent.links[c.id]
        assert link.sfu_url == server.url
        await link.wait_published(30)
        physician = await view(http, server, c.id, c.physician_room_token)
        viewers.append(physician)
        for label in physician.tracks:
            await asyncio.wait_for(physician.tracks[label].recv(), 20)

        # Re-place the room on a node with another URL (the same process, reached as localhost).
        service = server.app[SIGNALLING]
        sfu = server.app[SFU]
        port = server.url.rsplit(":", 1)[1]
        moved_url = f"http://localhost:{port}"
        service.node_url = moved_url
        await service.heartbeat_node()
        first_token = link.token
        old_sessions = {p.session_id for p in before.values()}
        await service.rooms.move(c.id, service.node_id)
        await wait_for(lambda: link.moves == 1, 15, what="the agent followed room.moved")
        assert link.sfu_url == moved_url and link.token != first_token
        await link.wait_published(30)
        after = await wait_publications(server, c.id, AGENT_SOURCES)
        assert all(after[s].id != before[s].id for s in AGENT_SOURCES), "every device published again"
        assert all(p.session_url and p.session_url.startswith(moved_url + "/whip/")
                   for p in link.publishers.values())
        # The old WHIP sessions were deleted, not left behind.
        await wait_for(lambda: not old_sessions & {p.session_id for p in sfu.publications(c.id)}, 10,
                       what="the old WHIP sessions gone")
        assert len([p for p in sfu.publications(c.id) if p.identity == "agent"]) == len(AGENT_SOURCES)

        # The physician's viewer keeps receiving every device (its subscriptions follow the new
        # publications), and the data channel is back: a command works.
        await media_flows_again(server, AGENT_SOURCES)
        for track in physician.tracks.values():
            for _ in range(3):
                await asyncio.wait_for(track.recv(), 20)
        steth = link.adapters["stethoscope"]
        result = await physician.command("stethoscope", "set_mode", mode="bell", timeout=20)
        assert result["ok"] is True and result["status"]["mode"] == "bell", result
        assert steth.mode == "bell"

        await c.end()
        await wait_for(lambda: not agent.links, 15, what="the agent left")
        await wait_for(lambda: not [p for p in sfu.publications(c.id) if p.identity == "agent"], 10,
                       what="no agent publication left")
    finally:
        for v in viewers:
            await v.close()
        await stop_agent(agent, task)
        await http.close()
        if c is not None:
            await c.close()


def test_agent_media_follows_the_server_unless_set() -> None:
    """The agent serves no HTTP: unset media addresses follow the server it talks to."""
    defaults = load_settings(None, env={})
    near = client_network(defaults, "http://127.0.0.1:8080")
    assert near.listen_ip == "127.0.0.1" and near.allows("127.0.0.1") and not near.allows("192.0.2.1")
    assert client_network(defaults, "http://localhost:8080").listen_ip == "127.0.0.1"
    far = client_network(defaults, "https://teleconsult.example.org")
    assert far.listen_ip == "0.0.0.0" and far.allows("192.0.2.1") and far.port_min == 0
    chosen = defaults.replace(media={"listen_ip": "10.1.2.3", "allowed_remote_networks": ["10.0.0.0/8"]})
    set_ = client_network(chosen, "https://teleconsult.example.org")
    assert set_.listen_ip == "10.1.2.3" and not set_.allows("192.0.2.1")
