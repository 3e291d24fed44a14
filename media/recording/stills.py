"""Stills at rest: dermatoscope and otoscope captures, sealed by the recordings' vault.

Layout under ``ServerSettings.data_dir``::

    stills/<consultation_id>/<still_id>.bin (+ .key when sealed) and <still_id>.json
    (+ <still_id>.label, sealed too: a label is clinical text)

The JSON metadata is written last, so a still is listed only once its image is on
disk; every read checks the image against its SHA-256. Retention shreds stills with
the recordings (:meth:`StillStore.purge_expired`, called by the recording service).
"""

from __future__ import annotations

import builtins
import hashlib
import json
import logging
import os
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from core.vocabulary import STILL_DEVICES
from media.recording.ids import check_id
from media.recording.store import RecordingNotFound
from media.recording.vault import IntegrityError, Vault, open_private

logger = logging.getLogger(__name__)

STILL_MIMES = ("image/jpeg", "image/png", "image/tiff", "image/webp")
MAX_LABEL = 200


@dataclass(frozen=True)
class StillMeta:
    """A dermatoscope or otoscope still; the JSON next to the sealed image is this."""

    still_id: str
    consultation_id: str
    device: str
    mime: str
    width: int
    height: int
    size: int
    sha256: str
    """Of the plaintext image, checked on every read."""
    created: float
    """Wall clock (Unix seconds)."""


class StillStore:
    """Stills under ``<stills_dir>/<consultation_id>/``, sealed like the recordings."""

    def __init__(self, stills_dir: Path, vault: Vault, *, wall_clock: Callable[[], float] = time.time) -> None:
        self.root = Path(stills_dir)
        self._vault = vault
        self._wall_clock = wall_clock

    @classmethod
    def for_data_dir(cls, data_dir: str | Path, vault: Vault) -> StillStore:
        return cls(Path(data_dir) / "stills", vault)

    def put(self, consultation_id: str, device: str, mime: str, data: bytes, width: int, height: int) -> StillMeta:
        if device not in STILL_DEVICES:
            raise ValueError(f"unknown still device {device!r}")
        if mime not in STILL_MIMES:
            raise ValueError(f"unsupported still type {mime!r}")
        if width <= 0 or height <= 0 or not data:
            raise ValueError("empty still")
        directory = self.root / check_id(consultation_id)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.mkdir(mode=0o700, exist_ok=True)
        meta = StillMeta(
            still_id=secrets.token_hex(12),
            consultation_id=consultation_id,
            device=device,
            mime=mime,
            width=width,
            height=height,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            created=self._wall_clock(),
        )
        self._vault.write_bytes(directory / f"{meta.still_id}.bin", data)
        # Metadata last: a still is listed only once its image is on disk.
        tmp = directory / f"{meta.still_id}.json.tmp"
        tmp.unlink(missing_ok=True)
        with open_private(tmp) as f:
            f.write(json.dumps(asdict(meta), sort_keys=True).encode("utf-8"))
        os.replace(tmp, directory / f"{meta.still_id}.json")
        logger.info("still %s stored for %s (%s)", meta.still_id, consultation_id, device)
        return meta

    def meta(self, consultation_id: str, still_id: str) -> StillMeta:
        path = self.root / check_id(consultation_id) / f"{check_id(still_id, 'still id')}.json"
        try:
            return StillMeta(**json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise RecordingNotFound(still_id) from None

    def get(self, consultation_id: str, still_id: str) -> tuple[StillMeta, bytes]:
        meta = self.meta(consultation_id, still_id)
        path = self.root / consultation_id / f"{still_id}.bin"
        try:
            data = self._vault.read_bytes(path)
        except FileNotFoundError:
            raise RecordingNotFound(still_id) from None
        if hashlib.sha256(data).hexdigest() != meta.sha256:
            raise IntegrityError(f"still {still_id}: content does not match its sha256")
        return meta, data

    def _label_path(self, consultation_id: str, still_id: str) -> Path:
        return self.root / check_id(consultation_id) / f"{check_id(still_id, 'still id')}.label"

    def set_label(self, consultation_id: str, still_id: str, label: str) -> StillMeta:
        """Label a still (sealed like its image; "" removes the label); its metadata."""
        if len(label) > MAX_LABEL:
            raise ValueError(f"a label is at most {MAX_LABEL} characters")
        meta = self.meta(consultation_id, still_id)
        path = self._label_path(consultation_id, still_id)
        if label:
            self._vault.write_bytes(path, label.encode("utf-8"))
        else:
            self._vault.shred(path)
        return meta

    def label(self, consultation_id: str, still_id: str) -> str:
        """A still's label ("" when none)."""
        try:
            return self._vault.read_bytes(self._label_path(consultation_id, still_id)).decode("utf-8")
        except FileNotFoundError:
            return ""

    def labels(self, consultation_id: str) -> dict[str, str]:
        """The labels of a consultation's stills, by still id."""
        directory = self.root / check_id(consultation_id)
        if not directory.is_dir():
            return {}
        return {p.stem: self.label(consultation_id, p.stem) for p in directory.glob("*.label")}

    def list(self, consultation_id: str) -> builtins.list[StillMeta]:
        directory = self.root / check_id(consultation_id)
        if not directory.is_dir():
            return []
        metas = [StillMeta(**json.loads(p.read_text(encoding="utf-8"))) for p in directory.glob("*.json")]
        return sorted(metas, key=lambda m: (m.created, m.still_id))

    def shred(self, consultation_id: str) -> builtins.list[str]:
        """Destroy every still of a consultation (keys first); returns their ids."""
        ids = []
        for meta in self.list(consultation_id):
            directory = self.root / consultation_id
            self._vault.shred(directory / f"{meta.still_id}.label")
            self._vault.shred(directory / f"{meta.still_id}.bin")
            (directory / f"{meta.still_id}.json").unlink(missing_ok=True)
            ids.append(meta.still_id)
        return ids

    def purge_expired(self, retention_days: int, now: float | None = None) -> builtins.list[StillMeta]:
        """Shred the stills older than ``retention_days``; returns what went."""
        now = time.time() if now is None else now
        gone: builtins.list[StillMeta] = []
        if not self.root.is_dir():
            return gone
        for directory in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for meta in self.list(directory.name):
                if now - meta.created >= retention_days * 86400.0:
                    self._vault.shred(directory / f"{meta.still_id}.label")
                    self._vault.shred(directory / f"{meta.still_id}.bin")
                    (directory / f"{meta.still_id}.json").unlink(missing_ok=True)
                    gone.append(meta)
        return gone
