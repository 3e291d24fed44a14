"""Clinical fidelity through the real path: agent → WHIP → SFU → WHEP → aiortc/PyAV decoder.

* Stethoscope, wide mode: a multitone (20 Hz to 1 kHz) injected into the stethoscope
  chain comes out within ±3 dB after the mode filter, Opus (encode + decode) and the SFU.
* Bell mode: 1 kHz at least 20 dB down from wide.
* Heart rate of the simulator (72 bpm): within ±3 bpm, both as the agent measures it
  (``measurement`` on the room channel) and as estimated on the decoded audio.
* Dermatoscope: on the received full-resolution stills, median CIEDE2000 of the chart
  patches <= 3 calibrated, >= 10 raw.

The figures are printed (``-s``) for docs/devices.md.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest

from config.settings import Settings
from devices.agent import AgentConfig, DeviceAgent
from devices.agent_sources import MULTITONE_AMPLITUDE, MULTITONE_FREQUENCIES, StethoscopeSignal
from devices.colour import COLORCHECKER_SRGB, ciede2000, patch_means, srgb8_to_lab
from devices.simulated import DermatoscopeScene
from devices.stethoscope import HeartRateEstimator
from tests.devices.agent_clients import Viewer, start_consultation, view, wait_publications
from tests.support import RunningServer, loopback_settings

logger = logging.getLogger(__name__)
RATE = 48000
WINDOW = 2 * RATE
"""2 s: every test tone falls on a whole FFT bin (0.5 Hz)."""


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return loopback_settings(tmp_path / "data", devices={"framerate": 5}, auth={"signing_key": "k" * 40})


class AudioTap:
    """Reads a received audio track continuously into a mono float buffer."""

    def __init__(self, track: Any) -> None:
        self.track = track
        self.samples: list[np.ndarray] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            frame = await self.track.recv()
            pcm = frame.to_ndarray().reshape(-1, len(frame.layout.channels))[:, 0]
            self.samples.append(pcm.astype(np.float64) / 32768.0)

    @property
    def count(self) -> int:
        return sum(len(s) for s in self.samples)

    async def collect(self, n: int, timeout: float = 15.0) -> np.ndarray:
        """The next ``n`` samples from now."""
        start = self.count
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.count < start + n:
            assert loop.time() < deadline, "audio stopped"
            await asyncio.sleep(0.05)
        return np.concatenate(self.samples)[start:start + n]

    async def close(self) -> None:
        self.task.cancel()
        try:
            await self.task
        except (asyncio.CancelledError, Exception):
            pass


def tone_levels_db(x: np.ndarray, freqs: tuple[float, ...], reference: float) -> dict[float, float]:
    """Level of each tone relative to ``reference`` amplitude (Hann window, peak bin ±1)."""
    window = np.hanning(len(x))
    spectrum = np.abs(np.fft.rfft(x * window)) * 2 / window.sum()
    out = {}
    for f in freqs:
        k = int(round(f * len(x) / RATE))
        out[f] = float(20 * np.log10(spectrum[k - 1:k + 2].max() / reference))
    return out


async def still_delta_e(http: aiohttp.ClientSession, server: RunningServer, viewer: Viewer, access: str,
                        boxes: Any) -> float:
    result = await viewer.command("dermatoscope", "still", timeout=30)
    assert result["ok"], result
    ready = await viewer.wait_message(lambda e: e["data"].get("type") == "still_ready"
                                      and e["data"].get("still_id") == result["status"]["still_id"])
    url = server.url + ready["data"]["url"]
    async with http.get(url, headers={"Authorization": f"Bearer {access}"}) as r:
        assert r.status == 200
        bgr = cv2.imdecode(np.frombuffer(await r.read(), np.uint8), cv2.IMREAD_COLOR)
    assert bgr is not None
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    measured = patch_means(rgb, boxes)
    delta = ciede2000(srgb8_to_lab(measured), srgb8_to_lab(COLORCHECKER_SRGB.astype(np.float64)))
    return float(np.median(delta))


async def test_fidelity_through_the_sfu(server: RunningServer) -> None:
    tones = await start_consultation(server)
    heart = await start_consultation(server, site="ehpad-demo", physician="dr-general", nurse="nurse-2")
    agents = [
        DeviceAgent(server.settings, AgentConfig(
            server=server.url, devices=("stethoscope", "dermatoscope"), simulate=True,
            room_token=server.tokens.issue_room(tones.id, "agent", role="agent",
                                                publish=["stethoscope", "dermatoscope"]),
            stethoscope_signal=StethoscopeSignal.MULTITONE)),
        DeviceAgent(server.settings, AgentConfig(
            server=server.url, devices=("stethoscope",), simulate=True,
            room_token=server.tokens.issue_room(heart.id, "agent", role="agent", publish=["stethoscope"]))),
    ]
    tasks = [asyncio.create_task(a.run()) for a in agents]
    http = aiohttp.ClientSession()
    taps: list[AudioTap] = []
    viewers: list[Viewer] = []
    try:
        boxes_task = asyncio.create_task(asyncio.to_thread(lambda: DermatoscopeScene(1920, 1080).chart_patch_boxes))
        await wait_publications(server, tones.id, ("stethoscope", "dermatoscope"))
        await wait_publications(server, heart.id, ("stethoscope",))
        a = await view(http, server, tones.id, tones.physician_room_token, kinds=("video", "audio"))
        b = await view(http, server, heart.id, heart.physician_room_token, kinds=("audio",))
        viewers += [a, b]
        tap_a = AudioTap(a.tracks["agent stethoscope"])
        tap_b = AudioTap(b.tracks["agent stethoscope"])
        taps += [tap_a, tap_b]

        # Wide mode: every tone within ±3 dB (after a second for the decoder to settle).
        await tap_a.collect(RATE)
        wide = tone_levels_db(await tap_a.collect(WINDOW), MULTITONE_FREQUENCIES, MULTITONE_AMPLITUDE)
        print("wide mode, dB re input:", {f: round(v, 2) for f, v in wide.items()})
        assert all(abs(v) <= 3.0 for v in wide.values()), wide

        # Bell mode: 1 kHz down by >= 20 dB.
        result = await a.command("stethoscope", "set_mode", mode="bell")
        assert result["ok"], result
        await tap_a.collect(RATE // 2)
        bell = tone_levels_db(await tap_a.collect(WINDOW), MULTITONE_FREQUENCIES, MULTITONE_AMPLITUDE)
        print("bell mode, dB re input:", {f: round(v, 2) for f, v in bell.items()})
        attenuation = wide[1000.0] - bell[1000.0]
        print(f"bell attenuation at 1 kHz: {attenuation:.1f} dB")
        assert attenuation >= 20.0

        # Dermatoscope colour, on received full-resolution stills.
        boxes = await boxes_task
        calibrated = await still_delta_e(http, server, a, tones.physician_access, boxes)
        assert (await a.command("dermatoscope", "set_mode", mode="raw"))["ok"]
        raw = await still_delta_e(http, server, a, tones.physician_access, boxes)
        print(f"dermatoscope median CIEDE2000: calibrated {calibrated:.2f}, raw {raw:.2f}")
        assert calibrated <= 3.0 and raw >= 10.0

        # Heart rate: the agent's estimate on the channel, and one on the decoded audio.
        rates = await b.wait_message(lambda e: e["data"].get("type") == "measurement"
                                     and e["data"].get("name") == "heart_rate", timeout=30, what="heart rate")
        agent_bpm = rates["data"]["value"]
        audio = np.concatenate(tap_b.samples)
        if len(audio) < 9 * RATE:
            audio = np.concatenate([audio, await tap_b.collect(9 * RATE - len(audio))])
        estimator = HeartRateEstimator()
        estimates = [e for i in range(0, len(audio) - 960 + 1, 960)
                     if (e := estimator.process(audio[i:i + 960])) is not None]
        assert estimates, "no estimate from the decoded audio"
        decoded_bpm = estimates[-1].bpm
        print(f"heart rate: simulator 72, agent {agent_bpm}, decoded audio {decoded_bpm:.1f}")
        assert abs(agent_bpm - 72) <= 3 and abs(decoded_bpm - 72) <= 3
    finally:
        for tap in taps:
            await tap.close()
        for v in viewers:
            await v.close()
        for agent in agents:
            agent.stop()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 20)
        await http.close()
        for c in (tones, heart):
            await c.close()
