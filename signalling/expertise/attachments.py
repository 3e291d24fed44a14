"""A case's photos: uploads checked and cleaned, then sealed at rest like the stills.

An upload is JPEG or PNG (sniffed from its bytes, never from a name or header), at most
``[expertise] upload_max_bytes`` and ``upload_max_pixels``. HEIC (what phones send by
default) is refused with a message that says what to do. Metadata goes without
touching the picture where it can: JPEG APP1 (EXIF, XMP), APP13 (IPTC) and comments,
PNG ``eXIf`` and text chunks are cut out at the byte level (the colour profile stays:
the dermatoscope's calibration depends on it). Only a picture whose EXIF orientation
is not upright is decoded, turned (Pillow's ``exif_transpose``) and re-encoded, at
quality 95 with no chroma subsampling for JPEG.

Blobs live under ``<data_dir>/expertise/<case_id>/<attachment_id>.bin``, sealed by the
recordings' vault (same master key as the stills).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from media.recording.ids import check_id
from media.recording.vault import Vault

JPEG = "image/jpeg"
PNG = "image/png"
JPEG_QUALITY = 95
_ORIENTATION = 0x0112
_HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_DROP = frozenset({b"eXIf", b"tEXt", b"zTXt", b"iTXt", b"tIME"})
_JPEG_DROP = frozenset({0xE1, 0xED, 0xFE})
"""APP1 (EXIF, XMP), APP13 (IPTC/Photoshop), COM."""


class UploadRefused(ValueError):
    """An upload we do not keep; the message is for the person who sent it."""


@dataclass(frozen=True)
class CleanImage:
    mime: str
    data: bytes
    width: int
    height: int
    sha256: str
    reencoded: bool


def sniff(data: bytes) -> str:
    if data.startswith(b"\xff\xd8\xff"):
        return JPEG
    if data.startswith(_PNG_SIGNATURE):
        return PNG
    if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
        raise UploadRefused("HEIC/HEIF photos are not accepted: send JPEG or PNG (on an iPhone: Settings > "
                            "Camera > Formats > Most Compatible, or share the photo as JPEG)")
    raise UploadRefused("only JPEG and PNG photos are accepted")


def strip_jpeg(data: bytes) -> bytes:
    """``data`` without its APP1, APP13 and comment segments; the entropy-coded image untouched."""
    out = [data[:2]]
    i = 2
    n = len(data)
    while i < n:
        if data[i] != 0xFF or i + 1 >= n:
            raise UploadRefused("the JPEG file is damaged")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xDA:  # start of scan: the rest is the image
            out.append(data[i:])
            return b"".join(out)
        if marker == 0x01 or 0xD0 <= marker <= 0xD9:
            out.append(data[i:i + 2])
            i += 2
            continue
        if i + 4 > n:
            raise UploadRefused("the JPEG file is damaged")
        end = i + 2 + int.from_bytes(data[i + 2:i + 4], "big")
        if end > n:
            raise UploadRefused("the JPEG file is damaged")
        if marker not in _JPEG_DROP:
            out.append(data[i:end])
        i = end
    raise UploadRefused("the JPEG file has no image data")


def strip_png(data: bytes) -> bytes:
    """``data`` without its EXIF, text and time chunks."""
    out = [_PNG_SIGNATURE]
    i = len(_PNG_SIGNATURE)
    while i + 12 <= len(data):
        length = int.from_bytes(data[i:i + 4], "big")
        kind = data[i + 4:i + 8]
        end = i + 12 + length
        if end > len(data):
            raise UploadRefused("the PNG file is damaged")
        if kind not in _PNG_DROP:
            out.append(data[i:end])
        i = end
        if kind == b"IEND":
            return b"".join(out)
    raise UploadRefused("the PNG file is damaged")


def clean(data: bytes, max_pixels: int) -> CleanImage:
    """The picture to keep from an upload (CPU-bound: run it in a thread)."""
    mime = sniff(data)
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
            if width * height > max_pixels:
                raise UploadRefused(f"the picture is {width}x{height}: more than {max_pixels} pixels")
            orientation = probe.getexif().get(_ORIENTATION, 1)
            if orientation not in (1, None):
                upright = ImageOps.exif_transpose(probe)
                out = io.BytesIO()
                icc = probe.info.get("icc_profile")
                extra = {"icc_profile": icc} if icc else {}
                if mime == JPEG:
                    upright.save(out, "JPEG", quality=JPEG_QUALITY, subsampling=0, **extra)
                else:
                    upright.save(out, "PNG", **extra)
                # A fresh save writes no EXIF; the cut below also drops what a plugin might add.
                kept = strip_jpeg(out.getvalue()) if mime == JPEG else strip_png(out.getvalue())
                return _checked(mime, kept, True)
    except UploadRefused:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UploadRefused(f"the picture cannot be read ({type(exc).__name__})") from None
    kept = strip_jpeg(data) if mime == JPEG else strip_png(data)
    return _checked(mime, kept, False)


def _checked(mime: str, data: bytes, reencoded: bool) -> CleanImage:
    """What we keep must decode whole (a truncated file is refused now, not at the expert's)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            width, height = img.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UploadRefused(f"the picture cannot be read ({type(exc).__name__})") from None
    return CleanImage(mime=mime, data=data, width=width, height=height,
                      sha256=hashlib.sha256(data).hexdigest(), reencoded=reencoded)


class AttachmentBlobs:
    """Sealed files under ``<root>/<case_id>/<attachment_id>.bin``."""

    def __init__(self, root: Path, vault: Vault) -> None:
        self.root = Path(root)
        self._vault = vault

    @classmethod
    def for_data_dir(cls, data_dir: str | Path, vault: Vault) -> AttachmentBlobs:
        return cls(Path(data_dir) / "expertise", vault)

    def _path(self, case_id: str, attachment_id: str) -> Path:
        return self.root / check_id(case_id, "case id") / f"{check_id(attachment_id, 'attachment id')}.bin"

    def put(self, case_id: str, attachment_id: str, data: bytes) -> None:
        path = self._path(case_id, attachment_id)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        self._vault.write_bytes(path, data)

    def get(self, case_id: str, attachment_id: str, sha256: str) -> bytes:
        data = self._vault.read_bytes(self._path(case_id, attachment_id))
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ValueError(f"attachment {attachment_id}: content does not match its sha256")
        return data

    def shred(self, case_id: str, attachment_id: str) -> bool:
        return self._vault.shred(self._path(case_id, attachment_id))
