"""``teleconsult demo``: the server and a simulated cabin in one process, with sign-in links.

::

    teleconsult [--config FILE] demo [--host IP] [--port N] [--media-address IP]

Starts the whole service (the configured store: the in-memory one by default) and a
:class:`devices.agent.DeviceAgent` with simulated stethoscope, dermatoscope, otoscope
and vitals for site ``cabin-demo``, signed in with a site access token (role
``agent``): it joins each consultation of that site as it starts. Prints a sign-in
link for the site's nurse and one for the physician ``dr-demo`` (specialties from
the directory), then ``device agent connected`` once the agent's socket is up.

Media: without ``--media-address`` the SFU binds every address (loopback included)
and accepts candidates from any network, so that a browser on this machine or the LAN
connects without flags. ``--media-address 127.0.0.1`` keeps media on loopback: then a
local Chromium needs ``--allow-loopback-in-peer-connection``.

First SIGINT/SIGTERM: the agent leaves (its WHIP sessions are deleted), the server
drains (``server.drain_timeout_s``); a second signal stops at once. Exit status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from typing import Any

import aiohttp

from config.settings import Settings
from core import appkeys, logs
from core.vocabulary import DEVICES
from devices.agent import AgentConfig, DeviceAgent
from signalling.appkeys import SIGNALLING
from teleconsult.app import create_app
from teleconsult.server import PRIVATE_UMASK, listen

logger = logging.getLogger(__name__)

SITE = "cabin-demo"
NURSE = "nurse-demo"
PHYSICIAN = "dr-demo"
AGENT = "agent-cabin-demo"
LINK_TTL_S = 12 * 3600
AGENT_STOP_TIMEOUT_S = 15.0


def add_demo_command(sub: Any) -> None:
    demo = sub.add_parser("demo", help="run the server with a simulated cabin and print sign-in links")
    demo.add_argument("--host", help="HTTP bind address (default 127.0.0.1)")
    demo.add_argument("--port", type=int, help="HTTP port (default 8080; 0 picks a free one)")
    demo.add_argument("--media-address", metavar="IP",
                      help="bind and announce WebRTC media on this address only (default: every address)")
    demo.set_defaults(func=cmd_demo)


def demo_settings(settings: Settings, host: str | None, port: int | None, media_address: str | None) -> Settings:
    server: dict[str, Any] = {}
    if host:
        server["host"] = host
    if port is not None:
        server["port"] = port
    if media_address:
        media: dict[str, Any] = {"listen_ip": media_address, "announced_ip": media_address}
        if media_address.startswith("127."):
            media["allowed_remote_networks"] = ["127.0.0.0/8"]
    else:
        # Every address, loopback included, and any remote network: a browser on this
        # machine offers its LAN address (or an mDNS name), not loopback.
        media = {"listen_ip": "0.0.0.0", "announced_ip": "", "allowed_remote_networks": ["0.0.0.0/0", "::/0"]}
    return settings.replace(server=server, media=media)


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    settings = demo_settings(settings, args.host, args.port, args.media_address)
    logs.configure(settings.server.log_format, settings.server.log_level)
    return asyncio.run(run_demo(settings))


async def run_demo(settings: Settings) -> int:
    os.umask(PRIVATE_UMASK)  # as serve: the demo's data_dir holds health data too
    app = create_app(settings)
    lifecycle = app[appkeys.LIFECYCLE]
    listening = await listen(app, settings)
    runner, base, local = listening.runner, listening.base, listening.local
    tls = bool(settings.server.tls_cert)
    agent: DeviceAgent | None = None
    agent_task: asyncio.Task[None] | None = None
    http: aiohttp.ClientSession | None = None
    loop = asyncio.get_running_loop()
    try:
        tokens = app[appkeys.TOKENS]
        directory = app[SIGNALLING].directory
        clinician = directory.clinicians.get(PHYSICIAN)
        specialties = clinician.specialties if clinician is not None else ("general",)
        nurse_token = tokens.issue_access("nurse", NURSE, site=SITE, name="Demo nurse", ttl=LINK_TTL_S)
        physician_token = tokens.issue_access("physician", PHYSICIAN, specialties=specialties, name="Dr Demo",
                                              ttl=LINK_TTL_S)
        agent_token = tokens.issue_access("agent", AGENT, site=SITE, ttl=LINK_TTL_S)

        # The agent talks to this process over loopback; with a self-signed certificate
        # it must not verify (it is the same process), elsewhere it always does.
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False) if tls else None)
        config = AgentConfig(server=local, devices=DEVICES, simulate=True, site_token=agent_token)
        agent = DeviceAgent(settings, config, http=http)
        agent_task = asyncio.create_task(agent.run(), name="demo-agent")

        def on_signal() -> None:
            if agent is not None:
                agent.stop()
            lifecycle.signal()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal)
        print(f"teleconsult demo on {base}", flush=True)
        print(f"  nurse ({SITE}):  {base}/nurse#token={nurse_token}", flush=True)
        print(f"  physician ({PHYSICIAN}): {base}/physician#token={physician_token}", flush=True)
        print(f"  simulated cabin: {', '.join(DEVICES)} (site {SITE})", flush=True)
        media_ip = settings.effective_media.listen_ip
        print(f"  media on {media_ip}" + (" (loopback: Chromium needs --allow-loopback-in-peer-connection)"
                                          if media_ip.startswith("127.") else ""), flush=True)
        announce = asyncio.create_task(_announce_agent(agent))
        while lifecycle.accepting and not agent_task.done():
            await asyncio.wait({agent_task}, timeout=0.2)
        announce.cancel()
        if agent_task.done() and lifecycle.accepting:
            # The agent died by itself (a bug, or its token refused): say so and stop.
            logger.error("the demo agent stopped unexpectedly")
            lifecycle.signal()
        agent.stop()
        done, _ = await asyncio.wait({agent_task}, timeout=AGENT_STOP_TIMEOUT_S)
        if not done:
            agent_task.cancel()
        elif not agent_task.cancelled() and agent_task.exception() is not None:
            logger.error("the demo agent failed", exc_info=agent_task.exception())
        await lifecycle.wait_drained(settings.server.drain_timeout_s)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if agent_task is not None and not agent_task.done():
            agent_task.cancel()
        if http is not None:
            await http.close()
        await runner.cleanup()
    logger.info("demo stopped")
    return 0


async def _announce_agent(agent: Any) -> None:
    await agent.connected.wait()
    print(f"  device agent connected (site {SITE})", flush=True)
