"""Which process writes a recording: the one holding an advisory lock on its directory.

Several processes may share one ``server.data_dir`` (``serve --media-workers N``: the
workers and the signalling process), and each one, at start, closes the recordings a
crash left open (``recovery.recover``). A recording that another live process is still
writing must be left alone: the writing session holds ``flock(LOCK_EX)`` on its
directory for as long as it records, and recovery takes only directories it can lock.
The kernel drops the lock when its process dies, however it dies, so a crashed worker's
recordings become recoverable at once (by its restart, or any process's next start).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


def hold(directory: Path) -> int | None:
    """Lock ``directory`` for this process; its file descriptor (keep it open while writing),
    or None when another open description holds it (a live recording elsewhere)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def release(fd: int | None) -> None:
    """Give the lock of :func:`hold` back (closing the descriptor drops it)."""
    if fd is not None:
        os.close(fd)


__all__ = ["hold", "release"]
