"""A network lab with real kernel shaping: two network namespaces joined by a veth pair.

::

    server namespace  10.203.0.1/30  srv0 ──veth── cab0  10.203.0.2/30  cabin namespace
                                                 │
                          cabin egress (uplink): nftables random drop, then tc tbf

* The **profiles** (:data:`PROFILES`) are plain data: uplink rate phases, loss, and the
  tbf ``burst`` and ``latency`` that fix the queue. Without netem there is no added
  propagation delay: the queue tbf builds is the delay, so ``latency`` bounds it.
* The **commands** are built by pure functions (:func:`setup_commands`,
  :func:`rate_commands`, :func:`loss_ruleset`, :func:`teardown_commands`): unit-tested
  without root.
* :class:`NetLab` applies them (root; ``ip`` from iproute2, ``tc``, ``nft`` from
  nftables) and always tears down what it made: the processes still running in its
  namespaces (by the PIDs ``ip netns pids`` lists for them), then the namespaces (which
  takes the veth pair with them).

Loss is on the cabin's egress only (the uplink, as in the issue's table): nftables
``numgen random mod 100 < N drop`` in the netdev egress hook of ``cab0``, so packets are
dropped (silently, as a link drops them) before tbf queues them. Counters on the same chain count the RTX packets the cabin offers
(before the drop), by payload type.

Named namespaces (``ip netns add``) with names unique per lab; this works inside the test
command's ``unshare --net`` as root (the names live in ``/run/netns`` of the mount
namespace, hence unique names and an always-run teardown).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Self, Sequence

SERVER_DEV = "srv0"
CABIN_DEV = "cab0"
NFT_TABLE = "netlab"
MIN_BURST_BYTES = 3028
"""Two full-size Ethernet frames: tbf needs at least one MTU of burst, two keep a lone
packet from waiting for tokens it can never collect."""
BURST_S = 0.010
"""Burst as time at the rate (10 ms), when that is more than :data:`MIN_BURST_BYTES`."""


@dataclass(frozen=True)
class Phase:
    """One stretch of a profile: an uplink rate (None: unshaped) for ``seconds`` (None: to the end)."""

    kbps: int | None
    seconds: float | None = None


@dataclass(frozen=True)
class Profile:
    name: str
    phases: tuple[Phase, ...]
    loss_pct: int = 0
    """Random loss on the uplink, whole percents (nftables ``numgen random mod 100``)."""
    latency_ms: int = 120
    """tbf ``latency``: the longest a packet may wait in the queue (limit = rate x latency + burst)."""

    def __post_init__(self) -> None:
        if not self.phases:
            raise ValueError("a profile needs at least one phase")
        if not 0 <= self.loss_pct < 100:
            raise ValueError("loss_pct must be in [0, 100)")
        if any(p.seconds is None for p in self.phases[:-1]):
            raise ValueError("only the last phase may run to the end")

    @property
    def link_kbps(self) -> int | None:
        """The nominal uplink rate: the first phase's."""
        return self.phases[0].kbps

    @property
    def min_seconds(self) -> float:
        """The shortest run that sees every phase (the last one for at least 15 s)."""
        timed = sum(p.seconds or 0.0 for p in self.phases)
        return timed + 15.0 if len(self.phases) > 1 else 0.0

    def schedule(self) -> list[tuple[float, int | None]]:
        """(offset in seconds from the start, rate) at which each phase begins."""
        out: list[tuple[float, int | None]] = []
        t = 0.0
        for phase in self.phases:
            out.append((t, phase.kbps))
            t += phase.seconds or 0.0
        return out


PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile("clean", (Phase(None),)),
    Profile("4g-good", (Phase(3000),), loss_pct=1),
    Profile("4g-weak", (Phase(1000),), loss_pct=3),
    Profile("lossy", (Phase(None),), loss_pct=3),
    Profile("edge", (Phase(3000, 20.0), Phase(400, 30.0), Phase(3000)), loss_pct=2),
)}


def burst_bytes(kbps: int) -> int:
    return max(MIN_BURST_BYTES, int(kbps * 1000 / 8 * BURST_S))


@dataclass(frozen=True)
class Names:
    """The namespaces of one lab and its addresses (a private /30)."""

    server_ns: str
    cabin_ns: str
    server_ip: str = "10.203.0.1"
    cabin_ip: str = "10.203.0.2"
    prefix: int = 30

    @classmethod
    def unique(cls) -> "Names":
        tag = f"{os.getpid()}-{secrets.token_hex(3)}"
        return cls(f"netlab-s-{tag}", f"netlab-c-{tag}")


def setup_commands(n: Names) -> list[list[str]]:
    """Namespaces, the veth pair made directly inside them (no name in the caller's
    namespace to collide with), addresses, links up."""
    return [
        ["ip", "netns", "add", n.server_ns],
        ["ip", "netns", "add", n.cabin_ns],
        ["ip", "link", "add", SERVER_DEV, "netns", n.server_ns, "type", "veth",
         "peer", "name", CABIN_DEV, "netns", n.cabin_ns],
        ["ip", "-n", n.server_ns, "addr", "add", f"{n.server_ip}/{n.prefix}", "dev", SERVER_DEV],
        ["ip", "-n", n.cabin_ns, "addr", "add", f"{n.cabin_ip}/{n.prefix}", "dev", CABIN_DEV],
        ["ip", "-n", n.server_ns, "link", "set", "lo", "up"],
        ["ip", "-n", n.cabin_ns, "link", "set", "lo", "up"],
        ["ip", "-n", n.server_ns, "link", "set", SERVER_DEV, "up"],
        ["ip", "-n", n.cabin_ns, "link", "set", CABIN_DEV, "up"],
    ]


def rate_commands(n: Names, kbps: int | None, latency_ms: int, *, first: bool) -> list[list[str]]:
    """The cabin egress qdisc for ``kbps``: tbf (``replace``, so that a phase change keeps
    the link up), or none (the default qdisc) for an unshaped phase."""
    tc = ["tc", "-n", n.cabin_ns, "qdisc"]
    if kbps is None:
        return [] if first else [tc + ["del", "dev", CABIN_DEV, "root"]]
    return [tc + ["replace", "dev", CABIN_DEV, "root", "tbf", "rate", f"{kbps}kbit",
                  "burst", str(burst_bytes(kbps)), "latency", f"{latency_ms}ms"]]


def loss_ruleset(loss_pct: int, rtx_payload_types: Iterable[int] = ()) -> str:
    """The nftables table for the cabin's veth egress: count UDP datagrams that look like
    RTP with an RTX payload type (before any drop: what the cabin offers), then drop
    ``loss_pct`` % of everything leaving ``cab0``.

    The netdev ``egress`` hook, not ``output``: a drop there is silent, as on a real link
    (in ``output`` the sender's ``sendto`` fails with EPERM)."""
    rules = []
    for pt in sorted(set(rtx_payload_types)):
        # UDP payload byte 0: version 2 (0b10); byte 1: marker + 7-bit payload type.
        rules.append(f'meta l4proto udp @th,64,2 2 @th,73,7 {pt} counter comment "rtx-{pt}"')
    rules.append('counter comment "offered"')
    if loss_pct:
        rules.append(f'numgen random mod 100 < {loss_pct} counter drop comment "loss"')
    body = "\n".join(f"    {r}" for r in rules)
    return (f"table netdev {NFT_TABLE} {{\n  chain uplink {{\n"
            f'    type filter hook egress device "{CABIN_DEV}" priority 0; policy accept;\n{body}\n  }}\n}}\n')


def teardown_commands(n: Names) -> list[list[str]]:
    return [["ip", "netns", "del", n.server_ns], ["ip", "netns", "del", n.cabin_ns]]


def exec_argv(namespace: str, argv: Sequence[str]) -> list[str]:
    """``argv`` run inside ``namespace`` (``ip netns exec`` execs it: the PID is argv's)."""
    return ["ip", "netns", "exec", namespace, *argv]


# -- I/O ----------------------------------------------------------------------------------
def run(argv: Sequence[str], stdin: str | None = None) -> str:
    """Run one command (``ip``, ``tc``, ``nft``); its stdout, or RuntimeError with its stderr."""
    done = subprocess.run(list(argv), input=stdin, capture_output=True, text=True, timeout=20)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()[:500]}")
    return done.stdout


@dataclass
class Counters:
    """Cumulative counters of the cabin's uplink at one instant."""

    at: float
    tx_bytes: int
    """Bytes that left the cabin's veth (after the drop and the queue)."""
    offered_bytes: int
    """Bytes the cabin sent towards the veth, before the drop."""
    lost_packets: int
    queue_dropped: int
    """Packets tbf dropped (queue over ``latency``)."""
    rtx_packets: int
    rtx_bytes: int


class Lab:
    """A context manager over ``setup`` and ``teardown``: the teardown always runs, after a
    setup that failed half-way too (it must undo what exists, and be idempotent)."""

    def setup(self) -> None:
        raise NotImplementedError

    def teardown(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.setup()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()


@dataclass
class NetLab(Lab):
    """Two namespaces, a veth pair and the profile's shaping; a context manager."""

    profile: Profile
    names: Names = field(default_factory=Names.unique)
    rtx_payload_types: tuple[int, ...] = ()
    _made: list[str] = field(default_factory=list)

    def setup(self) -> None:
        n = self.names
        for argv in setup_commands(n):
            run(argv)
            if argv[:3] == ["ip", "netns", "add"]:
                self._made.append(argv[3])
        for argv in rate_commands(n, self.profile.link_kbps, self.profile.latency_ms, first=True):
            run(argv)
        run(["ip", "netns", "exec", n.cabin_ns, "nft", "-f", "-"],
             stdin=loss_ruleset(self.profile.loss_pct, self.rtx_payload_types))

    def set_rate(self, kbps: int | None) -> None:
        for argv in rate_commands(self.names, kbps, self.profile.latency_ms, first=False):
            run(argv)

    def server(self, argv: Sequence[str]) -> list[str]:
        return exec_argv(self.names.server_ns, argv)

    def cabin(self, argv: Sequence[str]) -> list[str]:
        return exec_argv(self.names.cabin_ns, argv)

    def counters(self) -> Counters:
        n = self.names
        links = json.loads(run(["ip", "-n", n.cabin_ns, "-s", "-j", "link", "show", "dev", CABIN_DEV]))
        tx = int(links[0]["stats64"]["tx"]["bytes"])
        qdiscs = json.loads(run(["tc", "-n", n.cabin_ns, "-s", "-j", "qdisc", "show", "dev", CABIN_DEV]))
        queue_dropped = sum(int(q.get("drops", 0)) for q in qdiscs if q.get("kind") == "tbf")
        ruleset = json.loads(run(["ip", "netns", "exec", n.cabin_ns, "nft", "-j", "list", "table", "netdev",
                                   NFT_TABLE]))
        offered = lost = rtx_packets = rtx_bytes = 0
        for item in ruleset.get("nftables", []):
            rule = item.get("rule")
            if not rule:
                continue
            counter = next((e["counter"] for e in rule.get("expr", []) if "counter" in e), None)
            if counter is None:
                continue
            comment = rule.get("comment", "")
            if comment == "offered":
                offered = int(counter["bytes"])
            elif comment == "loss":
                lost = int(counter["packets"])
            elif comment.startswith("rtx-"):
                rtx_packets += int(counter["packets"])
                rtx_bytes += int(counter["bytes"])
        return Counters(time.monotonic(), tx, offered, lost, queue_dropped, rtx_packets, rtx_bytes)

    def pids(self) -> list[int]:
        return namespace_pids(self._made)

    def teardown(self) -> None:
        """End what still runs in this lab's namespaces (SIGTERM, then SIGKILL after 5 s),
        then delete the namespaces. Idempotent."""
        end_processes(self.pids())
        for ns in reversed(self._made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
        self._made.clear()


def namespace_pids(namespaces: Iterable[str]) -> list[int]:
    """The PIDs of the processes running in ``namespaces`` (``ip netns pids``; a namespace already
    gone has none)."""
    out: list[int] = []
    for ns in namespaces:
        try:
            out += [int(p) for p in run(["ip", "netns", "pids", ns]).split()]
        except RuntimeError:
            continue
    return out


def end_processes(pids: Sequence[int], term_wait_s: float = 5.0) -> None:
    """End ``pids``: SIGTERM, SIGKILL to those still running after ``term_wait_s``, then wait up to
    2 s for them (reaping those that are our children)."""
    left = list(pids)
    for sig, wait in ((signal.SIGTERM, term_wait_s), (signal.SIGKILL, 2.0)):
        for pid in left:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while left and time.monotonic() < deadline:
            left = [p for p in left if _alive(p)]
            if left:
                time.sleep(0.05)
        if not left:
            return


def _alive(pid: int) -> bool:
    try:
        # A child of ours that exited stays a zombie until reaped: reap it if it is ours.
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return _not_zombie(pid)


def _not_zombie(pid: int) -> bool:
    """False for a zombie (exited, not yet reaped by a parent that is not us)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def shaped_rate_kbps(counters_a: Counters, counters_b: Counters) -> float:
    """Uplink throughput between two counter readings, kbit/s."""
    dt = counters_b.at - counters_a.at
    return (counters_b.tx_bytes - counters_a.tx_bytes) * 8 / 1000 / dt if dt > 0 else 0.0


def profile_named(names: str) -> list[Profile]:
    """Profiles from a comma-separated list of names (ValueError on an unknown one)."""
    out = []
    for name in (s.strip() for s in names.split(",")):
        if name not in PROFILES:
            raise ValueError(f"unknown profile {name!r}; expected some of {', '.join(PROFILES)}")
        out.append(PROFILES[name])
    return out


def describe(profile: Profile) -> dict[str, Any]:
    return {"name": profile.name, "link_kbps": profile.link_kbps, "loss_pct": profile.loss_pct,
            "schedule": profile.schedule(), "latency_ms": profile.latency_ms}


__all__ = ["CABIN_DEV", "Counters", "Lab", "NetLab", "Names", "Phase", "Profile", "PROFILES", "SERVER_DEV",
           "burst_bytes", "describe", "end_processes", "exec_argv", "loss_ruleset", "namespace_pids", "profile_named",
           "rate_commands", "run", "setup_commands", "shaped_rate_kbps", "teardown_commands"]
