"""A redis-server of a bench's own: on a free loopback port, nothing on disk, stopped by its PID
by the caller (``proc.kill()``)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Sequence


def start_redis(workdir: Path | None = None, *, bind: str = "127.0.0.1", port: int = 0,
                wrap: Sequence[str] = (), password: str = "") -> tuple[subprocess.Popen[bytes], str]:
    """(the redis-server process, its URL), once it answers; RuntimeError when it is not
    installed or does not answer within 10 s.

    By default on a free loopback port; ``bind`` and ``port`` (0: a free one, found on loopback)
    put it elsewhere, and ``wrap`` runs it through a prefix (``ip netns exec NS``: on another
    "host" of ``bench.hostlab``, which execs, so that the PID is redis-server's). Redis answers
    clients on other addresses than loopback only with a ``password`` (its protected mode); the
    URL carries it."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("this bench needs redis-server (the Redis store): install it")
    if not port:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    proc = subprocess.Popen([*wrap, binary, "--port", str(port), "--bind", bind, "--save", "", "--appendonly", "no",
                             "--dir", str(workdir or tempfile.gettempdir()),
                             *(["--requirepass", password] if password else [])],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection((bind, port), 0.2).close()
            return proc, f"redis://{':' + password + '@' if password else ''}{bind}:{port}/0"
        except OSError:
            time.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
    proc.wait(5)
    raise RuntimeError(f"redis-server did not answer on {bind}:{port} within 10 s (exit status {proc.returncode})")
