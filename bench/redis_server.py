"""A redis-server of a bench's own: on a free loopback port, nothing on disk, stopped by its PID
by the caller (``proc.kill()``)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def start_redis(workdir: Path | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """(the redis-server process, its URL), once it answers; RuntimeError when it is not
    installed or does not answer within 10 s."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("this bench needs redis-server (the Redis store): install it")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(workdir or tempfile.gettempdir())],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    proc.wait(5)
    raise RuntimeError("redis-server did not answer within 10 s")
