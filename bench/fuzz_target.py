"""The server under fuzz, what it logs, and the legitimate client that checks it between batches.

* :class:`Target`: ``teleconsult serve`` in a child process on loopback (temporary data
  dir, JSON logs at WARNING to a file), stopped by its PID; its RSS from ``/proc``; the
  error records with a traceback it logged since the last look (:meth:`Target.scan_log`).
* :class:`Ledger`: one surface's figures (the contract keys) and its distinct failures,
  each with the input that caused it; tracebacks are attributed to inputs by the
  ``X-Request-Id`` each input's HTTP request (or socket) carried, else by time.
* :func:`open_consultation` / :func:`legit_round`: a real consultation through the
  signalling (nurse request, physician accept, room tokens), every step within
  :data:`HANG_S`; the check between batches is ``/healthz`` plus one such round, ended.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.rtc import ServerProcess, rss_mb, teleconsult_server
from bench.signalling import Client, connect

HANG_S = 5.0
"""An input or a check not answered within this is a hang."""
INPUT_CHARS = 1500
"""How much of an input a finding keeps (the input itself, not a summary)."""


# -- the server ------------------------------------------------------------------------
@dataclass(frozen=True)
class LoggedError:
    ts: float
    level: str
    logger: str
    message: str
    request_id: str
    traceback: str

    def _parts(self) -> tuple[str, str]:
        """(the exception line, the innermost frame) of the traceback."""
        lines = [ln for ln in self.traceback.splitlines() if ln.strip()]
        frames = [i for i, ln in enumerate(lines) if ln.lstrip().startswith("File ")]
        start = frames[-1] + 1 if frames else 0
        # The exception line is the first one after the last frame that is not indented
        # (the frame's source line and its carets are).
        header = next((ln for ln in lines[start:] if not ln.startswith((" ", "\t"))), lines[-1] if lines else "")
        return header.strip()[:300], lines[frames[-1]].strip() if frames else ""

    @property
    def summary(self) -> str:
        """The exception line and the innermost frame of the traceback."""
        header, frame = self._parts()
        return f"{header} @ {frame}" if frame else header

    @property
    def signature(self) -> str:
        """What tells two tracebacks apart: the exception's type and the innermost frame."""
        header, frame = self._parts()
        return f"{header.split(':')[0]} @ {frame}"


class Target:
    """``teleconsult serve`` under fuzz (a child process, loopback only)."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.env = {"TELECONSULT_SERVER__LOG_FORMAT": "json", "TELECONSULT_SERVER__LOG_LEVEL": "WARNING",
                    "TELECONSULT_SIGNALLING__OFFER_TIMEOUT_S": "20", **(env or {})}
        self.server: ServerProcess | None = None
        self._offset = 0
        self._partial = b""
        self.starts = 0

    def start(self) -> str:
        self.server = teleconsult_server(env=self.env).start()
        self._offset = 0
        self._partial = b""
        self.starts += 1
        return self.server.url

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    @property
    def pid(self) -> int:
        assert self.server is not None
        return self.server.pid

    def alive(self) -> bool:
        return self.server is not None and self.server.proc is not None and self.server.proc.poll() is None

    def exit_code(self) -> int | None:
        if self.server is None or self.server.proc is None:
            return None
        return self.server.proc.poll()

    def rss_mb(self) -> float:
        return rss_mb(self.pid) if self.alive() else float("nan")

    def log_bytes(self) -> int:
        try:
            return self.log_path.stat().st_size
        except (OSError, AssertionError):
            return 0

    @property
    def log_path(self) -> Path:
        assert self.server is not None
        return self.server.log

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_bytes()[-chars:].decode(errors="replace")
        except (OSError, AssertionError):
            return ""

    def scan_log(self) -> tuple[list[LoggedError], list[LoggedError]]:
        """(error records with a traceback, warning records with one) logged since the last call.
        Lines that are not JSON (a traceback printed by something that bypassed logging) count
        as an error with a traceback when they hold one."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except (OSError, AssertionError):
            return [], []
        self._offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        errors: list[LoggedError] = []
        warnings: list[LoggedError] = []
        raw: list[str] = []

        def flush_raw() -> None:
            text = "\n".join(raw)
            if "Traceback" in text:
                errors.append(LoggedError(time.time(), "raw", "stderr", text.splitlines()[0][:200], "", text))
            raw.clear()

        for line in lines:
            text = line.decode(errors="replace")
            try:
                record = json.loads(text)
            except ValueError:
                record = None
            if not isinstance(record, dict):
                raw.append(text)
                continue
            flush_raw()
            exc = record.get("exc")
            if not exc:
                continue
            logged = LoggedError(float(record.get("ts", time.time())), str(record.get("level", "")),
                                 str(record.get("logger", "")), str(record.get("msg", ""))[:300],
                                 str(record.get("request_id", "")), str(exc))
            (errors if logged.level in ("error", "critical") else warnings).append(logged)
        flush_raw()
        return errors, warnings

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


# -- figures and findings ------------------------------------------------------------------
@dataclass
class Finding:
    kind: str
    """server_error, hang, unhandled_exception, crash, legit_failure, abnormal_close, media_stall, room_left_open."""
    where: str
    """The route, message type or datagram class."""
    input: str
    detail: str
    count: int = 1

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "where": self.where, "count": self.count, "input": self.input,
                "detail": self.detail}


@dataclass
class Sent:
    """One input, kept until its batch's log was read (to attribute a traceback to it)."""

    ts: float
    request_id: str
    where: str
    text: str


@dataclass
class Ledger:
    """One surface's figures and findings."""

    name: str
    inputs: int = 0
    crashes: int = 0
    server_errors: int = 0
    unhandled_exceptions: int = 0
    hangs: int = 0
    rss_growth_mb: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    findings: dict[str, Finding] = field(default_factory=dict)
    batch: list[Sent] = field(default_factory=list)
    on_finding: Any = None
    """Called with each new distinct finding (the findings file)."""

    def count(self, key: str, n: int = 1) -> None:
        self.extra[key] = self.extra.get(key, 0) + n

    def sent(self, request_id: str, where: str, text: str) -> None:
        self.inputs += 1
        self.batch.append(Sent(time.time(), request_id, where, text[:INPUT_CHARS]))

    def found(self, kind: str, where: str, input_text: str, detail: str, signature: str = "",
              by_where: bool = True) -> None:
        """File a failure; the same kind, place (unless ``by_where`` is False) and signature
        (the detail without numbers, unless given) is one finding, counted."""
        key = f"{kind}|{where if by_where else ''}|{signature or _signature(detail)}"
        existing = self.findings.get(key)
        if existing is not None:
            existing.count += 1
            return
        finding = self.findings[key] = Finding(kind, where, input_text[:INPUT_CHARS], detail[:4000])
        if self.on_finding is not None:
            self.on_finding(self.name, finding)

    def server_error(self, where: str, input_text: str, status: int, body: str) -> None:
        self.server_errors += 1
        self.found("server_error", where, input_text, f"HTTP {status}: {body[:600]}", str(status))

    def hang(self, where: str, input_text: str, what: str) -> None:
        self.hangs += 1
        self.found("hang", where, input_text, f"no answer within {HANG_S:g} s: {what}")

    def attribute(self, errors: list[LoggedError], warnings: list[LoggedError]) -> None:
        """Count the batch's logged tracebacks and file each under the input that caused it."""
        for err in errors:
            self.unhandled_exceptions += 1
            sent = self._input_for(err)
            where = sent.where if sent else "(no input)"
            # One finding per traceback (exception and innermost frame), wherever it came from.
            self.found("unhandled_exception", where, sent.text if sent else "",
                       f"{err.logger}: {err.message}\n{err.summary}\n--- traceback (tail) ---\n"
                       f"{err.traceback[-1500:]}", err.signature, by_where=False)
        if warnings:
            self.count("warning_tracebacks", len(warnings))
            for w in warnings:
                sent = self._input_for(w)
                self.found("warning_traceback", sent.where if sent else "(no input)", sent.text if sent else "",
                           f"{w.logger}: {w.message}\n{w.summary}", w.signature, by_where=False)
        self.batch.clear()

    def _input_for(self, err: LoggedError) -> Sent | None:
        """The input that caused a logged traceback: the last one sent on its request id (an
        HTTP request, a socket); without one (datagrams), the last one sent in the second
        before it whose kind the traceback names (a STUN parser failing: a STUN-like input),
        else the last one sent before it."""
        if err.request_id:
            for sent in reversed(self.batch):
                if sent.request_id == err.request_id and sent.ts <= err.ts + 0.5:
                    return sent
            matching = [s for s in self.batch if s.request_id == err.request_id]
            if matching:
                return matching[-1]
        recent = [s for s in self.batch if err.ts - 1.0 <= s.ts <= err.ts]
        # The exception and its frame first: a chained traceback names other places too.
        for text in (err.summary.lower(), err.traceback.lower()):
            for hint, kinds in TRACEBACK_HINTS:
                if hint in text:
                    named = [s for s in recent if any(k in (s.where + " " + s.text[:400]).lower() for k in kinds)]
                    if named:
                        return named[-1]
        before = [s for s in self.batch if s.ts <= err.ts]
        return before[-1] if before else (self.batch[-1] if self.batch else None)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"inputs": self.inputs, "crashes": self.crashes, "server_errors": self.server_errors,
                               "unhandled_exceptions": self.unhandled_exceptions, "hangs": self.hangs,
                               "rss_growth_mb": self.rss_growth_mb}
        out.update(self.extra)
        out["findings"] = [f.to_json() for f in self.findings.values()]
        return out


TRACEBACK_HINTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("stun", ("stun",)),
    ("unprotect_rtcp", ("rtcp",)),
    ("too long", ("random bytes", "srtp")),
    ("unprotect", ("srtp", "rtp-like")),
    ("ssl", ("dtls",)),
    ("dtls", ("dtls",)),
    ("indexerror", ("empty", "short")),
    ("8190 bytes", ("over 8190 bytes",)),
    ("invalid method", ("fuzz ", "propfind ", "trace ")),
)
"""Words of a traceback -> kinds of input (their ``where``) it points at, in this order."""


def _signature(detail: str) -> str:
    """What tells two failures apart: the text without numbers and ids."""
    return re.sub(r"[0-9a-f]{6,}|\d+", "#", detail.splitlines()[0] if detail else "")[:160]


# -- the legitimate client -----------------------------------------------------------------
class CheckFailed(Exception):
    def __init__(self, step: str, detail: str, hang: bool = False) -> None:
        super().__init__(f"{step}: {detail}")
        self.step = step
        self.detail = detail
        self.hang = hang


async def within(step: str, coro: Any, timeout: float = HANG_S) -> Any:
    try:
        return await asyncio.wait_for(coro, timeout)
    except asyncio.TimeoutError:
        raise CheckFailed(step, f"no answer within {timeout:g} s", hang=True) from None
    except (aiohttp.ClientError, OSError, RuntimeError) as exc:
        raise CheckFailed(step, f"{type(exc).__name__}: {exc}"[:300]) from None


async def healthz(http: aiohttp.ClientSession, base: str) -> None:
    async def get() -> None:
        async with http.get(base + "/healthz") as r:
            if r.status != 200:
                raise CheckFailed("healthz", f"HTTP {r.status}")
    await within("healthz", get())


async def metrics(http: aiohttp.ClientSession, base: str) -> dict[str, float]:
    """The server's unlabelled gauges and counters from ``/metrics`` (name -> value)."""
    async def get() -> str:
        async with http.get(base + "/metrics") as r:
            return await r.text()
    text = await within("metrics", get())
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*) ([-0-9.e+naif]+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


async def register(http: aiohttp.ClientSession, base: str, admin_token: str, tag: str) -> None:
    """The tag's site and clinician in the directory (again: a fuzzed admin may have replaced it)."""
    for kind, ident, body in (("sites", f"fz-{tag}-site", {"name": f"fuzz {tag}", "kind": "cabin"}),
                              ("clinicians", f"fz-{tag}-dr", {"name": f"Dr fuzz {tag}",
                                                              "specialties": [f"fz-{tag}"]})):
        async def put() -> None:
            async with http.put(f"{base}/api/directory/{kind}/{ident}", json=body,
                                headers={"Authorization": f"Bearer {admin_token}"}) as r:
                if r.status != 200:
                    raise CheckFailed(f"directory {kind}", f"HTTP {r.status}: {(await r.text())[:200]}")
        await within(f"directory {kind}", put())


@dataclass
class LiveConsultation:
    """An active consultation opened through the signalling, with its three seats' room tokens."""

    id: str
    room: str
    room_tokens: dict[str, str]
    """nurse, physician, agent -> room token."""
    nurse: Client
    physician: Client
    agent: Client
    counter: list[int]

    async def end(self) -> None:
        reply = await within("consultation.end", self.physician.call("consultation.end", consultation_id=self.id))
        if reply.get("type") != "consultation.end.ok":
            raise CheckFailed("consultation.end", json.dumps(reply)[:300])

    async def close(self) -> None:
        for client in (self.nurse, self.physician, self.agent):
            client.reader.cancel()
            try:
                await asyncio.wait_for(client.ws.close(), HANG_S)
            except (asyncio.TimeoutError, aiohttp.ClientError, OSError):
                pass


async def open_consultation(http: aiohttp.ClientSession, base: str, tokens: Any, tag: str,
                            consent_recording: bool = False) -> LiveConsultation:
    """Nurse of site ``fz-{tag}-site`` requests specialty ``fz-{tag}``, physician ``fz-{tag}-dr``
    accepts: an active consultation. Every step within :data:`HANG_S` (else CheckFailed)."""
    ws_url = base.replace("http", "ws", 1) + "/ws"
    await register(http, base, tokens.issue_access("admin", "fz-admin"), tag)
    counter = [0]
    site = f"fz-{tag}-site"
    nurse = await within("hello nurse", connect(http, ws_url, tokens.issue_access("nurse", f"fz-{tag}-nurse",
                                                                                   site=site), counter))
    agent = await within("hello agent", connect(http, ws_url, tokens.issue_access("agent", f"fz-{tag}-agent",
                                                                                   site=site), counter))
    doctor = await within("hello physician", connect(http, ws_url, tokens.issue_access(
        "physician", f"fz-{tag}-dr", specialties=[f"fz-{tag}"]), counter))
    live = LiveConsultation("", "", {}, nurse, doctor, agent, counter)
    try:
        reply = await within("presence.set", doctor.call("presence.set", status="available"))
        if reply["type"] != "presence.set.ok":
            raise CheckFailed("presence.set", json.dumps(reply)[:300])
        reply = await within("visit.request", nurse.call(
            "visit.request", patient_ref=f"fz-{tag}", reason="fuzz check", specialty=f"fz-{tag}",
            priority="routine", consent_teleconsultation=True, consent_recording=consent_recording))
        if reply["type"] != "visit.request.ok":
            raise CheckFailed("visit.request", json.dumps(reply)[:300])
        cid = reply["consultation"]["id"]
        offer = await within("offer.received", doctor.next_event("offer.received", HANG_S + 1))
        if offer["consultation"]["id"] != cid:
            raise CheckFailed("offer.received", f"offered {offer['consultation']['id']}, asked {cid}")
        accepted = await within("offer.accept", doctor.call("offer.accept", consultation_id=cid))
        if accepted["type"] != "offer.accept.ok":
            raise CheckFailed("offer.accept", json.dumps(accepted)[:300])
        started_nurse = await within("consultation.started (nurse)",
                                     nurse.next_event("consultation.started", HANG_S + 1))
        started_agent = await within("consultation.started (agent)",
                                     agent.next_event("consultation.started", HANG_S + 1))
    except BaseException:
        await live.close()
        raise
    live.id, live.room = cid, accepted["room"]
    live.room_tokens = {"physician": accepted["room_token"], "nurse": started_nurse["room_token"],
                        "agent": started_agent["room_token"]}
    return live


async def legit_round(http: aiohttp.ClientSession, base: str, tokens: Any, tag: str = "check") -> None:
    """One whole consultation (opened, ended) at site ``fz-{tag}-site``, each step within :data:`HANG_S`."""
    live = await open_consultation(http, base, tokens, tag)
    try:
        await live.end()
    finally:
        await live.close()


# -- what every surface gets ---------------------------------------------------------------
@dataclass
class Context:
    """What a surface works with: the server's URL, an HTTP session, token issuing with the
    server's key, the seeded grammar and the surface's ledger."""

    base: str
    http: aiohttp.ClientSession
    tokens: Any
    """A :class:`core.auth.TokenService` with the server's key."""
    grammar: Any
    """The seeded :class:`bench.fuzz_grammar.Grammar`."""
    ledger: Ledger
    offers: dict[str, str]
    """Real SDP offers by template name (:func:`bench.fuzz_sdp.offer_templates`)."""

    @property
    def ws_url(self) -> str:
        return self.base.replace("http", "ws", 1) + "/ws"


class Surface:
    """One fuzzed surface: set up against a live server, run batches of inputs, check what
    only it can check between batches, tear down. Each method is bounded in time."""

    name = ""
    batch_size = 100

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.g = ctx.grammar
        self.ledger = ctx.ledger

    async def setup(self) -> None:
        """Before the first batch (and again after a crash, on the restarted server)."""

    async def run_batch(self, n: int, deadline: float) -> None:
        raise NotImplementedError

    async def between(self) -> None:
        """After each batch, before the common check (healthz and a legitimate round)."""

    async def teardown(self) -> None:
        """Close what the surface opened; what it leaves behind shows in the figures."""
