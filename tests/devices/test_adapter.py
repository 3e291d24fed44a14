import asyncio
import json

import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, VideoFrame

from devices.adapter import AUDIO_TIME_BASE, VIDEO_TIME_BASE, DeviceTrack
from devices.errors import DeviceCommandError
from devices.measurements import MeasurementQueue
from devices.otoscope import OtoscopeAdapter
from devices.simulated import OtoscopeScene, PhonocardiogramSimulator
from devices.stethoscope import StethoscopeAdapter


async def audio_frame(track: DeviceTrack) -> AudioFrame:
    frame = await track.recv()
    assert isinstance(frame, AudioFrame)
    return frame


async def video_frame(track: DeviceTrack) -> VideoFrame:
    frame = await track.recv()
    assert isinstance(frame, VideoFrame)
    return frame


class FakeClock:
    """Time advances only when the track sleeps: pacing is checked without waiting."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


async def test_audio_track_pts_and_pacing() -> None:
    clock = FakeClock()
    adapter = StethoscopeAdapter(PhonocardiogramSimulator(seed=0, channels=2), channels=2, clock=clock)
    track = DeviceTrack(adapter, sleep=clock.sleep)
    assert track.kind == "audio" and track.source == "stethoscope"
    frames = [await audio_frame(track) for _ in range(5)]
    assert [f.pts for f in frames] == [0, 960, 1920, 2880, 3840]
    assert all(f.time_base == AUDIO_TIME_BASE and f.samples == 960 and f.layout.name == "stereo" for f in frames)
    assert clock.sleeps == pytest.approx([0.02] * 4)
    await adapter.close()
    with pytest.raises(MediaStreamError):
        await track.recv()


async def test_video_track_90khz_and_restart_after_stall() -> None:
    clock = FakeClock()
    adapter = OtoscopeAdapter(OtoscopeScene(320, 240, seed=0), (320, 240), framerate=30, clock=clock)
    track = DeviceTrack(adapter, sleep=clock.sleep)
    assert track.kind == "video" and track.source == "otoscope"
    first = await video_frame(track)
    second = await video_frame(track)
    assert (first.pts, second.pts, second.time_base) == (0, 3000, VIDEO_TIME_BASE)
    assert (second.width, second.height) == (720, 480)
    clock.now += 5.0  # a stalled device: no burst to catch up
    await track.recv()
    await track.recv()
    assert clock.sleeps[-1] == pytest.approx(1 / 30)
    await adapter.close()


async def test_power_off_sends_silence_and_refused_commands_change_nothing() -> None:
    adapter = StethoscopeAdapter(PhonocardiogramSimulator(seed=0), channels=2)
    reply = await adapter.handle_command({"action": "power", "on": False})
    assert reply == {"ok": True, "device": "stethoscope", "action": "power", "on": False}
    assert not np.any(await adapter.next_frame())
    with pytest.raises(DeviceCommandError, match="unknown action 'zoom'"):
        await adapter.handle_command({"action": "zoom"})
    with pytest.raises(DeviceCommandError, match="between -20 and 30 dB"):
        await adapter.handle_command({"action": "set_gain", "gain_db": 31})
    with pytest.raises(DeviceCommandError):
        await adapter.handle_command(["power"])  # type: ignore[arg-type]
    assert not adapter.powered and adapter.gain_db == 0.0 and adapter.mode == "wide"
    await adapter.handle_command({"action": "power", "on": True})
    assert np.any(await adapter.next_frame())
    caps = (await adapter.handle_command({"action": "capabilities"}))["capabilities"]
    assert json.loads(json.dumps(caps)) == caps and caps["kind"] == "audio"
    await adapter.close()
    await adapter.close()
    with pytest.raises(DeviceCommandError, match="closed"):
        await adapter.handle_command({"action": "power", "on": True})


async def test_measurement_queue_drops_oldest_and_broken_listener_is_contained() -> None:
    adapter = StethoscopeAdapter(PhonocardiogramSimulator(seed=0), channels=1)
    queue = MeasurementQueue(maxsize=3)

    def broken(_: object) -> None:
        raise RuntimeError("consumer bug")

    adapter.add_measurement_listener(broken)
    adapter.add_measurement_listener(queue)
    for _ in range(50):
        await adapter.next_frame()
    assert queue.dropped > 0
    got = [queue.get_nowait() for _ in range(3)]
    assert got[-1].timestamp >= got[0].timestamp
    adapter.remove_measurement_listener(broken)
    await adapter.close()
    await asyncio.sleep(0)
