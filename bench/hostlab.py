"""Several "hosts" on one machine, without containers: one network namespace per host, each with
its own address on one bridge, and the caller's namespace on that bridge too.

::

    host a  10.204.0.1 ─eth0──┐
    host b  10.204.0.2 ─eth0──┤   br0 in the switch namespace
    host c  10.204.0.3 ─eth0──┤   (one veth pair per host: eth0 in the host, a port on br0)
    host d  10.204.0.4 ─eth0──┤
    caller  10.204.0.100 ─hl<tag>─┘   (the test or the bench: Chromium, the device agent)

Each host has its own loopback, addresses and port space: the same port on every host, processes
that see only their host's interfaces, and a host that dies is one namespace's processes killed.
The caller reaches every host at its address (pages, WHIP, Redis), and the hosts reach each other
and the caller; nothing leaves the bridge (no route beyond its /24).

As in ``bench.netlab``: the commands are built by pure functions (:func:`setup_commands`,
:func:`teardown_commands`: unit-tested without root), and :class:`HostLab` (root; ``ip`` from
iproute2) applies them and always tears down: the processes still running in its namespaces (by
the PIDs ``ip netns pids`` lists), then the namespaces (which takes the veth pairs and the bridge
with them, the caller's end included). Processes run in a host with :meth:`HostLab.spawn`
(``ip netns exec``, which execs: the PID is the program's).
"""

from __future__ import annotations

import os
import secrets
import subprocess
from dataclasses import dataclass, field
from typing import Any, Sequence

from bench.netlab import Lab, end_processes, exec_argv, namespace_pids, run

BRIDGE = "br0"
"""The bridge, in the switch namespace."""
HOST_DEV = "eth0"
"""Each host's interface, in its namespace."""
SUBNET = "10.204.0"
"""The hosts' /24 (bench.netlab uses 10.203.0.0/30)."""
CALLER_OCTET = 100


@dataclass(frozen=True)
class Host:
    """One host: its name (``a``), namespace, address, and its bridge port in the switch namespace."""

    name: str
    namespace: str
    ip: str
    port: str

    def url(self, port: int, scheme: str = "http") -> str:
        return f"{scheme}://{self.ip}:{port}"


@dataclass(frozen=True)
class Plan:
    """The namespaces, devices and addresses of one lab."""

    switch_ns: str
    hosts: tuple[Host, ...]
    caller_dev: str
    """The caller's end of its veth pair (in the caller's namespace: unique per lab)."""
    caller_ip: str
    prefix: int = 24

    @classmethod
    def make(cls, names: Sequence[str], subnet: str = SUBNET, tag: str | None = None) -> "Plan":
        """Hosts ``names`` at ``subnet``.1, .2, ... in order; namespaces named after ``tag``
        (default: this process and a random part)."""
        if not names or len(set(names)) != len(names) or len(names) >= CALLER_OCTET:
            raise ValueError("give distinct host names, fewer than 100")
        if not all(n.isalnum() and len(n) <= 8 for n in names):
            raise ValueError("host names: letters and digits, at most 8")
        tag = tag or f"{os.getpid()}-{secrets.token_hex(3)}"
        hosts = tuple(Host(n, f"hostlab-{n}-{tag}", f"{subnet}.{i}", f"p-{n}") for i, n in enumerate(names, start=1))
        # Interface names are at most 15 characters: the tag's random part names the caller's end.
        return cls(f"hostlab-sw-{tag}", hosts, f"hl{tag.rsplit('-', 1)[-1][:12]}", f"{subnet}.{CALLER_OCTET}")

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    @property
    def network(self) -> str:
        """The hosts' network, CIDR (for ``media.allowed_remote_networks``)."""
        return f"{self.caller_ip.rsplit('.', 1)[0]}.0/{self.prefix}"

    @property
    def namespaces(self) -> list[str]:
        return [self.switch_ns, *(h.namespace for h in self.hosts)]


def setup_commands(plan: Plan) -> list[list[str]]:
    """The switch namespace and its bridge; each host's namespace and veth pair (made directly
    inside the namespaces, so that no name collides in the caller's), its address, links up; the
    caller's veth pair, its address."""
    sw = plan.switch_ns
    out = [["ip", "netns", "add", ns] for ns in plan.namespaces]
    out += [["ip", "-n", sw, "link", "add", BRIDGE, "type", "bridge"],
            ["ip", "-n", sw, "link", "set", BRIDGE, "up"]]
    for h in plan.hosts:
        out += [
            ["ip", "link", "add", HOST_DEV, "netns", h.namespace, "type", "veth", "peer", "name", h.port, "netns", sw],
            ["ip", "-n", sw, "link", "set", h.port, "master", BRIDGE],
            ["ip", "-n", sw, "link", "set", h.port, "up"],
            ["ip", "-n", h.namespace, "addr", "add", f"{h.ip}/{plan.prefix}", "dev", HOST_DEV],
            ["ip", "-n", h.namespace, "link", "set", "lo", "up"],
            ["ip", "-n", h.namespace, "link", "set", HOST_DEV, "up"],
        ]
    out += [
        ["ip", "link", "add", plan.caller_dev, "type", "veth", "peer", "name", "p-caller", "netns", sw],
        ["ip", "-n", sw, "link", "set", "p-caller", "master", BRIDGE],
        ["ip", "-n", sw, "link", "set", "p-caller", "up"],
        ["ip", "addr", "add", f"{plan.caller_ip}/{plan.prefix}", "dev", plan.caller_dev],
        ["ip", "link", "set", plan.caller_dev, "up"],
    ]
    return out


def teardown_commands(plan: Plan) -> list[list[str]]:
    """The hosts' namespaces, then the switch's (its ports go with it, and with them their peers:
    the caller's end too)."""
    return [["ip", "netns", "del", ns] for ns in reversed(plan.namespaces)]


@dataclass
class HostLab(Lab):
    """The hosts of ``plan`` on their bridge; a context manager that always tears down."""

    plan: Plan
    _made: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, *names: str) -> "HostLab":
        return cls(Plan.make(names))

    def setup(self) -> None:
        for argv in setup_commands(self.plan):
            run(argv)
            if argv[:3] == ["ip", "netns", "add"]:
                self._made.append(argv[3])

    def host(self, name: str) -> Host:
        return self.plan.host(name)

    def argv(self, host: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run on ``host``."""
        return exec_argv(self.host(host).namespace, argv)

    def spawn(self, host: str, argv: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` on ``host`` (``subprocess.Popen`` options as given); its PID is the
        program's. The teardown ends it if the caller has not."""
        return subprocess.Popen(self.argv(host, argv), **popen)

    def pids(self, host: str | None = None) -> list[int]:
        """What runs on ``host`` now (every host and the switch: None)."""
        return namespace_pids([self.host(host).namespace] if host else self._made)

    def teardown(self) -> None:
        """End what still runs in the lab's namespaces (SIGTERM, SIGKILL after 5 s), then delete
        them. Idempotent."""
        end_processes(self.pids())
        for argv in teardown_commands(self.plan):
            if argv[3] in self._made:
                subprocess.run(argv, capture_output=True, timeout=20)
        self._made.clear()
        # The caller's end goes with its peer in the switch namespace; this only makes sure of it.
        subprocess.run(["ip", "link", "del", self.plan.caller_dev], capture_output=True, timeout=20)


__all__ = ["BRIDGE", "HOST_DEV", "Host", "HostLab", "Plan", "SUBNET", "setup_commands", "teardown_commands"]
