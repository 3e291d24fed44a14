"""A public setup refuses development keys, the example TURN secret and health data in clear."""

from pathlib import Path

from config.settings import load_settings
from teleconsult.production import is_production, production_problems
from tests.support import ROOT, free_port, run_cli

EXAMPLE = ROOT / "config" / "production.example.toml"

UNSAFE = """
[server]
public_url = "https://teleconsult.example.org"
data_dir = "{data_dir}"
[ice]
turn_urls = ["turn:turn.example.org:3478"]
turn_secret = "change-me-to-the-coturn-static-auth-secret"
[recording]
encrypt = false
"""


def unsafe_config(tmp_path: Path) -> Path:
    path = tmp_path / "public.toml"
    path.write_text(UNSAFE.format(data_dir=tmp_path / "data"))
    return path


def test_each_problem_is_named(tmp_path: Path) -> None:
    settings = load_settings(unsafe_config(tmp_path), env={})
    assert is_production(settings)
    problems = production_problems(settings)
    assert [p.split(":")[0] for p in problems] == ["auth.signing_key", "ice.turn_secret", "recording.encrypt"]
    keyless = settings.replace(recording={"encrypt": True})
    assert [p.split(":")[0] for p in production_problems(keyless)][-1] == "recording.master_key_file"
    # The development key copied into the settings is the development key still.
    dev = tmp_path / "data" / "dev-signing.key"
    dev.parent.mkdir(parents=True)
    dev.write_text("d" * 48)
    copied = settings.replace(auth={"signing_key": "d" * 48})
    assert "is the development key" in production_problems(copied)[0]
    dev_master = settings.replace(recording={"encrypt": True, "master_key_file": str(tmp_path / "data" /
                                                                                      "dev-master.key")})
    assert "is the development master key" in production_problems(dev_master)[-1]
    # E-mail carries invitation links: no clear text over the network, no unchecked TLS.
    safe = dev_master.replace(recording={"master_key_file": str(tmp_path / "master.key")},
                              auth={"signing_key": "s" * 48}, ice={"turn_secret": "a-real-secret-of-length"})
    assert production_problems(safe) == []
    sender = "Teleconsult <noreply@example.org>"
    for smtp, problem in (({"url": "smtp://mail.example.org"}, "smtp.url"),
                          ({"url": "smtps://mail.example.org", "validate_certs": False}, "smtp.validate_certs")):
        assert [p.split(":")[0] for p in production_problems(safe.replace(smtp={**smtp, "sender": sender}))] == \
            [problem]
    for smtp in ({"url": "smtp://127.0.0.1:2525"}, {"url": "smtp+starttls://mail.example.org"}):
        assert production_problems(safe.replace(smtp={**smtp, "sender": sender})) == []


def test_a_safe_setup_passes(tmp_path: Path) -> None:
    settings = load_settings(EXAMPLE, env={}).replace(
        ice={"turn_secret": "a-real-coturn-secret-of-enough-length"})
    assert production_problems(settings) == []
    assert not is_production(load_settings(None, env={}))


def test_check_config_production_refuses_naming_each(tmp_path: Path) -> None:
    config = unsafe_config(tmp_path)
    result = run_cli("check-config", "--production", str(config))
    assert result.returncode == 2
    for key in ("auth.signing_key", "ice.turn_secret", "recording.encrypt"):
        assert f"{config}: production: {key}:" in result.stderr, result.stderr
    # The shipped example is refused for its placeholder TURN secret only.
    example = run_cli("check-config", "--production", str(EXAMPLE))
    assert example.returncode == 2
    assert "ice.turn_secret" in example.stderr and "recording" not in example.stderr
    assert "auth." not in example.stderr
    # Development settings are fine for development, not for production.
    default = ROOT / "config" / "default.toml"
    assert run_cli("check-config", str(default)).returncode == 0
    refused = run_cli("check-config", "--production", str(default))
    assert refused.returncode == 2 and "auth.signing_key" in refused.stderr
    assert "recording.master_key_file" in refused.stderr


def test_serve_refuses_a_public_setup_with_development_keys(tmp_path: Path) -> None:
    config = unsafe_config(tmp_path)
    result = run_cli("--config", str(config), "serve", "--port", str(free_port()), timeout=30)
    assert result.returncode == 2, result.stdout + result.stderr
    for key in ("auth.signing_key", "ice.turn_secret", "recording.encrypt"):
        assert key in result.stderr
    assert "serving" not in result.stdout
    assert not (tmp_path / "data").exists()  # refused before anything was written
