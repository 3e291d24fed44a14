"""Field networks bench (issue 13): a cabin behind a shaped uplink, profile by profile.

    python -m bench.network [--profile NAME,...] [--seconds S] [--json FILE] [--no-nurse] [--raw DIR]

Per profile (bench/netlab.py: clean, 4g-good, 4g-weak, lossy, edge), as root:

* a lab: a server namespace and a cabin namespace joined by a veth pair; the cabin's egress
  (the uplink) shaped by ``tc tbf`` and dropped by nftables ``numgen random``;
* the server, ``teleconsult serve`` (embedded default, standalone rooms) in the server
  namespace;
* the device agent, ``teleconsult agent --token ... --devices stethoscope,dermatoscope,otoscope
  --simulate``, in the cabin namespace, publishing across the shaped link;
* the measuring subscriber (:mod:`bench.netprobe`), a WHEP client in the server namespace
  that records every RTP packet it gets;
* the uplink log (:mod:`bench.netsniff`) in the cabin namespace: the RTP headers leaving it;
* in ``4g-weak`` (unless ``--no-nurse``), the nurse's camera: Chromium in the cabin
  namespace publishing over WHIP (:mod:`bench.netnurse`).

The window starts when the probe has every source (``publish_ok``), or gives up waiting,
and lasts ``--seconds`` (the edge profile: at least its schedule plus 15 s); the edge
profile's rate changes are timed from the window's start.

JSON ``profiles[]`` (contract keys): ``name``, ``link_kbps``, ``loss_pct``, ``publish_ok``,
``steth_rtp_loss_pct``, ``steth_longest_gap_ms``, ``steth_delay_ms_p95``, ``video_fps`` and
``video_freeze_pct`` (keyed by source), ``delay_growth_ms``, ``audio_only_after_s``,
``video_back_after_s`` (edge; null elsewhere), ``uplink_kbps``, ``retransmit_kbps``,
``nurse_outbound_kbps`` (when Chromium ran). How each is measured:
bench/netmetrics.py and docs/performance.md. ``targets``: the issue's targets, pass/fail.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from aiortc.codecs import CODECS

from bench import netmetrics
from bench.netlab import CABIN_DEV, NetLab, Profile, profile_named, shaped_rate_kbps
from bench.netnurse import outbound_kbps
from bench.rtc import KEY, ServerProcess, machine
from config.settings import AuthSettings
from core.auth import TokenService

DEVICES = ("stethoscope", "dermatoscope", "otoscope")
VIDEO = ("dermatoscope", "otoscope")
VIEWED = "dermatoscope"
"""The device the physician is taken to be looking at: the probe sends no ``viewing``, and the
agent's uplink then favours its first video device (devices/uplink.py)."""
NURSE_PROFILES = frozenset({"4g-weak"})
"""Profiles that also run the nurse's Chromium camera (bench/netnurse.py) behind the same uplink."""
DEFAULT_SECONDS = 30.0
PUBLISH_WAIT_S = 45.0
RTX_PAYLOAD_TYPES = tuple(c.payloadType for c in CODECS["video"]
                          if c.mimeType.lower() == "video/rtx" and c.payloadType is not None)
"""The agent is aiortc: its RTX payload types are aiortc's (98, 100, 102)."""

VIDEO_PAYLOAD_TYPES = frozenset(c.payloadType for c in CODECS["video"] if c.payloadType is not None)

KEYS = ("name", "link_kbps", "loss_pct", "publish_ok", "steth_rtp_loss_pct", "steth_longest_gap_ms",
        "steth_delay_ms_p95", "video_fps", "video_freeze_pct", "delay_growth_ms", "audio_only_after_s",
        "video_back_after_s", "uplink_kbps", "retransmit_kbps", "nurse_outbound_kbps")
"""The contract keys of each ``profiles[]`` entry (issue 13)."""

ROOT = Path(__file__).resolve().parents[1]


def _tokens() -> TokenService:
    return TokenService(AuthSettings(signing_key=KEY), tempfile.gettempdir())


def _r(value: float | None, digits: int = 2) -> float | None:
    return None if value is None or value != value else round(value, digits)


def _stop(proc: subprocess.Popen[Any] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        proc.send_signal(sig)
        try:
            proc.wait(8)
            return
        except subprocess.TimeoutExpired:
            continue


def _scheduler(lab: NetLab, profile: Profile, start: float, stop: threading.Event) -> threading.Thread:
    """Applies the profile's later phases at their offsets from ``start`` (monotonic)."""
    def run() -> None:
        for offset, kbps in profile.schedule()[1:]:
            if stop.wait(max(0.0, start + offset - time.monotonic())):
                return
            lab.set_rate(kbps)
    thread = threading.Thread(target=run, name=f"schedule-{profile.name}", daemon=True)
    thread.start()
    return thread


def run_profile(profile: Profile, seconds: float, log: Callable[[str], None] = print,
                raw: Path | None = None, nurse: bool = False) -> dict[str, Any]:
    """One profile, end to end; the raw probe recording is left out of what it returns
    (``raw``: a folder to keep it in, with the agent's and the probe's logs)."""
    seconds = max(seconds, profile.min_seconds)
    room = f"netbench-{profile.name}"
    tokens = _tokens()
    agent_token = tokens.issue_room(room, "agent", role="agent", publish=list(DEVICES))
    probe_token = tokens.issue_room(room, "physician", role="physician", subscribe=True)
    nurse_token = tokens.issue_room(room, "nurse", role="nurse", publish=["camera", "microphone"])
    work = Path(tempfile.mkdtemp(prefix=f"bench-network-{profile.name}-"))
    out = work / "probe.json"
    result: dict[str, Any] = {"name": profile.name, "link_kbps": profile.link_kbps, "loss_pct": profile.loss_pct,
                              "seconds": seconds}
    agent: subprocess.Popen[bytes] | None = None
    probe: subprocess.Popen[str] | None = None
    browser: subprocess.Popen[bytes] | None = None
    sniffer: subprocess.Popen[str] | None = None
    wire_out = work / "uplink.json"
    nurse_out = work / "nurse.json"
    with NetLab(profile, rtx_payload_types=RTX_PAYLOAD_TYPES) as lab:
        ip = lab.names.server_ip
        server = ServerProcess(lab.server([sys.executable, "-m", "teleconsult", "serve", "--host", ip, "--port", "0",
                                           "--media-address", ip]),
                               env={"TELECONSULT_SFU__STANDALONE_ROOMS": "true"}, name=f"net-{profile.name}")
        stop = threading.Event()
        try:
            server.start()
            sniffer = subprocess.Popen(lab.cabin([sys.executable, "-m", "bench.netsniff", "--dev", CABIN_DEV,
                                                  "--seconds", str(PUBLISH_WAIT_S + seconds + 60),
                                                  "--out", str(wire_out)]),
                                       stdout=subprocess.PIPE, stderr=(work / "sniff.log").open("wb"), text=True,
                                       cwd=ROOT)
            assert sniffer.stdout is not None
            if sniffer.stdout.readline().strip() != "ready":
                raise RuntimeError(f"uplink log failed: {(work / 'sniff.log').read_text()[-2000:]}")
            # Kept (``raw``), the agent's log says when and why its uplink changed mode (INFO); else only
            # warnings, which cost the shared cores nothing.
            env = {**os.environ, "TELECONSULT_SERVER__LOG_LEVEL": "INFO" if raw is not None else "WARNING"}
            agent = subprocess.Popen(lab.cabin([sys.executable, "-m", "teleconsult", "agent", "--server", server.url,
                                                "--token", agent_token, "--devices", ",".join(DEVICES), "--simulate"]),
                                     stdout=subprocess.DEVNULL, stderr=(work / "agent.log").open("wb"), env=env,
                                     cwd=ROOT)
            probe = subprocess.Popen(lab.server([sys.executable, "-m", "bench.netprobe", "--base", server.url,
                                                 "--room", room, "--token", probe_token, "--listen", ip,
                                                 "--network", f"{ip}/{lab.names.prefix}",
                                                 "--sources", ",".join(DEVICES), "--seconds", str(seconds),
                                                 "--wait", str(PUBLISH_WAIT_S), "--out", str(out)]),
                                     stdout=subprocess.PIPE, stderr=(work / "probe.log").open("wb"), text=True,
                                     cwd=ROOT)
            assert probe.stdout is not None
            line = probe.stdout.readline()
            if not line.startswith("ready "):
                probe.wait(10)
                raise RuntimeError(f"probe failed: {(work / 'probe.log').read_text()[-2000:]}")
            start = float(line.split()[1])
            before = lab.counters()
            _scheduler(lab, profile, start, stop)
            if nurse:
                # After the probe subscribed: WHEP gives a probe the room's oldest videos.
                browser = subprocess.Popen(
                    [sys.executable, "-m", "bench.netnurse", "--base", server.url, "--room", room, "--token",
                     nurse_token, "--namespace", lab.names.cabin_ns, "--seconds", str(seconds),
                     "--out", str(nurse_out)],
                    stdout=subprocess.DEVNULL, stderr=(work / "nurse.log").open("wb"), cwd=ROOT)
            log(f"  {profile.name}: measuring {seconds:g} s")
            time.sleep(max(0.0, start + seconds - time.monotonic()))
            after = lab.counters()
            probe.wait(60)
            if browser is not None:
                browser.wait(60)
            sniffer.send_signal(signal.SIGINT)
            sniffer.wait(30)
        finally:
            _stop(sniffer)
            stop.set()
            _stop(browser)
            _stop(probe)
            _stop(agent)
            server.stop()
    recording = json.loads(out.read_text())
    agent_log = (work / "agent.log").read_text(errors="replace")
    if raw is not None:
        raw.mkdir(parents=True, exist_ok=True)
        for name in ("probe.json", "agent.log", "probe.log", "nurse.json", "nurse.log", "uplink.json"):
            if (work / name).exists():
                shutil.copy(work / name, raw / f"{profile.name}-{name}")
    # The figures' window is the probe's recording's, within the counters' (which are read
    # after it ends: three commands, up to seconds on a busy machine, during which the probe
    # records nothing and a video would read as frozen).
    recorded = recording.get("window") or (before.at, after.at)
    result.update(figures(profile, recording, max(before.at, recorded[0]), min(after.at, recorded[1])))
    try:
        wire = json.loads(wire_out.read_text())["packets"]
    except (OSError, ValueError, KeyError):
        wire = []
    _, lag = netmetrics.uplink_lag(wire, (before.at, after.at), VIDEO_PAYLOAD_TYPES)
    result["steth_uplink_lag_ms_p95"] = _r(lag, 1)
    span = after.at - before.at
    result["uplink_kbps"] = _r(shaped_rate_kbps(before, after), 1)
    result["retransmit_kbps"] = _r((after.rtx_bytes - before.rtx_bytes) * 8 / 1000 / span, 1) if span > 0 else None
    result["uplink_offered_kbps"] = _r((after.offered_bytes - before.offered_bytes) * 8 / 1000 / span, 1) \
        if span > 0 else None
    result["uplink_lost_packets"] = after.lost_packets - before.lost_packets
    result["uplink_queue_dropped"] = after.queue_dropped - before.queue_dropped
    result["nurse_outbound_kbps"] = None
    if nurse:
        result.update(_nurse_figures(nurse_out, work / "nurse.log"))
    result["agent_tracebacks"] = agent_log.count("Traceback")
    shutil.rmtree(work, ignore_errors=True)
    return result


def _nurse_figures(out: Path, log: Path) -> dict[str, Any]:
    """``nurse_outbound_kbps``: Chromium's mean video rate from 10 s after it published."""
    try:
        nurse = json.loads(out.read_text())
    except (OSError, ValueError):
        tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
        return {"nurse_error": f"no result from bench.netnurse: {tail}"}
    if not nurse.get("ok"):
        return {"nurse_error": nurse.get("error")}
    samples = nurse["samples"]
    series = [_r((b[1] - a[1]) * 8 / 1000 / (b[0] - a[0]), 1) for a, b in zip(samples, samples[1:])
              if a[1] is not None and b[1] is not None and b[0] > a[0]]
    return {"nurse_outbound_kbps": _r(outbound_kbps(samples, nurse["start"]), 1), "nurse_kbps_series": series,
            "nurse_target_kbps": [s[2] for s in samples], "nurse_limitation": [s[3] for s in samples]}


def failed(profile: Profile, error: str) -> dict[str, Any]:
    """A profile that could not be measured: every key, ``publish_ok`` false, figures null."""
    out: dict[str, Any] = {key: None for key in KEYS}
    out.update(name=profile.name, link_kbps=profile.link_kbps, loss_pct=profile.loss_pct, publish_ok=False,
               video_fps={s: None for s in VIDEO}, video_freeze_pct={s: None for s in VIDEO}, error=error[-2000:])
    return out


def figures(profile: Profile, recording: dict[str, Any], t0: float, t1: float) -> dict[str, Any]:
    """The profile's contract figures from the probe's recording (window [t0, t1])."""
    window = (t0, t1)
    tracks = recording.get("tracks", {})
    out: dict[str, Any] = {"publish_ok": bool(recording.get("publish_ok")), "publish_s": recording.get("publish_s"),
                           "first_media_s": {s: _r(t - t0, 3) for s, t in recording.get("first_media", {}).items()},
                           "sources": recording.get("sources", [])}
    steth = tracks.get("stethoscope")
    audio = netmetrics.audio_figures([p for p in steth["packets"] if t0 <= p[0] <= t1], steth["clock_rate"], window) \
        if steth else None
    out["steth_rtp_loss_pct"] = _r(audio.loss_pct, 3) if audio else None
    out["steth_longest_gap_ms"] = _r(audio.longest_gap_ms, 1) if audio else None
    out["steth_delay_ms_p95"] = _r(audio.delay_ms_p95, 1) if audio else None
    out["delay_growth_ms"] = _r(audio.delay_growth_ms, 1) if audio else None
    out["steth_red"] = bool(steth and steth.get("red_pt") is not None)
    out["steth_recovered_packets"] = audio.recovered if audio else 0
    fps: dict[str, float | None] = {}
    freeze: dict[str, float | None] = {}
    seen: dict[str, float | None] = {}
    decodable_at: dict[str, list[float]] = {}
    video_packets: list[float] = []
    for source in VIDEO:
        track = tracks.get(source)
        if track is None:
            fps[source] = freeze[source] = seen[source] = None
            continue
        # A video's window opens at its first packet (its first keyframe: the SFU forwards
        # nothing to a new subscription before one): what came before is its start
        # (first_media_s), a second at most, not a freeze of a running call.
        first = min(max(recording.get("first_media", {}).get(source, t0), t0), t1)
        packets = [p for p in track["packets"] if t0 <= p[0] <= t1]
        video_packets += [p[0] for p in packets]
        video = netmetrics.video_figures(packets, track["codec"], track["clock_rate"], (first, t1))
        fps[source], freeze[source] = _r(video.fps, 2), _r(video.freeze_pct, 2)
        seen[source] = _r(video.frames_seen / (t1 - first), 2) if t1 > first else None
        decodable_at[source] = video.decodable_at
    out["video_fps"], out["video_freeze_pct"] = fps, freeze
    out["video_frames_seen_fps"] = seen
    drop, rise = netmetrics.rate_change_points(profile.schedule())
    audio_only = back = resumed = None
    if drop is not None:
        everything = sorted(t for times in decodable_at.values() for t in times)
        audio_only, back, resumed = netmetrics.edge_figures(video_packets, everything, decodable_at.get(VIEWED, []),
                                                            window, drop, rise)
    out["audio_only_after_s"], out["video_back_after_s"] = _r(audio_only, 2), _r(back, 2)
    out["video_resumed_after_s"] = _r(resumed, 2)
    return out


# -- targets ----------------------------------------------------------------------------
def targets(profiles: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, each with its figure and verdict (None: not measured)."""
    rows: list[dict[str, Any]] = []

    def check(name: str, target: str, value: Any, ok: bool | None) -> None:
        rows.append({"profile": name, "target": target, "value": value, "pass": ok})

    def at_most(value: float | None, limit: float) -> bool | None:
        return None if value is None else value <= limit

    for p in profiles:
        name = p["name"]
        check(name, "publish_ok", p["publish_ok"], bool(p["publish_ok"]))
        if name == "4g-weak":
            check(name, "steth loss <= 1 %", p["steth_rtp_loss_pct"], at_most(p["steth_rtp_loss_pct"], 1.0))
            check(name, "steth longest gap <= 60 ms", p["steth_longest_gap_ms"], at_most(p["steth_longest_gap_ms"], 60))
            check(name, "steth delay p95 <= 150 ms", p["steth_delay_ms_p95"], at_most(p["steth_delay_ms_p95"], 150))
            check(name, "delay_growth_ms <= 50", p["delay_growth_ms"], at_most(p["delay_growth_ms"], 50))
            fps = p["video_fps"].get(VIEWED)
            check(name, f"{VIEWED} (viewed) >= 15 fps", fps, None if fps is None else fps >= 15)
            freeze = p["video_freeze_pct"].get(VIEWED)
            check(name, f"{VIEWED} freezes <= 2 %", freeze, at_most(freeze, 2.0))
            link = p["link_kbps"]
            rtx = p["retransmit_kbps"]
            share = None if rtx is None or not link else round(100 * rtx / link, 2)
            check(name, "retransmissions <= 10 % of the link", share, at_most(share, 10.0))
            nurse = p["nurse_outbound_kbps"]
            check(name, "nurse camera below the link within 10 s", nurse,
                  None if nurse is None else nurse < link)
        elif name == "lossy":
            check(name, "steth loss <= 0.5 %", p["steth_rtp_loss_pct"], at_most(p["steth_rtp_loss_pct"], 0.5))
        elif name == "edge":
            check(name, "audio-only within 5 s", p["audio_only_after_s"], at_most(p["audio_only_after_s"], 5.0))
            check(name, "video back within 10 s", p["video_back_after_s"], at_most(p["video_back_after_s"], 10.0))
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return "/".join(_cell(v) for v in value.values())
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def table(profiles: list[dict[str, Any]]) -> str:
    columns = [("profile", "name"), ("link", "link_kbps"), ("loss%", "loss_pct"), ("pub", "publish_ok"),
               ("st.loss%", "steth_rtp_loss_pct"), ("st.gap", "steth_longest_gap_ms"),
               ("st.p95", "steth_delay_ms_p95"), ("growth", "delay_growth_ms"),
               ("fps d/o", "video_fps"), ("freeze% d/o", "video_freeze_pct"), ("a-only", "audio_only_after_s"),
               ("back", "video_back_after_s"), ("up kb/s", "uplink_kbps"), ("rtx kb/s", "retransmit_kbps"),
               ("nurse", "nurse_outbound_kbps")]
    rows = [[h for h, _ in columns]] + [[_cell(p.get(k)) for _, k in columns] for p in profiles]
    widths = [max(len(r[i]) for r in rows) for i in range(len(columns))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows)


def targets_table(rows: list[dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        verdict = "n/a" if r["pass"] is None else ("pass" if r["pass"] else "FAIL")
        lines.append(f"{r['profile']:8s} {r['target']:42s} {_cell(r['value']):>10s}  {verdict}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.network", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="clean,4g-good,4g-weak,lossy,edge",
                        help="comma-separated profiles (default: all)")
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS,
                        help=f"measuring window per profile (default {DEFAULT_SECONDS:g}; edge: at least 65)")
    parser.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    parser.add_argument("--no-nurse", action="store_true",
                        help=f"skip the nurse's Chromium camera (run in {', '.join(sorted(NURSE_PROFILES))})")
    parser.add_argument("--raw", metavar="DIR", type=Path,
                        help="keep each profile's probe recording and logs in DIR")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("needs root (network namespaces, tc, nft): run it inside the test command's namespace")
    try:
        chosen = profile_named(args.profile)
    except ValueError as exc:
        parser.error(str(exc))
    about = machine()
    profiles = []
    for profile in chosen:
        try:
            nurse = profile.name in NURSE_PROFILES and not args.no_nurse
            profiles.append(run_profile(profile, args.seconds, log=lambda s: print(s, file=sys.stderr),
                                        raw=args.raw, nurse=nurse))
        except Exception as exc:  # noqa: BLE001 - one profile's failure is a figure, the others still run
            print(f"  {profile.name}: failed: {exc}", file=sys.stderr)
            profiles.append(failed(profile, f"{type(exc).__name__}: {exc}"))
    rows = targets(profiles)
    print(table(profiles))
    print()
    print(targets_table(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"profiles": profiles, "targets": rows, "machine": about}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
