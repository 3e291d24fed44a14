"""poppler-utils (Debian's, as a reader of the report would have): PDF to text, to PNG, its fonts."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (poppler-utils; scripts/test.sh installs it)")
    return path


def pdf_text(pdf: bytes, tmp: Path, name: str = "report") -> str:
    """The text of every page as laid out (``pdftotext -layout``: a label and its value on one line)."""
    path = tmp / f"{name}.pdf"
    path.write_bytes(pdf)
    subprocess.run([_tool("pdftotext"), "-layout", "-enc", "UTF-8", str(path), str(tmp / f"{name}.txt")], check=True, timeout=60)
    return (tmp / f"{name}.txt").read_text(encoding="utf-8")


def pdf_pngs(pdf: bytes, out: Path, name: str = "report", dpi: int = 70) -> list[Path]:
    """Each page as a PNG (``pdftoppm``), under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.pdf"
    path.write_bytes(pdf)
    subprocess.run([_tool("pdftoppm"), "-png", "-r", str(dpi), str(path), str(out / name)], check=True, timeout=60)
    return sorted(out.glob(f"{name}-*.png"))


def pdf_fonts(pdf: bytes, tmp: Path) -> str:
    path = tmp / "fonts.pdf"
    path.write_bytes(pdf)
    return subprocess.run([_tool("pdffonts"), str(path)], check=True, capture_output=True, text=True,
                          timeout=60).stdout
