"""Sealing small values at rest: a record's clinical payload, bound to where it is kept.

The records (``signalling.records``: consultations with the patient's reference and
the visit's reason, reports, stills' metadata...) keep each payload as JSON text;
:class:`ValueSealer` turns that JSON into a sealed text and back::

    "tcs1:" + base64url( key id(8) | nonce(12) | AES-256-GCM(JSON) with its tag )
    AAD = "teleconsult sealed value v1|" + place        place: "<table>|<row key>"

* The key is derived from the master key (:meth:`core.keyring.MasterKey.derive`,
  purpose ``records v1``); the key id is the master key's, so an error can say which
  master key a value needs.
* A fresh random nonce per value (96 bits: a collision after about 2^32 values per
  key would be a problem; the records hold far fewer).
* The place binds the value to its row: a sealed report copied onto another
  consultation's row fails to open (:class:`SealingError`).
* Text, not bytes: it fits a SQLite ``TEXT`` column and a Redis string alike.

Without a master key (``recording.encrypt = false``) the same interface writes plain
JSON. A sealer refuses to read a value written in the other mode, with a message
that says what to do; :func:`is_sealed` lets a store find the values to migrate.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from core.keyring import KEY_ID_SIZE, MasterKey

PREFIX = "tcs1:"
NONCE_SIZE = 12
PURPOSE = "records v1"
_AAD = b"teleconsult sealed value v1|"


class SealingError(Exception):
    """A sealed value that cannot be opened (other key, altered, moved), or a value in
    the wrong mode (clear where sealing is on, sealed where no key is configured)."""


def is_sealed(text: str) -> bool:
    return text.startswith(PREFIX)


class ValueSealer:
    """Seals JSON-able values with a key derived from ``master``; plain JSON when None."""

    def __init__(self, master: MasterKey | None) -> None:
        self._key_id = master.key_id if master is not None else b""
        self._aead = AESGCM(master.derive(PURPOSE)) if master is not None else None

    @property
    def encrypted(self) -> bool:
        return self._aead is not None

    @property
    def key_id(self) -> str:
        """The public fingerprint (hex) of the master key values are sealed with; empty in clear."""
        return self._key_id.hex()

    def seal_json(self, value: Any, place: str) -> str:
        """``value`` as JSON, sealed for ``place`` (``<table>|<row key>``)."""
        text = json.dumps(value)
        if self._aead is None:
            return text
        nonce = secrets.token_bytes(NONCE_SIZE)
        sealed = self._aead.encrypt(nonce, text.encode(), _AAD + place.encode())
        return PREFIX + base64.urlsafe_b64encode(self._key_id + nonce + sealed).decode("ascii")

    def open_json(self, text: str | bytes, place: str) -> Any:
        """The value :meth:`seal_json` sealed for ``place``."""
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        if not is_sealed(text):
            if self._aead is not None:
                raise SealingError(f"{place} is stored in clear (written before encryption at rest): "
                                   "migrate the records, or set recording.encrypt = false to read them")
            return json.loads(text)
        if self._aead is None:
            raise SealingError(f"{place} is encrypted and no master key is configured (recording.encrypt)")
        try:
            raw = base64.urlsafe_b64decode(text[len(PREFIX):].encode("ascii"))
        except (binascii.Error, ValueError, UnicodeEncodeError):
            raise SealingError(f"{place}: not a sealed value") from None
        if len(raw) < KEY_ID_SIZE + NONCE_SIZE + 16:
            raise SealingError(f"{place}: sealed value too short")
        key_id, nonce, sealed = raw[:KEY_ID_SIZE], raw[KEY_ID_SIZE:KEY_ID_SIZE + NONCE_SIZE], raw[KEY_ID_SIZE + NONCE_SIZE:]
        if key_id != self._key_id:
            raise SealingError(f"{place} was sealed with master key {key_id.hex()}, not {self._key_id.hex()}")
        try:
            plain = self._aead.decrypt(nonce, sealed, _AAD + place.encode())
        except InvalidTag:
            raise SealingError(f"{place}: sealed value fails authentication (altered or moved)") from None
        return json.loads(plain)


__all__ = ["PREFIX", "SealingError", "ValueSealer", "is_sealed"]
