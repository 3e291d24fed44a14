"""Fuzzing, kept (issue 17): hostile inputs against a live server, surface by surface.

    python -m bench.fuzz --surface ws|sdp|udp|rest|all --count N [--seconds S] [--json FILE]
                         [--seed N] [--findings FILE.md]

For each surface (``all``: ws, sdp, udp, rest in turn) a fresh ``teleconsult serve``
runs in a child process on loopback (temporary data dir, JSON logs), and ``--count``
inputs are generated from grammars and mutations (seeded: ``--seed`` replays a run) and
sent in batches (:mod:`bench.fuzz_ws`, :mod:`bench.fuzz_sdp`, :mod:`bench.fuzz_udp`,
:mod:`bench.fuzz_rest`). After each batch: what the surface checks itself (the call's
media, teardown), then ``/healthz`` and (at most every 2 s, at one of 8 sites in turn:
sites have a rate of visit requests) one whole legitimate consultation (nurse request,
physician accept, end), every step within 5 s; then the server's log is read for
tracebacks, each filed under the input that caused it.

``--seconds`` caps the whole run (shared among the surfaces; each stops by itself when
its share is spent, and fuzzes at least 5 s after its setup however slow the start). The server is stopped by its PID; a server that died is a crash,
restarted (at most 3 times a surface).

JSON (contract keys): ``seed``, ``count``, ``surfaces: {name: {inputs, crashes,
server_errors, unhandled_exceptions, hangs, rss_growth_mb, ...}}``:

* ``crashes``: the server process died;
* ``server_errors``: 5xx answers (and, on the socket, ``internal`` errors and 1011 closes);
* ``unhandled_exceptions``: ERROR records with a traceback in the server's log;
* ``hangs``: no answer within 5 s (to an input, or to a check between batches);
* ``rss_growth_mb``: the server's RSS at the end minus after the warm-up, the first
  :data:`WARMUP_SHARE` of the inputs (at least one batch, at most :data:`WARMUP_MAX`): the first
  use of a route loads what it needs once (FHIR's models, the PDF fonts: ~35 MB that stay, whatever
  the count), where a leak goes on growing with the inputs. ``rss_warmup_mb``: what the warm-up
  took, after its first batch.

Each surface also lists its distinct ``findings`` (kind, where, the input, the
traceback or answer), written to ``--findings`` as they are found.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import aiohttp
import uvloop

from bench.fuzz_grammar import Grammar
from bench.fuzz_rest import RestSurface
from bench.fuzz_sdp import SdpSurface, offer_templates
from bench.fuzz_target import (HANG_S, CheckFailed, Context, Finding, Ledger, Surface, Target, healthz, legit_round,
                               metrics)
from bench.fuzz_udp import UdpSurface
from bench.fuzz_ws import WsSurface
from bench.rtc import KEY, machine
from config.settings import AuthSettings
from core.auth import TokenService

SURFACES: dict[str, Callable[[Context], Surface]] = {"ws": WsSurface, "sdp": SdpSurface, "udp": UdpSurface,
                                                     "rest": RestSurface}
MAX_CRASHES = 3
MAX_FUZZER_ERRORS = 20
DEFAULT_SECONDS = 6 * 3600.0
TEARDOWN_S = 60.0
CHECK_EVERY_S = 2.0
MIN_FUZZ_S = 5.0
CHECK_SITES = 8
WARMUP_SHARE = 0.05
WARMUP_MAX = 5000


class FindingsFile:
    """Distinct failures appended to a Markdown file as they are found."""

    def __init__(self, path: str | None, seed: int, argv: list[str]) -> None:
        self.path = Path(path) if path else None
        if self.path is not None:
            self.path.write_text(f"# bench.fuzz findings\n\nRun: `python -m bench.fuzz {' '.join(argv)}` "
                                 f"(seed {seed}), started {time.strftime('%Y-%m-%d %H:%M:%S')}.\n\n")

    def __call__(self, surface: str, finding: Finding) -> None:
        print(f"  [{surface}] new finding: {finding.kind} at {finding.where}: "
              f"{finding.detail.splitlines()[0][:150] if finding.detail else ''}", file=sys.stderr, flush=True)
        if self.path is None:
            return
        # Inputs hold lone surrogates on purpose: written escaped, never refused.
        with self.path.open("a", errors="backslashreplace") as f:
            f.write(f"## [{surface}] {finding.kind}: {finding.where}\n\n"
                    f"Input:\n\n```\n{finding.input[:1500]}\n```\n\nWhat happened:\n\n```\n{finding.detail}\n```\n\n")

    def summary(self, result: dict[str, Any]) -> None:
        if self.path is None:
            return
        with self.path.open("a", errors="backslashreplace") as f:
            f.write("## Summary (counts per distinct finding)\n\n| surface | kind | where | count |\n|---|---|---|---|\n")
            for name, s in result["surfaces"].items():
                for finding in s["findings"]:
                    f.write(f"| {name} | {finding['kind']} | {finding['where']} | {finding['count']} |\n")
            f.write("\n")


class Checker:
    """The check between batches: ``/healthz`` every time, and a legitimate consultation at
    most every :data:`CHECK_EVERY_S`, at one of :data:`CHECK_SITES` sites in turn (a site may
    request only so many visits a minute). A timeout is a hang, anything else a failure."""

    def __init__(self) -> None:
        self.rounds = 0
        self.last = -CHECK_EVERY_S

    async def __call__(self, ctx: Context, force: bool = False) -> None:
        try:
            await healthz(ctx.http, ctx.base)
            if force or time.monotonic() - self.last >= CHECK_EVERY_S:
                self.last = time.monotonic()
                self.rounds += 1
                ctx.ledger.count("legit_rounds")
                await legit_round(ctx.http, ctx.base, ctx.tokens, f"check{self.rounds % CHECK_SITES}")
        except CheckFailed as exc:
            if exc.hang:
                ctx.ledger.hang(f"check: {exc.step}", "", exc.detail)
            else:
                ctx.ledger.count("legit_failures")
                ctx.ledger.found("legit_failure", f"check: {exc.step}", "", exc.detail)


async def guarded(ledger: Ledger, what: str, coro: Any, timeout: float) -> bool:
    """Run a surface step; a failure of the fuzzer itself is recorded, never raised."""
    try:
        await asyncio.wait_for(coro, timeout)
        return True
    except CheckFailed as exc:
        if exc.hang:
            ledger.hang(f"{what}: {exc.step}", "", exc.detail)
        else:
            ledger.count("legit_failures")
            ledger.found("legit_failure", f"{what}: {exc.step}", "", exc.detail)
    except asyncio.TimeoutError:
        ledger.hang(what, "", f"the {what} step did not finish within {timeout:g} s")
    except Exception as exc:  # noqa: BLE001 - the fuzzer's own failure: kept, the run goes on
        ledger.count("fuzzer_errors")
        ledger.found("fuzzer_error", what, "", "".join(traceback.format_exception(exc))[-3500:])
    return False


async def rooms_open(ctx: Context) -> float | None:
    """SFU rooms still open, polled for up to 5 s until none is."""
    deadline = time.monotonic() + HANG_S
    rooms: float | None = None
    while time.monotonic() < deadline:
        try:
            rooms = (await metrics(ctx.http, ctx.base)).get("teleconsult_sfu_rooms")
        except CheckFailed:
            return None
        if not rooms:
            return rooms
        await asyncio.sleep(0.25)
    return rooms


async def run_surface(name: str, count: int, seconds: float, seed: int, offers: dict[str, str],
                      on_finding: FindingsFile) -> Ledger:
    ledger = Ledger(name, on_finding=on_finding)
    grammar = Grammar(random.Random(f"{seed}:{name}"))
    tokens = TokenService(AuthSettings(signing_key=KEY), tempfile.gettempdir())
    target = Target()
    started = time.monotonic()
    deadline = started + seconds
    base = target.start()
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=None)
    rss_before: float | None = None
    rss_first: float | None = None
    warmup = min(WARMUP_MAX, int(count * WARMUP_SHARE))
    log_bytes = 0
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        ctx = Context(base, http, tokens, grammar, ledger, offers)
        surface = SURFACES[name](ctx)
        check = Checker()
        try:
            await guarded(ledger, "first check", check(ctx, force=True), 60)
            await guarded(ledger, "setup", surface.setup(), 60)
            ledger.attribute(*target.scan_log())
            # A slow start (a loaded machine) must not eat the whole share: some fuzzing always.
            deadline = max(deadline, time.monotonic() + MIN_FUZZ_S)
            batch = max(1, min(surface.batch_size, count // 10 or 1))
            last_print = 0.0
            while ledger.inputs < count and time.monotonic() < deadline:
                n = min(batch, count - ledger.inputs)
                await guarded(ledger, "batch", surface.run_batch(n, deadline), max(60.0, n * HANG_S * 2))
                if target.alive():
                    await guarded(ledger, "between batches", surface.between(), 60)
                    await check(ctx, force=ledger.inputs >= count)
                ledger.attribute(*target.scan_log())
                if not target.alive():
                    ledger.crashes += 1
                    last = ledger.batch[-1] if ledger.batch else None
                    ledger.found("crash", last.where if last else "(unknown)", last.text if last else "",
                                 f"server exited with {target.exit_code()}\n--- log tail ---\n{target.log_tail()}")
                    log_bytes += target.log_bytes()
                    target.stop()
                    if ledger.crashes > MAX_CRASHES:
                        break
                    ctx.base = target.start()
                    rss_before = rss_first = None
                    warmup = ledger.inputs
                    await guarded(ledger, "setup after a crash", surface.setup(), 60)
                    continue
                if int(ledger.extra.get("fuzzer_errors", 0)) > MAX_FUZZER_ERRORS:
                    break
                if rss_first is None:
                    rss_first = target.rss_mb()
                if rss_before is None and ledger.inputs >= warmup:
                    rss_before = target.rss_mb()
                    ledger.extra["rss_warmup_mb"] = round(rss_before - rss_first, 1)
                now = time.monotonic()
                if now - last_print > 10:
                    last_print = now
                    print(f"  [{name}] {ledger.inputs}/{count} inputs, {now - started:.0f} s, "
                          f"5xx {ledger.server_errors}, tracebacks {ledger.unhandled_exceptions}, "
                          f"hangs {ledger.hangs}, rss {target.rss_mb():.0f} MB", file=sys.stderr, flush=True)
        finally:
            await guarded(ledger, "teardown", surface.teardown(), TEARDOWN_S)
            if target.alive():
                ledger.extra["rooms_left_open"] = await rooms_open(ctx)
                try:
                    m = await metrics(ctx.http, ctx.base)
                    ledger.extra["server_tasks_at_end"] = m.get("teleconsult_asyncio_tasks")
                    ledger.extra["server_open_fds_at_end"] = m.get("process_open_fds")
                except CheckFailed:
                    pass
            await asyncio.sleep(1.0)
            ledger.attribute(*target.scan_log())
            if target.alive() and rss_before is not None:
                ledger.rss_growth_mb = round(target.rss_mb() - rss_before, 1)
                ledger.extra["server_rss_mb"] = round(target.rss_mb(), 1)
            ledger.extra["log_bytes"] = log_bytes + target.log_bytes()
            ledger.extra["seconds"] = round(time.monotonic() - started, 1)
            ledger.extra["inputs_per_s"] = round(ledger.inputs / max(1e-3, time.monotonic() - started), 1)
            target.stop()
    return ledger


async def run(args: argparse.Namespace, findings: FindingsFile) -> dict[str, Any]:
    names = list(SURFACES) if args.surface == "all" else [args.surface]
    offers = await offer_templates()
    started = time.monotonic()
    result: dict[str, Any] = {"seed": args.seed, "count": args.count, "surfaces": {}, "hang_s": HANG_S,
                              "machine": machine()}
    for i, name in enumerate(names):
        left = args.seconds - (time.monotonic() - started)
        share = max(5.0, left / (len(names) - i))
        print(f"[{name}] up to {args.count} inputs, up to {share:.0f} s", file=sys.stderr, flush=True)
        ledger = await run_surface(name, args.count, share, args.seed, offers, findings)
        result["surfaces"][name] = ledger.to_json()
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def clean(s: dict[str, Any]) -> bool:
    return not (s["crashes"] or s["server_errors"] or s["unhandled_exceptions"] or s["hangs"])


def report(result: dict[str, Any]) -> None:
    print(f"bench.fuzz seed {result['seed']}, count {result['count']}, {result['seconds']} s "
          f"(machine: {result['machine']['cores']} cores, shared)")
    print(f"{'surface':<8} {'inputs':>7} {'crashes':>7} {'5xx':>5} {'tracebacks':>10} {'hangs':>5} "
          f"{'rss MB':>7}  notes")
    for name, s in result["surfaces"].items():
        notes = []
        if "negotiated" in s:
            notes.append(f"negotiated {s['negotiated']}")
        for key in ("abnormal_closes", "legit_failures", "media_stalls", "rooms_left_open", "fuzzer_errors",
                    "warning_tracebacks", "bad_error_shape"):
            if s.get(key):
                notes.append(f"{key} {s[key]}")
        notes.append(f"{len(s['findings'])} distinct findings")
        print(f"{name:<8} {s['inputs']:>7} {s['crashes']:>7} {s['server_errors']:>5} {s['unhandled_exceptions']:>10} "
              f"{s['hangs']:>5} {s['rss_growth_mb']!s:>7}  {', '.join(notes)}")
    ok = all(clean(s) for s in result["surfaces"].values())
    print(f"clean (0 crashes, 0 5xx, 0 tracebacks, 0 hangs on every surface): {'yes' if ok else 'no'}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--surface", choices=[*SURFACES, "all"], default="all")
    parser.add_argument("--count", type=int, default=1000, help="inputs per surface")
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS,
                        help="cap on the whole run (shared among the surfaces)")
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--seed", type=int, default=None, help="replay a run (default: a new seed, printed)")
    parser.add_argument("--findings", metavar="FILE.md", help="distinct failures, written as they are found")
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2 ** 31)
    if args.count < 1 or args.seconds <= 0:
        parser.error("--count and --seconds must be positive")
    print(f"seed {args.seed}", file=sys.stderr, flush=True)
    findings = FindingsFile(args.findings, args.seed, argv)
    result = uvloop.run(run(args, findings))
    findings.summary(result)
    report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
