"""A live coturn on loopback: the credentials the server hands out open a relay that carries data.

coturn runs as a subprocess of this test (``use-auth-secret`` with the
server's ``ice.turn_secret``); a relay-only aiortc peer takes its ICE servers
from the hello reply and ``GET /api/ice-servers`` and reaches the network
check (``POST /api/echo``) through the relay. A turnserver that cannot start
fails the test.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCIceServer, RTCSessionDescription
from aiortc.rtcconfiguration import RTCIceTransportPolicy

from media.aioice_internals import nominated_pairs
from media.aiortc_internals import ice_connection
from media.ice import ScopedPeerConnection
from signalling.turn import turn_credentials
from tests.signalling.client import SigClient
from tests.signalling.conftest import sig_settings
from tests.support import free_port, start_server, stop_process, wait_for

TURNSERVER = "/usr/bin/turnserver"
SECRET = "turn-secret-" + secrets.token_hex(8)


@dataclass
class Coturn:
    port: int
    relay_ports: range
    process: subprocess.Popen[bytes]
    log: Path


def _stun_answers(port: int) -> bool:
    """A STUN Binding request over UDP gets a response (coturn is listening)."""
    request = struct.pack("!HHI", 0x0001, 0, 0x2112A442) + os.urandom(12)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        try:
            s.sendto(request, ("127.0.0.1", port))
            data, _ = s.recvfrom(2048)
        except OSError:
            return False
    return len(data) >= 20 and data[8:20] == request[8:20]


def _free_udp_range(size: int) -> tuple[int, int]:
    """A run of ``size`` UDP ports free right now (coturn's relay range)."""
    for _ in range(50):
        start = 20000 + secrets.randbelow(30000)
        socks = []
        try:
            for port in range(start, start + size):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return start, start + size - 1
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no free UDP port range for the relay")


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[Coturn]:
    if not os.access(TURNSERVER, os.X_OK) and shutil.which("turnserver") is None:
        pytest.fail(f"{TURNSERVER} is missing (the test command installs coturn)")
    tmp = tmp_path / "coturn"
    tmp.mkdir()
    (tmp / "turnserver.conf").write_text("")
    port = free_port()
    low, high = _free_udp_range(20)
    log = tmp / "turn.log"
    process = subprocess.Popen(
        [TURNSERVER, "-c", str(tmp / "turnserver.conf"), "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1",
         f"--listening-port={port}", f"--min-port={low}", f"--max-port={high}", "--allow-loopback-peers",
         "--use-auth-secret", f"--static-auth-secret={SECRET}", "--realm=teleconsult", "--no-cli", "--no-tls",
         "--no-dtls", "--no-tcp", "--fingerprint", "--no-stdout-log", f"--log-file={log}", "--simple-log",
         f"--pidfile={tmp / 'turn.pid'}", f"--userdb={tmp / 'turndb'}", "--no-software-attribute"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not _stun_answers(port):
            if process.poll() is not None:
                pytest.fail(f"turnserver exited at start ({process.returncode}): {_tail(log)}")
            if time.monotonic() > deadline:
                pytest.fail(f"turnserver did not answer STUN within 10 s: {_tail(log)}")
            time.sleep(0.05)
        yield Coturn(port, range(low, high + 1), process, log)
    finally:
        stop_process(process)


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-800:] if log.exists() else "(no log)"


def _relay_pc(servers: list[dict[str, Any]]) -> ScopedPeerConnection:
    ice = [RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
           for s in servers]
    return ScopedPeerConnection(configuration=RTCConfiguration(
        iceServers=ice, iceTransportPolicy=RTCIceTransportPolicy.RELAY))


async def test_relay_only_peer_reaches_the_server_through_coturn(tmp_path: Path, coturn: Coturn) -> None:
    turn_url = f"turn:127.0.0.1:{coturn.port}?transport=udp"
    settings = sig_settings(tmp_path, "memory", None).replace(
        ice={"turn_urls": [turn_url], "turn_secret": SECRET, "turn_ttl_s": 600})
    sig = await start_server(settings)
    token = sig.tokens.issue_access("nurse", "nurse-1", site="cabin-demo")
    n = await SigClient.connect(sig.ws_url, token)
    pc: ScopedPeerConnection | None = None
    try:
        from_hello = n.hello["ice_servers"]
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
            async with http.get(f"{sig.url}/api/ice-servers") as r:
                assert r.status == 200
                from_rest = (await r.json())["ice_servers"]
        assert [s["urls"] for s in from_hello] == [s["urls"] for s in from_rest] == [[turn_url]]
        assert from_rest[0]["username"].endswith(":nurse-1") and from_rest[0]["credential"]

        pc = _relay_pc(from_rest)
        channel = pc.createDataChannel("check")
        inbox: list[str] = []
        channel.on("message", lambda m: inbox.append(m))
        await pc.setLocalDescription(await pc.createOffer())
        offer = pc.localDescription.sdp
        candidates = [line for line in offer.splitlines() if line.startswith("a=candidate:")]
        assert candidates and all(" typ relay" in c for c in candidates), candidates
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
            async with http.post(f"{sig.url}/api/echo", data=offer,
                                 headers={"Content-Type": "application/sdp"}) as r:
                assert r.status == 201, await r.text()
                answer = await r.text()
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await wait_for(lambda: channel.readyState == "open", 20, what="data channel open through the relay")
        for i in range(5):
            channel.send(f"ping{i}")
        await wait_for(lambda: len(inbox) == 5, 10, what="echoes through the relay")
        assert inbox == [f"pong{i}" for i in range(5)]
        # The nominated pair's local side is the relayed candidate coturn allocated.
        assert pc.sctp is not None
        pair = nominated_pairs(ice_connection(pc.sctp.transport.transport))[1]
        assert pair.local_candidate.type == "relay"
        assert pair.local_candidate.port in coturn.relay_ports
    finally:
        if pc is not None:
            await pc.close()
        await n.close()
        await sig.server.close()


async def test_wrong_secret_gets_no_relay(tmp_path: Path, coturn: Coturn) -> None:
    """Credentials signed with another secret are refused by coturn: no relayed candidate."""

    username, password = turn_credentials("not-the-secret", "intruder", 600, time.time())
    pc = _relay_pc([{"urls": [f"turn:127.0.0.1:{coturn.port}?transport=udp"], "username": username,
                     "credential": password}])
    try:
        pc.createDataChannel("check")
        await pc.setLocalDescription(await pc.createOffer())
        assert "typ relay" not in pc.localDescription.sdp
    finally:
        await pc.close()
