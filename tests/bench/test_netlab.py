"""The network lab (bench/netlab.py): the profiles and the commands it builds (pure), and
a real lab: two namespaces, a veth pair, tbf and nftables, with a TCP transfer across the
shaped uplink that comes out near the shaped rate."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from bench.netlab import (
    CABIN_DEV,
    PROFILES,
    NetLab,
    Names,
    Phase,
    Profile,
    burst_bytes,
    loss_ruleset,
    profile_named,
    rate_commands,
    setup_commands,
    shaped_rate_kbps,
    teardown_commands,
)

NAMES = Names("ns-s", "ns-c")


def test_profiles_are_the_issues_table() -> None:
    table = {name: (p.link_kbps, p.loss_pct) for name, p in PROFILES.items()}
    assert table == {"clean": (None, 0), "4g-good": (3000, 1), "4g-weak": (1000, 3), "lossy": (None, 3),
                     "edge": (3000, 2)}
    assert PROFILES["edge"].schedule() == [(0.0, 3000), (20.0, 400), (50.0, 3000)]
    assert PROFILES["edge"].min_seconds == 65.0
    assert PROFILES["4g-weak"].min_seconds == 0.0
    assert [p.name for p in profile_named("lossy, 4g-weak")] == ["lossy", "4g-weak"]
    with pytest.raises(ValueError):
        profile_named("5g")
    with pytest.raises(ValueError):
        Profile("x", (Phase(100), Phase(200, 5.0)))  # only the last phase may be open-ended
    with pytest.raises(ValueError):
        Profile("x", (Phase(100),), loss_pct=100)


def test_setup_makes_the_veth_inside_the_namespaces() -> None:
    commands = setup_commands(NAMES)
    assert commands[:2] == [["ip", "netns", "add", "ns-s"], ["ip", "netns", "add", "ns-c"]]
    assert ["ip", "link", "add", "srv0", "netns", "ns-s", "type", "veth", "peer", "name", "cab0",
            "netns", "ns-c"] in commands
    assert ["ip", "-n", "ns-c", "addr", "add", "10.203.0.2/30", "dev", "cab0"] in commands
    assert teardown_commands(NAMES) == [["ip", "netns", "del", "ns-s"], ["ip", "netns", "del", "ns-c"]]
    assert Names.unique() != Names.unique()
    assert all(len(dev) <= 15 for dev in ("srv0", CABIN_DEV))


def test_rate_commands() -> None:
    assert rate_commands(NAMES, 1000, 120, first=True) == [
        ["tc", "-n", "ns-c", "qdisc", "replace", "dev", "cab0", "root", "tbf", "rate", "1000kbit",
         "burst", "3028", "latency", "120ms"]]
    assert rate_commands(NAMES, 3000, 120, first=False)[0][11:13] == ["burst", "3750"]
    assert rate_commands(NAMES, None, 120, first=True) == []
    assert rate_commands(NAMES, None, 120, first=False) == [["tc", "-n", "ns-c", "qdisc", "del", "dev", "cab0",
                                                             "root"]]
    assert burst_bytes(400) == 3028


def test_loss_ruleset() -> None:
    text = loss_ruleset(3, [100, 98])
    assert 'type filter hook egress device "cab0" priority 0' in text
    assert 'numgen random mod 100 < 3 counter drop comment "loss"' in text
    assert text.index("rtx-98") < text.index("rtx-100") < text.index('"offered"') < text.index("numgen")
    assert "numgen" not in loss_ruleset(0)


def _transfer(lab: NetLab, seconds: float) -> float:
    """Bulk TCP from the cabin to the server for ``seconds``; the uplink rate seen on the
    cabin's veth meanwhile, kbit/s."""
    ip = lab.names.server_ip
    sink = subprocess.Popen(lab.server([sys.executable, "-c", (
        "import socket\n"
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(('{ip}', 5001)); s.listen(); print('ready', flush=True); c, _ = s.accept()\n"
        "while c.recv(65536): pass\n")]), stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
        before = lab.counters()
        subprocess.run(lab.cabin([sys.executable, "-c", (
            "import socket, time\n"
            f"s = socket.create_connection(('{ip}', 5001)); end = time.monotonic() + {seconds}\n"
            "while time.monotonic() < end: s.send(b'x' * 8192)\n")]), check=True, timeout=seconds + 20)
        after = lab.counters()
        return shaped_rate_kbps(before, after)
    finally:
        sink.kill()
        sink.wait(5)


@pytest.mark.timeout(120)
def test_a_real_lab_shapes_the_uplink_and_cleans_up() -> None:
    profile = Profile("t", (Phase(1000),), loss_pct=0)
    with NetLab(profile, rtx_payload_types=(98,)) as lab:
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert lab.names.server_ns in listed and lab.names.cabin_ns in listed
        rate = _transfer(lab, 3.0)
        assert 700 <= rate <= 1150, rate
        lab.set_rate(3000)
        rate = _transfer(lab, 2.0)
        assert 2000 <= rate <= 3300, rate
        counters = lab.counters()
        assert counters.tx_bytes > 0 and counters.lost_packets == 0
        # A process left running in a namespace is ended by the teardown.
        stray = subprocess.Popen(lab.cabin(["sleep", "60"]))
        time.sleep(0.2)
    assert stray.wait(5) is not None
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert lab.names.server_ns not in listed and lab.names.cabin_ns not in listed


@pytest.mark.timeout(120)
def test_nftables_drops_the_profiles_share() -> None:
    profile = Profile("t", (Phase(None),), loss_pct=20)
    with NetLab(profile, rtx_payload_types=(98,)) as lab:
        ip = lab.names.server_ip
        # 2000 datagrams, the first 100 RTP-like with payload type 98 (marker set on half).
        subprocess.run(lab.cabin([sys.executable, "-c", (
            "import socket\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"for i in range(100): s.sendto(bytes([0x80, 98 | (i % 2) << 7]) + b'x' * 98, ('{ip}', 9))\n"
            f"for _ in range(1900): s.sendto(bytes([0x80, 97]) + b'x' * 98, ('{ip}', 9))\n")]),
            check=True, timeout=30)
        counters = lab.counters()
    assert 300 <= counters.lost_packets <= 500, counters
    assert counters.rtx_packets == 100, counters
