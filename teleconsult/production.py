"""What a public deployment must not run with.

A setup is production when its public URL is https (``server.public_url``): people
reach it from outside this machine. ``teleconsult check-config --production FILE``
and ``teleconsult serve`` for such a setup refuse, naming each problem:

* the development signing key (``auth.signing_key`` empty with an HS algorithm: the
  key generated under ``server.data_dir``, or that key copied into the settings);
* the example TURN secret of ``config/production.example.toml``;
* health data in clear (``recording.encrypt = false``), or encrypted with the
  development master key (no ``recording.master_key_file`` nor ``master_key_env``,
  or the file under ``server.data_dir`` that development generates);
* e-mail that would cross the network unprotected: a relay reached without TLS
  (``smtp://``) anywhere but on this host, or TLS whose certificate is not checked
  (``smtp.validate_certs = false``). The messages carry invitation links (a link lets
  its holder into a consultation) and télé-expertise notices.
"""

from __future__ import annotations

from pathlib import Path

from config.settings import Settings, SmtpSecurity
from core.auth import DEVELOPMENT_SIGNING_KEY_FILE
from core.keyring import DEVELOPMENT_KEY_FILE

EXAMPLE_TURN_SECRET = "change-me-to-the-coturn-static-auth-secret"
"""The placeholder of config/production.example.toml."""


def is_production(settings: Settings) -> bool:
    return settings.server.public_url.strip().lower().startswith("https://")


def _development_signing_key(data_dir: str) -> str | None:
    try:
        return (Path(data_dir) / DEVELOPMENT_SIGNING_KEY_FILE).read_text().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def production_problems(settings: Settings) -> list[str]:
    """Each thing ``settings`` must not have in production, as ``section.key: why``."""
    problems = []
    auth, data_dir = settings.auth, settings.server.data_dir
    if auth.algorithm.startswith("HS"):
        if not auth.signing_key:
            problems.append(f"auth.signing_key: empty: tokens would be signed with the development key generated "
                            f"under server.data_dir ({DEVELOPMENT_SIGNING_KEY_FILE}); set a secret of your own "
                            "or an asymmetric algorithm")
        elif auth.signing_key == _development_signing_key(data_dir):
            problems.append(f"auth.signing_key: is the development key ({DEVELOPMENT_SIGNING_KEY_FILE} under "
                            "server.data_dir); set a secret of your own")
    secret = settings.ice.turn_secret.strip()
    if secret == EXAMPLE_TURN_SECRET or secret.lower().startswith("change-me"):
        problems.append("ice.turn_secret: is the example secret of config/production.example.toml; "
                        "set coturn's static-auth-secret")
    recording = settings.recording
    if not recording.encrypt:
        problems.append("recording.encrypt: false: recordings, stills and records (reports, reasons, patient "
                        "references) would be written in clear; set it true with a master key")
    elif not (recording.master_key_file or recording.master_key_env):
        problems.append(f"recording.master_key_file: neither master_key_file nor master_key_env is set: the "
                        f"development master key under server.data_dir ({DEVELOPMENT_KEY_FILE}) would protect "
                        "the data it sits next to; name a key file or an environment variable")
    elif recording.master_key_file and not recording.master_key_env and (
            Path(recording.master_key_file).name == DEVELOPMENT_KEY_FILE):
        problems.append(f"recording.master_key_file: is the development master key ({DEVELOPMENT_KEY_FILE}); "
                        "make a key of your own, kept away from server.data_dir")
    try:
        relay = settings.smtp.relay
    except ValueError:  # the settings' own validation names a bad URL
        relay = None
    if relay is not None and relay.security is SmtpSecurity.PLAIN and not relay.loopback:
        problems.append("smtp.url: smtp:// reaches the relay without TLS over the network, and the messages carry "
                        "invitation links that open a consultation; use smtps:// or smtp+starttls://")
    if relay is not None and relay.security is not SmtpSecurity.PLAIN and not settings.smtp.validate_certs:
        problems.append("smtp.validate_certs: false: anyone on the path could pose as the relay and read the "
                        "invitation links; check the relay's certificate")
    return problems


__all__ = ["EXAMPLE_TURN_SECRET", "is_production", "production_problems"]
