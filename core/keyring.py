"""The master key of health data at rest: where it comes from, and the keys it derives.

One master key protects everything the service keeps about patients: the recordings and
stills (``media.recording.vault`` wraps each file's own data key with it) and the
records' clinical payloads (:mod:`core.sealing`, with a key derived from it).

Where it comes from, from ``[recording]`` (the section predates the other uses; its keys
are a contract and keep their names):

* ``encrypt = false``: no key, health data is written in clear (refused in production);
* ``master_key_env``: the base64 key in that environment variable, first;
* ``master_key_file``: a file holding the base64 key;
* neither: in development, ``<data_dir>/dev-master.key``, generated once (0600) as the
  development signing key is; in production (``allow_development=False``: a public
  https URL) an error, since a key next to the data it protects protects nothing.

A key that is named (file or variable) but missing is always an error, never replaced
by the development key: data sealed with one key cannot be read with another.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from config.settings import RecordingSettings, Settings

logger = logging.getLogger(__name__)

KEY_SIZE = 32
KEY_ID_SIZE = 8
DEVELOPMENT_KEY_FILE = "dev-master.key"
"""Under ``server.data_dir``; never used in production."""


class MasterKeyError(Exception):
    """The master key is missing, malformed, or not the one some data was sealed with."""


@dataclass(frozen=True)
class MasterKey:
    """The key that wraps or derives every key of the data at rest."""

    key: bytes = field(repr=False)
    """32 random bytes."""

    def __post_init__(self) -> None:
        if len(self.key) != KEY_SIZE:
            raise MasterKeyError(f"master key must be {KEY_SIZE} bytes, got {len(self.key)}")

    @property
    def key_id(self) -> bytes:
        """A public fingerprint, stored with sealed data, to say which key is needed."""
        return hashlib.sha256(b"teleconsult master key id|" + self.key).digest()[:KEY_ID_SIZE]

    def derive(self, purpose: str) -> bytes:
        """A 256-bit key for one use only (HKDF-SHA256, ``purpose`` as the info): a key
        for the records is never the key that wraps the files' keys."""
        return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None,
                    info=b"teleconsult|" + purpose.encode()).derive(self.key)

    @classmethod
    def from_base64(cls, text: str, *, where: str) -> MasterKey:
        try:
            raw = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise MasterKeyError(f"master key from {where} is not valid base64") from exc
        if len(raw) != KEY_SIZE:
            raise MasterKeyError(f"master key from {where} must decode to {KEY_SIZE} bytes, got {len(raw)}")
        return cls(raw)

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(secrets.token_bytes(KEY_SIZE))

    def to_base64(self) -> str:
        return base64.b64encode(self.key).decode("ascii")


def development_master_key(data_dir: str | os.PathLike[str]) -> MasterKey:
    """The development key under ``data_dir``, made once (0600, its folder 0700)."""
    path = Path(data_dir) / DEVELOPMENT_KEY_FILE
    try:
        return MasterKey.from_base64(path.read_text("ascii"), where=str(path))
    except FileNotFoundError:
        pass
    except UnicodeDecodeError as exc:
        raise MasterKeyError(f"{path} is not base64 text") from exc
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = MasterKey.generate()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process of this host made it meanwhile
        return MasterKey.from_base64(path.read_text("ascii"), where=str(path))
    try:
        os.write(fd, key.to_base64().encode("ascii") + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    logger.warning("generated a development master key for data at rest", extra={"path": str(path)})
    return key


def load_master_key(
    settings: RecordingSettings,
    environ: Mapping[str, str] | None = None,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    allow_development: bool = True,
) -> MasterKey:
    """The master key the settings name: the variable first, then the file; neither:
    the development key under ``data_dir`` when allowed."""
    env = os.environ if environ is None else environ
    if settings.master_key_env:
        value = env.get(settings.master_key_env)
        if value:
            return MasterKey.from_base64(value, where=f"${settings.master_key_env}")
        if not settings.master_key_file:
            raise MasterKeyError(f"environment variable {settings.master_key_env} is not set or empty")
    if settings.master_key_file:
        try:
            text = Path(settings.master_key_file).read_text("ascii")
        except OSError as exc:
            raise MasterKeyError(f"cannot read master key file {settings.master_key_file}: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise MasterKeyError(f"master key file {settings.master_key_file} is not base64 text") from exc
        return MasterKey.from_base64(text, where=settings.master_key_file)
    if data_dir is not None and allow_development:
        return development_master_key(data_dir)
    if data_dir is not None:
        raise MasterKeyError("production needs recording.master_key_file or recording.master_key_env "
                             "(the development key under data_dir is for development only)")
    raise MasterKeyError("encryption is on but neither master_key_file nor master_key_env is set")


@dataclass(frozen=True)
class Keyring:
    """The process's key for data at rest (None: encryption off), loaded once by the
    assembly and handed to every store of health data."""

    master: MasterKey | None

    @property
    def encrypted(self) -> bool:
        return self.master is not None

    @classmethod
    def from_settings(cls, settings: Settings, environ: Mapping[str, str] | None = None, *,
                      production: bool = False) -> Keyring:
        if not settings.recording.encrypt:
            return cls(None)
        return cls(load_master_key(settings.recording, environ, data_dir=settings.server.data_dir,
                                   allow_development=not production))


__all__ = ["DEVELOPMENT_KEY_FILE", "Keyring", "MasterKey", "MasterKeyError", "development_master_key",
           "load_master_key"]
