"""Colour science for the dermatoscope: sRGB transfer, CIELAB, CIEDE2000, chart calibration.

The correction is a 3x4 affine matrix fitted by least squares in *linear* RGB (camera →
reference). Applying it per frame stays in 8/16-bit integer OpenCV operations, with
every buffer allocated once:

1. ``cv2.LUT``: 8-bit sRGB → 12-bit linear (uint16);
2. ``cv2.transform``: the 3x4 matrix on uint16 (saturating);
3. back to 8-bit sRGB with two 8-bit LUTs: one indexed by ``linear >> 4`` for the bright
   part, one indexed by the low byte for the darks (< 1/16 of full scale), where the
   sRGB curve is steep; their maximum is the result, within one level of the exact
   encoding.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

logger = logging.getLogger(__name__)

COLORCHECKER_NAMES = (
    "dark skin", "light skin", "blue sky", "foliage", "blue flower", "bluish green",
    "orange", "purplish blue", "moderate red", "purple", "yellow green", "orange yellow",
    "blue", "green", "red", "yellow", "magenta", "cyan",
    "white 9.5", "neutral 8", "neutral 6.5", "neutral 5", "neutral 3.5", "black 2",
)  # fmt: skip

COLORCHECKER_SRGB = np.array(
    [
        [115, 82, 68], [194, 150, 130], [98, 122, 157], [87, 108, 67], [133, 128, 177], [103, 189, 170],
        [214, 126, 44], [80, 91, 166], [193, 90, 99], [94, 60, 108], [157, 188, 64], [224, 163, 46],
        [56, 61, 150], [70, 148, 73], [175, 54, 60], [231, 199, 31], [187, 86, 149], [8, 133, 161],
        [243, 243, 242], [200, 200, 200], [160, 160, 160], [122, 122, 121], [85, 85, 85], [52, 52, 52],
    ],
    dtype=np.uint8,
)  # fmt: skip
"""Published sRGB (D65) values of the 24 ColorChecker Classic patches, row by row."""

_SRGB_TO_XYZ = np.array(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ]
)
_D65_WHITE = _SRGB_TO_XYZ.sum(axis=1)

_LINEAR_BITS = 12
_LINEAR_MAX = (1 << _LINEAR_BITS) - 1


def srgb_to_linear(v: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1] → linear in [0, 1] (IEC 61966-2-1)."""
    v = np.asarray(v, dtype=np.float64)
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(v: np.ndarray) -> np.ndarray:
    v = np.clip(np.asarray(v, dtype=np.float64), 0.0, 1.0)
    return np.where(v <= 0.0031308, 12.92 * v, 1.055 * v ** (1 / 2.4) - 0.055)


def srgb8_to_linear(v: np.ndarray) -> np.ndarray:
    return srgb_to_linear(np.asarray(v, dtype=np.float64) / 255.0)


def linear_to_srgb8(v: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(255.0 * linear_to_srgb(v)), 0, 255).astype(np.uint8)


def srgb8_to_lab(v: np.ndarray) -> np.ndarray:
    """8-bit sRGB (..., 3) → CIELAB (D65 white)."""
    xyz = srgb8_to_linear(v) @ _SRGB_TO_XYZ.T / _D65_WHITE
    eps, kappa = 216 / 24389, 24389 / 27
    f = np.where(xyz > eps, np.cbrt(xyz), (kappa * xyz + 16) / 116)
    lab = np.empty_like(f)
    lab[..., 0] = 116 * f[..., 1] - 16
    lab[..., 1] = 500 * (f[..., 0] - f[..., 1])
    lab[..., 2] = 200 * (f[..., 1] - f[..., 2])
    return lab


def ciede2000(lab1: np.ndarray, lab2: np.ndarray, kl: float = 1.0, kc: float = 1.0, kh: float = 1.0) -> np.ndarray:
    """CIEDE2000 colour difference, vectorised over leading axes (Sharma, Wu, Dalal 2005)."""
    lab1 = np.asarray(lab1, dtype=np.float64)
    lab2 = np.asarray(lab2, dtype=np.float64)
    l1, a1, b1 = lab1[..., 0], lab1[..., 1], lab1[..., 2]
    l2, a2, b2 = lab2[..., 0], lab2[..., 1], lab2[..., 2]
    c_bar = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2
    g = 0.5 * (1 - np.sqrt(c_bar**7 / (c_bar**7 + 25.0**7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.degrees(np.arctan2(b1, a1p)) % 360
    h2p = np.degrees(np.arctan2(b2, a2p)) % 360
    zero = (c1p * c2p) == 0

    dlp = l2 - l1
    dcp = c2p - c1p
    dh = h2p - h1p
    dh = np.where(dh > 180, dh - 360, np.where(dh < -180, dh + 360, dh))
    dh = np.where(zero, 0.0, dh)
    dhp = 2 * np.sqrt(c1p * c2p) * np.sin(np.radians(dh / 2))

    lp_bar = (l1 + l2) / 2
    cp_bar = (c1p + c2p) / 2
    hsum = h1p + h2p
    hp_bar = np.where(
        np.abs(h1p - h2p) <= 180, hsum / 2, np.where(hsum < 360, (hsum + 360) / 2, (hsum - 360) / 2)
    )
    hp_bar = np.where(zero, hsum, hp_bar)
    t = (
        1
        - 0.17 * np.cos(np.radians(hp_bar - 30))
        + 0.24 * np.cos(np.radians(2 * hp_bar))
        + 0.32 * np.cos(np.radians(3 * hp_bar + 6))
        - 0.20 * np.cos(np.radians(4 * hp_bar - 63))
    )
    d_theta = 30 * np.exp(-(((hp_bar - 275) / 25) ** 2))
    rc = 2 * np.sqrt(cp_bar**7 / (cp_bar**7 + 25.0**7))
    sl = 1 + 0.015 * (lp_bar - 50) ** 2 / np.sqrt(20 + (lp_bar - 50) ** 2)
    sc = 1 + 0.045 * cp_bar
    sh = 1 + 0.015 * cp_bar * t
    rt = -np.sin(np.radians(2 * d_theta)) * rc
    result: np.ndarray = np.sqrt(
        (dlp / (kl * sl)) ** 2 + (dcp / (kc * sc)) ** 2 + (dhp / (kh * sh)) ** 2 + rt * (dcp / (kc * sc)) * (dhp / (kh * sh))
    )
    return result


@dataclass(frozen=True)
class PatchBox:
    """Inner area of one chart patch, in pixels of the full sensor (x1, y1 exclusive)."""

    x0: int
    y0: int
    x1: int
    y1: int


def patch_means(frame: np.ndarray, boxes: Sequence[PatchBox]) -> np.ndarray:
    """Mean 8-bit RGB of each box → (n, 3) float."""
    return np.array([frame[b.y0 : b.y1, b.x0 : b.x1].reshape(-1, 3).mean(axis=0) for b in boxes])


def fit_affine(measured_linear: np.ndarray, reference_linear: np.ndarray) -> np.ndarray:
    """3x4 matrix A minimising ||A [m; 1] - r||² over the patches (linear RGB)."""
    design = np.hstack([measured_linear, np.ones((len(measured_linear), 1))])
    solution, *_ = np.linalg.lstsq(design, reference_linear, rcond=None)
    matrix: np.ndarray = solution.T
    return matrix


class ColourCorrection:
    """A fitted correction, applied to whole 8-bit RGB frames with precomputed LUTs."""

    def __init__(self, matrix: np.ndarray) -> None:
        self.matrix = np.asarray(matrix, dtype=np.float64).reshape(3, 4)
        # The matrix works on 12-bit linear codes: the offset scales with them.
        scaled = self.matrix.copy()
        scaled[:, 3] *= _LINEAR_MAX
        self._m = scaled.astype(np.float32)
        self._to_linear = np.rint(srgb8_to_linear(np.arange(256)) * _LINEAR_MAX).astype(np.uint16).reshape(256, 1)
        hi = np.arange(256)
        self._hi_lut = np.where(hi >= 16, linear_to_srgb8(np.minimum(hi * 16, _LINEAR_MAX) / _LINEAR_MAX), 0).astype(np.uint8)
        lo = np.arange(256)
        self._lo_lut = linear_to_srgb8(lo / _LINEAR_MAX)
        self._lo_lut[255] = 0  # saturated: the bright part takes over
        self._shape: tuple[int, ...] = ()

    @classmethod
    def fit(cls, measured_srgb8: np.ndarray, reference_srgb8: np.ndarray = COLORCHECKER_SRGB) -> "ColourCorrection":
        """From the mean camera colour of each patch and the patches' reference values.

        Patches the camera clipped (a channel >= 250) are left out: they carry no
        information about the cast.
        """
        measured = np.asarray(measured_srgb8, dtype=np.float64)
        keep = (measured < 250).all(axis=1) & (measured > 3).all(axis=1)
        if keep.sum() < 6:
            raise ValueError("need at least 6 unclipped chart patches to calibrate")
        return cls(fit_affine(srgb8_to_linear(measured[keep]), srgb8_to_linear(np.asarray(reference_srgb8)[keep])))

    @classmethod
    def identity(cls) -> "ColourCorrection":
        return cls(np.hstack([np.eye(3), np.zeros((3, 1))]))

    def _buffers(self, shape: tuple[int, ...]) -> None:
        if shape != self._shape:
            self._shape = shape
            self._lin = np.empty(shape, np.uint16)
            self._out_lin = np.empty(shape, np.uint16)
            self._hi = np.empty(shape, np.uint8)
            self._lo = np.empty(shape, np.uint8)
            self._hi8 = np.empty(shape, np.uint8)
            self._lo8 = np.empty(shape, np.uint8)

    def apply(self, frame: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Corrected copy of an 8-bit RGB frame (into ``out`` when given)."""
        self._buffers(frame.shape)
        if out is None:
            out = np.empty_like(frame)
        cv2.LUT(frame, self._to_linear, dst=self._lin)
        cv2.transform(self._lin, self._m, dst=self._out_lin)
        cv2.convertScaleAbs(self._out_lin, dst=self._hi, alpha=1 / 16)
        cv2.convertScaleAbs(self._out_lin, dst=self._lo)
        cv2.LUT(self._hi, self._hi_lut, dst=self._hi8)
        cv2.LUT(self._lo, self._lo_lut, dst=self._lo8)
        cv2.max(self._hi8, self._lo8, dst=out)
        return out

    def apply_exact(self, frame: np.ndarray) -> np.ndarray:
        """Float reference of :meth:`apply` (for stills and tests)."""
        lin = srgb8_to_linear(frame).reshape(-1, 3)
        corrected = lin @ self.matrix[:, :3].T + self.matrix[:, 3]
        return linear_to_srgb8(corrected).reshape(frame.shape)
