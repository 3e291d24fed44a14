"""A teleconsult server in a subprocess of the test (so that it can really die: SIGKILL, SIGTERM)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from core.keyring import MasterKey
from tests.support import ROOT

SIGNING_KEY = "k" * 40
"""The key of ``tests.signalling.conftest.sig_settings``: tokens of in-process apps work here too."""


@dataclass
class ServerProcess:
    url: str
    process: subprocess.Popen[str]

    @property
    def ws_url(self) -> str:
        return self.url.replace("http", "ws", 1) + "/ws"


def shared_master_key(folder: Path) -> Path:
    """``<folder>/master.key``, made once: the processes of a test on one Redis share it, as a
    deployment's do (each ``data_dir``'s development key would keep them from reading the records
    the others archive)."""
    path = folder / "master.key"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(MasterKey.generate().to_base64() + "\n")
    return path


def spawn_server(data_dir: Path, redis_url: str | None, **signalling: object) -> ServerProcess:
    """``teleconsult serve`` on a free loopback port, on ``redis_url`` (prefix ``tc:``, with the master
    key of ``data_dir``'s parent folder: :func:`shared_master_key`); None: the memory store (journal
    and records under ``data_dir``)."""
    env = {**os.environ, "TELECONSULT_SERVER__DATA_DIR": str(data_dir), "TELECONSULT_SERVER__LOG_LEVEL": "WARNING",
           "TELECONSULT_AUTH__SIGNING_KEY": SIGNING_KEY, "TELECONSULT_STORE__BACKEND": "redis",
           "TELECONSULT_STORE__REDIS_URL": redis_url or "", "TELECONSULT_STORE__KEY_PREFIX": "tc:",
           "TELECONSULT_MEDIA__LISTEN_IP": "127.0.0.1", "TELECONSULT_MEDIA__ALLOWED_REMOTE_NETWORKS": "127.0.0.0/8"}
    if redis_url is None:
        env["TELECONSULT_STORE__BACKEND"] = "memory"
        del env["TELECONSULT_STORE__REDIS_URL"]
    else:
        env["TELECONSULT_RECORDING__MASTER_KEY_FILE"] = str(shared_master_key(data_dir.parent))
    for key, value in signalling.items():
        env[f"TELECONSULT_SIGNALLING__{key.upper()}"] = str(value)
    process = subprocess.Popen([sys.executable, "-m", "teleconsult", "serve", "--host", "127.0.0.1", "--port", "0"],
                               env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            pytest.fail(f"the server exited at start ({process.returncode})")
        if "serving on" in line:
            return ServerProcess(line.split("serving on", 1)[1].strip(), process)
    process.kill()
    pytest.fail("the server did not start within 60 s")


def stop(server: ServerProcess) -> None:
    if server.process.poll() is None:
        server.process.kill()
    server.process.wait(10)
    if server.process.stdout is not None:
        server.process.stdout.close()
