import numpy as np
import pytest

from devices.imaging import decode_still
from devices.otoscope import FieldOfViewTracker, OtoscopeAdapter, find_field_of_view
from devices.simulated import OtoscopeScene


def test_finds_the_circle() -> None:
    scene = OtoscopeScene(1280, 720, seed=5)
    circle = find_field_of_view(scene.read())
    assert circle is not None
    assert abs(circle.cx - scene.centre[0]) < 6 and abs(circle.cy - scene.centre[1]) < 6
    assert abs(circle.radius - scene.radius) < 8
    assert find_field_of_view(np.zeros((720, 1280, 3), np.uint8)) is None


def test_tracker_detects_once_then_only_when_the_view_moves() -> None:
    scene = OtoscopeScene(720, 480, seed=1)
    tracker = FieldOfViewTracker((720, 480))
    for _ in range(60):
        tracker.update(scene.read())
    assert tracker.detections == 1
    moved = np.roll(scene.read(), 60, axis=1)
    for _ in range(30):
        tracker.update(moved)
    assert tracker.detections == 2 and tracker.circle is not None


async def test_stream_masks_outside_the_circle_and_still_is_full_size() -> None:
    scene = OtoscopeScene(1280, 720, seed=3)
    adapter = OtoscopeAdapter(scene, (1280, 720))
    frame = await adapter.next_frame()
    assert frame.shape == (480, 720, 3)
    circle = adapter.tracker.circle
    assert circle is not None
    yy, xx = np.mgrid[0:480, 0:720]
    outside = np.hypot(xx - circle.cx, yy - circle.cy) > circle.radius
    assert frame[outside].max() == 0
    inside = np.hypot(xx - circle.cx, yy - circle.cy) < 0.9 * circle.radius
    assert frame[inside].mean() > 60
    reply = await adapter.handle_command({"action": "still"})
    assert (reply["width"], reply["height"]) == (1280, 720)
    image = decode_still(adapter.take_still(reply["still_id"]).data)
    assert image[0, 0].max() == 0 and image[360, 640].mean() > 60
    await adapter.handle_command({"action": "set_mode", "mode": "raw"})
    assert (await adapter.next_frame())[outside].max() > 0  # sensor noise is no longer masked
    await adapter.close()
