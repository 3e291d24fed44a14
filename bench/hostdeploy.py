"""A teleconsult deployment on the "hosts" of ``bench.hostlab``: redis-server on one host, a
signalling node and media nodes (``teleconsult serve`` with ``server.roles``) on others, each from
a settings file of its own, and the cabin's device agent on the caller's namespace.

::

    deployment = HostDeployment(lab, workdir, signing_key)   # lab: HostLab.of("a", "b", "c", "d")
    deployment.start_redis()                                 # on d
    a = deployment.serve("a")                                # ["signalling"]: the pages, matching
    b = deployment.serve("b")                                # ["media"]: rooms go here
    ...
    deployment.stop()                                        # every process it started, by PID

The settings are those of docs/deployment.md, *Several hosts*: each node's ``public_url`` is its
host's address, the signalling node's pages may reach every media node (``media_origins``), each
media node's socket takes the pages of the signalling node (``allowed_origins``), one Redis (with
a password: Redis refuses other addresses than loopback without one), one signing key, one key of
health data at rest.
"""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.hostlab import HostLab
from bench.redis_server import start_redis

PORT = 8080
"""Every node's HTTP port: each host has its own port space."""
REDIS_PORT = 6379
MEDIA_PORTS = (40000, 40199)
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Topology:
    """Which host runs what."""

    signalling: str = "a"
    media: tuple[str, ...] = ("b", "c")
    redis: str = "d"

    def roles(self, host: str) -> list[str]:
        if host == self.signalling:
            return ["signalling"]
        if host in self.media:
            return ["media"]
        raise ValueError(f"host {host!r} runs no teleconsult node")


@dataclass
class Node:
    host: str
    url: str
    process: subprocess.Popen[str]
    log: Path


def _toml_list(values: list[str]) -> str:
    return "[" + ", ".join(f'"{v}"' for v in values) + "]"


def _environ() -> dict[str, str]:
    """This process's environment without TELECONSULT_* (the settings files say everything)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TELECONSULT_")}


@dataclass
class HostDeployment:
    lab: HostLab
    workdir: Path
    signing_key: str
    heartbeat_s: float = 2.0
    """``signalling.heartbeat_s``: a media node is dead three of them after its last heartbeat."""
    topology: Topology = field(default_factory=Topology)
    shared_data_dir: bool = False
    """One ``server.data_dir`` for every node (storage the hosts share, as an NFS mount would be):
    a recording resumed on another node then continues the lost node's directory, and its
    manifest knows both ends of the gap (docs/recording.md, *Segments*). Default: one each."""
    redis_password: str = field(default_factory=lambda: secrets.token_hex(16))
    redis_url: str = ""
    nodes: dict[str, Node] = field(default_factory=dict)
    _processes: list[subprocess.Popen[Any]] = field(default_factory=list)
    _redis: subprocess.Popen[Any] | None = None

    def url(self, host: str) -> str:
        return self.lab.host(host).url(PORT)

    def start_redis(self) -> str:
        """redis-server on the Redis host, once it answers; its URL (RuntimeError when it cannot)."""
        host = self.topology.redis
        self.workdir.mkdir(parents=True, exist_ok=True)
        redis, self.redis_url = start_redis(self.workdir, bind=self.lab.host(host).ip, port=REDIS_PORT,
                                            wrap=self.lab.argv(host, []), password=self.redis_password)
        self._redis = redis
        return self.redis_url

    @property
    def master_key(self) -> Path:
        """The deployment's key of health data at rest (made once, 0600)."""
        path = self.workdir / "master.key"
        if not path.exists():
            path.write_text(base64.b64encode(secrets.token_bytes(32)).decode())
            path.chmod(0o600)
        return path

    def data_dir(self, host: str) -> Path:
        return self.workdir / ("data" if self.shared_data_dir else f"data-{host}")

    def settings_text(self, host: str) -> str:
        """The settings file of the node on ``host``."""
        roles = self.topology.roles(host)
        server = ["[server]", f'host = "{self.lab.host(host).ip}"', f"port = {PORT}",
                  f'public_url = "{self.url(host)}"', f"roles = {_toml_list(roles)}",
                  f'data_dir = "{self.data_dir(host)}"', 'log_level = "WARNING"',
                  "drain_timeout_s = 2.0"]  # stopped with consultations still live: no long drain
        if "signalling" in roles:
            # The pages' Content-Security-Policy: they reach every media node.
            server.append(f"media_origins = {_toml_list([self.url(h) for h in self.topology.media])}")
        else:
            # The pages from the signalling host open this node's socket for their media requests.
            server.append(f"allowed_origins = {_toml_list([self.url(self.topology.signalling)])}")
        return "\n".join([
            *server, "",
            "[media]", f"allowed_remote_networks = {_toml_list([self.lab.plan.network])}",
            f"port_min = {MEDIA_PORTS[0]}", f"port_max = {MEDIA_PORTS[1]}", "",
            "[store]", 'backend = "redis"', f'redis_url = "{self.redis_url}"', "",
            "[auth]", f'signing_key = "{self.signing_key}"', "",
            "[signalling]", f"heartbeat_s = {self.heartbeat_s}", "",
            # A seals the records, the media nodes the recordings: each reads what another sealed.
            "[recording]", f'master_key_file = "{self.master_key}"', ""])

    def serve(self, host: str) -> Node:
        """``teleconsult serve`` on ``host``, once it says it serves (a media node has registered
        by then); RuntimeError with the end of its log when it does not."""
        if not self.redis_url:
            raise RuntimeError("start_redis first")
        config = self.workdir / f"{host}.toml"
        config.write_text(self.settings_text(host))
        log = self.workdir / f"{host}.log"
        with log.open("ab") as err:  # a host's serve started again (bench.failover) keeps its last life's log
            process = self.lab.spawn(host, [sys.executable, "-m", "teleconsult", "--config", str(config), "serve"],
                                     env=_environ(), stdout=subprocess.PIPE, stderr=err, text=True)
        self._processes.append(process)
        assert process.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if "serving on" in line:
                node = Node(host, line.split("serving on", 1)[1].strip(), process, log)
                self.nodes[host] = node
                return node
            if not line and process.poll() is not None:
                break
        process.kill()
        raise RuntimeError(f"serve on host {host} did not start: {log.read_text(errors='replace')[-2000:]}")

    def start_agent(self, site_token: str, devices: str = "stethoscope") -> subprocess.Popen[bytes]:
        """The cabin's device agent (simulated ``devices``) on the caller's namespace, signalling
        with the signalling node, its media on the bridge; its log in ``agent.log``."""
        env = {**_environ(), "TELECONSULT_MEDIA__LISTEN_IP": self.lab.plan.caller_ip,
               "TELECONSULT_MEDIA__ALLOWED_REMOTE_NETWORKS": self.lab.plan.network,
               "TELECONSULT_SERVER__DATA_DIR": str(self.workdir / "agent-data"),
               "TELECONSULT_SERVER__LOG_LEVEL": "INFO"}
        with (self.workdir / "agent.log").open("wb") as out:
            agent = subprocess.Popen([sys.executable, "-m", "teleconsult", "agent", "--server",
                                      self.url(self.topology.signalling), "--site-token", site_token,
                                      "--devices", devices, "--simulate"], env=env, stdout=out,
                                     stderr=subprocess.STDOUT)
        self._processes.append(agent)
        return agent

    def stop(self) -> None:
        """SIGTERM to every process started, SIGKILL to one still running after
        :data:`STOP_TIMEOUT_S`: the nodes and agents together first, redis-server once they are
        gone (they keep writing to it while they drain: stopped with them, each logged a
        traceback per lost write). Idempotent; the lab's teardown ends whatever else runs there."""
        redis = [self._redis] if self._redis is not None else []
        for group in (self._processes, redis):
            for process in reversed(group):
                if process.poll() is None:
                    process.terminate()
            for process in reversed(group):
                try:
                    process.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)
                if process.stdout is not None:
                    process.stdout.close()
        self._processes.clear()
        self._redis = None


__all__ = ["HostDeployment", "MEDIA_PORTS", "Node", "PORT", "REDIS_PORT", "Topology"]
