from pathlib import Path

from config.settings import AuthSettings
from core.auth import Role, TokenService
from tests.support import run_cli


def test_check_config_ok_and_broken(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    ok = run_cli("check-config", str(root / "config" / "default.toml"))
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nport = "x"\n[auth]\nalgoritm = "HS256"\n')
    result = run_cli("check-config", str(bad))
    assert result.returncode == 2
    assert f"{bad}:2: server.port: expected an integer" in result.stderr
    assert f"{bad}:4: auth.algoritm: unknown key" in result.stderr


def test_serve_with_broken_config_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[media]\nlisten_ip = \"nowhere\"\n")
    result = run_cli("--config", str(bad), "serve")
    assert result.returncode == 2
    assert "media.listen_ip" in result.stderr


def test_tokens_from_the_command_line(tmp_path: Path) -> None:
    env = {"TELECONSULT_SERVER__DATA_DIR": str(tmp_path)}
    access = run_cli("token", "access", "--role", "nurse", "--sub", "n-1", "--site", "cabin-demo", env=env)
    assert access.returncode == 0, access.stderr
    token = access.stdout.strip()
    assert token.count(".") == 2 and "\n" not in token
    tokens = TokenService(AuthSettings(), str(tmp_path))
    principal = tokens.verify_access_local(token)
    assert principal.role is Role.NURSE and principal.site == "cabin-demo"

    room = run_cli("token", "room", "consult-1", "--identity", "agent-1", "--role", "agent",
                   "--publish", "stethoscope,dermatoscope", "--ttl", "60", env=env)
    assert room.returncode == 0, room.stderr
    grant = tokens.verify_room(room.stdout.strip(), "consult-1")
    assert grant.publish == ("stethoscope", "dermatoscope") and not grant.subscribe

    link = run_cli("token", "access", "--role", "physician", "--sub", "dr-1", "--specialty", "general,cardiology",
                   "--link", env=env)
    assert link.stdout.startswith("http://127.0.0.1:8080/physician#token=")


def test_token_errors_are_clear(tmp_path: Path) -> None:
    env = {"TELECONSULT_SERVER__DATA_DIR": str(tmp_path)}
    result = run_cli("token", "access", "--role", "nurse", "--sub", "n-1", env=env)
    assert result.returncode == 2 and "needs a site" in result.stderr
    result = run_cli("token", "room", "r", "--identity", "a", "--publish", "xray", env=env)
    assert result.returncode == 2 and "unknown source 'xray'" in result.stderr
