"""Token attacks on the socket: every one refused at hello (or on the room), the service goes on."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.signalling.client import SigClient
from tests.signalling.conftest import sig_settings
from tests.signalling.test_flow import VISIT, nurse, physician
from tests.support import RunningServer, start_server

KEY = "k" * 40


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": "teleconsult", "aud": "teleconsult", "iat": now, "nbf": now, "exp": now + 600,
            "sub": "dr-demo", "typ": "access", "role": "physician"}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


async def refused(sig: RunningServer, token: str, reason: str = "") -> None:
    c = await SigClient.connect(sig.ws_url)
    reply = await c.call("hello", version=1, token=token)
    await c.close()
    assert reply["type"] == "error" and reply["code"] == "auth_failed", reply
    assert reason in reply["message"]


@pytest.mark.parametrize("backend", ["memory"], indirect=False)
async def test_forged_tokens(sig: RunningServer) -> None:
    now = int(time.time())
    await refused(sig, jwt.encode(claims(exp=now - 60, iat=now - 120, nbf=now - 120), KEY, "HS256"), "expired")
    await refused(sig, jwt.encode(claims(nbf=now + 600), KEY, "HS256"), "not yet valid")
    await refused(sig, jwt.encode(claims(aud="other"), KEY, "HS256"), "audience")
    await refused(sig, jwt.encode(claims(iss="evil"), KEY, "HS256"), "issuer")
    await refused(sig, jwt.encode(claims(), "x" * 40, "HS256"), "signature")
    await refused(sig, jwt.encode(claims(), "", "none"), "")
    await refused(sig, jwt.encode(claims(exp=None), KEY, "HS256"), "exp")
    await refused(sig, jwt.encode(claims(role="superuser"), KEY, "HS256"), "role")
    await refused(sig, sig.tokens.issue_room("c-1", "physician", role="physician"), "not an access token")
    await refused(sig, "not.a.token")
    # The service goes on.
    d = await physician(sig)
    await d.request("ping")
    await d.close()


async def test_room_token_for_another_room(sig: RunningServer) -> None:
    n = await nurse(sig)
    d = await physician(sig, "dr-cardio")
    cid = (await n.request("visit.request", **VISIT))["consultation"]["id"]
    await d.event("offer.received")
    await d.request("offer.accept", consultation_id=cid)
    other_room = sig.tokens.issue_room("c-other", "nurse", role="nurse", publish=["camera"])
    await n.error("media.offer", "not_found", sdp="v=0", room_token=other_room)
    await n.error("media.offer", "auth_failed", sdp="v=0", room_token=other_room, consultation_id=cid)
    forged = jwt.encode(claims(typ="room", room=cid, sub="physician", role="physician", publish=["camera"],
                               subscribe=True, command=True), "x" * 40, "HS256")
    await n.error("media.offer", "auth_failed", sdp="v=0", room_token=forged)
    # A nurse's seat may not publish the physician's grant: the physician's token is for another seat.
    started = await d.event("consultation.started")
    await n.error("media.offer", "forbidden", sdp="v=0", room_token=started["room_token"])
    for c in (n, d):
        await c.close()


async def test_hs_rs_confusion(tmp_path: Path) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public_pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "key.pem").write_bytes(pem)
    settings = sig_settings(tmp_path, "memory", None).replace(
        auth={"algorithm": "RS256", "signing_key": str(tmp_path / "key.pem")})
    sig = await start_server(settings)
    try:
        ok = await SigClient.connect(sig.ws_url, sig.tokens.issue_access("physician", "dr-demo"))
        await ok.close()
        # HS256 signed with the public key PEM as the secret: refused (the algorithm is fixed by settings).
        body = json.dumps(claims()).encode()

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
        header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        signing_input = f"{header}.{b64(body)}"
        sig_bytes = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
        await refused(sig, f"{signing_input}.{b64(sig_bytes)}", "algorithm")
    finally:
        await sig.server.close()


async def test_external_oidc_tokens(tmp_path: Path) -> None:
    """Tokens of an external provider, verified against a JWKS this test serves."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    jwk.update(kid="k1", use="sig", alg="RS256")
    jwks_app = web.Application()

    async def jwks(request: web.Request) -> web.Response:
        return web.json_response({"keys": [jwk]})
    jwks_app.router.add_get("/jwks", jwks)
    runner = web.AppRunner(jwks_app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    settings = sig_settings(tmp_path, "memory", None).replace(auth={
        "oidc_issuer": "https://sso.example", "oidc_jwks_url": f"http://127.0.0.1:{port}/jwks",
        "oidc_audience": "teleconsult-sso"})
    sig = await start_server(settings)
    try:
        now = int(time.time())
        good = {"iss": "https://sso.example", "aud": "teleconsult-sso", "iat": now, "exp": now + 600,
                "sub": "dr-cardio", "teleconsult_role": "physician"}
        token = jwt.encode(good, private, "RS256", headers={"kid": "k1"})
        c = await SigClient.connect(sig.ws_url, token)
        assert c.hello["principal"]["role"] == "physician" and c.hello["principal"]["sub"] == "dr-cardio"
        await c.request("presence.set", status="available")
        await c.close()
        await refused(sig, jwt.encode({**good, "aud": "other"}, private, "RS256", headers={"kid": "k1"}))
        await refused(sig, jwt.encode({**good, "exp": now - 100}, private, "RS256", headers={"kid": "k1"}),
                      "expired")
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        await refused(sig, jwt.encode(good, other, "RS256", headers={"kid": "k1"}))
        await refused(sig, jwt.encode(good, other, "RS256", headers={"kid": "unknown"}), "unknown provider key")
    finally:
        await sig.server.close()
        await runner.cleanup()


@pytest.mark.parametrize("backend", ["memory"], indirect=False)
async def test_claims_of_the_wrong_type_and_endless_tokens(sig: RunningServer) -> None:
    """``specialties: 5`` (signed with the real key) raised a TypeError: now auth_failed on the socket
    and the usual 401 on REST; a token valid until the year 5000 is refused; the service goes on."""
    wrong_type = jwt.encode(claims(specialties=5), KEY, "HS256")
    endless = jwt.encode(claims(exp=95_617_584_000), KEY, "HS256")
    await refused(sig, wrong_type, "specialties")
    await refused(sig, endless, "max_token_lifetime_s")
    async with aiohttp.ClientSession() as http:
        for token in (wrong_type, endless):
            r = await http.get(sig.url + "/api/whoami", headers={"Authorization": f"Bearer {token}"})
            assert r.status == 401
            body = await r.json()
            assert body["error"] == "unauthorized" and set(body) == {"error", "reason"}
    d = await physician(sig)
    await d.request("ping")
    await d.close()


@pytest.mark.parametrize("backend", ["memory"], indirect=False)
async def test_time_claims_of_the_wrong_type_and_odd_characters(sig: RunningServer) -> None:
    """Signed tokens with ``"iat": "1796284348"`` (PyJWT takes it: it calls ``int()``) or an
    ``exp`` no float holds, and a token with a character outside ASCII: a TypeError,
    OverflowError or UnicodeEncodeError, hence a 500 on every route that reads a token
    (bench.fuzz: GET /api/consultations/{id}/report, POST /whep/{room}). Now a 401 / auth_failed."""
    now = int(time.time())
    hostile = [jwt.encode(claims(iat=str(now)), KEY, "HS256"), jwt.encode(claims(exp=10 ** 400), KEY, "HS256"),
               jwt.encode(claims(typ="room", room="r1", iat=str(now)), KEY, "HS256")]
    for token in hostile[:2]:
        await refused(sig, token)
    good = jwt.encode(claims(), KEY, "HS256")
    hostile.append(good[:30] + "é" + good[30:])
    async with aiohttp.ClientSession() as http:
        for token in hostile:
            for method, path in (("GET", "/api/consultations/c-0123456789abcdef/report"), ("GET", "/api/whoami"),
                                 ("POST", "/whep/r1")):
                r = await http.request(method, sig.url + path, data="v=0\r\n",
                                       headers={"Authorization": f"Bearer {token}", "Content-Type": "application/sdp"})
                body = await r.json()
                assert r.status == 401 and body["error"] == "unauthorized", (path, r.status, body)
    d = await physician(sig)
    await d.request("ping")
    await d.close()
