"""`teleconsult serve --media-workers N`: N SFU worker processes beside the signalling, each a node
of a real Redis store with its own HTTP port and media ports; real aiortc peers publish and play
through them; a worker killed by its PID loses its rooms to a live one and is started again."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import av
import pytest
from aiortc import sdp as aiortc_sdp

from bench.rtc import child_pids
from config.settings import AuthSettings, StoreSettings, load_settings
from core.auth import TokenService
from signalling.store import open_store
from teleconsult.workers import plan_workers
from tests.sfu.clients import FlatVideoTrack, Session, play, publish
from tests.signalling.client import SigClient
from tests.signalling.test_flow import VISIT
from tests.support import ROOT, wait_for

pytestmark = pytest.mark.timeout(180)

KEY = "k" * 40
PORTS = (41000, 41199)
WORKER_LINE = re.compile(r"media worker (\d+): (\S+) \(pid (\d+), media ports (\d+)-(\d+)\)")


@dataclass
class WorkerLine:
    index: int
    url: str
    pid: int
    ports: tuple[int, int]


@dataclass
class Served:
    url: str
    process: subprocess.Popen[str]
    workers: list[WorkerLine]

    @property
    def ws_url(self) -> str:
        return self.url.replace("http", "ws", 1) + "/ws"


def _env(tmp: Path, redis_url: str | None) -> dict[str, str]:
    env = {**os.environ, "TELECONSULT_SERVER__DATA_DIR": str(tmp / "data"), "TELECONSULT_SERVER__LOG_LEVEL": "WARNING",
           "TELECONSULT_AUTH__SIGNING_KEY": KEY, "TELECONSULT_STORE__BACKEND": "memory",
           "TELECONSULT_MEDIA__LISTEN_IP": "127.0.0.1", "TELECONSULT_MEDIA__ALLOWED_REMOTE_NETWORKS": "127.0.0.0/8",
           "TELECONSULT_MEDIA__PORT_MIN": str(PORTS[0]), "TELECONSULT_MEDIA__PORT_MAX": str(PORTS[1]),
           "TELECONSULT_SIGNALLING__HEARTBEAT_S": "1.0"}
    if redis_url is not None:
        env.update(TELECONSULT_STORE__BACKEND="redis", TELECONSULT_STORE__REDIS_URL=redis_url,
                   TELECONSULT_STORE__KEY_PREFIX="tc:")
    return env


def serve_workers(tmp: Path, redis_url: str, workers: int = 2) -> Served:
    process = subprocess.Popen([sys.executable, "-m", "teleconsult", "serve", "--host", "127.0.0.1", "--port", "0",
                                "--media-workers", str(workers)], env=_env(tmp, redis_url), cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert process.stdout is not None
    lines: list[WorkerLine] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            pytest.fail(f"serve --media-workers exited at start ({process.returncode})")
        m = WORKER_LINE.search(line)
        if m:
            lines.append(WorkerLine(int(m[1]), m[2], int(m[3]), (int(m[4]), int(m[5]))))
        if "serving on" in line:
            return Served(line.split("serving on", 1)[1].strip(), process, lines)
    process.kill()
    pytest.fail("serve --media-workers did not start within 90 s")


def stop_served(served: Served) -> None:
    """SIGTERM to the parent: it passes it to its workers, which drain and exit (then it does)."""
    pids = [w.pid for w in served.workers]
    if served.process.poll() is None:
        served.process.send_signal(signal.SIGTERM)
        try:
            served.process.wait(30)
        except subprocess.TimeoutExpired:
            served.process.kill()
            served.process.wait(10)
    if served.process.stdout is not None:
        served.process.stdout.close()
    for pid in pids + child_pids(served.process.pid):
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _tokens(tmp: Path) -> TokenService:
    return TokenService(AuthSettings(signing_key=KEY), str(tmp / "tokens"))


async def _nodes(redis_url: str) -> dict[str, Any]:
    store = open_store(StoreSettings(backend="redis", redis_url=redis_url, key_prefix="tc:"), "test")
    try:
        return await store.nodes()
    finally:
        await store.close()


async def _consultation(served: Served, tokens: TokenService, i: int, *, consent_recording: bool = False
                       ) -> tuple[SigClient, SigClient, str, dict[str, Any], dict[str, Any]]:
    """Nurse n<i> and physician dr-w<i> on the parent's socket: the consultation starts; the nurse's
    and the physician's ``consultation.started``."""
    n = await SigClient.connect(served.ws_url, tokens.issue_access("nurse", f"n{i}", site="cabin-demo"))
    d = await SigClient.connect(served.ws_url, tokens.issue_access("physician", f"dr-w{i}",
                                                                   specialties=["cardiology"]))
    await d.request("presence.set", status="available")
    cid = (await n.request("visit.request", **{**VISIT, "consent_recording": consent_recording}))["consultation"]["id"]
    await d.event("offer.received", 20, consultation__id=cid)
    await d.request("offer.accept", consultation_id=cid)
    return n, d, cid, await n.event("consultation.started", 20), await d.event("consultation.started", 20)


def _candidate_ports(sdp: str) -> set[int]:
    return {c.port for m in aiortc_sdp.SessionDescription.parse(sdp).media for c in m.ice_candidates}


async def _media_flows(base: str, room: str, nurse_token: str, physician_token: str,
                       ports: tuple[int, int]) -> list[Session]:
    """The nurse publishes a camera by WHIP at ``base``, the physician plays it by WHEP: a frame
    arrives; the node answered from its own media ports."""
    async with aiohttp.ClientSession() as http:
        pub = await publish(http, base, room, nurse_token, [FlatVideoTrack(160, 120)])
        sub = await play(http, base, room, physician_token, ["video"])
    frame = await asyncio.wait_for(sub.transceivers[0].receiver.track.recv(), 20)
    assert frame.width == 160
    for session in (pub, sub):
        found = _candidate_ports(session.answer)
        assert found and all(ports[0] <= p <= ports[1] for p in found), (found, ports)
    return [pub, sub]


def _get(url: str) -> tuple[int, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, dict(r.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)


def test_plan_splits_ports_and_numbers_http_ports(tmp_path: Path) -> None:
    settings = load_settings(env={"TELECONSULT_STORE__BACKEND": "redis", "TELECONSULT_SERVER__MEDIA_WORKERS": "3",
                                  "TELECONSULT_SERVER__PORT": "8080", "TELECONSULT_MEDIA__PORT_MIN": "40000",
                                  "TELECONSULT_MEDIA__PORT_MAX": "40100",
                                  "TELECONSULT_SERVER__PUBLIC_URL": "https://tc.example.org",
                                  "TELECONSULT_SERVER__DATA_DIR": str(tmp_path)})
    plans = plan_workers(settings)
    assert [(p.index, p.http_port, p.port_min, p.port_max) for p in plans] == [
        (1, 8081, 40000, 40033), (2, 8082, 40034, 40067), (3, 8083, 40068, 40100)]
    assert [p.public_url for p in plans] == [f"https://tc.example.org:{port}" for port in (8081, 8082, 8083)]
    assert all(p.env()["TELECONSULT_SERVER__MEDIA_WORKERS"] == "1" for p in plans)
    free = plan_workers(settings.replace(server={"port": 0}))
    assert [(p.http_port, p.public_url) for p in free] == [(0, "")] * 3


def test_media_workers_on_the_memory_store_do_not_start(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "teleconsult", "serve", "--port", "0", "--media-workers", "2"],
                         env=_env(tmp_path, None), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert "serving on" not in run.stdout
    assert "media_workers" in run.stderr and "--media-workers" in run.stderr and "redis" in run.stderr, run.stderr
    toml = tmp_path / "workers.toml"
    toml.write_text("[server]\nmedia_workers = 2\n")
    check = subprocess.run([sys.executable, "-m", "teleconsult", "check-config", str(toml)],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert check.returncode == 2 and f"{toml}:2: server.media_workers" in check.stderr, check.stderr


async def test_two_workers_are_two_nodes_and_forward_in_their_own_ports(tmp_path: Path, redis_url: str) -> None:
    served = serve_workers(tmp_path, redis_url)
    clients: list[SigClient] = []
    peers: list[Session] = []
    tokens = _tokens(tmp_path)
    try:
        assert [w.index for w in served.workers] == [1, 2]
        by_url = {w.url: w for w in served.workers}
        assert len(by_url) == 2 and served.url not in by_url
        assert served.workers[0].ports == (41000, 41099) and served.workers[1].ports == (41100, 41199)
        nodes = await _nodes(redis_url)
        # The workers are the nodes; the parent (signalling and pages) is none.
        assert sorted(n["url"] for n in nodes.values() if n["alive"]) == sorted(by_url)
        assert child_pids(served.process.pid) and {w.pid for w in served.workers} <= set(child_pids(served.process.pid))
        # Two consultations: one room on each worker (the least loaded one each time).
        rooms = []
        for i in (1, 2):
            n, d, cid, started_n, started_d = await _consultation(served, tokens, i)
            clients += [n, d]
            assert started_n["sfu_url"] == started_d["sfu_url"] in by_url
            rooms.append((cid, started_n, started_d))
        assert {r[1]["sfu_url"] for r in rooms} == set(by_url)
        # Real aiortc peers publish and play through each worker, on that worker's media ports.
        for cid, started_n, started_d in rooms:
            worker = by_url[started_n["sfu_url"]]
            peers += await _media_flows(worker.url, cid, started_n["room_token"], started_d["room_token"],
                                        worker.ports)
        # The parent forwards nothing (no WHIP), and its pages may reach both workers.
        status, headers = _get(served.url + "/nurse")
        assert status == 200
        connect = next(d for d in headers["Content-Security-Policy"].split("; ") if d.startswith("connect-src"))
        assert all(url in connect.split() for url in by_url), connect
        assert _get(served.url + "/whip/" + rooms[0][0])[0] in (404, 405)
        for (cid, _, _), physician in zip(rooms, clients[1::2]):
            await physician.request("consultation.end", consultation_id=cid)
        # SIGTERM to the parent reaches the workers by PID: all drain (nothing live) and exit.
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(30) == 0
        await wait_for(lambda: not any(_alive(w.pid) for w in served.workers), 10, what="the workers exited")
    finally:
        for peer in peers:
            await peer.close()
        for c in clients:
            await c.close()
        stop_served(served)


async def test_a_killed_worker_loses_its_rooms_and_is_started_again(tmp_path: Path, redis_url: str) -> None:
    served = serve_workers(tmp_path, redis_url)
    clients: list[SigClient] = []
    peers: list[Session] = []
    tokens = _tokens(tmp_path)
    try:
        by_url = {w.url: w for w in served.workers}
        n, d, cid, started_n, started_d = await _consultation(served, tokens, 1)
        clients += [n, d]
        victim = by_url[started_n["sfu_url"]]
        peers += await _media_flows(victim.url, cid, started_n["room_token"], started_d["room_token"], victim.ports)
        dead_nodes = {nid for nid, info in (await _nodes(redis_url)).items() if info["url"] == victim.url}

        os.kill(victim.pid, signal.SIGKILL)
        moved_n = await n.event("room.moved", 30, room=cid)
        moved_d = await d.event("room.moved", 10, room=cid)
        # Re-placed on a live node: the other worker, or the victim already started again (same URL,
        # a new node).
        assert moved_n["sfu_url"] == moved_d["sfu_url"] in by_url
        target = by_url[moved_n["sfu_url"]]
        for peer in peers:  # their media sessions died with the node
            await peer.close()
        peers.clear()
        peers += await _media_flows(target.url, cid, moved_n["room_token"], moved_d["room_token"], target.ports)

        # The parent started the victim again: a new process, a new live node at the same URL.
        async def restarted() -> bool:
            nodes = await _nodes(redis_url)
            return any(info["alive"] and info["url"] == victim.url and nid not in dead_nodes
                       for nid, info in nodes.items())
        await wait_for(restarted, 30, what="the killed worker serving again")
        assert not _alive(victim.pid)
        assert len([p for p in child_pids(served.process.pid) if _alive(p)]) >= 2
        assert served.process.poll() is None
        await d.request("consultation.end", consultation_id=cid)
    finally:
        for peer in peers:
            await peer.close()
        for c in clients:
            await c.close()
        stop_served(served)


def _manifest(tmp: Path, cid: str) -> dict[str, Any]:
    try:
        return dict(json.loads((tmp / "data" / "recordings" / cid / "manifest.json").read_text()))
    except (OSError, ValueError):
        return {}


async def _recording(served: Served, token: str, cid: str, action: str) -> dict[str, Any]:
    """The physician's start or stop, on the parent (it passes it on to the room's worker)."""
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{served.url}/api/consultations/{cid}/recording", json={"action": action},
                             headers={"Authorization": f"Bearer {token}"}) as answer:
            body = await answer.json()
            assert answer.status == 200, body
            return dict(body)


async def test_a_killed_workers_recording_resumes_on_the_other_in_a_new_segment(tmp_path: Path,
                                                                               redis_url: str) -> None:
    """Issue 19: the worker recording a consultation is SIGKILLed; the room moves, the parties publish
    again on the new node, which resumes the recording in a new segment of the same recording: the
    manifest lists both segments (which node, why the first ended) and the gap between them, from the
    last frame the killed one has on disk to the first frame of the next; the export plays both."""
    served = serve_workers(tmp_path, redis_url)
    clients: list[SigClient] = []
    peers: list[Session] = []
    tokens = _tokens(tmp_path)
    physician = tokens.issue_access("physician", "dr-w1", specialties=["cardiology"])
    try:
        by_url = {w.url: w for w in served.workers}
        n, d, cid, started_n, started_d = await _consultation(served, tokens, 1, consent_recording=True)
        clients += [n, d]
        victim = by_url[started_n["sfu_url"]]
        nodes = await _nodes(redis_url)
        victim_nodes = {nid for nid, info in nodes.items() if info["url"] == victim.url}
        peers += await _media_flows(victim.url, cid, started_n["room_token"], started_d["room_token"], victim.ports)
        started = await _recording(served, physician, cid, "start")
        assert started["recording"] is True
        await d.event("recording.started", 10, consultation_id=cid)

        # Frames on disk (the tracks flush every recording.flush_interval_s, 1 s) before the kill.
        async def recorded() -> bool:
            tracks = _manifest(tmp_path, cid).get("tracks", [])
            return any(t["source"] == "camera" and t["start_offset_ms"] is not None for t in tracks)
        await wait_for(recorded, 20, what="the first segment's first frame")
        await asyncio.sleep(2.5)
        os.kill(victim.pid, signal.SIGKILL)
        moved_n = await n.event("room.moved", 30, room=cid)
        moved_d = await d.event("room.moved", 10, room=cid)
        target = by_url[moved_n["sfu_url"]]
        for peer in peers:
            await peer.close()
        peers.clear()
        peers += await _media_flows(target.url, cid, moved_n["room_token"], moved_d["room_token"], target.ports)

        async def resumed() -> bool:
            gaps = _manifest(tmp_path, cid).get("gaps") or []
            return bool(gaps) and gaps[0]["duration_ms"] is not None
        await wait_for(resumed, 30, what="the recording resumed on the new node, its gap closed")
        stopped = (await _recording(served, physician, cid, "stop"))["manifest"]
        assert stopped["stopped_reason"] == "stopped"
        assert stopped == _manifest(tmp_path, cid)
        first, second = stopped["segments"]
        assert first["node"] in victim_nodes and first["end_reason"] == "node_lost"
        assert second["node"] not in victim_nodes and second["end_reason"] == "stopped"
        (gap,) = stopped["gaps"]
        old = [t for t in stopped["tracks"] if t["segment"] == 0]
        new = [t for t in stopped["tracks"] if t["segment"] == 1]
        assert old and new and all(t["file"].endswith("-recovered.webm") for t in old)
        assert gap["reason"] == "node_lost" and gap["after_segment"] == 0
        assert gap["start_ms"] == max(t["end_offset_ms"] for t in old if t["end_offset_ms"] is not None)
        assert gap["end_ms"] == min(t["start_offset_ms"] for t in new if t["start_offset_ms"] is not None)
        assert 0 < gap["duration_ms"] < 30000 and gap["start_at"] < gap["end_at"]
        assert sum(t["frames"] for t in old) > 0 and sum(t["frames"] for t in new) > 0

        # The recording as the physician reads it from any process: the manifest, and one export
        # where the nurse's camera goes on across the gap.
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {physician}"}) as http:
            async with http.get(f"{served.url}/api/recordings/{cid}") as answer:
                assert answer.status == 200 and (await answer.json())["gaps"] == [gap]
            async with http.get(f"{served.url}/api/recordings/{cid}/export") as answer:
                assert answer.status == 200
                (tmp_path / "export.mkv").write_bytes(await answer.read())
        with av.open(str(tmp_path / "export.mkv")) as container:
            assert len(container.streams.video) == 1
            times = [float(p.pts * p.time_base) for p in container.demux() if p.size and p.pts is not None]
        assert len(times) == sum(t["frames"] for t in stopped["tracks"])
        assert max(b - a for a, b in zip(times, times[1:])) * 1000 == pytest.approx(gap["duration_ms"], abs=5)
        await d.request("consultation.end", consultation_id=cid)
    finally:
        for peer in peers:
            await peer.close()
        for c in clients:
            await c.close()
        stop_served(served)
