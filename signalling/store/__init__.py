"""State and events shared by signalling processes: one interface, two backends.

* :class:`~signalling.store.memory.MemoryStore` — one process (the default).
* :class:`~signalling.store.redis.RedisStore` — several processes on one Redis;
  claims and transitions are Lua scripts (atomic), events go through pub/sub.

:func:`open_store` picks one from settings.
"""

from __future__ import annotations

from config.settings import StoreSettings
from signalling.store.base import QueueOp, Store, Versioned
from signalling.store.memory import MemoryStore
from signalling.store.redis import RedisStore


def open_store(settings: StoreSettings, process_id: str) -> Store:
    if settings.backend == "redis":
        return RedisStore(settings.redis_url, settings.key_prefix, process_id)
    return MemoryStore()


__all__ = ["Store", "Versioned", "QueueOp", "open_store"]
