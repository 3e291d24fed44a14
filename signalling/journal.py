"""The audit journal: an append-only record of every act, with time, actor and ids.

Acts are the members of :class:`core.vocabulary.Act` (lower-case dotted names);
any other act is refused.

An entry holds ids and short codes only, never clinical text: values must be
strings of at most 128 characters, numbers, booleans or null, and the clinical
field names (``patient_ref``, ``ins``, ``reason``, ``report``...) are refused.

Entries are read back by their subject (:class:`JournalKey`). Every entry has a
``consultation_id`` (null when the act is about no consultation); an entry about
another subject (``append_about(JournalKey.case(...), ...)``: a télé-expertise
case) also holds ``<subject>_id``, e.g. ``case_id``.

Backends: :class:`FileJournal` (JSON lines under ``data_dir``; each append
returns once the line is written and fsync'd; concurrent appends share one
fsync) and :class:`RedisJournal` (a stream per subject plus one global
stream). Other packages call ``app[signalling.appkeys.SIGNALLING].journal.append(...)``.
"""

from __future__ import annotations

import abc
import asyncio
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from core.vocabulary import Act, CaseId, ConsultationId, JournalSubject

FORBIDDEN_KEYS = frozenset({"patient_ref", "ins", "reason", "report", "findings", "conclusion",
                            "prescriptions", "follow_up", "text", "name"})
JournalValue = str | int | float | bool | None
MAX_VALUE_CHARS = 128


class JournalError(ValueError):
    """An entry that would break the journal's rules (unknown act, clinical text, bad names)."""


@dataclass(frozen=True)
class JournalKey:
    """What entries are read back by: a subject and its id."""

    subject: JournalSubject
    id: str

    @classmethod
    def consultation(cls, consultation_id: ConsultationId) -> JournalKey:
        return cls(JournalSubject.CONSULTATION, consultation_id)

    @classmethod
    def case(cls, case_id: CaseId) -> JournalKey:
        return cls(JournalSubject.CASE, case_id)

    @property
    def field(self) -> str:
        """The entry field holding the id: ``consultation_id``, ``case_id``, ``principal_id``."""
        return subject_field(self.subject)


def subject_field(subject: JournalSubject) -> str:
    return f"{subject.value}_id"


SUBJECT_FIELDS = frozenset(subject_field(s) for s in JournalSubject)
"""Reserved: an entry names its subjects only through ``consultation_id=`` and ``append_about``."""


def parse_act(act: Act | str) -> Act:
    try:
        return Act(act)
    except ValueError:
        raise JournalError(f"unknown journal act {act!r}: acts are the members of core.vocabulary.Act") from None


def make_entry(act: Act, actor: str, consultation_id: ConsultationId | None, ids: dict[str, JournalValue],
               now: float, about: JournalKey | None = None) -> dict[str, Any]:
    """The entry to store: ``ts``, ``act``, ``actor``, ``consultation_id``, the subject's
    field when ``about`` names another subject, then ``ids``."""
    entry: dict[str, Any] = {"ts": now, "act": parse_act(act).value, "actor": actor,
                             "consultation_id": consultation_id}
    if about is not None:
        if not isinstance(about.id, str) or not about.id or len(about.id) > MAX_VALUE_CHARS:
            raise JournalError(f"{about.field}: a subject is an id (1-{MAX_VALUE_CHARS} characters)")
        if about.subject is JournalSubject.CONSULTATION:
            if consultation_id is not None and consultation_id != about.id:
                raise JournalError("the key and consultation_id= name two different consultations")
        entry[about.field] = about.id
    for key, value in ids.items():
        if key in FORBIDDEN_KEYS or key in entry or key in SUBJECT_FIELDS:
            raise JournalError(f"{key!r} may not go in the journal")
        if isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
            raise JournalError(f"{key!r}: journal values are ids or codes (<= {MAX_VALUE_CHARS} characters)")
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise JournalError(f"{key!r}: journal values are strings, numbers, booleans or null")
        entry[key] = value
    if not isinstance(actor, str) or len(actor) > MAX_VALUE_CHARS:
        raise JournalError("actor must be an id")
    return entry


def entry_keys(entry: dict[str, Any]) -> list[JournalKey]:
    """The subjects an entry can be read back by."""
    return [JournalKey(s, entry[subject_field(s)]) for s in JournalSubject if entry.get(subject_field(s))]


class Journal(Protocol):
    async def append(self, act: Act, *, actor: str, consultation_id: ConsultationId | None = None,
                     **ids: JournalValue) -> dict[str, Any]: ...
    async def append_about(self, key: JournalKey, act: Act, /, *, actor: str,
                           consultation_id: ConsultationId | None = None, **ids: JournalValue) -> dict[str, Any]:
        """An entry about ``key``'s subject (and the consultation too, when one is named)."""
    async def read(self, consultation_id: ConsultationId) -> list[dict[str, Any]]: ...
    async def read_about(self, key: JournalKey) -> list[dict[str, Any]]: ...
    async def close(self) -> None: ...


class _Backend(abc.ABC):
    """What both backends share: entries are made here, stored and read by the backend."""

    clock: Callable[[], float]

    async def append(self, act: Act, *, actor: str, consultation_id: ConsultationId | None = None,
                     **ids: JournalValue) -> dict[str, Any]:
        return await self._store(make_entry(act, actor, consultation_id, ids, self.clock()))

    async def append_about(self, key: JournalKey, act: Act, /, *, actor: str,
                           consultation_id: ConsultationId | None = None, **ids: JournalValue) -> dict[str, Any]:
        return await self._store(make_entry(act, actor, consultation_id, ids, self.clock(), about=key))

    async def read(self, consultation_id: ConsultationId) -> list[dict[str, Any]]:
        return await self.read_about(JournalKey.consultation(consultation_id))

    @abc.abstractmethod
    async def _store(self, entry: dict[str, Any]) -> dict[str, Any]:
        """Keep ``entry`` durably (as the backend understands it); return it."""

    @abc.abstractmethod
    async def read_about(self, key: JournalKey) -> list[dict[str, Any]]: ...


class FileJournal(_Backend):
    """JSON lines in ``<data_dir>/journal.jsonl``, fsync'd before ``append`` returns."""

    def __init__(self, data_dir: str, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(data_dir) / "journal.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._pending: list[tuple[bytes, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def _store(self, entry: dict[str, Any]) -> dict[str, Any]:
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

    async def read_about(self, key: JournalKey) -> list[dict[str, Any]]:
        def scan() -> list[dict[str, Any]]:
            out = []
            needle = json.dumps(key.id).encode()
            with open(self.path, "rb") as f:
                for line in f:
                    if needle in line:
                        try:
                            entry = json.loads(line)
                        except ValueError:
                            continue  # a torn last line after a crash
                        if entry.get(key.field) == key.id:
                            out.append(entry)
            return out
        return await asyncio.to_thread(scan)

    async def close(self) -> None:
        if self._writer is not None:
            await asyncio.shield(self._writer)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class RedisJournal(_Backend):
    """Streams ``P journal`` (everything), ``P journal:<consultation>`` and
    ``P journal:<subject>:<id>`` for other subjects (``P journal:case:<case>``); never trimmed.

    Durability is Redis's: run it with ``appendonly yes`` (``appendfsync always``
    for an fsync per act)."""

    def __init__(self, redis: Any, prefix: str, clock: Callable[[], float] = time.time) -> None:
        self.redis = redis
        self.prefix = prefix
        self.clock = clock

    async def _store(self, entry: dict[str, Any]) -> dict[str, Any]:
        fields = {"e": json.dumps(entry, separators=(",", ":"))}
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self.prefix + "journal", fields)
            for key in entry_keys(entry):
                pipe.xadd(self._stream(key), fields)
            await pipe.execute()
        return entry

    def _stream(self, key: JournalKey) -> str:
        # Consultation streams keep the name they had before there were other subjects.
        if key.subject is JournalSubject.CONSULTATION:
            return self.prefix + f"journal:{key.id}"
        return self.prefix + f"journal:{key.subject.value}:{key.id}"

    async def read_about(self, key: JournalKey) -> list[dict[str, Any]]:
        rows = await self.redis.xrange(self._stream(key))
        return [json.loads(fields["e"]) for _, fields in rows]

    async def close(self) -> None:
        pass
