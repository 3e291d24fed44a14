"""DeviceAdapter: a source (real or simulated) → a per-frame processing chain → a labelled track.

Lifecycle of an adapter (written here because the agent relies on it)::

    created (powered on, default mode) ──power off──▶ off (track sends silence / black)
          ▲                                              │
          └───────────────power on───────────────────────┘
    any state ──close()──▶ closed (idempotent; the track ends)

Commands arrive as JSON-able dicts (from the data channel, later) and are validated
*before* anything changes: a refused command raises :class:`DeviceCommandError` and
leaves the adapter exactly as it was.

Threading: video processing runs in the default executor so that a 1080p frame does
not hold the event loop; every state change and every frame go through one
``asyncio.Lock`` per adapter, so processing always sees a consistent state.
"""

from __future__ import annotations

import abc
import asyncio
import fractions
import itertools
import logging
import math
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Any, Awaitable, Callable, ClassVar, Optional

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from core.vocabulary import MediaKind

from .errors import DeviceCommandError, DeviceOpenError
from .measurements import Measurement, MeasurementListener

logger = logging.getLogger(__name__)

AUDIO_RATE = 48000
AUDIO_FRAME_SAMPLES = 960
AUDIO_TIME_BASE = fractions.Fraction(1, AUDIO_RATE)
VIDEO_CLOCK_RATE = 90000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class Control:
    """A continuous setting the physician may drive."""

    name: str
    unit: str
    minimum: float
    maximum: float
    step: float
    default: float

    def check(self, value: object) -> float:
        """The value as float, or DeviceCommandError naming the control and its range."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DeviceCommandError(f"{self.name} must be a number, got {type(value).__name__}")
        number = float(value)
        if not math.isfinite(number) or not self.minimum <= number <= self.maximum:
            raise DeviceCommandError(
                f"{self.name} must be between {self.minimum:g} and {self.maximum:g} {self.unit}, got {value!r}"
            )
        return number


@dataclass(frozen=True)
class Capabilities:
    """What a device can do; sent to the physician page to build its panel."""

    device: str
    kind: MediaKind
    modes: tuple[str, ...] = ()
    default_mode: Optional[str] = None
    controls: tuple[Control, ...] = ()
    actions: tuple[str, ...] = ("power",)
    still: bool = False
    still_size: Optional[tuple[int, int]] = None
    """(width, height) of stills: the full sensor size."""
    still_mime: Optional[str] = None
    stream_size: Optional[tuple[int, int]] = None
    """(width, height) of the video track."""
    sample_rate: Optional[int] = None
    channels: Optional[int] = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["kind"] = self.kind.value
        for key in ("modes", "actions"):
            data[key] = list(data[key])
        data["controls"] = [asdict(c) for c in self.controls]
        for key in ("still_size", "stream_size"):
            if data[key] is not None:
                data[key] = list(data[key])
        return data


@dataclass(frozen=True)
class Still:
    """A full-resolution capture, encoded (PNG lossless or JPEG quality >= 95)."""

    data: bytes = field(repr=False)
    mime: str
    width: int
    height: int
    captured_at: float
    """Adapter clock (monotonic seconds)."""


class FrameSource(abc.ABC):
    """Where frames come from: a simulator or a PyAV capture.

    Audio sources return float32 arrays shaped (channels, 960) in [-1, 1]; video
    sources return uint8 RGB arrays shaped (height, width, 3).
    """

    description: str = ""
    """For logs: 'simulated' or the input spec (never patient data)."""

    def open(self) -> None:
        """Acquire the device; raises DeviceOpenError. Simulators need nothing."""

    @abc.abstractmethod
    def read(self) -> np.ndarray:
        """Next frame; blocks for real devices (called from an executor then)."""

    @property
    def blocking(self) -> bool:
        """True for real devices, whose reads block until the hardware has a frame."""
        return False

    def close(self) -> None:
        """Release the device; idempotent."""


class DeviceAdapter(abc.ABC):
    """Base of every device. Subclasses define ``name``, ``kind``, the chain and capabilities."""

    name: ClassVar[str]
    kind: ClassVar[MediaKind]
    modes: ClassVar[tuple[str, ...]] = ()
    gain_control: ClassVar[Optional[Control]] = None
    supports_still: ClassVar[bool] = False
    frame_rate: float = 50.0
    """Frames per second of the track (audio: 50 frames of 20 ms)."""

    def __init__(self, source: Optional[FrameSource], *, clock: Clock = time.monotonic) -> None:
        self._source = source
        self._clock = clock
        self._lock = asyncio.Lock()
        self._listeners: list[MeasurementListener] = []
        self._powered = True
        self._closed = False
        self._mode: Optional[str] = self.modes[0] if self.modes else None
        self._gain_db = self.gain_control.default if self.gain_control else 0.0
        self._track: Optional[DeviceTrack] = None
        self._stills: OrderedDict[str, Still] = OrderedDict()
        self._still_ids = itertools.count(1)
        if source is not None:
            source.open()

    # -- description -------------------------------------------------------------------

    @abc.abstractmethod
    def capabilities(self) -> Capabilities: ...

    @property
    def powered(self) -> bool:
        return self._powered

    @property
    def mode(self) -> Optional[str]:
        return self._mode

    @property
    def gain_db(self) -> float:
        return self._gain_db

    @property
    def closed(self) -> bool:
        return self._closed

    # -- measurements ------------------------------------------------------------------

    def add_measurement_listener(self, listener: MeasurementListener) -> None:
        self._listeners.append(listener)

    def remove_measurement_listener(self, listener: MeasurementListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _emit(self, measurement: Measurement) -> None:
        for listener in list(self._listeners):
            try:
                listener(measurement)
            except Exception:
                # A broken consumer must not stop the live path.
                logger.exception("measurement listener failed for %s", self.name)

    # -- the track ---------------------------------------------------------------------

    @property
    def track(self) -> Optional[MediaStreamTrack]:
        """The adapter's one track (created on first access); None for data-only devices."""
        if self.kind is MediaKind.DATA:
            return None
        if self._track is None:
            self._track = DeviceTrack(self)
        return self._track

    async def next_frame(self) -> np.ndarray:
        """The next processed frame (idle frame when powered off). Used by the track."""
        async with self._lock:
            if self._closed:
                raise MediaStreamError
            if not self._powered or self._source is None:
                return self._idle_frame()
            source = self._source
            if source.blocking or self.kind is MediaKind.VIDEO:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(None, self._read_and_process, source)
            return self._read_and_process(source)

    def _read_and_process(self, source: FrameSource) -> np.ndarray:
        return self.process(source.read())

    @abc.abstractmethod
    def process(self, frame: np.ndarray) -> np.ndarray:
        """The live processing chain, one frame in, one frame out (state kept between frames)."""

    @abc.abstractmethod
    def _idle_frame(self) -> np.ndarray:
        """What the track sends while the device is off (silence, black)."""

    @abc.abstractmethod
    def to_av_frame(self, frame: np.ndarray) -> av.AudioFrame | av.VideoFrame:
        """Wrap a processed frame for aiortc (pts set by the track)."""

    # -- commands ----------------------------------------------------------------------

    def _actions(self) -> tuple[str, ...]:
        actions = ["power", "capabilities"]
        if self.modes:
            actions.append("set_mode")
        if self.gain_control:
            actions.append("set_gain")
        if self.supports_still:
            actions.append("still")
        return tuple(actions + list(self._extra_actions()))

    def _extra_actions(self) -> tuple[str, ...]:
        return ()

    async def handle_command(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """Validate then apply one command; returns a JSON-able reply with ``ok: True``.

        Raises DeviceCommandError (nothing changed) for an unknown action or a bad value.
        """
        if self._closed:
            raise DeviceCommandError(f"{self.name} is closed")
        if not isinstance(cmd, dict):
            raise DeviceCommandError(f"a command is an object, got {type(cmd).__name__}")
        action = cmd.get("action")
        if not isinstance(action, str) or action not in self._actions():
            raise DeviceCommandError(
                f"unknown action {action!r} for {self.name}; expected one of {', '.join(self._actions())}"
            )
        reply: dict[str, Any] = {"ok": True, "device": self.name, "action": action}
        if action == "capabilities":
            reply["capabilities"] = self.capabilities().to_json()
        elif action == "power":
            on = cmd.get("on")
            if not isinstance(on, bool):
                raise DeviceCommandError("power needs 'on': true or false")
            await self._set_power(on)
            reply["on"] = on
        elif action == "set_mode":
            mode = cmd.get("mode")
            if mode not in self.modes:
                raise DeviceCommandError(
                    f"unknown mode {mode!r} for {self.name}; expected one of {', '.join(self.modes)}"
                )
            assert isinstance(mode, str)
            async with self._lock:
                self._apply_mode(mode)
                self._mode = mode
            reply["mode"] = mode
        elif action == "set_gain":
            assert self.gain_control is not None
            gain = self.gain_control.check(cmd.get("gain_db"))
            async with self._lock:
                self._apply_gain(gain)
                self._gain_db = gain
            reply["gain_db"] = gain
        elif action == "still":
            still = await self.still()
            still_id = f"{self.name}-{next(self._still_ids)}"
            self._stills[still_id] = still
            while len(self._stills) > 4:
                # Stills are a few MB each: keep only the ones not yet fetched, a few at most.
                self._stills.popitem(last=False)
            reply.update(still_id=still_id, mime=still.mime, width=still.width, height=still.height, bytes=len(still.data))
        else:
            reply.update(await self._extra_command(action, cmd))
        logger.info("device %s: %s", self.name, action)
        return reply

    def take_still(self, still_id: str) -> Still:
        """The still a ``still`` command captured (each can be taken once)."""
        try:
            return self._stills.pop(still_id)
        except KeyError:
            raise DeviceCommandError(f"no still {still_id!r} (taken already, or too old)") from None

    async def still(self) -> Still:
        """Capture a full-resolution still now."""
        raise DeviceCommandError(f"{self.name} takes no stills")

    async def _extra_command(self, action: str, cmd: dict[str, Any]) -> dict[str, Any]:
        raise DeviceCommandError(f"unknown action {action!r} for {self.name}")

    def _apply_mode(self, mode: str) -> None:
        """Reconfigure the chain for a validated mode (called under the lock)."""

    def _apply_gain(self, gain_db: float) -> None:
        """Reconfigure the chain for a validated gain (called under the lock)."""

    async def _set_power(self, on: bool) -> None:
        async with self._lock:
            if on == self._powered:
                return
            if self._source is not None:
                if on:
                    try:
                        self._source.open()
                    except DeviceOpenError as exc:
                        raise DeviceCommandError(str(exc)) from exc
                else:
                    self._source.close()
            self._powered = on

    async def start(self) -> None:
        """Start background work, if the device has any (vitals); tracks need nothing."""

    async def close(self) -> None:
        """Release the source and end the track; idempotent."""
        if self._closed:
            return
        async with self._lock:
            self._closed = True
            if self._source is not None:
                self._source.close()
        if self._track is not None:
            self._track.stop()


class DeviceTrack(MediaStreamTrack):
    """A track labelled with its device, paced in real time.

    pts count samples at 48 kHz for audio, and the 90 kHz clock for video. A track
    that falls more than a second behind (a stalled device) restarts its pacing clock
    instead of bursting frames to catch up.
    """

    def __init__(self, adapter: DeviceAdapter, *, sleep: Sleep = asyncio.sleep) -> None:
        super().__init__()
        self.kind = adapter.kind.value
        self.source: str = adapter.name
        self._adapter = adapter
        self._sleep = sleep
        self._count = 0
        self._start: Optional[float] = None

    def _pts(self, count: int) -> int:
        if self._adapter.kind is MediaKind.AUDIO:
            return count * AUDIO_FRAME_SAMPLES
        return round(count * VIDEO_CLOCK_RATE / self._adapter.frame_rate)

    async def recv(self) -> av.AudioFrame | av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        clock = self._adapter._clock
        now = clock()
        if self._start is None:
            self._start = now
        else:
            due = self._start + self._count / self._adapter.frame_rate
            if now - due > 1.0:
                self._start = now - self._count / self._adapter.frame_rate
            elif due > now:
                await self._sleep(due - now)
        try:
            array = await self._adapter.next_frame()
        except MediaStreamError:
            self.stop()
            raise
        frame = self._adapter.to_av_frame(array)
        frame.pts = self._pts(self._count)
        frame.time_base = AUDIO_TIME_BASE if self._adapter.kind is MediaKind.AUDIO else VIDEO_TIME_BASE
        self._count += 1
        return frame
