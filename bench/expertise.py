"""Télé-expertise at volume: cases with attachments across experts, inboxes, the sweeper.

    python -m bench.expertise [--store memory|sqlite|redis] [--cases N] [--experts E] [--json FILE]

Drives ``signalling.expertise.ExpertiseService`` in this process on the chosen case store
with the journal that goes with it: ``memory`` (the in-process structure, a file journal),
``sqlite`` (what ``serve`` runs with the memory store: sealed, fsync'd), ``redis`` (its own
``redis-server``, stopped by PID; sealed cases and the Redis journal). Each case is created
with its answers, gets one uploaded photo (cleaned and sealed, as over REST) and is
submitted; ``--pool`` of them wait in the dermatology pool, the others are named to one
of the experts, who takes them. Then it measures an expert's inbox (the pool's open cases
plus their own), runs two sweepers at once past every due date, and checks that every
open case was flagged exactly once and that no case or attachment was lost.

JSON keys: ``cases``, ``create_ms_p99``, ``inbox_ms_p99``, ``inbox_cases``,
``escalations_exactly_once``, ``lost``. Targets: inbox p99 <= 100 ms, nothing lost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.redis_server import start_redis
from config.settings import ExpertiseSettings
from core.auth import Principal
from core.keyring import MasterKey
from core.sealing import ValueSealer
from core.vocabulary import Role
from media.recording.vault import Vault
from signalling.directory import Clinician, Directory
from signalling.expertise.attachments import AttachmentBlobs
from signalling.expertise.case import Action, CaseState
from signalling.expertise.questionnaire import Questionnaires
from signalling.expertise.service import ExpertiseService
from signalling.expertise.store import CaseStore, MemoryCaseStore, RedisCaseStore, SqliteCaseStore
from signalling.journal import FileJournal, Journal, RedisJournal

ANSWERS: dict[str, Any] = {"location": "face", "duration_weeks": 6, "evolution": "growing", "abcde_asymmetry": True,
                           "abcde_border": False, "abcde_colour": True, "abcde_diameter_mm": 7,
                           "abcde_evolving": True}
BATCH = 50
"""Cases created concurrently (the file journal's group commit shares one fsync between them)."""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))] if ordered else 0.0


def photo() -> bytes:
    import io

    from PIL import Image
    out = io.BytesIO()
    Image.new("RGB", (320, 240), (180, 120, 100)).save(out, "JPEG", quality=90)
    return out.getvalue()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-expertise-"))
    redis_proc: subprocess.Popen[bytes] | None = None
    client: Any = None
    try:
        store: CaseStore | None = None
        journal: Journal
        sealer = ValueSealer(MasterKey.generate())
        if args.store == "redis":
            import redis.asyncio as aioredis
            redis_proc, url = start_redis(tmp)
            client = aioredis.Redis.from_url(url, decode_responses=True)
            store, journal = RedisCaseStore(client, "b:", sealer), RedisJournal(client, "b:")
        elif args.store == "sqlite":
            store, journal = SqliteCaseStore(tmp / "cases", sealer), FileJournal(str(tmp / "journal"))
        else:
            store, journal = MemoryCaseStore(), FileJournal(str(tmp / "journal"))
        experts = [f"ex-{i:02d}" for i in range(args.experts)]
        directory = Directory({}, {e: Clinician(e, e, ("dermatology",)) for e in experts})

        async def emit(targets: Any, event: dict[str, Any]) -> None:
            return None

        async def no_consultation(principal: Principal, cid: str) -> str | None:
            return None

        def service() -> ExpertiseService:
            return ExpertiseService(store=store, journal=journal, questionnaires=Questionnaires.load(),
                                    blobs=AttachmentBlobs.for_data_dir(tmp / "data", Vault(None)),
                                    settings=ExpertiseSettings(), clock=time.time, emit=emit,
                                    directory=lambda: directory, stills=lambda: None,
                                    consultation_site=no_consultation)
        svc = service()
        image = photo()
        nurse = Principal("nurse-1", Role.NURSE, "ehpad-demo")
        created: dict[str, tuple[str | None, int]] = {}
        create_ms: list[float] = []

        async def one(i: int) -> None:
            named = None if i < args.pool else experts[i % len(experts)]
            body = {"specialty": "dermatology", "patient_ref": f"p-{i}", "consent": True, "answers": ANSWERS,
                    "urgency": "urgent" if i % 5 == 0 else "standard", **({"expert": named} if named else {})}
            started = time.perf_counter()
            case = await svc.create(nurse, body)
            await svc.add_upload(nurse, case.id, image, "close_up")
            await svc.add_upload(nurse, case.id, image, "distance")
            await svc.act(nurse, case.id, Action.SUBMIT)
            create_ms.append((time.perf_counter() - started) * 1000)
            if named is not None:
                await svc.act(svc.resolve(Principal(named, Role.PHYSICIAN)), case.id, Action.TAKE)
            created[case.id] = (named, 2)

        t0 = time.perf_counter()
        for start in range(0, args.cases, BATCH):
            await asyncio.gather(*(one(i) for i in range(start, min(args.cases, start + BATCH))))
        create_s = time.perf_counter() - t0

        inbox_ms: list[float] = []
        sizes: list[int] = []
        for k in range(args.inbox_reads):
            who = svc.resolve(Principal(experts[k % len(experts)], Role.PHYSICIAN))
            started = time.perf_counter()
            rows = await svc.list(who, "inbox", limit=1000)
            inbox_ms.append((time.perf_counter() - started) * 1000)
            sizes.append(len(rows))

        # Two sweepers at once, past every due date: each open case flagged exactly once.
        far = time.time() + 30 * 86400
        flagged = await asyncio.gather(service().sweep(now=far, limit=args.cases),
                                       service().sweep(now=far, limit=args.cases))
        if isinstance(journal, RedisJournal):
            entries = [json.loads(f["e"]) for _, f in await client.xrange("b:journal")]
        else:
            await journal.close()
            entries = [json.loads(line) for line in (tmp / "journal" / "journal.jsonl").read_text().splitlines()]
        overdue = Counter(e["case_id"] for e in entries if e["act"] == "case.overdue")
        lost = 0
        for start in range(0, len(created), 500):
            ids = list(created)[start:start + 500]
            found = {v.doc["id"]: v.doc for v in await store.get_many(ids)}
            for cid in ids:
                doc = found.get(cid)
                if doc is None or len(doc["attachments"]) != created[cid][1] or doc["state"] not in (
                        CaseState.SUBMITTED.value, CaseState.QUESTION.value):
                    lost += 1
        exactly_once = len(overdue) == len(created) and set(overdue.values()) == {1} and sum(flagged) == len(created)
        return {"store": args.store, "cases": len(created), "experts": len(experts), "pool": args.pool,
                "create_s": round(create_s, 2), "create_ms_p50": round(pct(create_ms, 50), 2),
                "create_ms_p99": round(pct(create_ms, 99), 2), "inbox_cases": max(sizes, default=0),
                "inbox_ms_p50": round(pct(inbox_ms, 50), 2), "inbox_ms_p99": round(pct(inbox_ms, 99), 2),
                "flagged": sum(flagged), "escalations_exactly_once": exactly_once, "lost": lost}
    finally:
        if store is not None:
            await store.close()
        if client is not None:
            await client.aclose()
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.expertise", description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=["memory", "sqlite", "redis"], default="memory")
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--experts", type=int, default=50)
    parser.add_argument("--pool", type=int, default=1000, help="cases left in the specialty's pool (open)")
    parser.add_argument("--inbox-reads", type=int, default=200)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)
    args.pool = min(args.pool, args.cases)
    result = asyncio.run(run(args))
    print(json.dumps(result, indent=2))
    ok = result["inbox_ms_p99"] <= 100 and result["lost"] == 0 and result["escalations_exactly_once"]
    print(f"target: inbox p99 {result['inbox_ms_p99']} ms with {result['inbox_cases']} cases (<= 100 ms), "
          f"lost {result['lost']} (0), escalations exactly once: {result['escalations_exactly_once']} "
          f"{'OK' if ok else 'MISSED'}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
