"""Uploads: JPEG/PNG only (HEIC refused with a clear message), EXIF and text metadata cut
without re-encoding, orientation applied (re-encoded only then), sealed at rest."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from core.keyring import MasterKey
from media.recording.vault import Vault
from signalling.expertise.attachments import AttachmentBlobs, UploadRefused, clean, sniff

GPS_IFD = 0x8825


def jpeg(width: int = 64, height: int = 32, orientation: int | None = None, gps: bool = True,
         comment: bytes | None = b"patient Jane Doe") -> bytes:
    img = Image.new("RGB", (width, height), (200, 30, 30))
    img.paste((20, 20, 220), (0, 0, width // 4, height))  # a blue left edge, to see where it goes
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"  # Make
    if orientation is not None:
        exif[0x0112] = orientation
    if gps:
        exif.get_ifd(GPS_IFD)[2] = (48.0, 51.0, 24.0)  # GPSLatitude
    out = io.BytesIO()
    kw = {"comment": comment} if comment else {}
    img.save(out, "JPEG", quality=90, exif=exif, **kw)
    return out.getvalue()


def test_exif_is_cut_without_reencoding() -> None:
    data = jpeg()
    assert b"PhoneMaker" in data and b"Jane Doe" in data
    kept = clean(data, 10_000_000)
    assert not kept.reencoded and kept.mime == "image/jpeg" and (kept.width, kept.height) == (64, 32)
    assert b"PhoneMaker" not in kept.data and b"Exif" not in kept.data and b"Jane Doe" not in kept.data
    # The image itself is byte for byte the same: from the start of scan on.
    assert kept.data[kept.data.index(b"\xff\xda"):] == data[data.index(b"\xff\xda"):]
    with Image.open(io.BytesIO(kept.data)) as img:
        assert not img.getexif()


def test_orientation_is_applied_then_reencoded_at_95() -> None:
    kept = clean(jpeg(orientation=6), 10_000_000)  # 6: rotate 90° clockwise to view
    assert kept.reencoded and (kept.width, kept.height) == (32, 64)
    assert b"PhoneMaker" not in kept.data and b"Exif" not in kept.data
    with Image.open(io.BytesIO(kept.data)) as img:
        assert not img.getexif()
        px = img.convert("RGB").getpixel((16, 2))  # the blue edge is now on top
        assert isinstance(px, tuple) and px[2] > 150 and px[0] < 100


def test_png_text_and_exif_chunks_are_cut() -> None:
    img = Image.new("RGB", (10, 10), (1, 2, 3))
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "Jane Doe")
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"
    out = io.BytesIO()
    img.save(out, "PNG", pnginfo=info, exif=exif)
    kept = clean(out.getvalue(), 1000)
    assert kept.mime == "image/png" and b"Jane Doe" not in kept.data and b"eXIf" not in kept.data
    assert not kept.reencoded


@pytest.mark.parametrize(("data", "words"), [
    (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "HEIC"),
    (b"GIF89a....", "only JPEG and PNG"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF", "cannot be read|damaged"),
])
def test_refused(data: bytes, words: str) -> None:
    with pytest.raises(UploadRefused, match=words):
        clean(data, 1000)


def test_too_many_pixels_is_refused_before_decoding() -> None:
    with pytest.raises(UploadRefused, match="more than 100 pixels"):
        clean(jpeg(20, 20), 100)


def test_sniff_ignores_names() -> None:
    assert sniff(jpeg()) == "image/jpeg"


def test_blobs_are_sealed(tmp_path: Path) -> None:
    blobs = AttachmentBlobs.for_data_dir(tmp_path, Vault(MasterKey.generate()))
    data = clean(jpeg(), 10_000_000)
    blobs.put("x1", "a1", data.data)
    raw = (tmp_path / "expertise" / "x1" / "a1.bin").read_bytes()
    assert data.data[-64:] not in raw
    assert blobs.get("x1", "a1", data.sha256) == data.data
    with pytest.raises(ValueError):
        blobs.get("x1", "a1", "0" * 64)
    with pytest.raises(ValueError):
        blobs.put("../x", "a1", b"x")
