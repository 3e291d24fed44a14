import numpy as np
import pytest

from devices.colour import (
    COLORCHECKER_SRGB,
    ColourCorrection,
    ciede2000,
    linear_to_srgb8,
    patch_means,
    srgb8_to_lab,
    srgb8_to_linear,
)
from devices.simulated import DermatoscopeScene

# Sharma, Wu, Dalal (2005), "The CIEDE2000 color-difference formula: implementation
# notes, supplementary test data, and mathematical observations", table 1.
SHARMA_PAIRS = [
    (50.0000, 2.6772, -79.7751, 50.0000, 0.0000, -82.7485, 2.0425),
    (50.0000, 3.1571, -77.2803, 50.0000, 0.0000, -82.7485, 2.8615),
    (50.0000, 2.8361, -74.0200, 50.0000, 0.0000, -82.7485, 3.4412),
    (50.0000, -1.3802, -84.2814, 50.0000, 0.0000, -82.7485, 1.0000),
    (50.0000, -1.1848, -84.8006, 50.0000, 0.0000, -82.7485, 1.0000),
    (50.0000, -0.9009, -85.5211, 50.0000, 0.0000, -82.7485, 1.0000),
    (50.0000, 0.0000, 0.0000, 50.0000, -1.0000, 2.0000, 2.3669),
    (50.0000, -1.0000, 2.0000, 50.0000, 0.0000, 0.0000, 2.3669),
    (50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0009, 7.1792),
    (50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0010, 7.1792),
    (50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0011, 7.2195),
    (50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0012, 7.2195),
    (50.0000, -0.0010, 2.4900, 50.0000, 0.0009, -2.4900, 4.8045),
    (50.0000, -0.0010, 2.4900, 50.0000, 0.0010, -2.4900, 4.8045),
    (50.0000, -0.0010, 2.4900, 50.0000, 0.0011, -2.4900, 4.7461),
    (50.0000, 2.5000, 0.0000, 50.0000, 0.0000, -2.5000, 4.3065),
    (50.0000, 2.5000, 0.0000, 73.0000, 25.0000, -18.0000, 27.1492),
    (50.0000, 2.5000, 0.0000, 61.0000, -5.0000, 29.0000, 22.8977),
    (50.0000, 2.5000, 0.0000, 56.0000, -27.0000, -3.0000, 31.9030),
    (50.0000, 2.5000, 0.0000, 58.0000, 24.0000, 15.0000, 19.4535),
    (50.0000, 2.5000, 0.0000, 50.0000, 3.1736, 0.5854, 1.0000),
    (50.0000, 2.5000, 0.0000, 50.0000, 3.2972, 0.0000, 1.0000),
    (50.0000, 2.5000, 0.0000, 50.0000, 1.8634, 0.5757, 1.0000),
    (50.0000, 2.5000, 0.0000, 50.0000, 3.2592, 0.3350, 1.0000),
    (60.2574, -34.0099, 36.2677, 60.4626, -34.1751, 39.4387, 1.2644),
    (63.0109, -31.0961, -5.8663, 62.8187, -29.7946, -4.0864, 1.2630),
    (61.2901, 3.7196, -5.3901, 61.4292, 2.2480, -4.9620, 1.8731),
    (35.0831, -44.1164, 3.7933, 35.0232, -40.0716, 1.5901, 1.8645),
    (22.7233, 20.0904, -46.6940, 23.0331, 14.9730, -42.5619, 2.0373),
    (36.4612, 47.8580, 18.3852, 36.2715, 50.5065, 21.2231, 1.4146),
    (90.8027, -2.0831, 1.4410, 91.1528, -1.6435, 0.0447, 1.4441),
    (90.9257, -0.5406, -0.9208, 88.6381, -0.8985, -0.7239, 1.5381),
    (6.7747, -0.2908, -2.4247, 5.8714, -0.0985, -2.2286, 0.6377),
    (2.0776, 0.0795, -1.1350, 0.9033, -0.0636, -0.5514, 0.9082),
]


def test_ciede2000_matches_sharma_reference_pairs_vectorised() -> None:
    data = np.array(SHARMA_PAIRS)
    result = ciede2000(data[:, 0:3], data[:, 3:6])
    np.testing.assert_allclose(result, data[:, 6], atol=1e-4)
    # Symmetric, and zero for identical colours.
    np.testing.assert_allclose(ciede2000(data[:, 3:6], data[:, 0:3]), data[:, 6], atol=1e-4)
    assert np.all(ciede2000(data[:, 0:3], data[:, 0:3]) == 0)


def test_srgb_round_trip_and_lab_of_white() -> None:
    values = np.arange(256)
    assert np.array_equal(linear_to_srgb8(srgb8_to_linear(values)), values)
    np.testing.assert_allclose(srgb8_to_lab(np.array([255, 255, 255])), [100, 0, 0], atol=1e-3)


@pytest.fixture(scope="module")
def scene() -> DermatoscopeScene:
    return DermatoscopeScene(1920, 1080, seed=1)


def test_calibration_brings_chart_within_three_delta_e(scene: DermatoscopeScene) -> None:
    frame = scene.read()
    reference = srgb8_to_lab(COLORCHECKER_SRGB)
    before = ciede2000(srgb8_to_lab(patch_means(frame, scene.chart_patch_boxes)), reference)
    correction = ColourCorrection.fit(patch_means(frame, scene.chart_patch_boxes))
    # Per frame (the fast path) on a different noise variant than the one fitted on.
    corrected = correction.apply(scene.read())
    after = ciede2000(srgb8_to_lab(patch_means(corrected, scene.chart_patch_boxes)), reference)
    assert np.median(before) >= 10
    assert np.median(after) <= 3
    exact = correction.apply_exact(frame)
    after_still = ciede2000(srgb8_to_lab(patch_means(exact, scene.chart_patch_boxes)), reference)
    assert np.median(after_still) <= 3


def test_fast_path_within_one_level_of_exact(scene: DermatoscopeScene) -> None:
    correction = ColourCorrection(np.array([[1.1, 0.1, -0.05, 0.01], [0.0, 0.9, 0.1, 0.0], [0.02, -0.1, 1.3, -0.01]]))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    diff = np.abs(correction.apply(image).astype(int) - correction.apply_exact(image))
    assert diff.max() <= 1
    identity = ColourCorrection.identity()
    assert np.abs(identity.apply(image).astype(int) - image).max() <= 1


def test_fit_refuses_a_clipped_chart() -> None:
    with pytest.raises(ValueError, match="unclipped"):
        ColourCorrection.fit(np.full((24, 3), 255.0))


def test_fast_path_saturates_negative_and_over_range_light() -> None:
    # Strong cross terms: part of the frame goes below 0 or above 1 in linear light.
    correction = ColourCorrection(np.array([[2.5, -1.2, 0.3, -0.05], [-0.8, 1.9, -0.4, 0.02], [0.1, -0.9, 2.2, 0.0]]))
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    fast = correction.apply(image)
    exact = correction.apply_exact(image)
    assert np.abs(fast.astype(int) - exact).max() <= 1
    linear = srgb8_to_linear(image) @ correction.matrix[:, :3].T + correction.matrix[:, 3]
    below, above = linear < 0, linear > 1
    assert below.mean() > 0.05 and above.mean() > 0.05
    assert np.all(fast[below] == 0) and np.all(fast[above] == 255)


@pytest.mark.parametrize("shape", [(120, 160, 3), (1080, 1920, 3)], ids=["small", "1080p-threaded"])
def test_fast_path_matches_exact_when_a_third_of_the_pixels_leave_the_gamut(shape: tuple[int, int, int]) -> None:
    """No specks whatever the library does with NaN: OpenCV 5's convertScaleAbs turns NaN
    into 255 (4.x gave 0), so an unclamped square root of negative light left white dots."""
    correction = ColourCorrection(np.array([[1.9, -0.7, -0.3, -0.04], [-0.6, 1.8, -0.3, 0.03], [-0.3, -0.6, 1.9, -0.02]]))
    rng = np.random.default_rng(11)
    frame = rng.integers(0, 256, shape, dtype=np.uint8)
    linear = srgb8_to_linear(frame) @ correction.matrix[:, :3].T + correction.matrix[:, 3]
    out_of_gamut = ((linear < 0) | (linear > 1)).any(axis=-1)
    assert out_of_gamut.mean() >= 1 / 3
    fast = correction.apply(frame).astype(int)
    exact = correction.apply_exact(frame).astype(int)
    assert np.abs(fast - exact).max() <= 1


def test_large_frame_shared_between_threads_matches_row_by_row() -> None:
    """A 1080p frame goes through the worker thread too: same bytes as small pieces done
    by the calling thread alone, and within one level of the exact encoding."""
    correction = ColourCorrection(np.array([[1.1, 0.1, -0.05, 0.01], [0.0, 0.9, 0.1, 0.0], [0.02, -0.1, 1.3, -0.01]]))
    rng = np.random.default_rng(4)
    frame = rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    whole = correction.apply(frame)
    pieces = np.concatenate([correction.apply(frame[r : r + 60]) for r in range(0, 1080, 60)])
    assert np.array_equal(whole, pieces)
    sample = frame[::7, ::7]
    assert np.abs(correction.apply(sample).astype(int) - correction.apply_exact(sample)).max() <= 1
    # Into a strided view (not one block per row): still written.
    backing = np.zeros((1080, 1920, 4), np.uint8)
    assert correction.apply(frame, out=backing[..., :3]) is not None
    assert np.array_equal(backing[..., :3], whole)
