import numpy as np
import pytest

from devices.colour import COLORCHECKER_SRGB, ciede2000, patch_means, srgb8_to_lab
from devices.dermatoscope import DermatoscopeAdapter
from devices.errors import DeviceCommandError
from devices.imaging import decode_still
from devices.simulated import DermatoscopeScene


@pytest.fixture(scope="module")
def scene() -> DermatoscopeScene:
    return DermatoscopeScene(1920, 1080, seed=2)


async def test_stream_is_720p_and_still_is_full_resolution_calibrated(scene: DermatoscopeScene) -> None:
    adapter = DermatoscopeAdapter(scene, (1920, 1080), chart_patches=scene.chart_patch_boxes)
    with pytest.raises(DeviceCommandError, match="no frame yet"):
        await adapter.handle_command({"action": "calibrate"})
    frame = await adapter.next_frame()
    assert frame.shape == (720, 1280, 3)
    reply = await adapter.handle_command({"action": "calibrate"})
    assert np.array(reply["matrix"]).shape == (3, 4)
    reply = await adapter.handle_command({"action": "still"})
    assert (reply["mime"], reply["width"], reply["height"]) == ("image/png", 1920, 1080)
    still = adapter.take_still(reply["still_id"])
    assert len(still.data) == reply["bytes"]
    with pytest.raises(DeviceCommandError):
        adapter.take_still(reply["still_id"])
    image = decode_still(still.data)
    assert image.shape == (1080, 1920, 3)
    reference = srgb8_to_lab(COLORCHECKER_SRGB)
    assert np.median(ciede2000(srgb8_to_lab(patch_means(image, scene.chart_patch_boxes)), reference)) <= 3
    await adapter.handle_command({"action": "set_mode", "mode": "raw"})
    raw = decode_still(adapter.take_still((await adapter.handle_command({"action": "still"}))["still_id"]).data)
    assert np.median(ciede2000(srgb8_to_lab(patch_means(raw, scene.chart_patch_boxes)), reference)) >= 10
    await adapter.close()


async def test_calibrate_validates_patches(scene: DermatoscopeScene) -> None:
    adapter = DermatoscopeAdapter(scene, (1920, 1080))
    await adapter.next_frame()
    with pytest.raises(DeviceCommandError, match="chart position unknown"):
        await adapter.handle_command({"action": "calibrate"})
    with pytest.raises(DeviceCommandError, match="24"):
        await adapter.handle_command({"action": "calibrate", "patches": [[0, 0, 10, 10]]})
    with pytest.raises(DeviceCommandError):
        await adapter.handle_command({"action": "calibrate", "patches": "everywhere"})
    boxes = [[b.x0, b.y0, b.x1, b.y1] for b in scene.chart_patch_boxes]
    assert adapter.correction is None
    await adapter.handle_command({"action": "calibrate", "patches": boxes})
    assert adapter.correction is not None
    await adapter.close()
