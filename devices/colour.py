"""Colour science for the dermatoscope: sRGB transfer, CIELAB, CIEDE2000, chart calibration.

The correction is a 3x4 affine matrix fitted by least squares in *linear* RGB (camera →
reference). Applying it per frame takes six passes, in blocks of rows small
enough for the intermediates to stay in cache, with every buffer allocated once:

1. ``cv2.LUT``: 8-bit sRGB → linear float32;
2. ``cv2.transform``: the 3x4 matrix;
3. ``np.clip`` to [0, 1]: the matrix can push light below 0 or above 1, and what a
   library does with the square root of a negative (NaN) or with NaN in a saturating
   cast differs between releases (OpenCV 4 gave 0, OpenCV 5 gives 255): clamping first
   leaves nothing to chance;
4. ``cv2.sqrt``: a compander close to the sRGB curve, so that 256 steps of it are enough
   (a step spans at most 1.4 sRGB codes, where 256 steps of *linear* light would span up
   to 13 in the darks);
5. ``cv2.convertScaleAbs``: → 8-bit index;
6. ``cv2.LUT``: index → 8-bit sRGB, within one level of the exact encoding.

On large frames the blocks are shared between the calling thread and a persistent worker
thread (OpenCV releases the GIL), each taking the next block when it is free, so that a
worker that a busy machine does not schedule delays the frame by one block at most.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
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

_BLOCK_ELEMENTS = 1 << 18
"""Channel values per block of rows: two float32 intermediates of 1 MiB each."""
_MAX_LANES = 2
"""Threads sharing a large frame's blocks: the calling thread plus one worker."""
_PARALLEL_ELEMENTS = 1 << 20
"""Frames smaller than this (about 350k pixels) are done by the calling thread alone."""

_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _worker_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=_MAX_LANES - 1, thread_name_prefix="colour")
        return _pool


def _lanes() -> int:
    return max(1, min(_MAX_LANES, os.cpu_count() or 1))


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


@functools.lru_cache(maxsize=1)
def _srgb8_from_sqrt_index() -> np.ndarray:
    """Table from ``rint(255 * sqrt(linear))`` to 8-bit sRGB.

    Each entry is the code that most of its step of linear light rounds to, among
    those within one level of every value of the step.
    """
    samples = 256
    index = np.arange(256)[:, None]
    u = np.clip((index + (np.arange(samples) + 0.5) / samples - 0.5) / 255, 0.0, 1.0)
    codes = linear_to_srgb8(u * u).astype(np.int16)
    table = np.empty(256, np.uint8)
    for i, step in enumerate(codes):
        candidates = np.arange(int(step.max()) - 1, int(step.min()) + 2)
        counts = [(int(np.count_nonzero(step == c)), int(c)) for c in candidates]
        table[i] = max(counts)[1]
    return table


class _Scratch:
    """Intermediate buffers for one block of rows (one per lane)."""

    def __init__(self, rows: int, width: int) -> None:
        self.linear = np.empty((rows, width, 3), np.float32)
        self.corrected = np.empty((rows, width, 3), np.float32)
        self.index = np.empty((rows, width, 3), np.uint8)


class _SharedBlocks:
    """The blocks of one frame, taken one at a time by the calling thread and the workers.

    Whichever thread gets the CPU does the work: on a busy machine the caller does not
    wait for a worker that has not been scheduled yet, only for the block a worker holds.
    """

    def __init__(self, owner: "ColourCorrection", frame: np.ndarray, out: np.ndarray, blocks: list[tuple[int, int]]) -> None:
        self._owner = owner
        self._frame = frame
        self._out = out
        self._blocks = blocks
        self._next = itertools.count()
        self._done = 0
        self._error: BaseException | None = None
        self._cond = threading.Condition()

    def _lane(self, scratch: _Scratch) -> None:
        while True:
            i = next(self._next)  # atomic under the GIL
            if i >= len(self._blocks):
                return
            try:
                self._owner._apply_block(scratch, self._frame, self._out, *self._blocks[i])
            except BaseException as exc:  # handed to the caller
                self._error = exc
            with self._cond:
                self._done += 1
                if self._done == len(self._blocks):
                    self._cond.notify_all()

    def run(self, scratch: list[_Scratch]) -> None:
        pool = _worker_pool()
        for lane in scratch[1:]:
            try:
                pool.submit(self._lane, lane)
            except RuntimeError:  # interpreter shutting down: the caller does it all
                break
        self._lane(scratch[0])
        with self._cond:
            self._cond.wait_for(lambda: self._done == len(self._blocks))
        if self._error is not None:
            raise self._error


class ColourCorrection:
    """A fitted correction, applied to whole 8-bit RGB frames with precomputed LUTs."""

    def __init__(self, matrix: np.ndarray) -> None:
        self.matrix = np.asarray(matrix, dtype=np.float64).reshape(3, 4)
        self._m = self.matrix.astype(np.float32)
        self._to_linear = srgb8_to_linear(np.arange(256)).astype(np.float32).reshape(256, 1)
        self._to_srgb8 = _srgb8_from_sqrt_index()
        self._lock = threading.Lock()
        self._scratch: list[_Scratch] = []
        self._scratch_key: tuple[int, int] = (0, 0)

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

    def _block_rows(self, width: int) -> int:
        return max(1, _BLOCK_ELEMENTS // (3 * width))

    def _scratch_for(self, lanes: int, width: int) -> list[_Scratch]:
        rows = self._block_rows(width)
        if self._scratch_key != (rows, width):
            self._scratch, self._scratch_key = [], (rows, width)
        while len(self._scratch) < lanes:
            self._scratch.append(_Scratch(rows, width))
        return self._scratch[:lanes]

    def _apply_block(self, scratch: _Scratch, frame: np.ndarray, out: np.ndarray, r0: int, r1: int) -> None:
        n = r1 - r0
        linear, corrected, index = scratch.linear[:n], scratch.corrected[:n], scratch.index[:n]
        cv2.LUT(frame[r0:r1], self._to_linear, dst=linear)
        cv2.transform(linear, self._m, dst=corrected)
        np.clip(corrected, 0.0, 1.0, out=corrected)
        cv2.sqrt(corrected, dst=corrected)
        cv2.convertScaleAbs(corrected, dst=index, alpha=255.0)
        cv2.LUT(index, self._to_srgb8, dst=out[r0:r1])

    def apply(self, frame: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Corrected copy of an 8-bit RGB frame (into ``out`` when given)."""
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError("expected an 8-bit RGB frame shaped (height, width, 3)")
        if out is None:
            out = np.empty_like(frame)
        elif out.shape != frame.shape or out.dtype != np.uint8:
            raise ValueError("out must be an 8-bit array shaped like the frame")
        # OpenCV writes into dst only when it is one block of memory per row.
        target = out if out.flags.c_contiguous else np.empty(frame.shape, np.uint8)
        height, width, _ = frame.shape
        lanes = _lanes() if frame.size >= _PARALLEL_ELEMENTS else 1
        with self._lock:
            scratch = self._scratch_for(lanes, width)
            step = self._block_rows(width)
            blocks = [(r0, min(r0 + step, height)) for r0 in range(0, height, step)]
            if lanes == 1:
                for r0, r1 in blocks:
                    self._apply_block(scratch[0], frame, target, r0, r1)
            else:
                _SharedBlocks(self, frame, target, blocks).run(scratch)
        if target is not out:
            np.copyto(out, target)
        return out

    def apply_exact(self, frame: np.ndarray) -> np.ndarray:
        """Float reference of :meth:`apply` (for stills and tests)."""
        lin = srgb8_to_linear(frame).reshape(-1, 3)
        corrected = lin @ self.matrix[:, :3].T + self.matrix[:, 3]
        return linear_to_srgb8(corrected).reshape(frame.shape)
