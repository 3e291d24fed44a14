"""The multi-host lab (bench/hostlab.py): the commands it builds (pure), and a real lab of three
hosts on a bridge: each host reaches the others and the caller at their addresses, owns its port
space, and everything goes away at the teardown, what still runs there included. And the settings
files of a deployment on such hosts (bench/hostdeploy.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.hostdeploy import HostDeployment
from bench.hostlab import HostLab, Plan, setup_commands, teardown_commands
from config.settings import load_settings

PLAN = Plan.make(["a", "b"], tag="t-abc123")


def test_plan_names_and_addresses() -> None:
    assert [(h.name, h.namespace, h.ip, h.port) for h in PLAN.hosts] == [
        ("a", "hostlab-a-t-abc123", "10.204.0.1", "p-a"), ("b", "hostlab-b-t-abc123", "10.204.0.2", "p-b")]
    assert PLAN.switch_ns == "hostlab-sw-t-abc123" and PLAN.caller_dev == "hlabc123"
    assert PLAN.caller_ip == "10.204.0.100" and PLAN.network == "10.204.0.0/24"
    assert PLAN.host("b").url(8080) == "http://10.204.0.2:8080"
    assert Plan.make(["a"], subnet="10.9.8").hosts[0].ip == "10.9.8.1"
    assert Plan.make(["a"]).caller_dev != Plan.make(["a"]).caller_dev
    assert all(len(dev) <= 15 for dev in (Plan.make(["a"]).caller_dev, "p-caller", PLAN.hosts[0].port))
    for bad in ([], ["a", "a"], ["a-b"], ["toolonghost"]):
        with pytest.raises(ValueError):
            Plan.make(bad)
    with pytest.raises(KeyError):
        PLAN.host("z")


def test_setup_builds_the_bridge_and_one_veth_per_host_inside_the_namespaces() -> None:
    commands = setup_commands(PLAN)
    assert commands[:3] == [["ip", "netns", "add", ns] for ns in
                            ("hostlab-sw-t-abc123", "hostlab-a-t-abc123", "hostlab-b-t-abc123")]
    assert ["ip", "-n", "hostlab-sw-t-abc123", "link", "add", "br0", "type", "bridge"] in commands
    assert ["ip", "link", "add", "eth0", "netns", "hostlab-a-t-abc123", "type", "veth", "peer", "name", "p-a",
            "netns", "hostlab-sw-t-abc123"] in commands
    assert ["ip", "-n", "hostlab-sw-t-abc123", "link", "set", "p-b", "master", "br0"] in commands
    assert ["ip", "-n", "hostlab-b-t-abc123", "addr", "add", "10.204.0.2/24", "dev", "eth0"] in commands
    assert ["ip", "addr", "add", "10.204.0.100/24", "dev", "hlabc123"] in commands
    # Only the caller's own end is made in the caller's namespace.
    in_caller = [c for c in commands if c[:2] == ["ip", "link"] and "netns" not in c[:6]]
    assert all("hlabc123" in c for c in in_caller), in_caller
    assert teardown_commands(PLAN) == [["ip", "netns", "del", ns] for ns in
                                       ("hostlab-b-t-abc123", "hostlab-a-t-abc123", "hostlab-sw-t-abc123")]


LISTEN = ("import socket, sys; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
          "s.bind((sys.argv[1], 9000)); s.listen(); print('ready', flush=True); "
          "c, _ = s.accept(); c.sendall(sys.argv[1].encode()); c.close()")
CONNECT = ("import socket, sys; c = socket.create_connection((sys.argv[1], 9000), 5); "
           "print(c.recv(64).decode()); c.close()")


def _ours(host_ip: str, lab: HostLab, host: str) -> subprocess.Popen[str]:
    proc = lab.spawn(host, [sys.executable, "-c", LISTEN, host_ip], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def test_three_hosts_reach_each_other_and_go_away() -> None:
    with HostLab.of("a", "b", "c") as lab:
        a, b, c = (lab.host(n) for n in "abc")
        # The same port on two hosts: each host has its own port space.
        listeners = [_ours(b.ip, lab, "b"), _ours(c.ip, lab, "c")]
        # Host a reaches b; the caller reaches c.
        from_a = subprocess.run(lab.argv("a", [sys.executable, "-c", CONNECT, b.ip]), capture_output=True,
                                text=True, timeout=20)
        assert from_a.stdout.strip() == b.ip, from_a.stderr
        from_caller = subprocess.run([sys.executable, "-c", CONNECT, c.ip], capture_output=True, text=True,
                                     timeout=20)
        assert from_caller.stdout.strip() == c.ip, from_caller.stderr
        for proc in listeners:
            assert proc.wait(10) == 0
        # A host sees its own address only.
        addrs = subprocess.run(lab.argv("a", ["ip", "-o", "-4", "addr", "show"]), capture_output=True, text=True,
                               timeout=20).stdout
        assert a.ip in addrs and b.ip not in addrs and lab.plan.caller_ip not in addrs
        # What still runs at the teardown is ended (by the PIDs of its namespace).
        sleeper = lab.spawn("b", ["sleep", "300"])
        assert sleeper.pid in lab.pids("b")
        namespaces = lab.plan.namespaces
    sleeper.wait(10)  # reaped by the teardown already (its status is lost then): gone is what counts
    assert not os.path.exists(f"/proc/{sleeper.pid}")
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=20).stdout
    assert not any(ns in listed for ns in namespaces)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and subprocess.run(["ip", "link", "show", lab.plan.caller_dev],
                                                         capture_output=True).returncode == 0:
        time.sleep(0.1)
    assert subprocess.run(["ip", "link", "show", lab.plan.caller_dev], capture_output=True).returncode != 0


def test_the_deployments_settings_files_are_valid_and_say_the_roles_and_origins(tmp_path: Path) -> None:
    lab = HostLab(Plan.make(["a", "b", "c", "d"], tag="t-abc123"))  # not set up: the files only
    deployment = HostDeployment(lab, tmp_path, "k" * 40, redis_password="pw",
                                redis_url="redis://:pw@10.204.0.4:6379/0")
    with pytest.raises(ValueError):
        deployment.settings_text("d")  # Redis's host runs no node
    files = {}
    for host in "abc":
        (tmp_path / f"{host}.toml").write_text(deployment.settings_text(host))
        files[host] = load_settings(tmp_path / f"{host}.toml", env={})
    a, b, c = (files[h].server for h in "abc")
    assert a.roles == ["signalling"] and b.roles == c.roles == ["media"]
    assert a.media_origins == ["http://10.204.0.2:8080", "http://10.204.0.3:8080"]
    assert b.allowed_origins == c.allowed_origins == ["http://10.204.0.1:8080"]
    assert [s.public_url for s in (a, b, c)] == ["http://10.204.0.1:8080", "http://10.204.0.2:8080",
                                                 "http://10.204.0.3:8080"]
    assert files["b"].effective_media.listen_ip == "10.204.0.2"
    assert files["b"].effective_media.allowed_remote_networks == ["10.204.0.0/24"]
    # One Redis, one signing key, one key of health data at rest for all.
    assert len({(s.store.redis_url, s.auth.signing_key, s.recording.master_key_file) for s in files.values()}) == 1
    assert (tmp_path / "master.key").stat().st_mode & 0o777 == 0o600
    assert len({s.server.data_dir for s in files.values()}) == 3
    deployment.shared_data_dir = True  # storage the hosts share: one data_dir for all
    for host in "abc":
        (tmp_path / f"{host}.toml").write_text(deployment.settings_text(host))
    shared = {load_settings(tmp_path / f"{host}.toml", env={}).server.data_dir for host in "abc"}
    assert shared == {str(tmp_path / "data")}
