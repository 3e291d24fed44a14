"""Fuzz surface ``ws``: frames on the signalling WebSocket.

One authenticated socket per role (nurse, physician, agent, admin; valid access tokens
of the server's key), plus sockets that never said hello. Each input is one frame:

* a request of any type of :mod:`signalling.protocol` with plausible fields (ids the
  server handed out, real SDP offers, valid room tokens), sent from any role;
* the same with fields dropped, added, or of another type or size;
* its JSON text mutated (invalid JSON, stray bytes, lone surrogates);
* deeply nested JSON (whole frame or one field), frames near and over the size limit,
  binary frames, JSON that is not an object, odd ids, event and reply names as requests;
* ``hello`` on a fresh socket with hostile tokens (bad signatures, ``alg: none``, claims
  of the wrong type signed with the server's key, lifetimes to the year 5000, room tokens).

Every frame must get one reply (``<type>.ok`` or ``error``) within 5 s, or a close the
protocol explains (4401 after a refused hello, 1009 for a frame over the limit). An
``internal`` error or a 1011 close counts as a server error; a connection that breaks
without a close frame counts as ``abnormal_closes`` (and is a finding). Consultations the
fuzzed nurses create are cancelled or ended after each batch.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import time
import types
import typing
from typing import Any

import aiohttp

from bench.fuzz_grammar import Tokens
from bench.fuzz_target import HANG_S, CheckFailed, Context, Surface, open_consultation, register, within
from signalling import protocol as p

ROLES = ("nurse", "physician", "agent", "admin")
EXPECTED_CLOSES = {4401, 1009, 1007, 4408, 1000}
"""Refused hello, frame over the limit, text that is not UTF-8, slow consumer, normal."""
SPECIALTIES = ("general", "dermatology", "cardiology", "fz-wsq")
"""What fuzzed physicians practise and nurses ask for (not the live consultation's ``fz-ws``)."""


class Sock:
    """One fuzzed socket: send a frame, read until its reply (events noted on the way)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, rid: str, role: str, subject: str) -> None:
        self.ws = ws
        self.rid = rid
        self.role = role
        self.subject = subject
        self.dead = False
        """Closed under us: a send failed (the server closed it between two frames)."""

    async def exchange(self, frame: str | bytes, seen: set[str]) -> tuple[str, Any]:
        """("reply", message) | ("closed", code) | ("abnormal", detail) | ("hang", None)."""
        ws = self.ws
        try:
            if isinstance(frame, bytes):
                await ws.send_bytes(frame)
            else:
                # A text frame as written, lone surrogates included (invalid UTF-8 on the wire).
                await ws.send_frame(frame.encode("utf-8", "surrogatepass"), aiohttp.WSMsgType.TEXT)
        except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
            # Closed by the server between two frames (say, the token of an auth.refresh expired):
            # its close frame, unread until now, tells why; the next frame gets a new socket.
            self.dead = True
            return "closed", await self._close_code() or f"send: {type(exc).__name__}"
        deadline = time.monotonic() + HANG_S
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return "hang", None
            try:
                msg = await ws.receive(timeout=left)
            except asyncio.TimeoutError:
                return "hang", None
            except (aiohttp.ClientError, ConnectionError) as exc:
                return "abnormal", f"{type(exc).__name__}: {exc}"
            if msg.type is aiohttp.WSMsgType.TEXT:
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    return "abnormal", f"not JSON from the server: {msg.data[:200]!r}"
                _note_ids(data, seen)
                kind = str(data.get("type", ""))
                if kind == "error" or kind.endswith(".ok"):
                    return "reply", data
                continue
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                code = ws.close_code
                if code is None or code == 1006:
                    return "abnormal", f"closed without a close frame ({msg.extra!r})"
                return "closed", code
            if msg.type is aiohttp.WSMsgType.ERROR:
                return "abnormal", f"{msg.data!r}"[:300]

    async def _close_code(self) -> int | None:
        try:
            while (msg := await self.ws.receive(timeout=1.0)).type not in (
                    aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
                    aiohttp.WSMsgType.ERROR):
                pass
        except (asyncio.TimeoutError, aiohttp.ClientError, ConnectionError, RuntimeError):
            return None
        # The close frame's code (the socket itself says 1006: our side could not answer it).
        code = msg.data if msg.type is aiohttp.WSMsgType.CLOSE else self.ws.close_code
        return code if isinstance(code, int) and code != 1006 else None

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.ws.close(), HANG_S)
        except (asyncio.TimeoutError, aiohttp.ClientError, OSError):
            pass


def _note_ids(data: Any, seen: set[str]) -> None:
    if not isinstance(data, dict):
        return
    c = data.get("consultation")
    if isinstance(c, dict) and isinstance(c.get("id"), str):
        seen.add(c["id"])
    cid = data.get("consultation_id")
    if isinstance(cid, str):
        seen.add(cid)


class WsSurface(Surface):
    name = "ws"
    batch_size = 100

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.socks: dict[str, Sock] = {}
        self.unauthenticated: Sock | None = None
        self.connections = 0
        self.seen: set[str] = set()
        """Consultation ids the server mentioned (fields draw from them)."""
        self.created: dict[str, str] = {}
        """Consultations the fuzzed sockets made or took: id -> role that can close them."""
        self.live: Any = None

    # -- sockets ------------------------------------------------------------------------
    def access(self, role: str, subject: str | None = None) -> str:
        subject = subject or f"fz-ws-{role}"
        if role in ("nurse", "agent"):
            return self.ctx.tokens.issue_access(role, subject, site="fz-ws-site")
        if role == "physician":
            return self.ctx.tokens.issue_access(role, subject, specialties=list(SPECIALTIES))
        return self.ctx.tokens.issue_access(role, subject)

    async def _open(self, role: str) -> Sock:
        self.connections += 1
        rid = f"fzws{self.connections}"
        ws = await self.ctx.http.ws_connect(self.ctx.ws_url, headers={"X-Request-Id": rid}, autoping=True,
                                            heartbeat=None, max_msg_size=0)
        return Sock(ws, rid, role, f"fz-ws-{role}-{self.connections}")

    async def _hello(self, sock: Sock) -> None:
        frame = json.dumps({"type": "hello", "id": "h", "version": 1, "token": self.access(sock.role, sock.subject)})
        outcome, reply = await sock.exchange(frame, self.seen)
        if outcome != "reply" or reply.get("type") != "hello.ok":
            raise RuntimeError(f"hello as {sock.role}: {outcome} {reply}")

    async def sock(self, role: str) -> Sock:
        sock = self.socks.get(role)
        if sock is None or sock.ws.closed or sock.dead:
            sock = await within(f"connect {role}", self._open(role))
            await within(f"hello {role}", self._hello(sock))
            if role == "physician":
                await sock.exchange(json.dumps({"type": "presence.set", "id": "p", "status": "available"}),
                                    self.seen)
            self.socks[role] = sock
        return sock

    async def setup(self) -> None:
        # A consultation of the fuzzed site, for its room tokens and id (before the fuzzed
        # physician is available: the offer must go to the live consultation's physician).
        self.live = await open_consultation(self.ctx.http, self.ctx.base, self.ctx.tokens, "ws")
        self.seen.add(self.live.id)
        self.socks.clear()
        for role in ROLES:
            await self.sock(role)

    # -- frames -------------------------------------------------------------------------
    def field_value(self, name: str, typ: Any, role: str) -> Any:
        g = self.g
        origin = typing.get_origin(typ)
        if origin in (typing.Union, types.UnionType):
            inner = [a for a in typing.get_args(typ) if a is not type(None)][0]
            return None if g.chance(0.2) else self.field_value(name, inner, role)
        if isinstance(typ, type) and issubclass(typ, enum.Enum):
            return g.pick([m.value for m in typ])
        if typ is bool:
            return True if name == "consent_teleconsultation" and g.chance(0.8) else g.chance(0.5)
        if typ is int:
            return 1 if name == "version" and g.chance(0.8) else g.number()
        if name in ("consultation_id",):
            ids = sorted(self.seen)
            return g.pick(ids) if ids and g.chance(0.8) else g.string()
        if name == "token":
            return self.access(role) if g.chance(0.5) else Tokens(g, lambda: self.access(role)).mutated()
        if name == "room_token":
            tokens = self.live.room_tokens if self.live else {}
            return g.pick(list(tokens.values())) if tokens and g.chance(0.7) else g.string()
        if name == "sdp":
            return g.pick(list(self.ctx.offers.values())) if g.chance(0.8) else g.mutate_text(
                g.pick(list(self.ctx.offers.values())))
        if name == "specialty":
            return g.pick(SPECIALTIES) if g.chance(0.8) else g.string()
        if name == "report":
            return {"reason": g.string()[:100], "findings": "f", "conclusion": "c", "prescriptions": ["p"],
                    "follow_up": ""}
        if origin is dict:
            return {str(i): g.pick(("camera", "microphone", "stethoscope", "dermatoscope", g.ident()))
                    for i in range(g.rng.randint(0, 3))}
        if name == "status":
            return "available"
        return g.ident() if g.chance(0.7) else g.string()

    def valid_request(self, role: str) -> dict[str, Any]:
        g = self.g
        spec = g.pick(list(p.REQUESTS.values()))
        if role in spec.roles and g.chance(0.3):
            pass
        elif g.chance(0.6):  # mostly requests the role may send
            spec = g.pick([s for s in p.REQUESTS.values() if role in s.roles] or [spec])
        hints = typing.get_type_hints(spec.cls)
        out: dict[str, Any] = {"type": spec.type, "id": self.connections * 100000 + self.ledger.inputs}
        for f in dataclasses.fields(spec.cls):
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if required or g.chance(0.5):
                out[f.name] = self.field_value(f.name, hints[f.name], role)
        return out

    def frame(self, role: str) -> tuple[str, str | bytes]:
        """(what it is, the frame)."""
        g = self.g
        r = g.rng.random()
        msg = self.valid_request(role)
        kind = str(msg["type"])
        if r < 0.3:
            return kind, g.to_json(msg)
        if r < 0.6:
            return f"{kind} (mutated)", g.to_json(g.mutate_object(msg, protected=("type",) if g.chance(0.8) else ()))
        if r < 0.7:
            return f"{kind} (text)", g.mutate_text(g.to_json(msg))
        if r < 0.75:
            if g.chance(0.5):
                return "deep JSON", g.deep_json()
            field = g.pick([k for k in msg if k not in ("type", "id")] or ["extra"])
            text = g.to_json({**msg, field: "@@DEEP@@"})
            return f"{kind} (deep {field})", text.replace('"@@DEEP@@"', g.deep_json())
        if r < 0.8:
            size = g.pick((60_000, 65_000, 65_600, 70_000, 200_000))
            return f"{kind} (huge)", g.to_json({**msg, "reason": "x" * size})
        if r < 0.85:
            return "binary", g.pick((g.to_json(msg).encode("utf-8", "surrogatepass"), g.random_bytes(g.rng.randint(0, 2000)), b""))
        odd = g.pick((
            lambda: g.to_json(g.json_value()),
            lambda: g.to_json([msg]),
            lambda: g.to_json({**msg, "id": g.pick((True, 1.5, None, [1], {"a": 1}, "x" * 65, 10 ** 30, -1))}),
            lambda: g.to_json({**msg, "type": g.pick(list(p.EVENTS) + [t + ".ok" for t in p.REQUESTS] +
                                                     ["error", "", "hello ", "HELLO", g.string()])}),
            lambda: g.to_json(msg)[:-1] + ', "type": "ping"}',
            lambda: '{"type": "ping", "id": NaN}',
            lambda: '{"type": "ping", "id": 1e999}',
            lambda: "",
            lambda: " " * g.rng.randint(1, 1000),
        ))
        return f"{kind} (odd)", odd()

    # -- one input ------------------------------------------------------------------------
    async def one(self) -> None:
        g = self.g
        r = g.rng.random()
        if r < 0.08:
            await self.hello_input()
            return
        if r < 0.13:
            if self.unauthenticated is None or self.unauthenticated.ws.closed:
                self.unauthenticated = await within("connect", self._open("none"))
            sock = self.unauthenticated
            where, frame = self.frame(g.pick(ROLES))
            await self.send(sock, f"before hello: {where}", frame)
            return
        role = g.pick(ROLES)
        sock = await self.sock(role)
        where, frame = self.frame(role)
        await self.send(sock, f"{role}: {where}", frame)

    async def hello_input(self) -> None:
        g = self.g
        role = g.pick(ROLES)
        sock = await within("connect", self._open(role))
        try:
            tokens = Tokens(g, lambda: self.access(role, sock.subject))
            r = g.rng.random()
            if r < 0.6:
                token: Any = tokens.mutated()
            elif r < 0.75 and self.live is not None:
                token = g.pick(list(self.live.room_tokens.values()))
            else:
                token = g.mutate_value(self.access(role, sock.subject))
            msg = {"type": "hello", "id": 1, "version": 1 if g.chance(0.8) else g.number(), "token": token}
            if g.chance(0.2):
                msg["resume"] = g.string()
            await self.send(sock, f"hello ({role} token, hostile)", g.to_json(msg))
        finally:
            await sock.close()

    async def send(self, sock: Sock, where: str, frame: str | bytes) -> None:
        ledger = self.ledger
        ledger.sent(sock.rid, where, frame if isinstance(frame, str) else f"<binary {len(frame)} bytes> "
                    f"{frame[:200]!r}")
        text = frame if isinstance(frame, str) else repr(frame)
        outcome, reply = await sock.exchange(frame, self.seen)
        ledger.count(f"outcome_{outcome}")
        if outcome == "hang":
            ledger.hang(where, text, "no reply to the frame")
            await sock.close()
        elif outcome == "abnormal":
            ledger.count("abnormal_closes")
            ledger.found("abnormal_close", where, text, str(reply))
        elif outcome == "closed":
            if reply not in EXPECTED_CLOSES:
                if reply == 1011:
                    ledger.server_error(where, text, 1011, "WebSocket closed with 1011 (internal error)")
                else:
                    ledger.found("unexpected_close", where, text, f"close code {reply}")
        else:
            code = reply.get("code")
            if code == "internal":
                ledger.server_errors += 1
                ledger.found("server_error", where, text, f"error internal: {reply.get('message')}", "internal")
            elif code:
                ledger.count(f"error_{code}")
            if reply.get("type") == "visit.request.ok":
                self.created[reply["consultation"]["id"]] = "nurse"
            elif reply.get("type") == "offer.accept.ok":
                self.created[reply["consultation"]["id"]] = "physician"

    async def run_batch(self, n: int, deadline: float) -> None:
        for _ in range(n):
            if time.monotonic() > deadline:
                return
            await self.one()

    async def between(self) -> None:
        """Cancel or end what the fuzzed sockets created (the queue would grow otherwise)."""
        created, self.created = self.created, {}
        for cid, role in created.items():
            sock = await self.sock(role)
            kind = "visit.cancel" if role == "nurse" else "consultation.end"
            await sock.exchange(json.dumps({"type": kind, "id": "cleanup", "consultation_id": cid}), self.seen)
            if role == "nurse":  # it may have been accepted meanwhile
                doctor = await self.sock("physician")
                await doctor.exchange(json.dumps({"type": "consultation.end", "id": "cleanup",
                                                  "consultation_id": cid}), self.seen)
        if len(self.seen) > 200:
            self.seen = set(sorted(self.seen)[-100:])

    async def teardown(self) -> None:
        await self.between()
        if self.live is not None:
            try:
                await self.live.end()
            except CheckFailed as exc:
                # (A fuzzed nurse of its site may have ended it, which is allowed: "conflict".)
                if '"conflict"' not in exc.detail:
                    self.ledger.found("hang" if exc.hang else "legit_failure", "consultation.end (ws live)", "",
                                      str(exc))
                    if exc.hang:
                        self.ledger.hangs += 1
            finally:
                await self.live.close()
        for sock in list(self.socks.values()) + ([self.unauthenticated] if self.unauthenticated else []):
            await sock.close()
        self.socks.clear()
        self.ledger.extra["connections"] = self.connections
