"""The audit journal: an append-only record of every act, with time, actor and ids.

Acts (others may add their own, lower-case dotted names): ``visit.checkin``,
``consent``, ``offer``, ``offer.accept``, ``offer.decline``, ``offer.timeout``,
``offer.vanished``, ``consultation.start``, ``consultation.end``,
``consultation.cancel``, ``consultation.expire``, ``consultation.fail``,
``report.save``, ``recording.start``, ``recording.stop``, ``still.capture``,
``recording.access``, ``journal.read``.

An entry holds ids and short codes only, never clinical text: values must be
strings of at most 128 characters, numbers, booleans or null, and the clinical
field names (``patient_ref``, ``ins``, ``reason``, ``report``...) are refused.

Backends: :class:`FileJournal` (JSON lines under ``data_dir``; each append
returns once the line is written and fsync'd; concurrent appends share one
fsync) and :class:`RedisJournal` (a stream per consultation plus one global
stream). Other packages call ``app[signalling.appkeys.SIGNALLING].journal.append(...)``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Protocol

_ACT = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")
FORBIDDEN_KEYS = frozenset({"patient_ref", "ins", "reason", "report", "findings", "conclusion",
                            "prescriptions", "follow_up", "text", "name"})
JournalValue = str | int | float | bool | None


class JournalError(ValueError):
    """An entry that would break the journal's rules (clinical text, bad names)."""


def make_entry(act: str, actor: str, consultation_id: str | None, ids: dict[str, JournalValue],
               now: float) -> dict[str, Any]:
    if not _ACT.match(act):
        raise JournalError(f"act {act!r} must be a lower-case dotted name")
    entry: dict[str, Any] = {"ts": now, "act": act, "actor": actor, "consultation_id": consultation_id}
    for key, value in ids.items():
        if key in FORBIDDEN_KEYS or key in entry:
            raise JournalError(f"{key!r} may not go in the journal")
        if isinstance(value, str) and len(value) > 128:
            raise JournalError(f"{key!r}: journal values are ids or codes (<= 128 characters)")
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise JournalError(f"{key!r}: journal values are strings, numbers, booleans or null")
        entry[key] = value
    if not isinstance(actor, str) or len(actor) > 128:
        raise JournalError("actor must be an id")
    return entry


class Journal(Protocol):
    async def append(self, act: str, *, actor: str, consultation_id: str | None = None,
                     **ids: JournalValue) -> dict[str, Any]: ...
    async def read(self, consultation_id: str) -> list[dict[str, Any]]: ...
    async def close(self) -> None: ...


class FileJournal:
    """JSON lines in ``<data_dir>/journal.jsonl``, fsync'd before ``append`` returns."""

    def __init__(self, data_dir: str, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(data_dir) / "journal.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._pending: list[tuple[bytes, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def append(self, act: str, *, actor: str, consultation_id: str | None = None,
                     **ids: JournalValue) -> dict[str, Any]:
        entry = make_entry(act, actor, consultation_id, ids, self.clock())
        line = (json.dumps(entry, separators=(",", ":")) + "\n").encode()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((line, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._flush())
        await future
        return entry

    async def _flush(self) -> None:
        """Group commit: write what is pending, one fsync, wake those who waited; repeat."""
        async with self._lock:
            while self._pending:
                batch, self._pending = self._pending, []
                data = b"".join(line for line, _ in batch)
                try:
                    await asyncio.to_thread(self._write, data)
                except OSError as exc:
                    for _, f in batch:
                        if not f.done():
                            f.set_exception(exc)
                    continue
                for _, f in batch:
                    if not f.done():
                        f.set_result(None)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)

    async def read(self, consultation_id: str) -> list[dict[str, Any]]:
        def scan() -> list[dict[str, Any]]:
            out = []
            needle = json.dumps(consultation_id)
            with open(self.path, "rb") as f:
                for line in f:
                    if needle.encode() in line:
                        try:
                            entry = json.loads(line)
                        except ValueError:
                            continue  # a torn last line after a crash
                        if entry.get("consultation_id") == consultation_id:
                            out.append(entry)
            return out
        return await asyncio.to_thread(scan)

    async def close(self) -> None:
        if self._writer is not None:
            await asyncio.shield(self._writer)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class RedisJournal:
    """Streams ``P journal`` (everything) and ``P journal:<consultation>``; never trimmed.

    Durability is Redis's: run it with ``appendonly yes`` (``appendfsync always``
    for an fsync per act)."""

    def __init__(self, redis: Any, prefix: str, clock: Callable[[], float] = time.time) -> None:
        self.redis = redis
        self.prefix = prefix
        self.clock = clock

    async def append(self, act: str, *, actor: str, consultation_id: str | None = None,
                     **ids: JournalValue) -> dict[str, Any]:
        entry = make_entry(act, actor, consultation_id, ids, self.clock())
        fields = {"e": json.dumps(entry, separators=(",", ":"))}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self.prefix + "journal", fields)
            if consultation_id:
                pipe.xadd(self.prefix + f"journal:{consultation_id}", fields)
            await pipe.execute()
        return entry

    async def read(self, consultation_id: str) -> list[dict[str, Any]]:
        rows = await self.redis.xrange(self.prefix + f"journal:{consultation_id}")
        return [json.loads(fields["e"]) for _, fields in rows]

    async def close(self) -> None:
        pass
