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


def test_media_binds_where_http_binds_unless_set() -> None:
    settings = load_settings(None, env={})
    assert settings.media.listen_ip == "" and settings.media.allowed_remote_networks == []
    media = settings.effective_media  # built in: loopback, as config/default.toml says
    assert media.listen_ip == "127.0.0.1"
    assert media.allowed_remote_networks == ["127.0.0.0/8", "::1/128"]
    shipped = load_settings(ROOT / "config" / "default.toml", env={})
    assert shipped.effective_media == media
    everywhere = settings.replace(server={"host": "0.0.0.0"}).effective_media
    assert everywhere.listen_ip == "0.0.0.0" and everywhere.allowed_remote_networks == ["0.0.0.0/0", "::/0"]
    lan = settings.replace(server={"host": "192.168.1.20"}).effective_media
    assert lan.listen_ip == "192.168.1.20" and lan.allowed_remote_networks == ["0.0.0.0/0", "::/0"]
    assert settings.replace(server={"host": "localhost"}).effective_media.listen_ip == "127.0.0.1"
    assert settings.replace(server={"host": "::1"}).effective_media.listen_ip == "::1"
    chosen = settings.replace(server={"host": "0.0.0.0"}, media={"listen_ip": "10.0.0.5",
                                                                "allowed_remote_networks": ["10.0.0.0/8"]})
    assert chosen.effective_media.listen_ip == "10.0.0.5"
    assert chosen.effective_media.allowed_remote_networks == ["10.0.0.0/8"]


def test_a_host_name_needs_an_explicit_media_address() -> None:
    settings = load_settings(None, env={})
    with pytest.raises(SettingsError, match="media.listen_ip: must be set when server.host"):
        settings.replace(server={"host": "teleconsult.example.org"})
    named = settings.replace(server={"host": "teleconsult.example.org"}, media={"listen_ip": "0.0.0.0"})
    assert named.effective_media.listen_ip == "0.0.0.0"


def test_health_data_is_encrypted_at_rest_by_default() -> None:
    assert load_settings(None, env={}).recording.encrypt
    assert load_settings(ROOT / "config" / "default.toml", env={}).recording.encrypt


def test_the_openid_sign_in_settings_go_together() -> None:
    settings = load_settings(None, env={})
    assert (settings.auth.oidc_scopes, settings.auth.oidc_acr_values) == (["openid", "scope_all"], ["eidas1"])
    with pytest.raises(SettingsError, match="auth.oidc_userinfo_url: required for the sign-in"):
        settings.replace(auth={"oidc_token_url": "https://psc.example/token"})
    with pytest.raises(SettingsError, match="auth.oidc_scopes: must include 'openid'"):
        settings.replace(auth={"oidc_scopes": ["scope_all"]})
    with pytest.raises(SettingsError, match="auth.oidc_token_url: must be an http"):
        settings.replace(auth={"oidc_token_url": "ftp://psc.example/token"})
    psc = settings.replace(auth={
        "oidc_issuer": "https://psc.example", "oidc_jwks_url": "https://psc.example/certs",
        "oidc_authorize_url": "https://psc.example/auth", "oidc_token_url": "https://psc.example/token",
        "oidc_userinfo_url": "https://psc.example/userinfo", "oidc_client_id": "tc"})
    assert psc.auth.oidc_client_secret_file == ""


def test_nack_history_stays_within_srtps_replay_window() -> None:
    settings = load_settings(None, env={})
    with pytest.raises(SettingsError, match="media.nack_history: must be between 16 and 1024"):
        settings.replace(media={"nack_history": 4096})
    assert settings.replace(media={"nack_history": 1024}).media.nack_history == 1024


def test_dscp_marking_is_on_by_default_and_a_bool(tmp_path: Path) -> None:
    assert load_settings(None, env={}).media.dscp is True
    assert load_settings(ROOT / "config" / "default.toml", env={}).media.dscp is True
    assert load_settings(None, env={"TELECONSULT_MEDIA__DSCP": "false"}).media.dscp is False
    with pytest.raises(SettingsError, match=r":2: media.dscp: expected"):
        load_settings(write(tmp_path, '[media]\ndscp = "yes"\n'), env={})
