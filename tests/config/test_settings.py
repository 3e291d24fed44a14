from pathlib import Path

import pytest

from config.settings import SettingsError, SmtpSecurity, load_settings, worker_port_ranges

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


def test_smtp_is_off_by_default_and_each_scheme_has_its_port(tmp_path: Path) -> None:
    assert load_settings(None, env={}).smtp.relay is None
    assert load_settings(ROOT / "config" / "default.toml", env={}).smtp.relay is None
    sender = {"TELECONSULT_SMTP__SENDER": "Téléconsultation <noreply@example.org>"}
    for url, security, port in (("smtp://127.0.0.1", SmtpSecurity.PLAIN, 25),
                                ("smtps://relay.example.org", SmtpSecurity.TLS, 465),
                                ("smtp+starttls://relay.example.org", SmtpSecurity.STARTTLS, 587),
                                ("SMTP+STARTTLS://relay.example.org:2525", SmtpSecurity.STARTTLS, 2525),
                                ("smtp://[::1]:1025", SmtpSecurity.PLAIN, 1025)):
        relay = load_settings(None, env={"TELECONSULT_SMTP__URL": url, **sender}).smtp.relay
        assert relay is not None and (relay.security, relay.port) == (security, port), url
    path = write(tmp_path, '[smtp]\nurl = "smtps://relay.example.org"\nsender = "noreply@example.org"\n'
                           'username = "tc"\npassword_env = "SMTP_PASSWORD"\ntimeout_s = 5\n')
    smtp = load_settings(path, env={}).smtp
    assert (smtp.username, smtp.password_env, smtp.timeout_s) == ("tc", "SMTP_PASSWORD", 5.0)


@pytest.mark.parametrize("toml, problem", [
    ('url = "http://relay.example.org"\nsender = "a@example.org"', ":2: smtp.url: the scheme must be one of"),
    ('url = "smtp://user:pw@relay.example.org"\nsender = "a@example.org"', ":2: smtp.url: no credentials in"),
    ('url = "smtps://"\nsender = "a@example.org"', ":2: smtp.url: needs a host"),
    ('url = "smtps://relay.example.org:99999"\nsender = "a@example.org"', ":2: smtp.url: "),
    ('url = "smtps://relay.example.org/x?y=1"\nsender = "a@example.org"', ":2: smtp.url: only a scheme"),
    ('url = "smtps://relay.example.org"', ": smtp.sender: required when url is set"),
    ('url = "smtps://relay.example.org"\nsender = "nobody"', ":3: smtp.sender: 'nobody' is not a mail address"),
    ('sender = "a@example.org\\nBcc: b@example.org"', ":2: smtp.sender: must be one line"),
    ('url = "smtps://r.example.org"\nsender = "a@example.org"\nusername = "tc"', ":4: smtp.username: needs"),
    ('password_file = "/etc/pw"', ": smtp.username: required with password_file"),
    ('url = "smtp://relay.example.org"\nsender = "a@example.org"\nusername = "tc"\npassword_env = "PW"',
     ":2: smtp.url: a login needs smtps:// or smtp+starttls://"),
    ('username = "tc"\npassword_env = "not a name"', ":3: smtp.password_env: must be"),
    ("timeout_s = 0", ":2: smtp.timeout_s: must be within"),
    ("queue_size = 0", ":2: smtp.queue_size: must be between"),
    ('validate_certs = "no"', ":2: smtp.validate_certs: expected a boolean"),
    ('pasword_file = "/etc/pw"', ":2: smtp.pasword_file: unknown key"),
])
def test_smtp_settings_name_the_wrong_key(tmp_path: Path, toml: str, problem: str) -> None:
    path = write(tmp_path, f"[smtp]\n{toml}\n")
    with pytest.raises(SettingsError) as err:
        load_settings(path, env={})
    assert any(problem in p for p in err.value.problems), err.value.problems


def test_smtp_from_the_environment_and_a_loopback_login_in_clear() -> None:
    env = {"TELECONSULT_SMTP__URL": "smtp://localhost:1025", "TELECONSULT_SMTP__SENDER": "a@example.org",
           "TELECONSULT_SMTP__USERNAME": "tc", "TELECONSULT_SMTP__PASSWORD_ENV": "PW"}
    relay = load_settings(None, env=env).smtp.relay
    assert relay is not None and relay.loopback  # a login over smtp:// stays on this host
    with pytest.raises(SettingsError, match=r"\$TELECONSULT_SMTP__TIMEOUT_S: smtp.timeout_s: expected a number"):
        load_settings(None, env={"TELECONSULT_SMTP__TIMEOUT_S": "soon"})
    with pytest.raises(SettingsError, match="smtp.url"):
        load_settings(None, env={}).replace(smtp={"url": "smtp:/relay", "sender": "a@example.org"})


def test_media_workers_need_redis_ports_and_origins() -> None:
    redis = {"TELECONSULT_STORE__BACKEND": "redis"}
    settings = load_settings(None, env={**redis, "TELECONSULT_SERVER__MEDIA_WORKERS": "4",
                                        "TELECONSULT_SERVER__MEDIA_ORIGINS": "https://tc.example.org:8444"})
    assert settings.server.media_workers == 4 and settings.server.media_origins == ["https://tc.example.org:8444"]
    assert load_settings(None, env={}).server.media_workers == 1
    with pytest.raises(SettingsError, match=r"server.media_workers \(--media-workers\) is 2: .* needs the Redis store"):
        load_settings(None, env={}).replace(server={"media_workers": 2})
    with pytest.raises(SettingsError, match="server.media_workers: must be between 1 and 64"):
        load_settings(None, env={**redis, "TELECONSULT_SERVER__MEDIA_WORKERS": "0"})
    with pytest.raises(SettingsError, match="server.media_workers: the workers' HTTP ports"):
        load_settings(None, env={**redis, "TELECONSULT_SERVER__MEDIA_WORKERS": "2",
                                 "TELECONSULT_SERVER__PORT": "65534"})
    with pytest.raises(SettingsError, match="2 media workers need at least 16 UDP ports each"):
        load_settings(None, env={**redis, "TELECONSULT_SERVER__MEDIA_WORKERS": "2",
                                 "TELECONSULT_MEDIA__PORT_MIN": "40000", "TELECONSULT_MEDIA__PORT_MAX": "40020"})
    for bad in ("https://tc.example.org/whip", "ftp://tc.example.org", "tc.example.org:8443",
                "https://tc.example.org:99999"):
        with pytest.raises(SettingsError, match="server.media_origins: .* is not an origin"):
            load_settings(None, env={"TELECONSULT_SERVER__MEDIA_ORIGINS": bad})


def test_worker_port_ranges_cover_the_range_in_order() -> None:
    assert worker_port_ranges(40000, 49999, 2) == [(40000, 44999), (45000, 49999)]
    assert worker_port_ranges(10, 20, 3) == [(10, 13), (14, 17), (18, 20)]
    assert worker_port_ranges(5, 9, 1) == [(5, 9)]
