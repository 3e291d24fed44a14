"""Real capture through PyAV: ALSA/PulseAudio for the stethoscope, V4L2 for UVC cameras.

Reads block until the hardware has a frame, so adapters call them from an executor.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Iterator, Optional

import av
import av.container
import numpy as np

from .adapter import AUDIO_FRAME_SAMPLES, AUDIO_RATE, FrameSource
from .errors import DeviceOpenError

logger = logging.getLogger(__name__)


def parse_audio_input(spec: str) -> tuple[str, str]:
    """``alsa:hw:1`` → ("alsa", "hw:1"); ``pulse:SOURCE`` → ("pulse", "SOURCE")."""
    fmt, sep, device = spec.partition(":")
    if not sep or fmt not in ("alsa", "pulse") or not device:
        raise ValueError(f"audio input must look like alsa:DEVICE or pulse:SOURCE, got {spec!r}")
    return fmt, device


def parse_size(size: str) -> tuple[int, int]:
    width, _, height = size.partition("x")
    return int(width), int(height)


def _open(device_name: str, spec: str, target: str, fmt: str, options: dict[str, str]) -> av.container.InputContainer:
    if fmt not in av.formats_available and fmt != "v4l2":
        raise DeviceOpenError(device_name, spec, f"this FFmpeg build has no {fmt!r} input")
    if fmt == "v4l2" and not os.path.exists(target):
        raise DeviceOpenError(device_name, spec, "no such device")
    try:
        return av.open(target, format=fmt, options=options, timeout=5.0)
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise DeviceOpenError(device_name, spec, str(exc)) from exc


class _PyAVSource(FrameSource):
    """What audio and video capture share: a PyAV container read frame by frame."""

    def __init__(self, device_name: str, description: str) -> None:
        self.device_name = device_name
        self.description = description
        self._container: Optional[av.container.InputContainer] = None
        self._frames: Optional[Iterator[np.ndarray]] = None
        self._lock = threading.Lock()

    @property
    def blocking(self) -> bool:
        return True

    def read(self) -> np.ndarray:
        if self._frames is None:
            raise DeviceOpenError(self.device_name, self.description, "not open")
        try:
            return next(self._frames)
        except StopIteration:
            raise DeviceOpenError(self.device_name, self.description, "the device stopped") from None

    def close(self) -> None:
        with self._lock:
            if self._container is not None:
                self._container.close()
            self._container = None
            self._frames = None


class PyAVAudioSource(_PyAVSource):
    """A microphone input, resampled to 48 kHz float frames of 960 samples."""

    def __init__(self, device_name: str, spec: str, channels: int = 2) -> None:
        super().__init__(device_name, spec)
        self._format, self._target = parse_audio_input(spec)
        self._channels = channels

    def open(self) -> None:
        with self._lock:
            if self._container is not None:
                return
            options = {"sample_rate": str(AUDIO_RATE), "channels": str(self._channels)}
            self._container = _open(self.device_name, self.description, self._target, self._format, options)
            self._frames = self._iterate(self._container)
            logger.info("%s: opened %s", self.device_name, self.description)

    def _iterate(self, container: av.container.InputContainer) -> Iterator[np.ndarray]:
        layout = "stereo" if self._channels == 2 else "mono"
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=AUDIO_RATE, frame_size=AUDIO_FRAME_SAMPLES)
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                yield out.to_ndarray().astype(np.float32)



class PyAVVideoSource(_PyAVSource):
    """A UVC camera through V4L2, as RGB frames at the configured size and rate."""

    def __init__(self, device_name: str, path: str, size: str, framerate: int) -> None:
        super().__init__(device_name, path)
        self._options = {"video_size": size, "framerate": str(framerate)}

    def open(self) -> None:
        with self._lock:
            if self._container is not None:
                return
            self._container = _open(self.device_name, self.description, self.description, "v4l2", self._options)
            self._frames = (f.to_ndarray(format="rgb24") for f in self._container.decode(video=0))
            logger.info("%s: opened %s", self.device_name, self.description)

