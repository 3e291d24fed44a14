"""Helpers shared by tests: free ports, settings for loopback, process control, polling."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from email import policy as email_policy
from email import message_from_bytes
from email.message import EmailMessage
from pathlib import Path
from typing import Any, AsyncIterator, Sequence

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from config.settings import Settings, load_settings
from core import appkeys
from core.auth import TokenService
from signalling.appkeys import SIGNALLING
from teleconsult.app import create_app

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("TELECONSULT_ARTIFACTS", ROOT / "artifacts"))
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
    # Real addresses instead of mDNS names, which nothing here can resolve.
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]


@contextlib.asynccontextmanager
async def launched_chromium(args: Sequence[str] = CHROMIUM_ARGS) -> AsyncIterator[Any]:
    """Headless system Chromium with ``args``, driven by Playwright; the test fails (never skips)
    where it is missing."""
    from playwright.async_api import async_playwright

    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing (the test command installs it: scripts/test.sh)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=list(args))
        try:
            yield browser
        finally:
            await browser.close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def loopback_settings(data_dir: Path, **sections: dict[str, object]) -> Settings:
    """Loopback settings for tests: media on 127.0.0.1, nothing outside it accepted."""
    base = load_settings(None, env={})
    changes: dict[str, dict[str, object]] = {
        "server": {"host": "127.0.0.1", "port": 0, "data_dir": str(data_dir), "log_level": "INFO"},
        "media": {"listen_ip": "127.0.0.1", "announced_ip": "", "allowed_remote_networks": ["127.0.0.0/8"]},
    }
    for name, values in sections.items():
        changes.setdefault(name, {}).update(values)
    return base.replace(**changes)





@dataclass
class RunningServer:
    url: str
    app: web.Application
    settings: Settings
    tokens: TokenService
    server: TestServer

    @property
    def ws_url(self) -> str:
        return self.url.replace("http", "ws", 1) + "/ws"


async def start_server(settings: Settings) -> RunningServer:
    app = create_app(settings)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    signalling = app.get(SIGNALLING)
    if signalling is not None:  # as `teleconsult serve` does: the SFU node is at the bound URL
        signalling.node_url = url
        await signalling.heartbeat_node()
    return RunningServer(url=url, app=app, settings=settings, tokens=app[appkeys.TOKENS], server=server)


@dataclass
class RedisProcess:
    url: str
    port: int
    process: subprocess.Popen[bytes]


def spawn_redis(tmp: Path) -> RedisProcess:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (the test command installs it: scripts/test.sh)")
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp), "--daemonize", "no", "--logfile", str(tmp / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"redis-server exited at start: {(tmp / 'redis.log').read_text()[-500:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return RedisProcess(url=f"redis://127.0.0.1:{port}/0", port=port, process=process)
        except OSError:
            time.sleep(0.05)
    process.kill()
    pytest.fail("redis-server did not answer within 10 s")


def stop_process(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


async def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll ``predicate`` (sync or async) until truthy; fail with ``what`` after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the ``teleconsult`` command line of this checkout as a subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "teleconsult", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=ROOT)



@dataclass
class SmtpSink:
    """A real SMTP server (aiosmtpd) on 127.0.0.1, an ephemeral port, in the test's own loop: it keeps
    every message that arrives. With ``logins`` it offers AUTH (PLAIN, LOGIN) over plain loopback and
    accepts only those user/password pairs."""

    logins: dict[str, str] = field(default_factory=dict)
    messages: list[EmailMessage] = field(default_factory=list)
    envelopes: list[Envelope] = field(default_factory=list)
    authenticated: list[str] = field(default_factory=list)
    port: int = 0
    _server: asyncio.AbstractServer | None = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    async def start(self) -> SmtpSink:
        loop = asyncio.get_running_loop()
        options: dict[str, Any] = {}
        if self.logins:
            options = {"authenticator": self._authenticate, "auth_require_tls": False}
        self._server = await loop.create_server(
            lambda: SMTP(self, hostname="localhost", loop=loop, **options), "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def _authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                      data: Any) -> AuthResult:
        login = data.login.decode() if isinstance(data, LoginPassword) else ""
        ok = isinstance(data, LoginPassword) and self.logins.get(login) == data.password.decode()
        if ok:
            self.authenticated.append(login)
        return AuthResult(success=ok)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        raw = (envelope.original_content or b"").replace(b"\r\n", b"\n")  # as a mail client reads it
        self.messages.append(message_from_bytes(raw, _class=EmailMessage, policy=email_policy.default))
        return "250 OK"

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[EmailMessage]:
        await wait_for(lambda: len(self.messages) >= count, timeout, what=f"{count} message(s) at the SMTP server")
        return self.messages

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
