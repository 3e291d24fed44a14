"""What an outage of the shared state looks like, whichever backend holds it.

A request that meets one of :data:`STORE_FAULTS` is answered ``unavailable`` (retry later or
elsewhere), never ``internal``: the protocol promises it for a failed dependency, and a client
that retries with the same ``request_key`` does not duplicate its request.

* Redis (store, journal and records): the connection is refused, lost or times out, the pool
  has no connection to give, the server is loading its data or is a read-only replica.
* The memory store keeps its state in the process and cannot fail by itself; its journal
  (a file) and records (SQLite) can: a write that fails (disk full, I/O error) is an
  ``OSError``, a database that cannot be written (locked, disk I/O) an ``OperationalError``.
"""

from __future__ import annotations

import sqlite3

import redis.exceptions

STORE_FAULTS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,  # BusyLoadingError included
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,
    TimeoutError,
    OSError,
    sqlite3.OperationalError,
)

__all__ = ["STORE_FAULTS"]
