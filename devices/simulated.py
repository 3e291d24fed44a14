"""Simulated sources, seeded, for demos, tests and benches.

* :class:`PhonocardiogramSimulator`: heart sounds S1/S2 at a given rate (with a little
  beat-to-beat variability), an optional systolic murmur, lung sounds that follow a
  breathing rhythm; 48 kHz, frames of 960 samples, mono or stereo.
* :class:`DermatoscopeScene`: skin texture, hairs, a pigmented lesion and a 24-patch
  ColorChecker-like chart in view, seen through a camera with a known colour cast.
* :class:`OtoscopeScene`: the circular field of view of an otoscope, an ear canal and a
  tympanic membrane (cone of light, malleus), black outside the circle.

Video scenes are rendered once; frames cycle through a few sensor-noise variants, so a
frame costs a copy and the simulator never dominates a benchmark.
"""

from __future__ import annotations

import math
import cv2
import numpy as np
from scipy import signal

from .adapter import AUDIO_FRAME_SAMPLES, AUDIO_RATE, FrameSource
from .colour import COLORCHECKER_SRGB, PatchBox, linear_to_srgb8, srgb8_to_linear

# The camera's colour cast, applied to linear RGB: warm, with channel crosstalk and
# a weak blue channel, as cheap dermatoscopes with white LEDs tend to have.
DEFAULT_CAMERA_CAST = np.array(
    [
        [1.02, 0.14, 0.00],
        [0.08, 0.68, 0.04],
        [0.00, 0.14, 0.40],
    ]
)


class PhonocardiogramSimulator(FrameSource):
    """Chest sounds at 48 kHz, frames of 960 samples shaped (channels, 960), float32."""

    description = "simulated"

    def __init__(
        self,
        heart_rate_bpm: float = 72.0,
        *,
        murmur: bool = False,
        lung_sounds: bool = True,
        breathing_rate_per_min: float = 15.0,
        channels: int = 1,
        variability: float = 0.02,
        seed: int = 0,
    ) -> None:
        if not 20 <= heart_rate_bpm <= 250:
            raise ValueError("heart_rate_bpm must be between 20 and 250")
        if channels not in (1, 2):
            raise ValueError("channels must be 1 or 2")
        self.heart_rate_bpm = heart_rate_bpm
        self.murmur = murmur
        self.lung_sounds = lung_sounds
        self.breathing_rate_per_min = breathing_rate_per_min
        self.channels = channels
        self.variability = variability
        self._rng = np.random.default_rng(seed)
        self._sample = 0
        self._next_beat = int(0.1 * AUDIO_RATE)
        # Two seconds hold a whole beat (S1, systole, S2) at any rate above 30 bpm.
        self._heart = np.zeros(2 * AUDIO_RATE)
        self._s1_freqs = np.array([32.0, 48.0, 70.0, 100.0])
        self._s2_freqs = np.array([45.0, 70.0, 110.0, 150.0])
        self._murmur_sos = signal.butter(4, [150, 500], btype="bandpass", fs=AUDIO_RATE, output="sos")
        self._lung_sos = signal.butter(2, [100, 900], btype="bandpass", fs=AUDIO_RATE, output="sos")
        self._lung_zi = np.zeros((self._lung_sos.shape[0], 2))

    @staticmethod
    def systole_s(heart_rate_bpm: float) -> float:
        """S1→S2 interval, shortening with rate (after Weissler's QS2 regression)."""
        return max(0.546 - 0.0021 * heart_rate_bpm, 0.2)

    def _sound(self, freqs: np.ndarray, duration: float, amplitude: float) -> np.ndarray:
        t = np.arange(int(duration * AUDIO_RATE)) / AUDIO_RATE
        tau = duration / 5
        envelope = (t / tau) * np.exp(1 - t / tau)
        phases = self._rng.uniform(0, 2 * np.pi, len(freqs))
        weights = self._rng.uniform(0.6, 1.0, len(freqs))
        tones = np.sin(2 * np.pi * freqs[:, None] * t[None, :] + phases[:, None])
        sound: np.ndarray = amplitude * envelope * (weights @ tones) / weights.sum()
        return sound

    def _schedule_beat(self, offset: int) -> None:
        rate = self.heart_rate_bpm
        systole = int(self.systole_s(rate) * AUDIO_RATE)
        s1 = self._sound(self._s1_freqs, 0.12, 0.55 * self._rng.uniform(0.9, 1.1))
        s2 = self._sound(self._s2_freqs, 0.09, 0.42 * self._rng.uniform(0.9, 1.1))
        self._heart[offset : offset + len(s1)] += s1
        self._heart[offset + systole : offset + systole + len(s2)] += s2
        if self.murmur:
            start, stop = int(0.09 * AUDIO_RATE), systole
            noise = signal.sosfilt(self._murmur_sos, self._rng.standard_normal(stop - start + 2000))[2000:]
            diamond = 1 - np.abs(np.linspace(-1, 1, stop - start))
            self._heart[offset + start : offset + stop] += 0.5 * noise * diamond

    def _lungs(self, n: int) -> np.ndarray:
        noise = self._rng.standard_normal((2, n))
        filtered, self._lung_zi = signal.sosfilt(self._lung_sos, noise[0], zi=self._lung_zi)
        t = (self._sample + np.arange(n)) / AUDIO_RATE
        phase = (t * self.breathing_rate_per_min / 60.0) % 1.0
        # Inspiration (the first 40 % of a breath) is louder than expiration.
        inspiration = np.where(phase < 0.4, np.sin(np.pi * phase / 0.4) ** 2, 0.0)
        expiration = np.where(phase >= 0.4, 0.45 * np.sin(np.pi * (phase - 0.4) / 0.6) ** 2, 0.0)
        lungs: np.ndarray = 0.12 * filtered * (inspiration + expiration) + 0.002 * noise[1]
        return lungs

    def read(self) -> np.ndarray:
        n = AUDIO_FRAME_SAMPLES
        while self._next_beat < self._sample + n:
            self._schedule_beat(self._next_beat - self._sample)
            rr = 60.0 / self.heart_rate_bpm * (1 + self.variability * self._rng.standard_normal())
            self._next_beat += int(rr * AUDIO_RATE)
        heart = self._heart[:n].copy()
        self._heart[:-n] = self._heart[n:]
        self._heart[-n:] = 0.0
        lungs = self._lungs(n) if self.lung_sounds else np.zeros(n)
        self._sample += n
        if self.channels == 1:
            return (heart + lungs)[None, :].astype(np.float32)
        # A second chest piece further from the heart hears more lung than heart.
        return np.stack([heart + 0.6 * lungs, 0.6 * heart + lungs]).astype(np.float32)


class _NoisyStill(FrameSource):
    """A pre-rendered 8-bit camera image shown with cycling sensor-noise variants."""

    description = "simulated"

    def __init__(self, camera: np.ndarray, seed: int, variants: int = 4, noise_levels: float = 1.5) -> None:
        rng = np.random.default_rng(seed + 1)
        h, w, _ = camera.shape
        base = camera.astype(np.int16)
        self._frames = []
        for _ in range(variants):
            noise = np.rint(rng.standard_normal((h, w, 3), dtype=np.float32) * noise_levels).astype(np.int16)
            self._frames.append(np.clip(base + noise, 0, 255).astype(np.uint8))
        self._index = 0

    @property
    def size(self) -> tuple[int, int]:
        h, w, _ = self._frames[0].shape
        return w, h

    def read(self) -> np.ndarray:
        frame = self._frames[self._index % len(self._frames)]
        self._index += 1
        return frame


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: tuple[int, int]) -> np.ndarray:
    small = rng.standard_normal((cells[1], cells[0])).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


class DermatoscopeScene(_NoisyStill):
    """Skin with a pigmented lesion and a colour chart, seen through a colour-cast camera."""

    def __init__(
        self,
        width: int = 1920,
        height: int = 1080,
        *,
        seed: int = 0,
        cast: np.ndarray = DEFAULT_CAMERA_CAST,
    ) -> None:
        rng = np.random.default_rng(seed)
        self.cast = np.asarray(cast, dtype=np.float64)
        scene = self._render_scene(rng, width, height)
        self.scene_linear = scene
        """The true scene in linear sRGB (what a perfect camera would see)."""
        camera = (scene.reshape(-1, 3) @ self.cast.T).reshape(scene.shape)
        super().__init__(linear_to_srgb8(camera), seed)

    def _chart_layout(self, w: int, h: int) -> tuple[list[PatchBox], tuple[int, int, int, int]]:
        patch = max(16, int(0.09 * h))
        gap = max(3, patch // 8)
        x0, y0 = int(0.03 * w), h - int(0.04 * h) - (4 * patch + 5 * gap)
        boxes = []
        margin = patch // 5
        for row in range(4):
            for col in range(6):
                px = x0 + gap + col * (patch + gap)
                py = y0 + gap + row * (patch + gap)
                boxes.append(PatchBox(px + margin, py + margin, px + patch - margin, py + patch - margin))
        frame = (x0, y0, x0 + 6 * patch + 7 * gap, y0 + 4 * patch + 5 * gap)
        self.chart_patch_boxes: tuple[PatchBox, ...] = tuple(boxes)
        """Where the 24 patches are (inner areas), in ColorChecker order."""
        self._patch = patch
        return boxes, frame

    def _render_scene(self, rng: np.random.Generator, w: int, h: int) -> np.ndarray:
        skin = srgb8_to_linear(np.array([212.0, 158.0, 132.0]))
        mottling = 1 + 0.06 * _smooth_noise(rng, h, w, (24, 14)) + 0.03 * _smooth_noise(rng, h, w, (240, 135))
        image = np.empty((h, w, 3), np.float32)
        image[:] = skin.astype(np.float32)
        image *= mottling[..., None]
        # Pigmented lesion: an irregular outline, a darker reticular network, a soft border.
        cx, cy, radius = 0.6 * w, 0.45 * h, 0.2 * h
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        theta = np.arctan2(yy - cy, xx - cx)
        outline = np.full_like(theta, radius)
        for k in range(2, 7):
            outline += radius * rng.uniform(0.02, 0.08) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        dist = np.hypot(xx - cx, yy - cy)
        mask = np.clip((outline - dist) / (0.08 * radius) + 0.5, 0, 1)
        network = _smooth_noise(rng, h, w, (w // 14, h // 14))
        network = np.clip(0.5 + network, 0, 1)
        lesion = srgb8_to_linear(np.array([118.0, 76.0, 52.0])).astype(np.float32)
        core = 1 - 0.55 * np.clip(1 - dist / radius, 0, 1)
        pigment = lesion[None, None, :] * (0.55 + 0.45 * network[..., None]) * core[..., None]
        image = image * (1 - mask[..., None]) + pigment * mask[..., None]
        # A few hairs.
        hairs = np.ones((h, w), np.float32)
        for _ in range(6):
            p0 = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
            p1 = (int(p0[0] + rng.uniform(-0.5, 0.5) * w), int(p0[1] + rng.uniform(-0.5, 0.5) * h))
            cv2.line(hairs, p0, p1, 0.25, max(2, h // 400), cv2.LINE_AA)
        image *= hairs[..., None]
        # The colour chart (on a near-black card) over the bottom-left corner.
        boxes, (cx0, cy0, cx1, cy1) = self._chart_layout(w, h)
        image[cy0:cy1, cx0:cx1] = srgb8_to_linear(np.array([28.0, 28.0, 28.0]))
        reference = srgb8_to_linear(COLORCHECKER_SRGB.astype(np.float64))
        margin = self._patch // 5
        for box, colour in zip(boxes, reference):
            image[box.y0 - margin : box.y1 + margin, box.x0 - margin : box.x1 + margin] = colour
        return image.astype(np.float32)


class OtoscopeScene(_NoisyStill):
    """An otoscope view: a bright disc (the speculum's field) on black."""

    def __init__(self, width: int = 1280, height: int = 720, *, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        h, w = height, width
        self.centre = (w / 2 + rng.uniform(-0.03, 0.03) * w, h / 2 + rng.uniform(-0.03, 0.03) * h)
        self.radius = 0.44 * h
        cx, cy = self.centre
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        r = np.hypot(xx - cx, yy - cy) / self.radius
        canal = srgb8_to_linear(np.array([205.0, 112.0, 92.0])).astype(np.float32)
        # The canal darkens towards its far end, then the drum is lit by the scope's lamp.
        shade = np.clip(0.35 + 0.65 * r, 0, 1) * (1 + 0.08 * _smooth_noise(rng, h, w, (40, 24)))
        image = canal[None, None, :] * shade[..., None]
        tx, ty = cx + 0.08 * self.radius, cy - 0.05 * self.radius
        drum_a, drum_b = 0.42 * self.radius, 0.34 * self.radius
        drum_r = np.hypot((xx - tx) / drum_a, (yy - ty) / drum_b)
        drum_mask = np.clip((1 - drum_r) * 12, 0, 1)
        drum = srgb8_to_linear(np.array([196.0, 186.0, 178.0])).astype(np.float32)
        drum_shade = 0.75 + 0.25 * np.clip(1 - drum_r, 0, 1)
        image = image * (1 - drum_mask[..., None]) + (drum * drum_shade[..., None]) * drum_mask[..., None]
        # Malleus handle (from the umbo up and forward) and the cone of light (down and forward).
        umbo = (int(tx), int(ty))
        overlay = np.zeros((h, w), np.float32)
        cv2.line(overlay, umbo, (int(tx - 0.15 * self.radius), int(ty - 0.3 * self.radius)), 0.35, max(3, h // 120))
        cone = np.array(
            [umbo, (int(tx + 0.3 * self.radius), int(ty + 0.25 * self.radius)), (int(tx + 0.18 * self.radius), int(ty + 0.33 * self.radius))],
            np.int32,
        )
        cv2.fillConvexPoly(overlay, cone, 0.6)
        blurred = cv2.GaussianBlur(overlay, (0, 0), 2.0)
        image = image + blurred[..., None] * drum_mask[..., None]
        # The speculum: hard edge, a little vignetting just inside it.
        inside = np.clip((1 - r) * self.radius / 2.0, 0, 1)
        vignette = np.clip(1.15 - 0.35 * r**2, 0, 1)
        image = image * (inside * vignette)[..., None]
        super().__init__(linear_to_srgb8(image), seed, noise_levels=1.0)
        self.scene_linear = image


def make_multitone(freqs: list[float], seconds: float, amplitude: float = 0.1) -> np.ndarray:
    """A sum of sines at 48 kHz (float64, mono), for codec tests."""
    t = np.arange(int(seconds * AUDIO_RATE)) / AUDIO_RATE
    phases = np.arange(len(freqs)) * 0.7
    return np.asarray(sum(amplitude * np.sin(2 * math.pi * f * t + p) for f, p in zip(freqs, phases)))
