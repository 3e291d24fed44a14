"""A deployment on three "hosts" and a Redis host (bench/hostlab.py: a network namespace each, one
bridge; bench/hostdeploy.py: what runs there): signalling and the pages on A (``server.roles =
["signalling"]``), media nodes on B and C (``["media"]``), redis-server on D; Chromium (nurse,
physician) and the device agent with a simulated stethoscope on the test's own namespace, on the
bridge. The consultation is placed on B (C is started only once it is there); B is killed
(SIGKILL, by its PID); the room moves to C, and both pages decode each other's camera and the
physician hears the stethoscope again, from C."""

from __future__ import annotations

import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest

from bench.failover import STETHOSCOPE
from bench.hostdeploy import PORT, HostDeployment
from bench.hostlab import HostLab
from config.settings import AuthSettings
from core.auth import TokenService
from tests.support import CHROMIUM_ARGS, launched_chromium
from tests.web_client.conftest import Console
from tests.web_client.test_consultation import Pages, decoded_frames_grow, into_call

pytestmark = pytest.mark.timeout(300)

KEY = "hosts-test-" + "k" * 32
WHERE = """() => {
  const id = window.teleconsult.view.consultation.id;
  return {node: window.teleconsult.rooms.sfuUrl(id), media: window.teleconsult.call.media.other?.origin || null};
}"""


@pytest.fixture
def lab() -> Iterator[HostLab]:
    with HostLab.of("a", "b", "c", "d") as made:
        yield made


@pytest.fixture
async def browser(lab: HostLab) -> AsyncIterator[object]:
    """Chromium (fake camera and microphone) for pages served by A over plain HTTP at a LAN address:
    a camera needs a secure context, which a real deployment gets from TLS (``server.tls_cert``)
    and this test from Chromium's switch that treats A's origin as one."""
    async with launched_chromium([*CHROMIUM_ARGS, "--unsafely-treat-insecure-origin-as-secure="
                                  + lab.host("a").url(PORT)]) as launched:
        yield launched


async def stethoscope_grows(physician) -> None:  # type: ignore[no-untyped-def]
    """The stethoscope's packets reach the physician's page (and keep coming)."""
    await physician.wait_for_function(f"({STETHOSCOPE})().then((n) => n > 0)", timeout=30000, polling=250)
    first = await physician.evaluate(STETHOSCOPE)
    await physician.wait_for_function(f"({STETHOSCOPE})().then((n) => n > {first} + 20)", timeout=15000,
                                      polling=250)


def connect_src(url: str) -> list[str]:
    with urllib.request.urlopen(url, timeout=10) as answer:
        policy = answer.headers["Content-Security-Policy"]
    return next(d for d in policy.split("; ") if d.startswith("connect-src")).split()[1:]


async def test_a_consultation_on_b_goes_on_on_c_when_b_is_killed(tmp_path: Path, lab: HostLab, browser) -> None:  # type: ignore[no-untyped-def]
    deployment = HostDeployment(lab, tmp_path, KEY)
    tokens = TokenService(AuthSettings(signing_key=KEY), str(tmp_path / "tokens"))
    console = Console()
    try:
        try:
            deployment.start_redis()
            a, b = deployment.serve("a"), deployment.serve("b")
        except RuntimeError as exc:
            pytest.fail(str(exc))
        assert (a.url, b.url) == (lab.host("a").url(PORT), lab.host("b").url(PORT))
        # A's pages may reach both media nodes; a media-only node serves no pages.
        assert {b.url, lab.host("c").url(PORT)} <= set(connect_src(f"{a.url}/nurse"))
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"{b.url}/nurse", timeout=10)
        agent = deployment.start_agent(tokens.issue_access("agent", "agent-cabin-demo", site="cabin-demo"))

        nurse, physician = await into_call(Pages(a.url, tokens), browser, console, timeout_ms=45000)
        for page in (physician, nurse):
            await decoded_frames_grow(page)
            # On B, the only media node: the media went on B's socket, another host than the pages'.
            assert await page.evaluate(WHERE) == {"node": b.url, "media": b.url}
        await stethoscope_grows(physician)

        # C joins the deployment; B dies with the consultation on it.
        c = deployment.serve("c")
        for page in (physician, nurse):
            assert await page.evaluate("document.querySelector('#call').dataset.moved || '0'") == "0"
        os.kill(b.process.pid, signal.SIGKILL)  # ip netns exec execs: the PID is serve's
        killed = time.monotonic()
        assert b.process.wait(10) == -signal.SIGKILL
        for page in (physician, nurse):
            await page.wait_for_function("document.querySelector('#call').dataset.moved === '1'", timeout=30000)
        for page in (physician, nurse):
            await decoded_frames_grow(page)
            await page.wait_for_function(f"({WHERE})().media === '{c.url}'", timeout=15000)
            assert await page.evaluate(WHERE) == {"node": c.url, "media": c.url}
        await stethoscope_grows(physician)
        print(f"video both ways and the stethoscope again {time.monotonic() - killed:.1f} s after B was killed")
        assert agent.poll() is None
        assert not console.errors, console.text()
    finally:
        deployment.stop()
