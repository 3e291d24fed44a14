"""Encryption at rest for recordings and stills: a vault of sealed files.

Every file gets its own fresh 256-bit data key, wrapped (AES-GCM) by the master key and
kept in a small separate key file ``<file>.key``. Deleting that key file is the
crypto-shredding of the data: the ciphertext stays, unreadable.

Data files use a chunked streaming AEAD, in the spirit of Tink's streaming AEAD and
age's STREAM::

    header  = MAGIC(6) | version(1) | master key id(8) | file id(16) | nonce prefix(7)
    record  = length(4, big endian, of the sealed chunk) | AES-GCM(chunk)
    nonce   = nonce prefix(7) | chunk counter(4, big endian) | last-chunk flag(1)
    AAD     = the whole header (so the file id, the key id and the version are bound)

* Reordering or dropping chunks changes the counter a chunk is opened with: detected.
* Moving chunks between files: another data key and another file id: detected.
* Truncation: only the final chunk is sealed with the last flag, so a file that ends
  on a non-final chunk fails a normal read. ``allow_truncated=True`` (recovery after a
  crash) accepts it and stops at the last complete chunk.
* Chunks are variable-sized (at most ``chunk_size``): :meth:`SealedWriter.flush` seals
  whatever is buffered, so a low-bitrate stream (audio) is still on disk within one
  flush interval, not once per 64 KiB.

Plain mode (``Vault(None)``: ``recording.encrypt = false``) has the same interface and
writes the bytes as they are; it refuses to read sealed files and the other way round.
The master key itself (where it comes from, the development key) is
:mod:`core.keyring`'s, shared with the records. Every file is created 0600.
"""

from __future__ import annotations

import io
import logging
import os
import secrets
import struct
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterator, Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from config.settings import RecordingSettings
from core.keyring import KEY_ID_SIZE, MasterKey, MasterKeyError, load_master_key

logger = logging.getLogger(__name__)

MAGIC = b"TCSTRM"
KEY_MAGIC = b"TCKEY1"
VERSION = 1
FILE_ID_SIZE = 16
NONCE_PREFIX_SIZE = 7
HEADER_SIZE = len(MAGIC) + 1 + KEY_ID_SIZE + FILE_ID_SIZE + NONCE_PREFIX_SIZE
TAG_SIZE = 16
DEFAULT_CHUNK_SIZE = 64 * 1024
_MAX_COUNTER = 0xFFFFFFFF
_WRAP_AAD = b"teleconsult data key v1|"
_READ_SIZE = 1 << 16

__all__ = ["IntegrityError", "MasterKey", "MasterKeyError", "SealedWriter", "Vault", "key_path",
           "load_master_key", "open_private"]


class IntegrityError(Exception):
    """A sealed file was tampered with, truncated, reordered or paired with the wrong key."""


def key_path(path: Path) -> Path:
    """Where the wrapped data key of ``path`` lives."""
    return path.with_name(path.name + ".key")


def _nonce(prefix: bytes, counter: int, last: bool) -> bytes:
    return prefix + struct.pack(">IB", counter, 1 if last else 0)


def open_private(path: Path) -> BinaryIO:
    """A new file (never an existing one) readable by this user only (0600), whatever
    the process's umask: every file the vault writes holds health data or its key."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class SealedWriter:
    """An append-only file-like object (``write``/``flush``/``close``, deliberately no
    ``seek``), so that PyAV treats it as a non-seekable stream.

    Lifecycle: open → (write | flush)* → closed. ``close()`` is idempotent; a writer
    dropped without ``close()`` (crash) leaves a file readable with ``allow_truncated``.
    """

    def __init__(
        self,
        path: Path,
        *,
        master: MasterKey | None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        fsync: bool = True,
    ) -> None:
        self.path = path
        self._chunk_size = chunk_size
        self._fsync = fsync
        self._buffer = bytearray()
        self._counter = 0
        self._closed = False
        self._aead: AESGCM | None = None
        self._header = b""
        self._prefix = b""
        self.bytes_in = 0
        self._flushed_bytes = 0
        self._sync_pending: Future[None] | None = None
        self._sync_error: BaseException | None = None
        if master is not None:
            file_id = secrets.token_bytes(FILE_ID_SIZE)
            data_key = AESGCM.generate_key(bit_length=256)
            self._prefix = secrets.token_bytes(NONCE_PREFIX_SIZE)
            self._header = MAGIC + bytes([VERSION]) + master.key_id + file_id + self._prefix
            self._aead = AESGCM(data_key)
            # The key file goes first, durably: data on disk without its key is lost.
            _write_key_file(key_path(path), master, file_id, data_key, fsync=fsync)
        self._file: BinaryIO = open_private(path)
        if self._header:
            self._file.write(self._header)

    @property
    def closed(self) -> bool:
        return self._closed

    def writable(self) -> bool:
        return not self._closed

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._closed:
            raise ValueError(f"write to closed {self.path}")
        n = len(data)
        self.bytes_in += n
        if self._aead is None:
            self._file.write(data)
            return n
        self._buffer += data
        while len(self._buffer) > self._chunk_size:
            self._seal(bytes(self._buffer[: self._chunk_size]), last=False)
            del self._buffer[: self._chunk_size]
        return n

    @property
    def dirty(self) -> bool:
        """Bytes were written since the last :meth:`flush`."""
        return self.bytes_in != self._flushed_bytes

    def flush(self, executor: Executor | None = None) -> None:
        """Put everything written so far on disk as complete chunks (crash-safe point).

        The sealed chunks are handed to the OS before this returns, so a killed process
        loses nothing flushed. The fsync (``fdatasync``: the data and the file size, what
        an append-only file needs; against power loss) runs inline, or on ``executor``
        (off the event loop) on a duplicate of the descriptor, so that a ``close`` meanwhile
        is harmless. A background fsync error is raised by the next ``flush``/``close``;
        while one is still running, the next flush does not queue another (its data is
        synced by the next flush after that one finished).
        """
        if self._closed:
            return
        self._raise_sync_error()
        if self._aead is not None and self._buffer:
            self._seal(bytes(self._buffer), last=False)
            self._buffer.clear()
        self._file.flush()
        self._flushed_bytes = self.bytes_in
        if not self._fsync:
            return
        if executor is None:
            os.fdatasync(self._file.fileno())
            return
        pending = self._sync_pending
        if pending is not None and not pending.done():
            self._flushed_bytes = -1  # still owed: the next flush syncs it
            return
        fd = os.dup(self._file.fileno())
        try:
            self._sync_pending = executor.submit(self._sync_fd, fd)
        except BaseException:
            os.close(fd)
            raise

    def _sync_fd(self, fd: int) -> None:
        """In the executor's thread."""
        try:
            os.fdatasync(fd)
        except OSError as exc:
            self._sync_error = exc
        finally:
            os.close(fd)

    def _raise_sync_error(self) -> None:
        error, self._sync_error = self._sync_error, None
        if error is not None:
            raise error

    def close(self) -> None:
        if self._closed:
            return
        try:
            self._raise_sync_error()
            if self._aead is not None:
                # The final chunk carries the last flag; it may be empty.
                self._seal(bytes(self._buffer), last=True)
                self._buffer.clear()
            self._file.flush()
            if self._fsync:
                os.fsync(self._file.fileno())
        finally:
            self._closed = True
            self._file.close()

    def abort(self) -> None:
        """Close the OS file without sealing a final chunk (after a write error)."""
        if not self._closed:
            self._closed = True
            try:
                self._file.close()
            except OSError:
                pass

    def _seal(self, plaintext: bytes, *, last: bool) -> None:
        assert self._aead is not None
        if self._counter > _MAX_COUNTER:
            raise OverflowError("too many chunks in one sealed file")
        sealed = self._aead.encrypt(_nonce(self._prefix, self._counter, last), plaintext, self._header)
        self._counter += 1
        self._file.write(struct.pack(">I", len(sealed)) + sealed)


def _write_key_file(path: Path, master: MasterKey, file_id: bytes, data_key: bytes, *, fsync: bool) -> None:
    nonce = secrets.token_bytes(12)
    wrapped = AESGCM(master.key).encrypt(nonce, data_key, _WRAP_AAD + file_id)
    blob = KEY_MAGIC + master.key_id + file_id + nonce + wrapped
    with open_private(path) as f:
        f.write(blob)
        f.flush()
        if fsync:
            os.fsync(f.fileno())


def _read_key_file(path: Path, master: MasterKey, file_id: bytes) -> bytes:
    try:
        blob = path.read_bytes()
    except FileNotFoundError as exc:
        raise IntegrityError(f"{path.name} is missing: the data is unreadable (shredded?)") from exc
    expected = len(KEY_MAGIC) + KEY_ID_SIZE + FILE_ID_SIZE + 12 + 32 + TAG_SIZE
    if len(blob) != expected or not blob.startswith(KEY_MAGIC):
        raise IntegrityError(f"{path.name} is not a key file")
    pos = len(KEY_MAGIC)
    key_id = blob[pos : pos + KEY_ID_SIZE]
    pos += KEY_ID_SIZE
    stored_file_id = blob[pos : pos + FILE_ID_SIZE]
    pos += FILE_ID_SIZE
    nonce = blob[pos : pos + 12]
    wrapped = blob[pos + 12 :]
    if key_id != master.key_id:
        raise MasterKeyError(f"{path.name} was sealed with master key {key_id.hex()}, not {master.key_id.hex()}")
    if stored_file_id != file_id:
        raise IntegrityError(f"{path.name} belongs to another file")
    try:
        return AESGCM(master.key).decrypt(nonce, wrapped, _WRAP_AAD + file_id)
    except InvalidTag as exc:
        raise IntegrityError(f"{path.name}: data key does not unwrap") from exc


def _read_exact(f: BinaryIO, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        part = f.read(n - len(out))
        if not part:
            break
        out += part
    return bytes(out)


class Vault:
    """Seals and opens files with one master key, or passes bytes through (plain mode)."""

    def __init__(self, master: MasterKey | None, *, chunk_size: int = DEFAULT_CHUNK_SIZE, fsync: bool = True) -> None:
        if not 1 <= chunk_size <= 1 << 24:
            raise ValueError("chunk_size must be between 1 byte and 16 MiB")
        self._master = master
        self._chunk_size = chunk_size
        self._fsync = fsync

    @classmethod
    def from_settings(
        cls, settings: RecordingSettings, environ: Mapping[str, str] | None = None, *, fsync: bool = True,
        data_dir: str | None = None, allow_development: bool = True,
    ) -> Vault:
        """The vault of ``settings`` (``core.keyring.load_master_key``: with ``data_dir``,
        the development key there when no key is named and ``allow_development``)."""
        master = (load_master_key(settings, environ, data_dir=data_dir, allow_development=allow_development)
                  if settings.encrypt else None)
        return cls(master, fsync=fsync)

    @property
    def encrypted(self) -> bool:
        return self._master is not None

    def create(self, path: Path) -> SealedWriter:
        """A new file (never overwrites), sealed when the vault has a master key."""
        return SealedWriter(path, master=self._master, chunk_size=self._chunk_size, fsync=self._fsync)

    def read_chunks(self, path: Path, *, allow_truncated: bool = False) -> Iterator[bytes]:
        """The plaintext of ``path``, chunk by chunk, checked as it goes.

        The check of the end of the file comes with the last chunk: a consumer must read
        to the end before trusting that nothing was cut.
        """
        with open(path, "rb") as f:
            header = _read_exact(f, HEADER_SIZE)
            sealed = header.startswith(MAGIC)
            if self._master is None:
                if sealed:
                    raise MasterKeyError(f"{path.name} is encrypted and no master key is configured")
                yield header
                while block := f.read(_READ_SIZE):
                    yield block
                return
            if not sealed or len(header) < HEADER_SIZE:
                raise IntegrityError(f"{path.name} is not a sealed file")
            if header[len(MAGIC)] != VERSION:
                raise IntegrityError(f"{path.name}: unknown format version {header[len(MAGIC)]}")
            pos = len(MAGIC) + 1
            key_id = header[pos : pos + KEY_ID_SIZE]
            if key_id != self._master.key_id:
                raise MasterKeyError(
                    f"{path.name} was sealed with master key {key_id.hex()}, not {self._master.key_id.hex()}"
                )
            pos += KEY_ID_SIZE
            file_id = header[pos : pos + FILE_ID_SIZE]
            prefix = header[pos + FILE_ID_SIZE :]
            aead = AESGCM(_read_key_file(key_path(path), self._master, file_id))
            yield from _open_records(f, path.name, aead, header, prefix, self._chunk_size, allow_truncated)

    def open_reader(self, path: Path, *, allow_truncated: bool = False) -> io.BufferedReader:
        """A read-only, non-seekable file object over the plaintext (for PyAV)."""
        return io.BufferedReader(_ChunkReader(self.read_chunks(path, allow_truncated=allow_truncated)))

    def write_bytes(self, path: Path, data: bytes) -> None:
        """Seal ``data`` into a new file, atomically (temporary name, then rename)."""
        tmp = path.with_name(path.name + ".tmp")
        for stale in (tmp, key_path(tmp)):
            stale.unlink(missing_ok=True)
        writer = self.create(tmp)
        try:
            writer.write(data)
            writer.close()
        except BaseException:
            writer.abort()
            tmp.unlink(missing_ok=True)
            key_path(tmp).unlink(missing_ok=True)
            raise
        # The key is renamed first: a crash in between leaves a key without data, not
        # data without its key.
        if self.encrypted:
            os.replace(key_path(tmp), key_path(path))
        os.replace(tmp, path)
        _fsync_dir(path.parent)

    def read_bytes(self, path: Path) -> bytes:
        return b"".join(self.read_chunks(path))

    def shred(self, path: Path) -> bool:
        """Make ``path`` unreadable for good: delete its key file, then the data.

        Returns whether anything was deleted. In plain mode there is no key, so the data
        file itself is deleted.
        """
        removed = False
        kp = key_path(path)
        if kp.exists():
            kp.unlink()
            removed = True
            _fsync_dir(kp.parent)
        if path.exists():
            path.unlink()
            removed = True
        return removed


def _open_records(
    f: BinaryIO,
    name: str,
    aead: AESGCM,
    header: bytes,
    prefix: bytes,
    chunk_size: int,
    allow_truncated: bool,
) -> Iterator[bytes]:
    counter = 0

    def read_record() -> bytes | None:
        """The next sealed chunk; None at a clean end; raises on a torn record."""
        raw_len = _read_exact(f, 4)
        if not raw_len:
            return None
        if len(raw_len) < 4:
            raise _Torn()
        (length,) = struct.unpack(">I", raw_len)
        if not TAG_SIZE <= length <= chunk_size + TAG_SIZE:
            raise IntegrityError(f"{name}: chunk {counter} has an impossible length {length}")
        sealed = _read_exact(f, length)
        if len(sealed) < length:
            raise _Torn()
        return sealed

    def truncated(why: str) -> IntegrityError:
        return IntegrityError(f"{name} is truncated after chunk {counter} ({why})")

    try:
        current = read_record()
    except _Torn:
        if allow_truncated:
            return
        raise truncated("torn record") from None
    if current is None:
        if allow_truncated:
            return
        raise truncated("no final chunk")
    while True:
        try:
            following = read_record()
            torn = False
        except _Torn:
            following, torn = None, True
        except IntegrityError:
            if not allow_truncated:
                raise
            following, torn = None, True
        if following is not None:
            try:
                yield aead.decrypt(_nonce(prefix, counter, False), current, header)
            except InvalidTag:
                raise IntegrityError(f"{name}: chunk {counter} fails authentication") from None
            counter += 1
            current = following
            continue
        # ``current`` is the last record on disk.
        if not torn:
            try:
                yield aead.decrypt(_nonce(prefix, counter, True), current, header)
                return
            except InvalidTag:
                pass
        if not allow_truncated:
            if torn:
                raise truncated("torn record")
            raise truncated("final chunk missing or altered")
        try:
            plain = aead.decrypt(_nonce(prefix, counter, False), current, header)
        except InvalidTag:
            logger.warning("%s: chunk %d fails authentication, recovery stops there", name, counter)
            return
        logger.warning("%s: recovered %d chunks of a truncated file", name, counter + 1)
        yield plain
        return


class _Torn(Exception):
    """A record cut in the middle (a crash during a write)."""


class _ChunkReader(io.RawIOBase):
    """Adapts an iterator of byte chunks to ``readinto``."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()
        super().close()
