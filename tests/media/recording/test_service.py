"""Recording a consultation through the real server: signalling, SFU, aiortc peers, PyAV.

Publishers are gated: they send nothing until released, then exactly N frames, so that
the recorded counts can be compared with what the SFU forwarded. (Crash safety and
tamper detection of the files are tested in test_recorder.py / test_crypto.py.)
"""

from __future__ import annotations

import asyncio
import fractions
import io
import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable

import aiohttp
import av
import numpy as np
from aiortc.mediastreams import MediaStreamTrack

from config.settings import RecordingSettings, ServerSettings, Settings
from core.vocabulary import Act, ConsultationId
from media.recording.appkeys import RECORDING
from media.recording.ports import Consultation, JournalValue
from media.recording.service import RecordingService
from media.recording.stills import StillStore
from media.recording.store import RecordingStore
from media.recording.vault import MasterKey, Vault
from sfu.appkeys import SFU
from tests.sfu.clients import FlatVideoTrack, Session, play, publish
from tests.signalling.client import SigClient
from tests.support import RunningServer, run_cli, wait_for

VIDEO_FRAMES = 45
AUDIO_FRAMES = 75
VISIT: dict[str, Any] = {"patient_ref": "P-9", "reason": "skin lesion", "specialty": "dermatology",
                         "priority": "routine", "consent_teleconsultation": True, "consent_recording": True}


class GatedVideo(MediaStreamTrack):
    """Sends nothing until ``gate`` opens, then exactly ``count`` frames at 30 fps."""

    kind = "video"

    def __init__(self, gate: asyncio.Event, count: int, shade: int) -> None:
        super().__init__()
        self.gate, self.count, self.shade = gate, count, shade
        self.sent = 0
        self._start = 0.0

    async def recv(self) -> av.VideoFrame:
        await self.gate.wait()
        if self.sent >= self.count:
            await asyncio.Future()  # done: never another frame (cancelled when the peer closes)
        if self.sent == 0:
            self._start = time.monotonic()
        await asyncio.sleep(max(0.0, self._start + self.sent / 30 - time.monotonic()))
        image = np.full((120, 160, 3), self.shade, np.uint8)
        image[:, (self.sent * 3) % 160] = 255
        frame = av.VideoFrame.from_ndarray(image, format="bgr24")
        frame.pts, frame.time_base = self.sent * 3000, fractions.Fraction(1, 90000)
        self.sent += 1
        return frame


class GatedAudio(MediaStreamTrack):
    """A tone in 20 ms frames, ``count`` of them once ``gate`` opens."""

    kind = "audio"

    def __init__(self, gate: asyncio.Event, count: int, hz: float) -> None:
        super().__init__()
        self.gate, self.count, self.hz = gate, count, hz
        self.sent = 0
        self._start = 0.0

    async def recv(self) -> av.AudioFrame:
        await self.gate.wait()
        if self.sent >= self.count:
            await asyncio.Future()
        if self.sent == 0:
            self._start = time.monotonic()
        await asyncio.sleep(max(0.0, self._start + self.sent * 0.02 - time.monotonic()))
        t = (np.arange(960) + self.sent * 960) / 48000
        samples = (np.sin(2 * math.pi * self.hz * t) * 8000).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 48000, self.sent * 960, fractions.Fraction(1, 48000)
        self.sent += 1
        return frame


async def open_consultation(server: RunningServer, consent: bool = True) -> dict[str, Any]:
    """Nurse, agent and physician online; an active consultation; their room tokens."""
    t = server.tokens
    nurse = await SigClient.connect(server.ws_url, t.issue_access("nurse", "nurse-1", site="cabin-demo"))
    agent = await SigClient.connect(server.ws_url, t.issue_access("agent", "agent-cabin-demo", site="cabin-demo"))
    doctor = await SigClient.connect(server.ws_url, t.issue_access("physician", "dr-demo"))
    await doctor.request("presence.set", status="available")
    cid = (await nurse.request("visit.request", **{**VISIT, "consent_recording": consent}))["consultation"]["id"]
    await doctor.event("offer.received", consultation__id=cid)
    accepted = await doctor.request("offer.accept", consultation_id=cid)
    nurse_started = await nurse.event("consultation.started")
    agent_started = await agent.event("consultation.started")
    return {"cid": cid, "nurse": nurse, "agent": agent, "doctor": doctor, "doctor_room": accepted["room_token"],
            "nurse_room": nurse_started["room_token"], "agent_room": agent_started["room_token"]}


def bearer(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **extra}


async def recording(http: aiohttp.ClientSession, server: RunningServer, cid: str, action: str,
                    token: str) -> tuple[int, dict[str, Any]]:
    async with http.post(f"{server.url}/api/consultations/{cid}/recording", json={"action": action},
                         headers=bearer(token)) as r:
        return r.status, await r.json()


async def connected(*sessions: Session) -> None:
    for s in sessions:
        await wait_for(lambda s=s: s.pc.connectionState == "connected", 15, what="peer connected")


async def close_all(c: dict[str, Any], sessions: list[Session]) -> None:
    for s in sessions:
        await s.close()
    for name in ("nurse", "agent", "doctor"):
        await c[name].close()


async def test_a_consultation_is_recorded_in_sync_with_access_control(server: RunningServer, tmp_path: Path) -> None:
    c = await open_consultation(server)
    cid, t = c["cid"], server.tokens
    doctor_token = t.issue_access("physician", "dr-demo")
    gate = asyncio.Event()
    sessions: list[Session] = []
    async with aiohttp.ClientSession() as http:
        try:
            sessions.append(await publish(http, server.url, cid, c["nurse_room"], [
                GatedVideo(gate, VIDEO_FRAMES, 60), GatedAudio(gate, AUDIO_FRAMES, 440)]))
            sfu = server.app[SFU]
            await wait_for(lambda: len(sfu.publications(cid)) == 2, what="nurse publications")
            status, body = await recording(http, server, cid, "start", doctor_token)
            assert status == 200, body
            started = await c["nurse"].event("recording.started", consultation_id=cid)
            assert started["by"] == "dr-demo"
            await c["doctor"].event("recording.started", consultation_id=cid)
            # The device agent publishes after the start: its tracks are recorded too.
            sessions.append(await publish(http, server.url, cid, c["agent_room"], [
                GatedAudio(gate, AUDIO_FRAMES, 120), GatedVideo(gate, VIDEO_FRAMES, 160)],
                sources=["stethoscope", "dermatoscope"]))
            await wait_for(lambda: len(sfu.publications(cid)) == 4, what="agent publications")
            sessions.append(await play(http, server.url, cid, c["doctor_room"], ["video", "video", "audio", "audio"]))
            await connected(*sessions)
            room = sfu.create_room(cid)
            await wait_for(lambda: all(p.pc.connectionState == "connected" for p in room.participants.values()),
                           15, what="SFU legs connected")
            session = server.app[RECORDING].session(cid)
            assert session is not None and len(session.manifest.tracks) == 4
            gate.set()  # every source starts at once

            counts = {src: sfu.metrics.track(kind, src) for kind, src in (
                ("video", "camera"), ("audio", "microphone"), ("audio", "stethoscope"), ("video", "dermatoscope"))}
            expected = {"camera": VIDEO_FRAMES, "dermatoscope": VIDEO_FRAMES, "microphone": AUDIO_FRAMES,
                        "stethoscope": AUDIO_FRAMES}
            await wait_for(lambda: all(counts[s].frames >= n for s, n in expected.items()), 20,
                           what="every frame forwarded")
            await wait_for(lambda: all(counts[s].packets_out > 0 for s in expected), 5, what="subscriber fed")
            await asyncio.sleep(0.3)  # the last packets' way through the tap
            status, body = await recording(http, server, cid, "stop", doctor_token)
            assert status == 200, body
            stopped = await c["nurse"].event("recording.stopped", consultation_id=cid)
            assert stopped["by"] == "dr-demo" and stopped["tracks"] == 4

            # Every frame the SFU forwarded is in the files, and every file decodes.
            manifest = body["manifest"]
            by_source = {tr["source"]: tr for tr in manifest["tracks"]}
            assert set(by_source) == set(expected)
            for source, n in expected.items():
                assert counts[source].frames == n, (source, counts[source])
                assert by_source[source]["frames"] == n, (source, by_source[source])
                # What the recorder saw is what the SFU counted; nothing came before a keyframe.
                assert by_source[source]["frames_seen"] == n and by_source[source]["frames_before_keyframe"] == 0
            store = server.app[RECORDING].store
            report = await asyncio.to_thread(store.verify, cid)
            assert report.ok, report.to_dict()
            for track in report.tracks:
                assert track.decoded_frames == expected[track.source], track
                assert track.decode_errors == 0 and not track.gaps, track

            # Access: the physician reads; anyone else gets the same 404 as for nothing.
            async with http.get(f"{server.url}/api/recordings", headers=bearer(doctor_token)) as r:
                assert [x["consultation_id"] for x in (await r.json())["recordings"]] == [cid]
            camera_file = by_source["camera"]["file"]
            async with http.get(f"{server.url}/api/recordings/{cid}/tracks/{camera_file}",
                                headers=bearer(doctor_token)) as r:
                assert r.status == 200
                data = await r.read()
            with av.open(io.BytesIO(data), "r") as container:
                assert sum(len(p.decode()) for p in container.demux(video=0) if p.size) == VIDEO_FRAMES
            other = t.issue_access("physician", "dr-other")
            nurse_token = t.issue_access("nurse", "nurse-1", site="cabin-demo")
            for token, path in ((other, cid), (other, f"{cid}/tracks/{camera_file}"), (other, f"{cid}/export"),
                                (nurse_token, cid), (doctor_token, "c-doesnotexist")):
                async with http.get(f"{server.url}/api/recordings/{path}", headers=bearer(token)) as r:
                    assert r.status == 404, path
                    assert await r.json() == {"error": "not_found", "reason": "no such recording"}
            admin = t.issue_access("admin", "admin-1")
            async with http.get(f"{server.url}/api/recordings/{cid}", headers=bearer(admin)) as r:
                assert r.status == 403 and (await r.json())["error"] == "reason_required"
            async with http.get(f"{server.url}/api/recordings/{cid}", headers=bearer(
                    admin, **{"X-Access-Reason": "quality audit Q-12"})) as r:
                assert r.status == 200 and (await r.json())["consultation_id"] == cid

            # The export plays in sync: every track starts within 50 ms of the others.
            async with http.get(f"{server.url}/api/recordings/{cid}/export", headers=bearer(doctor_token)) as r:
                assert r.status == 200 and r.headers["Content-Type"] == "video/x-matroska"
                exported = await r.read()
            firsts: dict[int, float] = {}
            frames: dict[int, int] = {}
            with av.open(io.BytesIO(exported), "r") as container:
                assert len(container.streams) == 4
                for packet in container.demux():
                    if not packet.size:
                        continue
                    idx = packet.stream.index
                    assert packet.pts is not None and packet.time_base is not None
                    firsts.setdefault(idx, float(packet.pts * packet.time_base))
                    frames[idx] = frames.get(idx, 0) + 1
            assert max(firsts.values()) - min(firsts.values()) <= 0.05, firsts
            assert sorted(frames.values()) == sorted(expected.values())
            assert not list(Path(server.settings.server.data_dir, "tmp").iterdir())  # no plaintext left behind

            # The command line works on the finished recording.
            env = {"TELECONSULT_SERVER__DATA_DIR": server.settings.server.data_dir}
            verify = await asyncio.to_thread(run_cli, "recording", "verify", cid, env=env)
            assert verify.returncode == 0, verify.stdout + verify.stderr
            assert f"recording {cid}: ok" in verify.stdout
            assert f"frames {VIDEO_FRAMES} decoded" in verify.stdout and "gaps 0" in verify.stdout
            out = tmp_path / "export.mkv"
            export = await asyncio.to_thread(run_cli, "recording", "export", cid, "--out", str(out), env=env)
            assert export.returncode == 0, export.stderr
            with av.open(str(out)) as container:
                assert len(container.streams) == 4
            missing = await asyncio.to_thread(run_cli, "recording", "verify", "c-nothing", env=env)
            assert missing.returncode == 1

            # The journal shows the start, the stop and each access.
            async with http.get(f"{server.url}/api/consultations/{cid}/journal", headers=bearer(doctor_token)) as r:
                entries = (await r.json())["entries"]
            acts = [(e["act"], e.get("op")) for e in entries]
            assert ("recording.start", None) in acts and ("recording.stop", None) in acts
            for op in ("manifest", "track", "export"):
                assert ("recording.access", op) in acts, op
            admin_read = [e for e in entries if e["act"] == "recording.access" and e["actor"] == "admin-1"]
            assert admin_read and admin_read[0]["access_reason"] == "quality audit Q-12"
            assert any(e["act"] == "recording.denied" and e["actor"] == "dr-other" for e in entries)
        finally:
            await close_all(c, sessions)


async def test_consent_roles_keyframe_on_start_and_stop_on_end(server: RunningServer) -> None:
    t = server.tokens
    doctor_token = t.issue_access("physician", "dr-demo")
    async with aiohttp.ClientSession() as http:
        # Without consent at check-in, no recording.
        c = await open_consultation(server, consent=False)
        try:
            status, body = await recording(http, server, c["cid"], "start", doctor_token)
            assert (status, body["error"]) == (403, "no_consent")
            status, body = await recording(http, server, c["cid"], "start", t.issue_access("physician", "dr-x"))
            assert status == 404
            status, body = await recording(http, server, c["cid"], "start",
                                           t.issue_access("nurse", "nurse-1", site="cabin-demo"))
            assert status == 403
            await c["doctor"].request("consultation.end", consultation_id=c["cid"])
        finally:
            await close_all(c, [])
        assert not (Path(server.settings.server.data_dir) / "recordings" / c["cid"]).exists()

        # With consent, started mid-stream: the PLI sent at start brings the keyframe the
        # file begins with (aiortc's encoder would otherwise send one every 3000 frames).
        c = await open_consultation(server)
        cid = c["cid"]
        sessions: list[Session] = []
        try:
            sessions.append(await publish(http, server.url, cid, c["nurse_room"], [FlatVideoTrack(160, 120)]))
            await connected(*sessions)
            counts = server.app[SFU].metrics.track("video", "camera")
            await wait_for(lambda: counts.frames > 45, 15, what="stream running")
            keyframes_before = counts.keyframes
            status, body = await recording(http, server, cid, "start", doctor_token)
            assert status == 200, body
            session = server.app[RECORDING].session(cid)
            assert session is not None
            await wait_for(lambda: session.manifest.tracks[0].frames >= 20, 10, what="recorded frames")
            assert counts.keyframes > keyframes_before
            status, body = await recording(http, server, cid, "start", doctor_token)
            assert (status, body["error"]) == (409, "conflict")
            # Ending the consultation stops the recording.
            await c["doctor"].request("consultation.end", consultation_id=cid)
            stopped = await c["nurse"].event("recording.stopped", consultation_id=cid)
            assert stopped["stop_reason"] == "consultation_ended"
            assert not server.app[RECORDING].recording(cid)
            report = await asyncio.to_thread(server.app[RECORDING].store.verify, cid)
            assert report.ok and report.tracks[0].decoded_frames >= 20, report.to_dict()
            manifest = json.loads((Path(server.settings.server.data_dir) / "recordings" / cid /
                                   "manifest.json").read_text())
            assert manifest["stopped_reason"] == "consultation_ended"
        finally:
            await close_all(c, sessions)


class _Journal:
    """A :class:`media.recording.ports.Journal` that keeps each act with its fields."""

    def __init__(self) -> None:
        self.entries: list[tuple[Act, dict[str, JournalValue]]] = []

    async def append(self, act: Act, *, actor: str, consultation_id: ConsultationId | None = None,
                     about: None = None, **ids: JournalValue) -> None:
        self.entries.append((act, {"actor": actor, "consultation_id": consultation_id, **ids}))


class _Signalling:
    """A :class:`media.recording.ports.Signalling` with no consultations: a journal, and
    the events it was asked to send."""

    def __init__(self) -> None:
        self.journal = _Journal()
        self.emitted: list[tuple[list[tuple[str, str]], dict[str, Any]]] = []

    async def get_any(self, consultation_id: ConsultationId, /) -> Consultation | None:
        return None

    async def emit(self, targets: Iterable[tuple[str, str]], message: dict[str, Any], /) -> None:
        self.emitted.append((list(targets), message))

    async def room_node_elsewhere(self, consultation_id: ConsultationId, /) -> str | None:
        return None

    @property
    def node_id(self) -> str:
        return "node-test"

    def on_room_opened(self, callback: Callable[[str], Awaitable[object]], /) -> None:
        pass


async def test_daily_purge_shreds_expired_stills_too_and_journals_them(tmp_path: Path) -> None:


    settings = replace(Settings(), server=replace(ServerSettings(), data_dir=str(tmp_path)),
                       recording=RecordingSettings(retention_days=30))
    vault = Vault(MasterKey.generate(), fsync=False)
    clock = [1.7e9]
    stills = StillStore(tmp_path / "stills", vault, wall_clock=lambda: clock[0])
    image = b"\xff\xd8" + bytes(range(256)) * 8
    old = stills.put("c-old", "dermatoscope", "image/jpeg", image, 640, 480)
    clock[0] += 20 * 86400
    young = stills.put("c-young", "otoscope", "image/jpeg", image, 640, 480)
    sig = _Signalling()
    service = RecordingService(settings, RecordingStore.for_data_dir(tmp_path, vault), vault, sfu=lambda: None,
                               signalling=lambda: sig, wall_clock=lambda: clock[0], stills=stills)
    now = old.created + 31 * 86400  # the old one is 31 days old, the young one 11
    assert await service.purge(now) == []  # no recordings to shred
    assert stills.list("c-old") == [] and stills.list("c-young") == [young]
    assert not (tmp_path / "stills" / "c-old" / f"{old.still_id}.bin").exists()
    assert not (tmp_path / "stills" / "c-old" / f"{old.still_id}.bin.key").exists()
    assert sig.journal.entries == [("still.shred", {"actor": "retention", "consultation_id": "c-old",
                                                    "still_id": old.still_id, "device": "dermatoscope",
                                                    "created": old.created})]
    # The daily task's clock is the service's wall clock.
    clock[0] = young.created + 30 * 86400
    assert await service.purge_stills() == [young.still_id]
    assert [act for act, _ in sig.journal.entries] == ["still.shred", "still.shred"]
