from __future__ import annotations

import base64
import os
import struct
from pathlib import Path

import pytest

from config.settings import RecordingSettings
from media.recording.vault import (
    HEADER_SIZE,
    IntegrityError,
    MasterKey,
    MasterKeyError,
    Vault,
    key_path,
    load_master_key,
)

DATA = os.urandom(4096 * 5 + 123)


def seal(vault: Vault, path: Path, data: bytes = DATA, flush_every: int = 0) -> None:
    writer = vault.create(path)
    step = flush_every or len(data)
    for i in range(0, len(data), step):
        writer.write(data[i : i + step])
        if flush_every:
            writer.flush()
    writer.close()


def records(path: Path) -> tuple[bytes, list[bytes]]:
    """Header and the raw records of a sealed file."""
    raw = path.read_bytes()
    header, pos, out = raw[:HEADER_SIZE], HEADER_SIZE, []
    while pos < len(raw):
        (n,) = struct.unpack_from(">I", raw, pos)
        out.append(raw[pos : pos + 4 + n])
        pos += 4 + n
    return header, out


def test_round_trip_streams_chunks(vault: Vault, tmp_path: Path) -> None:
    path = tmp_path / "a.webm"
    seal(vault, path)
    chunks = list(vault.read_chunks(path))
    assert b"".join(chunks) == DATA
    assert len(chunks) == 6 and max(len(c) for c in chunks) <= 4096
    assert DATA[:64] not in path.read_bytes()
    assert key_path(path).exists()


def test_flush_seals_partial_chunks(vault: Vault, tmp_path: Path) -> None:
    path = tmp_path / "a.webm"
    seal(vault, path, flush_every=1000)
    assert b"".join(vault.read_chunks(path)) == DATA


def test_plain_mode_same_interface(plain_vault: Vault, tmp_path: Path) -> None:
    path = tmp_path / "p.webm"
    seal(plain_vault, path)
    assert path.read_bytes() == DATA and not key_path(path).exists()
    assert b"".join(plain_vault.read_chunks(path)) == DATA
    assert plain_vault.open_reader(path).read() == DATA


def test_modes_do_not_mix(vault: Vault, plain_vault: Vault, tmp_path: Path) -> None:
    seal(vault, tmp_path / "s")
    seal(plain_vault, tmp_path / "p")
    with pytest.raises(MasterKeyError):
        b"".join(plain_vault.read_chunks(tmp_path / "s"))
    with pytest.raises(IntegrityError):
        b"".join(vault.read_chunks(tmp_path / "p"))


def _rewrite(path: Path, header: bytes, recs: list[bytes]) -> None:
    path.write_bytes(header + b"".join(recs))


def test_tampered_chunk_detected(vault: Vault, tmp_path: Path) -> None:
    path = tmp_path / "a"
    seal(vault, path)
    raw = bytearray(path.read_bytes())
    raw[HEADER_SIZE + 4 + 100] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError):
        b"".join(vault.read_chunks(path))


def test_tampered_header_detected(vault: Vault, tmp_path: Path) -> None:
    path = tmp_path / "a"
    seal(vault, path)
    raw = bytearray(path.read_bytes())
    raw[HEADER_SIZE - 1] ^= 1  # nonce prefix
    path.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError):
        b"".join(vault.read_chunks(path))


def test_reordered_chunks_detected(vault: Vault, tmp_path: Path) -> None:
    path = tmp_path / "a"
    seal(vault, path)
    header, recs = records(path)
    recs[1], recs[2] = recs[2], recs[1]
    _rewrite(path, header, recs)
    with pytest.raises(IntegrityError):
        b"".join(vault.read_chunks(path))


def test_dropped_middle_chunk_detected(vault: Vault, tmp_path: Path) -> None:
    path = tmp_path / "a"
    seal(vault, path)
    header, recs = records(path)
    del recs[2]
    _rewrite(path, header, recs)
    with pytest.raises(IntegrityError):
        b"".join(vault.read_chunks(path))


def test_chunks_swapped_between_files_detected(vault: Vault, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    seal(vault, a)
    seal(vault, b)
    ha, ra = records(a)
    hb, rb = records(b)
    ra[1] = rb[1]
    _rewrite(a, ha, ra)
    with pytest.raises(IntegrityError):
        b"".join(vault.read_chunks(a))
    # The other file's key file does not open this one either.
    key_path(b).replace(key_path(a))
    with pytest.raises(IntegrityError):
        b"".join(vault.read_chunks(a))


def test_truncated_file_fails_unless_recovering(vault: Vault, tmp_path: Path) -> None:
    path = tmp_path / "a"
    writer = vault.create(path)
    writer.write(DATA[:10000])
    writer.flush()
    writer.write(DATA[10000:10500])  # buffered, never flushed: lost in the "crash"
    writer.abort()
    with pytest.raises(IntegrityError, match="truncated"):
        b"".join(vault.read_chunks(path))
    assert b"".join(vault.read_chunks(path, allow_truncated=True)) == DATA[:10000]


def test_cut_at_a_chunk_boundary_or_mid_record(vault: Vault, tmp_path: Path) -> None:
    path = tmp_path / "a"
    seal(vault, path)
    header, recs = records(path)
    _rewrite(path, header, recs[:-1])  # the final chunk removed
    with pytest.raises(IntegrityError):
        b"".join(vault.read_chunks(path))
    assert b"".join(vault.read_chunks(path, allow_truncated=True)) == DATA[: 4096 * 5]
    _rewrite(path, header, recs[:3] + [recs[3][:50]])  # torn record
    with pytest.raises(IntegrityError):
        b"".join(vault.read_chunks(path))
    assert b"".join(vault.read_chunks(path, allow_truncated=True)) == DATA[: 4096 * 3]


def test_wrong_master_key_fails(vault: Vault, tmp_path: Path) -> None:
    path = tmp_path / "a"
    seal(vault, path)
    with pytest.raises(MasterKeyError):
        b"".join(Vault(MasterKey.generate()).read_chunks(path))


def test_shredding_makes_data_unreadable(vault: Vault, tmp_path: Path) -> None:
    path = tmp_path / "a"
    seal(vault, path)
    ciphertext = path.read_bytes()
    assert vault.shred(path)
    assert not key_path(path).exists()
    path.write_bytes(ciphertext)  # even if a copy of the data survives somewhere
    with pytest.raises(IntegrityError, match="shredded"):
        b"".join(vault.read_chunks(path))


def test_write_and_read_bytes(vault: Vault, tmp_path: Path) -> None:
    path = tmp_path / "still.bin"
    vault.write_bytes(path, b"x" * 10)
    assert vault.read_bytes(path) == b"x" * 10
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_load_master_key_from_env_and_file(tmp_path: Path) -> None:
    key = MasterKey.generate()
    settings = RecordingSettings(encrypt=True, master_key_env="TC_KEY")
    assert load_master_key(settings, {"TC_KEY": key.to_base64()}) == key
    file = tmp_path / "master.key"
    file.write_text(key.to_base64() + "\n")
    assert load_master_key(RecordingSettings(encrypt=True, master_key_file=str(file)), {}) == key
    vault = Vault.from_settings(RecordingSettings(encrypt=True, master_key_file=str(file)), {})
    assert vault.encrypted
    assert not Vault.from_settings(RecordingSettings(encrypt=False), {}).encrypted


@pytest.mark.parametrize(
    "env, message",
    [
        ({}, "not set"),
        ({"TC_KEY": "not base64!"}, "base64"),
        ({"TC_KEY": base64.b64encode(b"short").decode()}, "32 bytes"),
    ],
)
def test_master_key_errors_are_clear(env: dict[str, str], message: str) -> None:
    with pytest.raises(MasterKeyError, match=message):
        load_master_key(RecordingSettings(encrypt=True, master_key_env="TC_KEY"), env)


def test_missing_master_key_file(tmp_path: Path) -> None:
    with pytest.raises(MasterKeyError, match="cannot read"):
        load_master_key(RecordingSettings(encrypt=True, master_key_file=str(tmp_path / "nope")), {})
    assert "key=" not in repr(MasterKey.generate())


def test_files_are_private_whatever_the_umask(vault: Vault, plain_vault: Vault, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        seal(vault, tmp_path / "sealed")
        seal(plain_vault, tmp_path / "plain")
        vault.write_bytes(tmp_path / "still.bin", b"x" * 10)
    finally:
        os.umask(old)
    for name in ("sealed", "sealed.key", "plain", "still.bin", "still.bin.key"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name


def test_the_development_key_comes_from_data_dir(tmp_path: Path) -> None:
    first = Vault.from_settings(RecordingSettings(), {}, data_dir=str(tmp_path))
    assert first.encrypted
    seal(first, tmp_path / "a")
    again = Vault.from_settings(RecordingSettings(), {}, data_dir=str(tmp_path))
    assert b"".join(again.read_chunks(tmp_path / "a")) == DATA
    with pytest.raises(MasterKeyError, match="production needs"):
        Vault.from_settings(RecordingSettings(), {}, data_dir=str(tmp_path / "prod"), allow_development=False)
