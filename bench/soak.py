"""Soak (issue 17): whole consultations, one after another, for minutes; does anything grow?

    python -m bench.soak --minutes M --consultations C [--json FILE] [--hold S] [--workers W]
                         [--codec h264|vp8]

``teleconsult serve`` runs in a child process on loopback (JSON logs, temporary data dir).
C consultation slots run at once, spread over ``--workers`` client processes; each slot
repeats, until M minutes have passed, a whole consultation as :mod:`bench.consultations`
plays it (its :class:`~bench.consultations.Consultation`): the nurse checks a patient in
(with consent to recording) over ``/ws``, the physician accepts, the room tokens come
from the signalling; six tracks are published over WHIP (nurse camera + microphone,
physician camera + microphone, and the site's device agent: dermatoscope + stethoscope,
pre-encoded), the physician plays the four cabin tracks and the nurse the physician's
two over WHEP; the physician starts the recording (``POST
/api/consultations/{id}/recording``); media flow for ``--hold`` seconds, counted frame by
frame; the physician ends the consultation (within 10 s) and every client closes.

The bench samples the server every few seconds: RSS (``/proc``), open file descriptors
(``/proc/<pid>/fd``) and live asyncio tasks (the ``teleconsult_asyncio_tasks`` gauge of
``/metrics``). The run is cut into windows of min(5, M/3) minutes; the first window is the
warm-up.

A running consultation holds about 14 fds and 45 tasks, so while C slots run, fds and tasks
move by where each slot is in its cycle, not by what the server keeps. Their growth is read
at **quiet points** instead: at the end of every window, each slot finishes its consultation
and waits; once no room is open and the server's fds and tasks hold still, they are read, and
the slots go on (the windows' samples are taken while they run). The last quiet point is after
the run, every client gone.

JSON (contract keys):

* ``rss_growth_pct``: median RSS of the last window against the first after the warm-up, %;
* ``fd_growth``, ``tasks_growth``: open fds and live tasks at the last quiet point (after the
  run) against the first (after the warm-up), every client gone both times;
* ``delivery``: frames delivered / frames sent over every consultation's hold, all six tracks;
* ``rooms_left_open``: SFU rooms still open (``teleconsult_sfu_rooms``) after every
  consultation ended and every client left;
* ``client_saturated``: the clients could not keep up (their CPU near their cores, their
  event loops lagging, or their frames going out late), so figures may reflect the clients.

Also: ``cycles``, ``cycles_failed``, ``errors``, ``recordings_started``, ``ends_ok``, ``end_errors``,
per-kind delivery, the windows, ``quiet_points``, the server's tracebacks, ``machine``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from bench.consultations import Consultation, _clips, _setup_directory, _tokens, analyse
from bench.fuzz_target import Target
from bench.rtc import Player, Source, TickStats, cpu_seconds, machine, own_cpu_seconds

TARGETS = {"rss_growth_pct": 5.0, "fd_growth": 0, "tasks_growth": 0, "delivery": 0.99, "rooms_left_open": 0}
JOIN_S = 20.0
END_S = 10.0
QUIET_STILL_S = 1.5  # fds and tasks unchanged this long: what the server holds now, it keeps
QUIET_MAX_S = 20.0
LAG_SATURATED_MS = 100.0
CLIENT_LATE = 0.02


# -- a worker: slots of consultations, one after another ---------------------------------------
def _worker_main(base: str, slots: list[int], codec: str, hold: float, stop: Any, quiet: Any,
                 out: "mp.Queue[Any]", give_up_at: float) -> None:
    uvloop.run(_worker(base, slots, codec, hold, stop, quiet, out, give_up_at))


async def _lag(samples: list[float]) -> None:
    """How late this process's event loop wakes up (client saturation shows here first)."""
    loop = asyncio.get_running_loop()
    while True:
        t = loop.time()
        await asyncio.sleep(0.05)
        samples.append((loop.time() - t - 0.05) * 1000)


async def _cycle(http: aiohttp.ClientSession, base: str, slot: int, clips: dict[str, Any], stats: TickStats,
                 codec: str, hold: float, dummy: tuple[Player, Source]) -> dict[str, Any]:
    """One whole consultation; what it delivered and what failed."""
    ws_url = base.replace("http", "ws", 1).rstrip("/") + "/ws"
    c = Consultation(slot, clips, stats)
    c.consent_recording = True
    result: dict[str, Any] = {"slot": slot, "error": "", "recording": False, "ended": False,
                              "sent": {"video": 0, "audio": 0}, "delivered": {"video": 0, "audio": 0}}
    try:
        seats = await asyncio.wait_for(c.signal(http, ws_url), JOIN_S)
        await asyncio.wait_for(c.join(http, base, seats, codec), JOIN_S)
        deadline = time.monotonic() + JOIN_S
        while c.joined_at() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if c.joined_at() is None:
            raise RuntimeError("no first video frame on both sides within 20 s")
        doctor = _tokens().issue_access("physician", f"bench-dr-{slot}", specialties=[f"bench-{slot}"])
        async with http.post(f"{base}/api/consultations/{c.consultation_id}/recording", json={"action": "start"},
                             headers={"Authorization": f"Bearer {doctor}"}) as r:
            result["recording"] = r.status == 200
            if r.status != 200:
                raise RuntimeError(f"recording start: HTTP {r.status} {(await r.text())[:200]}")
        w0 = time.monotonic() + 1.0  # the recording's first keyframe
        w1 = w0 + hold
        for player in c.players.values():
            player.window = (w0, w1)
        await asyncio.sleep(max(0.0, w1 - time.monotonic()) + 0.4)
        counted = analyse([c], dummy[0], [dummy[1]], w0, w1)
        result["sent"], result["delivered"] = counted["sent"], counted["delivered"]
    except Exception as exc:  # noqa: BLE001 - reported with the cycle; the slot goes on
        result["error"] = f"{type(exc).__name__}: {exc}"[:300]
    finally:
        result["end_error"] = await _end(c)
        result["ended"] = not result["end_error"]
        await _close(c, http)
    return result


async def _end(c: Consultation) -> str:
    """The physician ends the consultation: "" when it did, else why not."""
    if c.physician is None or not c.consultation_id:
        return "no consultation to end"
    try:
        reply = await asyncio.wait_for(c.physician.call("consultation.end", consultation_id=c.consultation_id),
                                       END_S)
    except asyncio.TimeoutError:
        return f"consultation.end: no answer within {END_S:g} s"
    except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
        return f"consultation.end: {type(exc).__name__}: {exc}"[:300]
    return "" if reply.get("type") == "consultation.end.ok" else f"consultation.end: {json.dumps(reply)[:250]}"


async def _close(c: Consultation, http: aiohttp.ClientSession) -> None:
    """Every client of the consultation leaves (players, publishers, sockets), each bounded."""
    for closer in [p.close(http) for p in c.players.values()] + [p.close(http) for p in c.publishers]:
        try:
            await asyncio.wait_for(closer, END_S)
        except (asyncio.TimeoutError, aiohttp.ClientError, OSError):
            pass
    for source in c.sources.values():
        source.stop()
    for sock in c.sockets:
        sock.reader.cancel()
        try:
            await asyncio.wait_for(sock.ws.close(), END_S)
        except (asyncio.TimeoutError, aiohttp.ClientError, OSError):
            pass


async def _slot(http: aiohttp.ClientSession, base: str, slot: int, clips: dict[str, Any], stats: TickStats,
                codec: str, hold: float, stop: Any, quiet: Any, out: "mp.Queue[Any]", give_up_at: float,
                dummy: tuple[Player, Source]) -> None:
    while not stop.is_set() and time.time() < give_up_at:
        if quiet.value:
            out.put(("idle", {"slot": slot, "round": quiet.value}))
            while quiet.value and not stop.is_set() and time.time() < give_up_at:
                await asyncio.sleep(0.1)
            continue
        result = await _cycle(http, base, slot, clips, stats, codec, hold, dummy)
        out.put(("cycle", result))
        if result["error"]:
            await asyncio.sleep(1.0)  # a failing server is not hammered


async def _worker(base: str, slots: list[int], codec: str, hold: float, stop: Any, quiet: Any,
                  out: "mp.Queue[Any]", give_up_at: float) -> None:
    clips = _clips(codec)
    stats = TickStats()
    lags: list[float] = []
    lag_task = asyncio.ensure_future(_lag(lags))
    dummy = (Player("none"), Source("none", clips["camera"]))
    cpu0 = own_cpu_seconds()
    t0 = time.monotonic()
    # No kept-alive connections: at a quiet point the server's fds are what it keeps, not a pool's.
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    try:
        async with aiohttp.ClientSession(connector=connector) as http:
            await asyncio.gather(*(_slot(http, base, slot, clips, stats, codec, hold, stop, quiet, out, give_up_at,
                                         dummy) for slot in slots))
    finally:
        lag_task.cancel()
        await dummy[0].close()
        ordered = sorted(lags)
        out.put(("done", {"cpu_s": own_cpu_seconds() - cpu0, "wall_s": time.monotonic() - t0,
                          "lag_ms_p99": ordered[int(0.99 * (len(ordered) - 1))] if ordered else None,
                          "ticks": stats.ticks, "late": stats.late_over_5ms, "skipped": stats.skipped}))


# -- the run -------------------------------------------------------------------------------------
def _gauges(base: str) -> dict[str, float]:
    try:
        with urllib.request.urlopen(base.rstrip("/") + "/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        parts = line.split(" ")
        if len(parts) == 2 and not line.startswith("#") and "{" not in parts[0]:
            try:
                out[parts[0]] = float(parts[1])
            except ValueError:
                continue
    return out


def _fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def _median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and v == v]
    return statistics.median(values) if values else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def windows(samples: list[dict[str, Any]], minutes: float) -> list[dict[str, Any]]:
    """The run cut into windows of min(5, M/3) minutes, with the medians of their samples."""
    span = min(5.0, minutes / 3) * 60
    out = []
    k = 0
    while (k + 1) * span <= minutes * 60 + 1e-6:
        inside = [s for s in samples if k * span <= s["t"] < (k + 1) * span]
        out.append({"start_s": round(k * span, 1), "end_s": round((k + 1) * span, 1), "samples": len(inside),
                    "rss_mb": _round(_median([s["rss_mb"] for s in inside])), "fds": _median([s["fds"] for s in inside]),
                    "tasks": _median([s["tasks"] for s in inside]),
                    "live_rooms": _median([s["rooms"] for s in inside])})
        k += 1
    return out


def _settle(base: str, pid: int, target: Target, t0: float) -> dict[str, Any]:
    """Waits until no room is open and the server's fds and tasks hold still (at most QUIET_MAX_S), and
    reads them."""
    last: tuple[Any, ...] = ()
    still_since = time.monotonic()
    end = still_since + QUIET_MAX_S
    settled = False
    while True:
        fds = _fds(pid)  # before the scrape, whose own connection the server may not have closed yet
        gauges = _gauges(base)
        reading = (fds, gauges.get("teleconsult_asyncio_tasks"), gauges.get("teleconsult_sfu_rooms"))
        now = time.monotonic()
        if reading != last:
            last, still_since = reading, now
        elif reading[2] == 0 and now - still_since >= QUIET_STILL_S:
            settled = True
            break
        if now >= end:
            break
        time.sleep(0.25)
    return {"t": round(time.monotonic() - t0, 2), "fds": last[0], "tasks": last[1], "rooms": last[2],
            "rss_mb": round(target.rss_mb(), 1), "settled": settled}


def _quiet_point(base: str, pid: int, target: Target, quiet: Any, number: int, slots: int, hold: float,
                 out: "mp.Queue[Any]", cycles: list[dict[str, Any]], done: list[dict[str, Any]],
                 t0: float) -> dict[str, Any]:
    """Every slot ends its consultation and waits; what the server holds then; the slots go on."""
    quiet.value = number
    idle: set[int] = set()
    deadline = time.monotonic() + hold + 3 * JOIN_S + 2 * END_S + 30
    try:
        while len(idle) < slots and time.monotonic() < deadline:
            _drain(out, cycles, done, timeout=0.5, idle=(number, idle))
        point = _settle(base, pid, target, t0)
    finally:
        quiet.value = 0
    point.update({"number": number, "slots_idle": len(idle), "complete": len(idle) == slots and point["settled"]})
    return point


def run(args: argparse.Namespace) -> dict[str, Any]:
    target = Target({"TELECONSULT_SIGNALLING__OFFER_TIMEOUT_S": "60"})
    base = target.start()
    pid = target.pid
    ctx = mp.get_context("spawn")
    workers = max(1, min(args.workers, args.consultations))
    shares = [[i for i in range(args.consultations) if i % workers == w] for w in range(workers)]
    stop = ctx.Event()
    quiet = ctx.Value("i", 0)  # > 0: the number of the quiet point every slot must wait for
    out: "mp.Queue[Any]" = ctx.Queue()
    samples: list[dict[str, Any]] = []
    cycles: list[dict[str, Any]] = []
    done: list[dict[str, Any]] = []
    errors_logged: list[str] = []
    seconds = args.minutes * 60
    give_up_at = time.time() + seconds + 180  # workers stop by themselves even if this process died
    procs = [ctx.Process(target=_worker_main,
                         args=(base, share, args.codec, args.hold, stop, quiet, out, give_up_at),
                         daemon=True) for share in shares]
    span = min(5.0, args.minutes / 3) * 60
    every = max(1.0, min(5.0, span / 10))
    quiet_at = [k * span for k in range(1, len(windows([], args.minutes)))]  # each window's end but the last's
    quiet_points: list[dict[str, Any]] = []
    after: dict[str, Any] = {}
    cpu0 = cpu_seconds(pid)
    try:
        _setup_directory(base, args.consultations)
        t0 = time.monotonic()
        for p in procs:
            p.start()
        next_sample = t0
        last_print = t0
        while time.monotonic() - t0 < seconds:
            now = time.monotonic()
            if quiet_at and now - t0 >= quiet_at[0]:
                quiet_at.pop(0)
                quiet_points.append(_quiet_point(base, pid, target, quiet, len(quiet_points) + 1,
                                                 args.consultations, args.hold, out, cycles, done, t0))
                q = quiet_points[-1]
                print(f"  {q['t']:5.0f} s: quiet point {q['number']}: fds {q['fds']}, tasks {q['tasks']}, "
                      f"rooms {q['rooms']}{'' if q['complete'] else ' (incomplete)'}", file=sys.stderr, flush=True)
                next_sample = max(next_sample, time.monotonic())
                continue
            if now >= next_sample:
                fds = _fds(pid)
                gauges = _gauges(base)
                samples.append({"t": round(now - t0, 2), "rss_mb": target.rss_mb(), "fds": fds,
                                "tasks": gauges.get("teleconsult_asyncio_tasks"),
                                "rooms": gauges.get("teleconsult_sfu_rooms")})
                next_sample += every
            _drain(out, cycles, done)
            errors, _ = target.scan_log()
            errors_logged += [e.summary for e in errors]
            if now - last_print >= 15:
                last_print = now
                s = samples[-1] if samples else {}
                print(f"  {now - t0:5.0f} s: {len(cycles)} consultations done "
                      f"({sum(1 for c in cycles if c['error'])} failed), rss {s.get('rss_mb', 0):.0f} MB, "
                      f"fds {s.get('fds')}, tasks {s.get('tasks')}", file=sys.stderr, flush=True)
            if not target.alive():
                errors_logged.append(f"server exited with {target.exit_code()}")
                break
            time.sleep(0.2)
        stop.set()
        deadline = time.monotonic() + args.hold + 3 * JOIN_S + 2 * END_S + 30
        while len(done) < len(procs) and time.monotonic() < deadline:
            _drain(out, cycles, done, timeout=0.5)
            if not any(p.is_alive() for p in procs):
                _drain(out, cycles, done, timeout=0.5)
                break
        time.sleep(3.0)  # every client left: what the server still holds now, it keeps
        last = _settle(base, pid, target, t0)
        quiet_points.append({**last, "number": len(quiet_points) + 1, "slots_idle": args.consultations,
                             "complete": last["settled"] and len(done) == len(procs), "after_end": True})
        after = {"rooms_left_open": last["rooms"], "fds": last["fds"], "tasks": last["tasks"],
                 "rss_mb": last["rss_mb"],
                 "server_cpu_pct": round((cpu_seconds(pid) - cpu0) / max(1.0, time.monotonic() - t0) * 100, 1)}
        errors, _ = target.scan_log()
        errors_logged += [e.summary for e in errors]
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join(5)
        target.stop()
    return summarise(args, samples, cycles, done, after, errors_logged, quiet_points)


def _drain(out: "mp.Queue[Any]", cycles: list[dict[str, Any]], done: list[dict[str, Any]],
           timeout: float = 0.0, idle: tuple[int, set[int]] | None = None) -> None:
    """What the workers said: cycles, ends, and the slots waiting at quiet point ``idle[0]`` (into ``idle[1]``)."""
    while True:
        try:
            kind, body = out.get(timeout=timeout) if timeout else out.get_nowait()
        except Exception:  # noqa: BLE001 - queue.Empty
            return
        if kind == "idle":
            if idle is not None and body["round"] == idle[0]:
                idle[1].add(body["slot"])
        else:
            (cycles if kind == "cycle" else done).append(body)
        timeout = 0.0


def summarise(args: argparse.Namespace, samples: list[dict[str, Any]], cycles: list[dict[str, Any]],
              done: list[dict[str, Any]], after: dict[str, Any], errors_logged: list[str],
              quiet_points: list[dict[str, Any]]) -> dict[str, Any]:
    wins = windows(samples, args.minutes)
    first = wins[1] if len(wins) > 1 else (wins[0] if wins else None)
    last = wins[-1] if wins else None
    quiet = [q for q in quiet_points if q["complete"]]

    def growth(key: str) -> float | None:
        """The last quiet point against the first (after the warm-up), when both were reached."""
        if len(quiet) < 2 or not quiet_points[-1]["complete"] or quiet[0][key] is None or quiet[-1][key] is None:
            return None
        return round(quiet[-1][key] - quiet[0][key], 2)

    rss_growth = None
    if first and last and first["rss_mb"] and last["rss_mb"] is not None:
        rss_growth = round((last["rss_mb"] - first["rss_mb"]) / first["rss_mb"] * 100, 2)
    sent = {k: sum(c["sent"][k] for c in cycles) for k in ("video", "audio")}
    delivered = {k: sum(c["delivered"][k] for c in cycles) for k in ("video", "audio")}
    total = sent["video"] + sent["audio"]
    cpu = sum(d["cpu_s"] for d in done)
    wall = max([d["wall_s"] for d in done] or [1.0])
    capacity = 100.0 * (os.cpu_count() or 1)
    client_cpu_pct = cpu / wall * 100 if wall else 0.0
    lag = max([d["lag_ms_p99"] or 0.0 for d in done] or [0.0])
    ticks = sum(d["ticks"] for d in done)
    late = sum(d["late"] for d in done) / ticks if ticks else 0.0
    saturated = bool(len(done) < max(1, min(args.workers, args.consultations)) or lag > LAG_SATURATED_MS
                     or late > CLIENT_LATE or client_cpu_pct > 0.85 * capacity)
    return {
        "minutes": args.minutes, "consultations": args.consultations, "hold_s": args.hold, "codec": args.codec,
        "window_minutes": round(min(5.0, args.minutes / 3), 3),
        "rss_growth_pct": rss_growth, "fd_growth": growth("fds"), "tasks_growth": growth("tasks"),
        "delivery": round(sum(delivered.values()) / total, 4) if total else None,
        "rooms_left_open": after.get("rooms_left_open"),
        "client_saturated": saturated,
        "delivery_video": round(delivered["video"] / sent["video"], 4) if sent["video"] else None,
        "delivery_audio": round(delivered["audio"] / sent["audio"], 4) if sent["audio"] else None,
        "frames_sent": sent, "frames_delivered": delivered,
        "cycles": len(cycles), "cycles_failed": sum(1 for c in cycles if c["error"]),
        "recordings_started": sum(1 for c in cycles if c["recording"]),
        "ends_ok": sum(1 for c in cycles if c["ended"]),
        "errors": sorted({c["error"] for c in cycles if c["error"]})[:10],
        "end_errors": sorted({c["end_error"] for c in cycles if c.get("end_error") and not c["error"]})[:10],
        "server_tracebacks": len(errors_logged), "server_traceback_kinds": sorted(set(errors_logged))[:10],
        "after_end": after,
        "client": {"cpu_pct": round(client_cpu_pct, 1), "capacity_pct": capacity, "loop_lag_ms_p99": round(lag, 1),
                   "late_fraction": round(late, 4), "workers_reported": len(done)},
        "windows": wins, "quiet_points": quiet_points, "samples": samples, "targets": TARGETS,
        "machine": machine(),
    }


def report(r: dict[str, Any]) -> None:
    print(f"bench.soak: {r['minutes']} min, {r['consultations']} concurrent consultations, hold {r['hold_s']} s, "
          f"windows of {r['window_minutes']} min (machine: {r['machine']['cores']} cores, shared)")
    print(f"{'window':>13} {'samples':>7} {'rss MB':>8} {'fds':>6} {'tasks':>6} {'rooms':>6}")
    for i, w in enumerate(r["windows"]):
        label = f"{w['start_s']:.0f}-{w['end_s']:.0f} s"
        print(f"{label:>13} {w['samples']:>7} {w['rss_mb']!s:>8.8} {w['fds']!s:>6} {w['tasks']!s:>6} "
              f"{w['live_rooms']!s:>6}{'  (warm-up)' if i == 0 else ''}")
    print("quiet points (every slot between consultations, no room open; the last after the run):")
    for q in r["quiet_points"]:
        print(f"  {q['t']:7.0f} s: fds {q['fds']}, tasks {q['tasks']}, rooms {q['rooms']}, rss {q['rss_mb']} MB"
              f"{'' if q['complete'] else '  (incomplete: not counted)'}")
    print(f"consultations: {r['cycles']} ({r['cycles_failed']} failed), recordings started {r['recordings_started']}, "
          f"ended ok {r['ends_ok']}")
    for e in r["errors"][:5]:
        print(f"  error: {e}")
    for e in r["end_errors"][:5]:
        print(f"  end: {e}")
    t = TARGETS

    def verdict(ok: bool | None) -> str:
        return "n/a" if ok is None else ("OK" if ok else "MISSED")
    v = r["rss_growth_pct"]
    print(f"rss_growth_pct: {v} (< {t['rss_growth_pct']}) {verdict(None if v is None else v < t['rss_growth_pct'])}")
    for key in ("fd_growth", "tasks_growth"):
        v = r[key]
        print(f"{key}: {v} (<= 0) {verdict(None if v is None else v <= 0)}")
    v = r["delivery"]
    print(f"delivery: {v} (>= {t['delivery']}) {verdict(None if v is None else v >= t['delivery'])}")
    v = r["rooms_left_open"]
    print(f"rooms_left_open: {v} (0) {verdict(None if v is None else v == 0)}")
    print(f"server tracebacks: {r['server_tracebacks']}")
    print(f"client_saturated: {str(r['client_saturated']).lower()} (client cpu {r['client']['cpu_pct']} % of "
          f"{r['client']['capacity_pct']:.0f} %, loop lag p99 {r['client']['loop_lag_ms_p99']} ms, "
          f"late frames {r['client']['late_fraction']})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, required=True)
    parser.add_argument("--consultations", type=int, required=True, help="consultations at once")
    parser.add_argument("--hold", type=float, default=20.0, help="seconds of media per consultation")
    parser.add_argument("--workers", type=int, default=2, help="client processes")
    parser.add_argument("--codec", choices=["h264", "vp8"], default="h264")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.consultations < 1 or args.hold <= 0:
        parser.error("--minutes, --consultations and --hold must be positive")
    _clips(args.codec)  # encoded once, before anything is measured
    result = run(args)
    report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
