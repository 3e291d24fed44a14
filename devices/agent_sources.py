"""The agent's devices: which adapters to make, and the test signals a simulated stethoscope can play.

:func:`make_adapters` builds one adapter per device name through
:func:`devices.registry.create_adapter`, except for a simulated stethoscope asked to
play a test signal (:class:`StethoscopeSignal`): the fidelity bench and tests inject a
multitone there, so that the whole chain (mode filter, gain, Opus, SFU, decoder) is
measured on a known input.
"""

from __future__ import annotations

import enum
import math
from typing import Sequence

import numpy as np

from config.settings import DevicesSettings
from core.vocabulary import DEVICES, MEDIA_DEVICES

from .adapter import AUDIO_FRAME_SAMPLES, AUDIO_RATE, DeviceAdapter, FrameSource, MediaKind
from .registry import create_adapter
from .stethoscope import StethoscopeAdapter

MULTITONE_FREQUENCIES: tuple[float, ...] = (20.0, 31.5, 50.0, 63.0, 100.0, 125.0, 200.0, 250.0, 400.0, 500.0,
                                            800.0, 1000.0)
"""Tones of the test signal: the heart (20-200 Hz) and lung (up to ~1 kHz) bands, at
frequencies that fall on whole bins of a 2 s analysis window."""
MULTITONE_AMPLITUDE = 0.03
"""Per tone; twelve in phase would still stay under the limiter's knee (0.7)."""


class StethoscopeSignal(str, enum.Enum):
    HEART = "heart"
    """The phonocardiogram simulator (heart and lung sounds, 72 bpm)."""
    MULTITONE = "multitone"
    """:data:`MULTITONE_FREQUENCIES` at :data:`MULTITONE_AMPLITUDE` each, continuous."""


class MultitoneSource(FrameSource):
    """A steady sum of sines, frames shaped (1, 960), phase-continuous across frames."""

    description = "simulated multitone"

    def __init__(self, freqs: Sequence[float] = MULTITONE_FREQUENCIES, amplitude: float = MULTITONE_AMPLITUDE) -> None:
        self.freqs = np.asarray(freqs, dtype=np.float64)
        self.amplitude = amplitude
        # Spread phases so that the tones never all peak together.
        self._phases = np.arange(len(self.freqs)) * 0.7
        self._sample = 0

    def read(self) -> np.ndarray:
        t = (self._sample + np.arange(AUDIO_FRAME_SAMPLES)) / AUDIO_RATE
        self._sample += AUDIO_FRAME_SAMPLES
        tones = np.sin(2 * math.pi * self.freqs[:, None] * t[None, :] + self._phases[:, None])
        return (self.amplitude * tones.sum(axis=0))[None, :].astype(np.float32)


def check_device_names(names: Sequence[str]) -> tuple[str, ...]:
    """The names, validated: known, no duplicates, at least one that publishes a track."""
    out: list[str] = []
    for name in names:
        if name not in DEVICES:
            raise ValueError(f"unknown device {name!r}; expected some of {', '.join(DEVICES)}")
        if name in out:
            raise ValueError(f"device {name!r} given twice")
        out.append(name)
    if not any(n in MEDIA_DEVICES for n in out):
        # WHIP needs a media track; the data channel rides on the first one.
        raise ValueError(f"the agent needs at least one of {', '.join(MEDIA_DEVICES)}")
    return tuple(out)


def make_adapters(names: Sequence[str], settings: DevicesSettings, simulate: bool, *, seed: int = 0,
                  stethoscope_signal: StethoscopeSignal = StethoscopeSignal.HEART) -> dict[str, DeviceAdapter]:
    """One adapter per name (real devices are opened now: blocking, call from a thread)."""
    adapters: dict[str, DeviceAdapter] = {}
    try:
        for name in names:
            if name == "stethoscope" and simulate and stethoscope_signal is StethoscopeSignal.MULTITONE:
                adapters[name] = StethoscopeAdapter(MultitoneSource(), channels=2)
            else:
                adapters[name] = create_adapter(name, settings, simulate, seed)
    except BaseException:
        for adapter in adapters.values():
            # Not started yet: closing only releases sources, nothing awaits a loop.
            if adapter._source is not None:
                adapter._source.close()
        raise
    return adapters


def publishes_track(adapter: DeviceAdapter) -> bool:
    return adapter.kind is not MediaKind.DATA
