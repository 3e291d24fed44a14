"""The sign-in's pure parts: PKCE S256 (RFC 7636's example), the authorize URL, ID token claims, RPPS mapping."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from config.settings import AuthSettings
from interop import read_client_secret
from interop.psc import (PendingSignIn, SignInRefused, authorize_url, check_id_token_claims, physician_of,
                         pkce_challenge, rpps_of)
from signalling.directory import Directory
from tests.interop.provider import physician_userinfo

SETTINGS = AuthSettings(oidc_issuer="https://psc.example", oidc_jwks_url="https://psc.example/jwks",
                        oidc_authorize_url="https://psc.example/auth?realm=x", oidc_client_id="tc")
DIRECTORY = Directory.from_dict({"sites": [], "clinicians": [
    {"id": "dr-psc", "name": "Dr PSC", "specialties": ["general"], "rpps": "10000000009"}]})


def test_pkce_s256_is_rfc_7636s() -> None:
    assert pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk") == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_the_authorize_url_asks_for_what_the_settings_say() -> None:
    pending = PendingSignIn.new("/physician", 0.0)
    url = authorize_url(SETTINGS, "https://tc.example/auth/oidc/callback", pending)
    assert url.startswith("https://psc.example/auth?realm=x&")
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert query == {"realm": "x", "response_type": "code", "client_id": "tc",
                     "redirect_uri": "https://tc.example/auth/oidc/callback", "scope": "openid scope_all",
                     "state": pending.state, "nonce": pending.nonce, "code_challenge": pkce_challenge(pending.verifier),
                     "code_challenge_method": "S256", "acr_values": "eidas1"}
    assert pending.verifier not in url and PendingSignIn.from_dict(pending.to_dict()) == pending


def test_id_token_claims() -> None:
    good: dict[str, Any] = {"nonce": "n", "acr": "eidas1", "aud": "tc"}
    check_id_token_claims(good, SETTINGS, "n")
    for claims, cause in [({**good, "nonce": "m"}, "nonce"), ({**good, "nonce": None}, "nonce"),
                          ({**good, "acr": "eidas0"}, "acr"), ({k: v for k, v in good.items() if k != "acr"}, "acr"),
                          ({**good, "aud": ["tc", "other"]}, "azp")]:
        with pytest.raises(SignInRefused) as refused:
            check_id_token_claims(claims, SETTINGS, "n")
        assert refused.value.cause == cause and refused.value.status == 401
    check_id_token_claims({**good, "aud": ["tc", "other"], "azp": "tc"}, SETTINGS, "n")


def test_rpps_and_the_physician() -> None:
    assert rpps_of({"SubjectNameID": "810000000009"}) == "10000000009"
    assert rpps_of({"preferred_username": "10000000009"}) == "10000000009"
    assert rpps_of({"SubjectNameID": "310000000009"}) == "" and rpps_of({"SubjectNameID": 5}) == ""
    assert physician_of(physician_userinfo("10000000009"), DIRECTORY).id == "dr-psc"
    assert physician_of({"SubjectNameID": "810000000009"}, DIRECTORY).id == "dr-psc"  # no SubjectRefPro: the directory says
    for info, cause in [({"sub": "x"}, "no_rpps"), (physician_userinfo("10000123454"), "unknown_rpps"),
                        ({**physician_userinfo("10000000009"), "SubjectRefPro": {"exercices": [{"codeProfession": "60"}]}},
                         "not_physician")]:
        with pytest.raises(SignInRefused) as refused:
            physician_of(info, DIRECTORY)
        assert refused.value.cause == cause and refused.value.status == 403


def test_the_client_secret_file(tmp_path: Path) -> None:
    assert read_client_secret("") == ""
    (tmp_path / "secret").write_text("  s3cret\n")
    assert read_client_secret(str(tmp_path / "secret")) == "s3cret"
    (tmp_path / "empty").write_text("\n")
    for path, message in ((tmp_path / "empty", "is empty"), (tmp_path / "absent", "cannot read")):
        with pytest.raises(ValueError, match=f"auth.oidc_client_secret_file: .*{message}"):
            read_client_secret(str(path))
