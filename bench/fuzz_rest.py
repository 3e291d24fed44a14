"""Fuzz surface ``rest``: every HTTP route of the application.

The routes come from the application's own router (:func:`teleconsult.app.create_app`
built once in this process, never started), so a route added later is fuzzed without a
change here. Each input is one request to one route:

* the method: the route's own mostly, else another or a made-up one;
* the path parameters: ids of a live consultation (whose physician, nurse and agent
  tokens the requests may carry), of an ended one, made-up ids, traversal and odd
  strings; ``/static`` with traversal attempts;
* the headers: valid access tokens of each role and room tokens of the live consultation,
  hostile tokens (bad signatures, claims of the wrong type), none, odd Content-Types and
  ``X-Device`` values;
* the body: the route's own shape (directory entries, reports, recording actions, real
  SDP offers, a real PNG still), mutated, random JSON, deeply nested JSON, invalid UTF-8,
  1-2 MB bodies and, rarely, one over the server's body limit.

A 5xx is a server error, no answer within 5 s a hang. Error replies from the application
that are not the usual JSON shape ``{"error", "reason"}`` (nor, on FHIR routes, an
``OperationOutcome``) are counted (``bad_error_shape``).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import struct
import tempfile
import time
import zlib
from typing import Any
from urllib.parse import quote

import aiohttp

from bench.fuzz_grammar import Tokens
from bench.fuzz_target import HANG_S, CheckFailed, Context, LiveConsultation, Surface, open_consultation
from bench.rtc import KEY
from config.settings import load_settings
from teleconsult.app import create_app

METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD")
_PARAM = re.compile(r"\{([^{}]*)\}")


def rest_routes() -> list[tuple[str, str]]:
    """(method, path template) of every route the application serves (``HEAD`` twins and the
    WebSocket left out: the ``ws`` surface has it)."""
    with tempfile.TemporaryDirectory(prefix="fuzz-routes-") as tmp:
        env = {**os.environ, "TELECONSULT_SERVER__DATA_DIR": tmp, "TELECONSULT_AUTH__SIGNING_KEY": KEY}
        app = create_app(load_settings(env=env))
        out: list[tuple[str, str]] = []
        for route in app.router.routes():
            info = route.resource.get_info() if route.resource is not None else {}
            path = info.get("formatter") or info.get("path") or (str(info.get("prefix", "")) + "/{path}")
            if route.method == "HEAD" or path == "/ws":
                continue
            out.append((route.method, str(path)))
        return sorted(set(out))


def png(width: int = 4, height: int = 4) -> bytes:
    """A real (tiny) PNG: what a dermatoscope still upload looks like."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack("!I", len(data)) + kind + data + struct.pack("!I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    raw = b"".join(b"\x00" + b"\x80\x40\x20" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack("!IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


class RestSurface(Surface):
    name = "rest"
    batch_size = 100

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.routes = rest_routes()
        self.live: LiveConsultation | None = None
        self.ended_id = ""
        self.png = png()
        self.last_location = ""
        self.from_app = True
        """The last answer came from the application (its middleware stamps X-Request-Id)."""

    async def setup(self) -> None:
        http, base, tokens = self.ctx.http, self.ctx.base, self.ctx.tokens
        ended = await open_consultation(http, base, tokens, "rest-ended")
        try:
            await ended.end()
        finally:
            await ended.close()
        self.ended_id = ended.id
        self.live = await open_consultation(http, base, tokens, "rest", consent_recording=True)
        self.ledger.extra["routes"] = [f"{m} {p}" for m, p in self.routes]

    # -- pieces of a request -------------------------------------------------------------
    def access(self, role: str) -> str:
        t = self.ctx.tokens
        if role == "physician":
            return str(t.issue_access("physician", "fz-rest-dr", specialties=["fz-rest"]))
        if role in ("nurse", "agent"):
            return str(t.issue_access(role, f"fz-rest-{role}", site="fz-rest-site"))
        return str(t.issue_access("admin", "fz-rest-admin"))

    def token(self) -> tuple[str, str | None]:
        g = self.g
        assert self.live is not None
        r = g.rng.random()
        if r < 0.55:
            role = g.pick(("admin", "physician", "nurse", "agent"))
            return role, self.access(role)
        if r < 0.7:
            seat = g.pick(list(self.live.room_tokens))
            return f"{seat} room token", self.live.room_tokens[seat]
        if r < 0.85:
            role = g.pick(("admin", "physician", "nurse", "agent"))
            return f"hostile {role}", Tokens(g, lambda: self.access(role)).mutated()
        if r < 0.93:
            return "none", None
        return "odd header", g.pick(("", "Bearer", "Bearer  ", "bearer " + self.access("admin"), "Basic YTpi",
                                     "Bearer " + "a" * 9000, g.string()))

    def param(self, name: str) -> str:
        g = self.g
        assert self.live is not None
        r = g.rng.random()
        if name in ("id", "consultation_id"):
            if r < 0.5:
                return self.live.id
            if r < 0.65:
                return self.ended_id
        elif name == "room":
            if r < 0.6:
                return self.live.room
        elif name == "kind":
            return g.pick(("sites", "clinicians")) if r < 0.9 else g.ident()
        elif name == "file":
            if r < 0.5:
                return g.pick(("track-0.webm", "manifest.json", "0.ivf", "../manifest.json", "..%2F..%2Fetc%2Fpasswd"))
        elif name == "path":
            return g.pick(("app.js", "vocabulary.js", "style.css", "../config/settings.py", "..%2f..%2fpyproject.toml",
                           "%2e%2e/%2e%2e/etc/passwd", "a" * 300, "", g.string()))
        value = g.string() if g.chance(0.6) else g.ident()
        return value.replace("/", "%2F").replace("?", "%3F").replace("#", "%23") or "x"

    def valid_body(self, method: str, path: str) -> tuple[str, bytes, dict[str, str]]:
        """(what, body, extra headers) of the route's own shape (empty for none)."""
        g = self.g
        if path == "/api/directory" and method == "PUT":
            return "directory", json.dumps({"sites": [{"id": g.ident(), "name": "s", "kind": "cabin"}],
                                            "clinicians": [{"id": g.ident(), "name": "c",
                                                            "specialties": ["general"]}]}).encode(), {}
        if path.startswith("/api/directory/") and method == "PUT":
            body = {"name": g.string()[:80] or "x", "kind": g.pick(("cabin", "ehpad", "mobile_unit", "x")),
                    "specialties": ["general"], "languages": ["fr"]}
            return "entry", json.dumps(body).encode(), {}
        if path.endswith("/report") and method == "PUT":
            return "report", json.dumps({"reason": "r", "findings": "f", "conclusion": "c", "prescriptions": [],
                                         "follow_up": ""}).encode(), {}
        if path.endswith("/recording"):
            return "recording", json.dumps({"action": g.pick(("start", "stop"))}).encode(), {}
        if path.endswith("/stills") and method == "POST":
            return "still", self.png, {"Content-Type": "image/png",
                                       "X-Device": g.pick(("dermatoscope", "otoscope", "stethoscope", g.ident()))}
        if path.startswith(("/whip/", "/whep/", "/api/echo")) and method == "POST":
            offers = self.ctx.offers
            name = "whep" if path.startswith("/whep/") else g.pick(("echo-dc", "whip-vp8"))
            return "sdp", offers.get(name, "").encode(), {"Content-Type": "application/sdp"}
        return "", b"", {}

    def body(self, method: str, path: str) -> tuple[str, bytes, dict[str, str]]:
        g = self.g
        what, valid, headers = self.valid_body(method, path)
        r = g.rng.random()
        if r < 0.35:
            return what or "no body", valid, headers
        if r < 0.55 and what and what not in ("still", "sdp"):
            return f"{what} (mutated)", g.to_json(g.mutate_object(json.loads(valid))).encode("utf-8",
                                                                                            "surrogatepass"), headers
        if r < 0.6 and valid:
            return f"{what} (bytes mutated)", g.mutate_bytes(valid), headers
        if r < 0.7:
            return "random JSON", g.to_json(g.json_value()).encode("utf-8", "surrogatepass"), {}
        if r < 0.76:
            return "deep JSON", g.deep_json().encode(), {}
        if r < 0.82:
            return "text-mutated JSON", g.mutate_text(valid.decode(errors="replace") or "{}").encode(
                "utf-8", "surrogatepass"), headers
        if r < 0.87:
            return "invalid UTF-8", g.pick((b"\xff\xfe\x00", b'{"action": "\xc3\x28"}', g.random_bytes(300))), headers
        if r < 0.895:
            return "1-2 MB JSON", json.dumps({"action": "x" * g.rng.randint(1_000_000, 2_000_000)}).encode(), headers
        if r < 0.897:
            return "over the body limit", b"x" * (17 * 1024 * 1024), headers
        return "empty", b"", headers

    async def one(self) -> None:
        g = self.g
        method, template = g.pick(self.routes)
        if g.chance(0.15):
            method = g.pick(METHODS + ("TRACE", "FUZZ", "PROPFIND"))
        # One pass over the template: a parameter's fuzzed value may itself hold braces.
        path = _PARAM.sub(lambda m: self.param(m.group(1).split(":")[0]), template)
        if g.chance(0.1):
            path += "?" + g.pick(("limit=-1", "source=camera&source=" + g.ident(), "a=" + g.string()[:100],
                                  "x" * 5000, "%zz"))
        who, token = self.token()
        what, body, extra = self.body(method, template)
        headers = {"Content-Type": "application/json", **extra}
        if g.chance(0.1):
            headers["Content-Type"] = g.pick(("text/plain", "", "application/json; charset=latin-1",
                                              "multipart/form-data", "application/sdp", g.string()[:100]))
        if token is not None:
            headers["Authorization"] = token if who == "odd header" else f"Bearer {token}"
        rid = f"fzrest{self.ledger.inputs}"
        headers["X-Request-Id"] = rid
        where = f"{method} {template}"
        oversized = len(quote(path.encode("utf-8", "surrogatepass"), safe="/%?=&")) > 8000 or any(len(v) > 8000 for v in headers.values())
        text = (f"{method} {path[:300]} as {who}{' [over 8190 bytes]' if oversized else ''}, "
                f"body {what} ({len(body)} bytes), "
                f"Content-Type {headers.get('Content-Type')!r}\n{body[:800].decode(errors='replace')}")
        self.ledger.sent(rid, where, text)
        try:
            status, reply, content_type = await asyncio.wait_for(self._request(method, path, headers, body), HANG_S)
        except asyncio.TimeoutError:
            self.ledger.hang(where, text, "no answer to the request")
            return
        except ValueError:  # a header aiohttp will not send (control characters): never left this process
            self.ledger.count("client_refused_headers")
            return
        except (aiohttp.ClientError, OSError) as exc:
            self.ledger.count("client_errors")
            self.ledger.found("connection_error", where, text, f"{type(exc).__name__}: {exc}"[:300],
                              type(exc).__name__)
            return
        self.ledger.count(f"status_{status}")
        if status >= 500:
            self.ledger.server_error(where, text, status, reply)
        elif status >= 400 and not self.from_app:
            # Refused by aiohttp's HTTP parser before the application saw it (a bad method, a
            # line over 8190 bytes): plain text, no request id; the shape is aiohttp's.
            self.ledger.count("parser_rejections")
        elif status >= 400 and method != "HEAD" and not template.startswith("/static"):
            try:
                shape = json.loads(reply)
                # The usual shape, or FHIR's own (an OperationOutcome) on the FHIR routes.
                ok = isinstance(shape, dict) and ({"error", "reason"} <= set(shape)
                                                  or shape.get("resourceType") == "OperationOutcome")
            except ValueError:
                ok = False
            if not ok:
                self.ledger.count("bad_error_shape")
                self.ledger.found("bad_error_shape", where, text, f"HTTP {status} {content_type}: {reply[:300]}",
                                  str(status))
        if status == 201 and template in ("/whip/{room}", "/whep/{room}", "/api/echo"):
            # A session a fuzzed request opened: closed at once (so that the fuzzer's own
            # leftovers never fill the server's limits), with the request's own token.
            self.ledger.count("sessions_created")
            location = self.last_location
            if location:
                try:
                    await asyncio.wait_for(self._request("DELETE", location, headers, b""), HANG_S)
                except asyncio.TimeoutError:
                    self.ledger.hang(f"DELETE {template}/{{session}}", text, "no answer to the DELETE")
                except (aiohttp.ClientError, OSError):
                    pass

    async def _request(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, str]:
        async with self.ctx.http.request(method, self.ctx.base + path, headers=headers, data=body or None,
                                         allow_redirects=False) as r:
            data = await r.content.read(64 * 1024)
            self.last_location = r.headers.get("Location", "")
            self.from_app = "X-Request-Id" in r.headers or r.content_type == "application/json"
            return r.status, data.decode(errors="replace"), r.headers.get("Content-Type", "")

    async def run_batch(self, n: int, deadline: float) -> None:
        for _ in range(n):
            if time.monotonic() > deadline:
                return
            await self.one()

    async def teardown(self) -> None:
        if self.live is not None:
            try:
                await self.live.end()
            except CheckFailed as exc:
                if exc.hang:
                    self.ledger.hangs += 1
                self.ledger.found("hang" if exc.hang else "legit_failure", "consultation.end (rest live)", "",
                                  str(exc))
            finally:
                await self.live.close()
