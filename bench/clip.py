"""Pre-encoded media for the benches: a synthetic clip encoded once, sent many times.

A bench must measure the SFU, not an encoder: publishers send packets of a clip
encoded before the measurement starts. Each video clip comes in two copies of
the same frames:

* ``frames``: a normal GOP (one keyframe at the start of the loop);
* ``intra``: every frame a keyframe, so that a publisher asked for a keyframe
  (PLI) sends ``intra[k]`` in place of ``frames[k]`` at once, and first-frame
  times measure the SFU rather than the clip's GOP.

Audio clips are Opus packets of 20 ms. Clips are cached on disk (keyed by their
parameters) so that worker processes and later runs load them instead of
encoding again.
"""

from __future__ import annotations

import fractions
import hashlib
import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import av
import numpy as np

CACHE = Path(os.environ.get("TELECONSULT_BENCH_CACHE", Path(tempfile.gettempdir()) / "teleconsult-bench-clips"))
VIDEO_CLOCK = 90000
AUDIO_CLOCK = 48000


@dataclass(frozen=True)
class Clip:
    """Encoded frames of one synthetic source, ready to packetize."""

    kind: str
    """audio or video."""
    codec: str
    """vp8, h264 or opus."""
    frames: tuple[bytes, ...]
    intra: tuple[bytes, ...]
    """All-intra copy of ``frames`` (video); empty for audio."""
    period: float
    """Seconds between frames."""
    pts_step: int
    """RTP clock ticks between frames (90 kHz video, 48 kHz Opus)."""
    clock_rate: int
    width: int = 0
    height: int = 0

    @property
    def bitrate(self) -> float:
        """Mean bit/s of the normal copy."""
        return sum(len(f) for f in self.frames) * 8 / (len(self.frames) * self.period)


def _picture(i: int, width: int, height: int, rng: np.random.Generator, noise: np.ndarray) -> np.ndarray:
    """A moving scene with texture, so that the encoder has work at the target bitrate."""
    y, x = np.ogrid[:height, :width]
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:, :, 0] = ((x + 4 * i) % 256).astype(np.uint8)
    image[:, :, 1] = ((y * 2 + 3 * i) % 256).astype(np.uint8)
    image[:, :, 2] = (((x // 32 + y // 32 + i // 8) % 2) * 200).astype(np.uint8)
    shift = (i * 7) % height
    image = image ^ np.roll(noise, shift, axis=0)
    cx, cy = (i * 9) % width, (i * 5) % height
    image[max(0, cy - 40):cy + 40, max(0, cx - 40):cx + 40] = 255
    return image


def _encode_video(codec: str, width: int, height: int, fps: int, seconds: float, bitrate: int,
                  gop: int) -> list[bytes]:
    name = {"vp8": "libvpx", "h264": "libx264"}[codec]
    ctx: Any = av.CodecContext.create(name, "w")
    ctx.width, ctx.height = width, height
    ctx.pix_fmt = "yuv420p"
    ctx.time_base = fractions.Fraction(1, fps)
    ctx.framerate = fractions.Fraction(fps, 1)
    ctx.bit_rate = bitrate
    ctx.gop_size = gop
    if codec == "vp8":
        ctx.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0", "error-resilient": "1",
                       "keyint_min": str(gop)}
    else:
        ctx.profile = "Baseline"
        ctx.options = {"preset": "ultrafast", "tune": "zerolatency", "level": "31",
                       "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:repeat-headers=1"}
    rng = np.random.default_rng(1)
    amplitude = max(8, int(48 * 640 * 480 / (width * height) ** 1.0))
    noise = (rng.integers(0, amplitude, size=(height, width, 3))).astype(np.uint8)
    out: list[bytes] = []
    n = int(round(seconds * fps))
    for i in range(n):
        frame = av.VideoFrame.from_ndarray(_picture(i, width, height, rng, noise), format="rgb24")
        frame = frame.reformat(format="yuv420p")
        frame.pts = i
        frame.time_base = ctx.time_base
        for packet in ctx.encode(frame):
            out.append(bytes(packet))
    for packet in ctx.encode(None):
        out.append(bytes(packet))
    return out[:n]


def _encode_opus(seconds: float, bitrate: int, stereo: bool) -> list[bytes]:
    ctx: Any = av.CodecContext.create("libopus", "w")
    ctx.sample_rate = AUDIO_CLOCK
    ctx.layout = "stereo" if stereo else "mono"
    ctx.format = "s16"
    ctx.bit_rate = bitrate
    ctx.options = {"frame_duration": "20", "application": "audio" if stereo else "voip", "vbr": "off"}
    channels = 2 if stereo else 1
    out: list[bytes] = []
    n = int(round(seconds * 50))
    t = np.arange(960) / AUDIO_CLOCK
    rng = np.random.default_rng(2)
    for i in range(n):
        tone = 0.3 * np.sin(2 * np.pi * (220 + 40 * (i % 10)) * (t + i * 0.02))
        signal = tone + 0.05 * rng.standard_normal(960)
        samples = (np.clip(signal, -1, 1) * 32767).astype(np.int16)
        data = np.tile(samples, channels).reshape(1, -1) if stereo else samples.reshape(1, -1)
        if stereo:
            data = np.repeat(samples, 2).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(data, format="s16", layout="stereo" if stereo else "mono")
        frame.sample_rate = AUDIO_CLOCK
        frame.pts = i * 960
        frame.time_base = fractions.Fraction(1, AUDIO_CLOCK)
        for packet in ctx.encode(frame):
            out.append(bytes(packet))
    for packet in ctx.encode(None):
        out.append(bytes(packet))
    return out[:n]


def _cached(key: str, make: Callable[[], Clip]) -> Clip:
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / (hashlib.sha256(key.encode()).hexdigest()[:16] + ".pkl")
    if path.exists():
        try:
            with path.open("rb") as f:
                clip = pickle.load(f)
            if isinstance(clip, Clip):
                return clip
        except Exception:  # noqa: BLE001 - a broken cache entry is rebuilt
            pass
    clip = make()
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        pickle.dump(clip, f)
    tmp.replace(path)
    return clip


def video_clip(codec: str = "vp8", width: int = 640, height: int = 480, fps: int = 30, bitrate: int = 1_500_000,
               seconds: float = 4.0) -> Clip:
    """A looped synthetic video clip (normal GOP = the whole loop) and its all-intra copy."""
    key = f"v4:{codec}:{width}x{height}@{fps}:{bitrate}:{seconds}"

    def make() -> Clip:
        n = int(round(seconds * fps))
        asked = bitrate
        frames = _encode_video(codec, width, height, fps, seconds, asked, gop=n)
        for _ in range(2):  # the encoder's rate control over- or undershoots on a short clip: correct it
            got = sum(len(f) for f in frames) * 8 * fps / len(frames)
            if abs(got / bitrate - 1) < 0.15:
                break
            asked = int(asked * bitrate / got)
            frames = _encode_video(codec, width, height, fps, seconds, asked, gop=n)
        intra = _encode_video(codec, width, height, fps, seconds, asked * 2, gop=1)
        return Clip("video", codec, tuple(frames), tuple(intra), 1 / fps, VIDEO_CLOCK // fps, VIDEO_CLOCK,
                    width, height)
    return _cached(key, make)


def audio_clip(bitrate: int = 32_000, stereo: bool = False, seconds: float = 4.0) -> Clip:
    """A looped Opus clip of 20 ms frames."""
    key = f"a1:opus:{bitrate}:{stereo}:{seconds}"

    def make() -> Clip:
        return Clip("audio", "opus", tuple(_encode_opus(seconds, bitrate, stereo)), (), 0.02, 960, AUDIO_CLOCK)
    return _cached(key, make)


if __name__ == "__main__":
    import time

    for make in (lambda: video_clip("vp8"), lambda: video_clip("h264"), lambda: audio_clip(),
                 lambda: audio_clip(64_000, True), lambda: video_clip("vp8", 1280, 720),
                 lambda: video_clip("vp8", 1280, 720, bitrate=1_000_000)):
        t = time.perf_counter()
        c = make()
        print(c.kind, c.codec, c.width, c.height, len(c.frames), f"{c.bitrate / 1e6:.2f} Mbit/s",
              f"intra {sum(len(f) for f in c.intra) * 8 / max(1, len(c.intra)) / c.period / 1e6:.2f} Mbit/s",
              f"{time.perf_counter() - t:.1f}s")
