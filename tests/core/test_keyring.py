import stat
from pathlib import Path

import pytest

from config.settings import RecordingSettings, Settings, load_settings
from core.keyring import DEVELOPMENT_KEY_FILE, Keyring, MasterKey, MasterKeyError, load_master_key


def settings_for(data_dir: Path, **recording: object) -> Settings:
    return load_settings(None, env={}).replace(server={"data_dir": str(data_dir)}, recording=recording)


def test_encryption_is_on_by_default_with_a_development_key_made_once(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    keyring = Keyring.from_settings(settings_for(data_dir))
    assert keyring.encrypted and keyring.master is not None
    path = data_dir / DEVELOPMENT_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    again = Keyring.from_settings(settings_for(data_dir))
    assert again.master == keyring.master  # the same key on every start, CLI and server alike


def test_production_never_uses_the_development_key(tmp_path: Path) -> None:
    with pytest.raises(MasterKeyError, match="production needs recording.master_key_file"):
        Keyring.from_settings(settings_for(tmp_path), production=True)
    assert not (tmp_path / DEVELOPMENT_KEY_FILE).exists()
    key = MasterKey.generate()
    keyring = Keyring.from_settings(settings_for(tmp_path, master_key_env="TC_KEY"), {"TC_KEY": key.to_base64()},
                                    production=True)
    assert keyring.master == key


def test_a_named_key_that_is_missing_is_an_error_not_the_development_key(tmp_path: Path) -> None:
    with pytest.raises(MasterKeyError, match="TC_KEY is not set"):
        load_master_key(RecordingSettings(master_key_env="TC_KEY"), {}, data_dir=tmp_path)
    with pytest.raises(MasterKeyError, match="cannot read"):
        load_master_key(RecordingSettings(master_key_file=str(tmp_path / "nope")), {}, data_dir=tmp_path)
    assert not (tmp_path / DEVELOPMENT_KEY_FILE).exists()


def test_encryption_off_has_no_key(tmp_path: Path) -> None:
    assert not Keyring.from_settings(settings_for(tmp_path, encrypt=False)).encrypted
    assert not (tmp_path / DEVELOPMENT_KEY_FILE).exists()


def test_derived_keys_differ_by_purpose_and_master() -> None:
    key = MasterKey.generate()
    assert key.derive("records v1") != key.derive("other v1")
    assert key.derive("records v1") == key.derive("records v1")
    assert MasterKey.generate().derive("records v1") != key.derive("records v1")
    assert len(key.derive("records v1")) == 32
