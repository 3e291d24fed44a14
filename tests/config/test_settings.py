from pathlib import Path

import pytest

from config.settings import SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_without_a_file() -> None:
    settings = load_settings(None, env={})
    assert settings.server.host == "127.0.0.1"
    assert settings.server.port == 8080
    assert settings.store.backend == "memory"


@pytest.mark.parametrize("name", ["default.toml", "production.example.toml"])
def test_shipped_files_are_valid(name: str) -> None:
    settings = load_settings(ROOT / "config" / name, env={})
    assert settings.source.endswith(name)


def test_production_example_is_production_like() -> None:
    settings = load_settings(ROOT / "config" / "production.example.toml", env={})
    assert settings.store.backend == "redis"
    assert settings.server.tls_cert and settings.server.tls_key
    assert settings.auth.oidc_jwks_url.startswith("https://")
    assert settings.media.announced_ip
    assert settings.recording.encrypt


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    return path


def test_unknown_key_names_key_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nhost = "127.0.0.1"\nprot = 8080\n')
    with pytest.raises(SettingsError) as err:
        load_settings(path, env={})
    assert f"{path}:3: server.prot: unknown key" in str(err.value)


def test_unknown_section(tmp_path: Path) -> None:
    path = write(tmp_path, "[srever]\nport = 1\n")
    with pytest.raises(SettingsError, match=r"bad.toml:1: \[srever\]: unknown section"):
        load_settings(path, env={})


def test_wrong_type_names_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nport = "eighty"\n')
    with pytest.raises(SettingsError, match=r":2: server.port: expected an integer"):
        load_settings(path, env={})


def test_impossible_value_names_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[media]\nport_min = 50000\nport_max = 40000\n")
    with pytest.raises(SettingsError, match=r":2: media.port_min: need 1 <= port_min <= port_max"):
        load_settings(path, env={})


def test_invalid_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[server\nport = 1\n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(path, env={})


def test_every_problem_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nport = 99999\nlog_format = "xml"\n[store]\nbackend = "mongo"\n')
    with pytest.raises(SettingsError) as err:
        load_settings(path, env={})
    assert len(err.value.problems) == 3


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 9000\n")
    env = {
        "TELECONSULT_SERVER__PORT": "9100",
        "TELECONSULT_MEDIA__ALLOWED_REMOTE_NETWORKS": "127.0.0.0/8, 10.0.0.0/8",
        "TELECONSULT_RECORDING__ENCRYPT": "false",
        "UNRELATED": "x",
    }
    settings = load_settings(path, env=env)
    assert settings.server.port == 9100
    assert settings.media.allowed_remote_networks == ["127.0.0.0/8", "10.0.0.0/8"]


def test_bad_environment_names_variable() -> None:
    with pytest.raises(SettingsError, match=r"\$TELECONSULT_SERVER__PORT: server.port: expected an integer"):
        load_settings(None, env={"TELECONSULT_SERVER__PORT": "x"})
    with pytest.raises(SettingsError, match="unknown key server.nope"):
        load_settings(None, env={"TELECONSULT_SERVER__NOPE": "1"})


def test_replace_validates() -> None:
    settings = load_settings(None, env={})
    with pytest.raises(SettingsError, match="media.listen_ip"):
        settings.replace(media={"listen_ip": "not-an-ip"})
