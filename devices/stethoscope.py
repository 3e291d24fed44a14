"""Stethoscope: filter modes, gain with a soft limiter, a level meter, a heart-rate estimate.

The chain, per 20 ms frame (float32, shaped (channels, 960))::

    mode filter (IIR, state carried) → gain (ramped) → soft limiter → level meter
                └── heart-rate estimator (its own band-pass on the raw input, envelope,
                    autocorrelation every ~2 s)

Switching mode warms the new filter on the last 200 ms of input, then crossfades old →
new over one frame, so the switch neither clicks nor rings.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import Callable, ClassVar, Optional

import av
import numpy as np
from scipy import signal

from .adapter import (
    AUDIO_FRAME_SAMPLES,
    AUDIO_RATE,
    Capabilities,
    Control,
    DeviceAdapter,
    FrameSource,
    MediaKind,
    Clock,
)
from .measurements import Measurement, Quantity

logger = logging.getLogger(__name__)


class FilterMode(str, enum.Enum):
    BELL = "bell"
    """20–200 Hz: heart sounds, low-pitched murmurs."""
    DIAPHRAGM = "diaphragm"
    """100–1000 Hz: lung sounds, high-pitched murmurs."""
    WIDE = "wide"
    """15–2000 Hz: everything (the lower edge below 20 Hz keeps 20 Hz within half a dB;
    at exactly 20 Hz a Butterworth edge would already be 3 dB down)."""


FILTER_BANDS: dict[FilterMode, tuple[float, float]] = {
    FilterMode.BELL: (20.0, 200.0),
    FilterMode.DIAPHRAGM: (100.0, 1000.0),
    FilterMode.WIDE: (15.0, 2000.0),
}

GAIN_CONTROL = Control(name="gain_db", unit="dB", minimum=-20.0, maximum=30.0, step=0.5, default=0.0)


class ModeFilter:
    """Band-pass IIR per mode with its state kept across frames, click-free switching."""

    WARMUP_SAMPLES = AUDIO_RATE // 5

    def __init__(self, mode: FilterMode, channels: int, order: int = 4) -> None:
        self._order = order
        self._channels = channels
        self._history = np.zeros((channels, self.WARMUP_SAMPLES), np.float64)
        self._fade = np.linspace(0.0, 1.0, AUDIO_FRAME_SAMPLES)
        self.mode = mode
        self._sos, self._zi = self._design(mode)
        self._previous: Optional[tuple[np.ndarray, np.ndarray]] = None

    def _design(self, mode: FilterMode) -> tuple[np.ndarray, np.ndarray]:
        low, high = FILTER_BANDS[mode]
        sos = signal.butter(self._order, [low, high], btype="bandpass", fs=AUDIO_RATE, output="sos")
        return sos, np.zeros((sos.shape[0], self._channels, 2))

    def set_mode(self, mode: FilterMode) -> None:
        if mode == self.mode:
            return
        sos, zi = self._design(mode)
        # Warm the new filter on recent input so that it starts from steady state.
        _, zi = signal.sosfilt(sos, self._history, axis=-1, zi=zi)
        self._previous = (self._sos, self._zi)
        self._sos, self._zi = sos, zi
        self.mode = mode

    def process(self, x: np.ndarray) -> np.ndarray:
        y, self._zi = signal.sosfilt(self._sos, x, axis=-1, zi=self._zi)
        if self._previous is not None:
            old_sos, old_zi = self._previous
            y_old, _ = signal.sosfilt(old_sos, x, axis=-1, zi=old_zi)
            fade = self._fade[: x.shape[-1]]
            y = y_old * (1 - fade) + y * fade
            self._previous = None
        n = x.shape[-1]
        self._history[:, :-n] = self._history[:, n:]
        self._history[:, -n:] = x
        result: np.ndarray = y
        return result


class SoftLimiter:
    """Gain, ramped across a frame when it changes, then a tanh knee above the threshold."""

    def __init__(self, gain_db: float = 0.0, threshold: float = 0.7, ceiling: float = 0.98) -> None:
        self.threshold = threshold
        self.ceiling = ceiling
        self._gain = 10 ** (gain_db / 20)
        self._target = self._gain

    def set_gain_db(self, gain_db: float) -> None:
        self._target = 10 ** (gain_db / 20)

    def process(self, x: np.ndarray) -> np.ndarray:
        if self._target != self._gain:
            gain: np.ndarray | float = np.linspace(self._gain, self._target, x.shape[-1])
            self._gain = self._target
        else:
            gain = self._gain
        y = x * gain
        t = self.threshold
        mag = np.abs(y)
        over = mag > t
        if over.any():
            # Only the samples above the knee are bent; |y| stays below the ceiling, so
            # the s16 conversion never wraps.
            room = self.ceiling - t
            y = np.where(over, np.sign(y) * (t + room * np.tanh((mag - t) / room)), y)
        result: np.ndarray = y
        return result


@dataclass(frozen=True)
class Level:
    rms_dbfs: float
    peak_dbfs: float


class LevelMeter:
    """RMS and peak in dBFS over a window of frames (default 5 frames = 100 ms)."""

    FLOOR_DBFS = -120.0

    def __init__(self, frames_per_reading: int = 5) -> None:
        self.frames_per_reading = frames_per_reading
        self._sum_sq = 0.0
        self._count = 0
        self._peak = 0.0
        self._frames = 0

    def _db(self, value: float) -> float:
        return float(max(20 * np.log10(max(value, 1e-12)), self.FLOOR_DBFS))

    def process(self, y: np.ndarray) -> Optional[Level]:
        self._sum_sq += float(np.dot(y.ravel(), y.ravel()))
        self._count += y.size
        self._peak = max(self._peak, float(np.max(np.abs(y))))
        self._frames += 1
        if self._frames < self.frames_per_reading:
            return None
        level = Level(self._db(np.sqrt(self._sum_sq / self._count)), self._db(self._peak))
        self._sum_sq, self._count, self._peak, self._frames = 0.0, 0, 0.0, 0
        return level


@dataclass(frozen=True)
class HeartRateEstimate:
    bpm: float
    confidence: float
    """Normalised autocorrelation at the chosen lag (0..1)."""


class HeartRateEstimator:
    """Heart rate from heart sounds: band-pass 25–150 Hz, 200 Hz energy envelope over the
    last 8 s, estimates every ``interval_s``.

    * The period: the strongest peak of the envelope's unbiased autocorrelation, searched
      with a margin beyond 40–180 bpm (so that a period near either end keeps its peak
      inside the search), then refined on the peaks at every multiple of it.
    * Octave errors: a multiple of the period scores as high as the period, and a beat's
      S1→S2 (systole) can be half of it (near 80 bpm systole and diastole are equal). The
      choice between a lag and its half or third is made on a second autocorrelation, of
      the squared envelope smoothed over 110 ms: squaring turns S1 being louder than S2
      (amplitude ratio ~1.3) into a contrast of ~3 in the cross terms, so the half of a
      true period scores at most ~0.30 of it, while the true period scores at least
      ~0.73 of its multiples (measured over 40–180 bpm in steps of 5, five seeds, with
      and without murmur and lung sounds); the threshold sits between, at 0.55. A lag
      is tested against its submultiples from the smallest up, then against its double.
    """

    ENVELOPE_RATE = 200
    MIN_BPM, MAX_BPM = 40.0, 180.0
    SEARCH_MIN_BPM, SEARCH_MAX_BPM = 35.0, 200.0
    SUBHARMONIC_RATIO = 0.55
    PEAK_SMOOTHING_S = 0.025
    CONTRAST_SMOOTHING_S = 0.11
    REFINE_SPAN_S = 4.0

    def __init__(self, window_s: float = 8.0, interval_s: float = 2.0) -> None:
        self._sos = signal.butter(2, [25, 150], btype="bandpass", fs=AUDIO_RATE, output="sos")
        self._zi = np.zeros((self._sos.shape[0], 2))
        self._block = AUDIO_RATE // self.ENVELOPE_RATE
        self._envelope = np.zeros(int(window_s * self.ENVELOPE_RATE))
        self._filled = 0
        self._frames_per_estimate = max(1, round(interval_s * AUDIO_RATE / AUDIO_FRAME_SAMPLES))
        self._frames = 0
        self._min_lag = int(self.ENVELOPE_RATE * 60 / self.SEARCH_MAX_BPM)
        self._max_lag = int(np.ceil(self.ENVELOPE_RATE * 60 / self.SEARCH_MIN_BPM))
        self._peak_box = self._box(self.PEAK_SMOOTHING_S)
        self._contrast_box = self._box(self.CONTRAST_SMOOTHING_S)

    @classmethod
    def _box(cls, seconds: float) -> np.ndarray:
        taps = max(1, round(seconds * cls.ENVELOPE_RATE))
        box: np.ndarray = np.ones(taps) / taps
        return box

    def process(self, mono: np.ndarray) -> Optional[HeartRateEstimate]:
        filtered, self._zi = signal.sosfilt(self._sos, mono, zi=self._zi)
        energy = (filtered.reshape(-1, self._block) ** 2).mean(axis=1)
        n = len(energy)
        self._envelope[:-n] = self._envelope[n:]
        self._envelope[-n:] = energy
        self._filled = min(self._filled + n, len(self._envelope))
        self._frames += 1
        if self._frames < self._frames_per_estimate:
            return None
        self._frames = 0
        if self._filled < len(self._envelope):
            return None
        return self.estimate()

    @staticmethod
    def _autocorrelation(x: np.ndarray, max_lag: int) -> Optional[np.ndarray]:
        """Unbiased autocorrelation normalised by lag 0, lags 0..max_lag."""
        x = x - x.mean()
        denom = float(np.dot(x, x))
        if denom <= 0:
            return None
        n = len(x)
        spectrum = np.fft.rfft(x, 2 * n)
        raw = np.fft.irfft(spectrum * np.conj(spectrum))[: max_lag + 1]
        # Unbiased, so that a long lag is not beaten by a shorter one merely for having
        # more overlapping samples.
        result: np.ndarray = raw / denom * n / (n - np.arange(len(raw)))
        return result

    @staticmethod
    def _peak_near(acf: np.ndarray, lag: float, tolerance: float) -> int:
        lo = max(1, int(np.floor(lag - tolerance)))
        hi = min(len(acf) - 2, int(np.ceil(lag + tolerance)))
        if hi < lo:
            return min(max(int(round(lag)), 1), len(acf) - 2)
        return lo + int(np.argmax(acf[lo : hi + 1]))

    @staticmethod
    def _interpolate(acf: np.ndarray, lag: int) -> float:
        y0, y1, y2 = acf[lag - 1], acf[lag], acf[lag + 1]
        curvature = y0 - 2 * y1 + y2
        shift = 0.5 * (y0 - y2) / curvature if curvature < 0 else 0.0
        return lag + float(np.clip(shift, -0.5, 0.5))

    def estimate(self) -> Optional[HeartRateEstimate]:
        n = len(self._envelope)
        refine_lag = min(n // 2, int(self.REFINE_SPAN_S * self.ENVELOPE_RATE))
        max_lag = max(self._max_lag, refine_lag) + 2
        # Smoothing over 25 ms merges each sound's cycles into one bump.
        env = np.convolve(self._envelope, self._peak_box, mode="same")
        acf = self._autocorrelation(env, max_lag)
        # Smoothed over 110 ms and squared: one bump per sound, loud ones emphasised.
        contrast_env = np.convolve(self._envelope, self._contrast_box, mode="same") ** 2
        contrast = self._autocorrelation(contrast_env, max_lag)
        if acf is None or contrast is None:
            return None
        lags = np.arange(self._min_lag, self._max_lag + 1)
        best = int(lags[np.argmax(acf[lags])])

        def tolerance(lag: float) -> float:
            return max(2.0, 0.05 * lag)

        # The period may be a submultiple of the best lag: take the smallest one that
        # scores nearly as high on the squared envelope.
        top = float(contrast[self._peak_near(contrast, best, tolerance(best))])
        for divisor in range(int(best // self._min_lag), 1, -1):
            candidate = best / divisor
            score = float(contrast[self._peak_near(contrast, candidate, tolerance(candidate))])
            if top > 0 and score >= self.SUBHARMONIC_RATIO * top:
                best = self._peak_near(acf, candidate, tolerance(candidate))
                break
        # Or the best lag may be S1→S2 near half the period, when systole and diastole
        # are about equal: then the double scores much higher.
        if 2 * best <= self._max_lag:
            score = float(contrast[self._peak_near(contrast, best, tolerance(best))])
            double = float(contrast[self._peak_near(contrast, 2 * best, tolerance(2 * best))])
            if double > 0 and score < self.SUBHARMONIC_RATIO * double:
                best = self._peak_near(acf, 2 * best, tolerance(2 * best))
        # Refine on the multiples of the period: their peaks fall at k * period.
        period = self._interpolate(acf, best)
        positions, multiples = [period], [1.0]
        k = 2
        while k * period + tolerance(period) + 2 <= max_lag:
            lag = self._peak_near(acf, k * period, tolerance(period))
            # Only a true local maximum inside the search (not a slope cut by its edge).
            if acf[lag] > 0 and acf[lag] >= acf[lag - 1] and acf[lag] >= acf[lag + 1]:
                positions.append(self._interpolate(acf, lag))
                multiples.append(float(k))
            k += 1
        m = np.array(multiples)
        period = float(np.dot(m, positions) / np.dot(m, m))
        return HeartRateEstimate(bpm=60.0 * self.ENVELOPE_RATE / period, confidence=float(np.clip(acf[best], 0, 1)))


class StethoscopeChain:
    """The live chain; ``process`` takes and returns float arrays shaped (channels, n)."""

    def __init__(
        self,
        channels: int,
        mode: FilterMode = FilterMode.WIDE,
        gain_db: float = 0.0,
        on_level: Optional[Callable[[Level], None]] = None,
        on_heart_rate: Optional[Callable[[HeartRateEstimate], None]] = None,
    ) -> None:
        self.filter = ModeFilter(mode, channels)
        self.limiter = SoftLimiter(gain_db)
        self.meter = LevelMeter()
        self.heart_rate = HeartRateEstimator()
        self._on_level = on_level
        self._on_heart_rate = on_heart_rate

    def process(self, x: np.ndarray) -> np.ndarray:
        estimate = self.heart_rate.process(x[0])
        y = self.limiter.process(self.filter.process(x))
        level = self.meter.process(y)
        if level is not None and self._on_level:
            self._on_level(level)
        if estimate is not None and self._on_heart_rate:
            self._on_heart_rate(estimate)
        return y


class StethoscopeAdapter(DeviceAdapter):
    """An electronic stethoscope as a stereo 48 kHz audio track."""

    name = "stethoscope"
    kind = MediaKind.AUDIO
    modes: ClassVar[tuple[str, ...]] = tuple(m.value for m in FilterMode)
    gain_control = GAIN_CONTROL
    frame_rate = AUDIO_RATE / AUDIO_FRAME_SAMPLES

    def __init__(self, source: FrameSource, *, channels: int = 2, clock: Clock | None = None) -> None:
        super().__init__(source, **({"clock": clock} if clock else {}))
        self.channels = channels
        self._mode = FilterMode.WIDE.value
        self.chain = StethoscopeChain(
            channels, FilterMode.WIDE, on_level=self._level, on_heart_rate=self._heart_rate
        )
        self._silence = np.zeros((channels, AUDIO_FRAME_SAMPLES), np.float32)

    def capabilities(self) -> Capabilities:
        return Capabilities(
            device=self.name,
            kind=self.kind,
            modes=self.modes,
            default_mode=FilterMode.WIDE.value,
            controls=(GAIN_CONTROL,),
            actions=self._actions(),
            sample_rate=AUDIO_RATE,
            channels=self.channels,
        )

    def _level(self, level: Level) -> None:
        now = self._clock()
        self._emit(Measurement(self.name, Quantity.LEVEL_RMS, level.rms_dbfs, "dBFS", now))
        self._emit(Measurement(self.name, Quantity.LEVEL_PEAK, level.peak_dbfs, "dBFS", now))

    def _heart_rate(self, estimate: HeartRateEstimate) -> None:
        self._emit(
            Measurement(self.name, Quantity.HEART_RATE, round(estimate.bpm, 1), "/min", self._clock(), estimate.confidence)
        )

    def _apply_mode(self, mode: str) -> None:
        self.chain.filter.set_mode(FilterMode(mode))

    def _apply_gain(self, gain_db: float) -> None:
        self.chain.limiter.set_gain_db(gain_db)

    def process(self, frame: np.ndarray) -> np.ndarray:
        if frame.shape[0] != self.channels:
            # A mono chest piece feeds both channels; a stereo one keeps its two.
            frame = np.broadcast_to(frame[:1], (self.channels, frame.shape[-1]))
        return self.chain.process(frame).astype(np.float32)

    def _idle_frame(self) -> np.ndarray:
        return self._silence

    def to_av_frame(self, frame: np.ndarray) -> av.AudioFrame:
        pcm = np.clip(np.rint(frame.T * 32767), -32768, 32767).astype(np.int16)
        layout = "stereo" if self.channels == 2 else "mono"
        out = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout=layout)
        out.sample_rate = AUDIO_RATE
        return out
