"""`teleconsult serve` as a real process: URLs, signals, TLS."""

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from teleconsult.tls import write_self_signed
from tests.support import ROOT, free_port, stop_process


def start(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    full_env = {**os.environ, "TELECONSULT_SERVER__DATA_DIR": str(tmp_path / "data"), **(env or {})}
    process = subprocess.Popen([sys.executable, "-m", "teleconsult", "serve", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=full_env, cwd=ROOT)
    assert process.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line.startswith("teleconsult serving on "):
            return process, line.split()[-1]
        if not line and process.poll() is not None:
            break
    stop_process(process)  # type: ignore[arg-type]
    raise AssertionError("server did not start")


def get(url: str, context: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_serve_prints_urls_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    process, url = start(tmp_path, "--port", str(port), "--media-address", "127.0.0.1")
    try:
        assert url == f"http://127.0.0.1:{port}"
        assert get(url + "/healthz")[0] == 200
        assert get(url + "/readyz")[0] == 200
        status, body = get(url + "/metrics")
        assert status == 200 and b"process_resident_memory_bytes" in body
        # What the imports and the app's start made is out of the collector's full passes (issue 19:
        # each one walked it all, 90-100 ms with every socket stalled).
        frozen = [line for line in body.decode().splitlines() if line.startswith("teleconsult_gc_frozen_objects ")]
        assert frozen and float(frozen[0].split()[1]) > 100_000, frozen
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0  # nothing live: draining ends at once
    finally:
        stop_process(process)  # type: ignore[arg-type]


def test_serve_https(tmp_path: Path) -> None:
    cert, key = write_self_signed(tmp_path / "tls", ["127.0.0.1"])
    env = {"TELECONSULT_SERVER__TLS_CERT": str(cert), "TELECONSULT_SERVER__TLS_KEY": str(key)}
    process, url = start(tmp_path, "--port", str(free_port()), env=env)
    try:
        assert url.startswith("https://")
        context = ssl.create_default_context(cafile=str(cert))
        assert get(url + "/healthz", context)[0] == 200
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(15) == 0
        stop_process(process)  # type: ignore[arg-type]


def test_tls_selfsigned_command(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "teleconsult", "tls-selfsigned", "--out", str(tmp_path),
                             "--name", "localhost", "--name", "127.0.0.1"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "cert.pem").exists() and (tmp_path / "key.pem").stat().st_mode & 0o777 == 0o600


def raw_request(url: str, request: bytes) -> bytes:
    """``request`` after a good one on the same connection (aiohttp logs a bad method as the
    first request of a connection at DEBUG, but not later ones)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = sock.recv(65536)
        sock.sendall(request)
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


def test_requests_the_http_parser_refuses_are_one_line_not_a_traceback(tmp_path: Path) -> None:
    """A bad method or a line over 8190 bytes is answered 400 by aiohttp's parser, which logged
    each as an ERROR with a traceback (bench.fuzz, rest): any client could fill the log."""
    env = {"TELECONSULT_SERVER__LOG_FORMAT": "json", "TELECONSULT_SERVER__LOG_LEVEL": "INFO"}
    process, url = start(tmp_path, "--port", str(free_port()), "--media-address", "127.0.0.1", env=env)
    try:
        for request in (b"FUZZ /readyz HTTP/1.1\r\nHost: x\r\n\r\n",
                        b"GET /admin HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + b"a" * 9000 + b"\r\n\r\n",
                        b"GET /api/consultations/" + b"x" * 9000 + b"/report HTTP/1.1\r\nHost: x\r\n\r\n"):
            reply = raw_request(url, request)
            assert reply.startswith(b"HTTP/1.1 200 ") and b"HTTP/1.0 400 Bad Request" in reply, (request[:30], reply)
        assert get(url + "/healthz")[0] == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    finally:
        stop_process(process)  # type: ignore[arg-type]
    assert process.stdout is not None
    log = process.stdout.read()
    assert "Traceback" not in log and '"level":"error"' not in log, log[-3000:]
    assert log.count("malformed HTTP request refused") == 3, log[-3000:]
