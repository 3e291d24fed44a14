"""`teleconsult serve` with its defaults keeps health data private at rest: after a consultation
with a recording, a still and a report, every file under data_dir is 0600, every folder 0700,
and no file holds the visit's reason, the patient's reference, the report, the image or the
media in clear."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np

from config.settings import AuthSettings
from core.auth import TokenService
from devices.imaging import StillFormat, encode_still
from tests.sfu.clients import FlatVideoTrack, Session, publish
from tests.signalling.client import SigClient
from tests.support import ROOT, free_port, stop_process, wait_for

REASON = "lesion pigmentee suspecte dos 7mm"
PATIENT = "P-DATA-AT-REST-31"
FINDINGS = "melanome probable exerese conseillee"


def start(data_dir: Path) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "TELECONSULT_SERVER__DATA_DIR": str(data_dir), "TELECONSULT_SERVER__LOG_LEVEL": "WARNING"}
    # The umask a shell usually gives: the server must not depend on it.
    process = subprocess.Popen([sys.executable, "-m", "teleconsult", "serve", "--port", str(free_port()),
                                "--media-address", "127.0.0.1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env, cwd=ROOT, preexec_fn=lambda: os.umask(0o022))
    assert process.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith("teleconsult serving on "):
            return process, line.split()[-1]
        if not line and process.poll() is not None:
            break
    stop_process(process)  # type: ignore[arg-type]
    raise AssertionError("server did not start")


async def consult(url: str, tokens: TokenService, png: bytes) -> str:
    ws_url = url.replace("http", "ws", 1) + "/ws"
    nurse = await SigClient.connect(ws_url, tokens.issue_access("nurse", "nurse-1", site="cabin-demo"))
    doctor = await SigClient.connect(ws_url, tokens.issue_access("physician", "dr-demo"))
    sessions: list[Session] = []
    try:
        await doctor.request("presence.set", status="available")
        cid = (await nurse.request("visit.request", patient_ref=PATIENT, reason=REASON, specialty="dermatology",
                                   priority="routine", consent_teleconsultation=True,
                                   consent_recording=True))["consultation"]["id"]
        await doctor.event("offer.received", consultation__id=cid)
        await doctor.request("offer.accept", consultation_id=cid)
        started = await nurse.event("consultation.started", consultation__id=cid)
        doctor_access = {"Authorization": f"Bearer {tokens.issue_access('physician', 'dr-demo')}"}
        async with aiohttp.ClientSession() as http:
            sessions.append(await publish(http, url, cid, started["room_token"], [FlatVideoTrack(160, 120)]))
            await wait_for(lambda: sessions[0].pc.connectionState == "connected", 15, what="publisher connected")
            async with http.post(f"{url}/api/consultations/{cid}/recording", json={"action": "start"},
                                 headers=doctor_access) as r:
                assert r.status == 200, await r.text()
                assert (await r.json())["manifest"]["encrypted"]
            agent = tokens.issue_room(cid, "agent-cabin-demo", role="agent", publish=["dermatoscope"])
            async with http.post(f"{url}/api/consultations/{cid}/stills", data=png, headers={
                    "Authorization": f"Bearer {agent}", "Content-Type": "image/png", "X-Device": "dermatoscope"}) as r:
                assert r.status == 201, await r.text()
            await asyncio.sleep(2.0)  # a couple of seconds of video, flushed
            async with http.post(f"{url}/api/consultations/{cid}/recording", json={"action": "stop"},
                                 headers=doctor_access) as r:
                assert r.status == 200, await r.text()
                assert (await r.json())["manifest"]["tracks"][0]["frames"] > 10
        await doctor.request("report.save", consultation_id=cid, report={"findings": FINDINGS})
        await doctor.request("consultation.end", consultation_id=cid)
        return str(cid)
    finally:
        for s in sessions:
            await s.close()
        await nurse.close()
        await doctor.close()


async def test_health_data_at_rest_is_private_and_encrypted_by_default(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    process, url = start(data_dir)
    png = encode_still(np.random.default_rng(3).integers(0, 255, (48, 64, 3), dtype=np.uint8), StillFormat.PNG)
    try:
        cid = await consult(url, TokenService(AuthSettings(), str(data_dir)), png)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)
        stop_process(process)  # type: ignore[arg-type]

    paths = sorted(data_dir.rglob("*"))
    names = {p.relative_to(data_dir).as_posix() for p in paths}
    assert "records.sqlite3" in names and f"recordings/{cid}/manifest.json" in names
    assert any(n.startswith(f"stills/{cid}/") and n.endswith(".bin") for n in names), names
    assert any(n.endswith(".webm") for n in names), names
    wrong = [f"{p.relative_to(data_dir)} {oct(stat.S_IMODE(p.stat().st_mode))}" for p in [data_dir, *paths]
             if stat.S_IMODE(p.stat().st_mode) != (0o700 if p.is_dir() else 0o600)]
    assert not wrong, wrong
    clear = {"reason": REASON.encode(), "patient": PATIENT.encode(), "report": FINDINGS.encode(),
             "still": png[16:80], "png": b"\x89PNG", "webm": b"\x1a\x45\xdf\xa3"}
    leaks = [(p.relative_to(data_dir).as_posix(), what) for p in paths if p.is_file()
             for what, needle in clear.items() if needle in p.read_bytes()]
    assert not leaks, leaks
