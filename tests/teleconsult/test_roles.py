"""``server.roles``: a process that signals, one that forwards media, or both (the default); what
each runs (``teleconsult.app.components``) and how the setting is read and checked."""

from __future__ import annotations

from pathlib import Path

import pytest

import interop
import sfu
import signalling
import web_client
from config.settings import NodeRole, SettingsError, load_settings
from teleconsult.app import COMPONENTS, MEDIA_NODE_COMPONENTS, components, create_app

REDIS = {"TELECONSULT_STORE__BACKEND": "redis", "TELECONSULT_STORE__REDIS_URL": "redis://127.0.0.1:1/0"}


def _routes(roles: str, tmp_path: Path) -> set[str]:
    """The resources of the app ``roles`` builds (nothing starts: no store is reached)."""
    settings = load_settings(None, env={**REDIS, "TELECONSULT_SERVER__ROLES": roles,
                                        "TELECONSULT_SERVER__DATA_DIR": str(tmp_path)})
    app = create_app(settings)
    return {r.canonical for r in app.router.resources()}


def test_roles_default_to_both_and_are_read_from_the_file_and_the_environment(tmp_path: Path) -> None:
    default = load_settings(None, env={})
    assert default.server.roles == ["signalling", "media"]
    assert default.server.runs(NodeRole.SIGNALLING) and default.server.runs(NodeRole.MEDIA)
    assert components(default) == COMPONENTS
    toml = tmp_path / "media.toml"
    toml.write_text('[server]\nroles = ["media"]\n[store]\nbackend = "redis"\n')
    media = load_settings(toml, env={})
    assert media.server.roles == ["media"]
    assert media.server.runs(NodeRole.MEDIA) and not media.server.runs(NodeRole.SIGNALLING)
    env = load_settings(None, env={**REDIS, "TELECONSULT_SERVER__ROLES": "signalling"})
    assert env.server.roles == ["signalling"] and not env.server.runs(NodeRole.MEDIA)


def test_bad_roles_are_refused_with_the_key() -> None:
    for value, message in (("", "server.roles: must name at least one of signalling, media"),
                           ("media,sfu", "server.roles: 'sfu' is not a role"),
                           ("media,media", "server.roles: names a role twice")):
        with pytest.raises(SettingsError, match=message):
            load_settings(None, env={**REDIS, "TELECONSULT_SERVER__ROLES": value})
    # One role alone: the other runs elsewhere, which only the Redis store lets processes share.
    with pytest.raises(SettingsError, match=r"server.roles is \['media'\]: .* needs the Redis store"):
        load_settings(None, env={"TELECONSULT_SERVER__ROLES": "media"})
    # serve --media-workers splits the roles itself (the parent signals, its workers forward).
    with pytest.raises(SettingsError, match="server.roles: with media_workers > 1"):
        load_settings(None, env={**REDIS, "TELECONSULT_SERVER__ROLES": "signalling",
                                 "TELECONSULT_SERVER__MEDIA_WORKERS": "2"})


def test_what_each_role_runs(tmp_path: Path) -> None:
    def of(roles: str, workers: int = 1) -> tuple[object, ...]:
        return components(load_settings(None, env={**REDIS, "TELECONSULT_SERVER__ROLES": roles,
                                                   "TELECONSULT_SERVER__MEDIA_WORKERS": str(workers)}))

    signals, media = of("signalling"), of("media")
    assert not MEDIA_NODE_COMPONENTS & set(signals) and web_client.setup in signals and interop.setup in signals
    assert sfu.setup in media and signalling.setup in media
    assert web_client.setup not in media and interop.setup not in media
    # The parent of serve --media-workers is the signalling only, as a signalling-only node.
    assert of("signalling,media", workers=2) == signals

    media_routes = _routes("media", tmp_path / "m")
    assert {"/ws", "/whip/{room}", "/whep/{room}", "/healthz"} <= media_routes
    assert not {"/", "/nurse", "/physician"} & media_routes
    signal_routes = _routes("signalling", tmp_path / "s")
    assert {"/ws", "/nurse", "/physician"} <= signal_routes
    assert not {"/whip/{room}", "/whep/{room}"} & signal_routes
