"""Process lifecycle: accepting, draining, stopping.

The first SIGTERM/SIGINT moves ``ACCEPTING -> DRAINING``: ``/readyz`` turns
unready, no new consultation or room is accepted, live ones go on until they
end or the drain timeout passes. A second signal, or the end of draining,
moves to ``STOPPING``: peers are closed and buffers flushed by the cleanup
contexts of each package.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from dataclasses import dataclass, field
from typing import Callable

logger = logging.getLogger(__name__)


class Phase(enum.Enum):
    ACCEPTING = "accepting"
    DRAINING = "draining"
    STOPPING = "stopping"


@dataclass
class Lifecycle:
    phase: Phase = Phase.ACCEPTING
    live_count: list[Callable[[], int]] = field(default_factory=list)
    """Callables reporting live work (rooms, consultations) that draining waits for."""
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def accepting(self) -> bool:
        return self.phase is Phase.ACCEPTING

    def live(self) -> int:
        return sum(count() for count in self.live_count)

    def signal(self) -> None:
        """One more SIGTERM/SIGINT."""
        if self.phase is Phase.ACCEPTING:
            self.phase = Phase.DRAINING
            logger.info("draining: no new consultations", extra={"live": self.live()})
        else:
            self.phase = Phase.STOPPING
            logger.info("stopping now")
            self._stop.set()

    async def wait_drained(self, timeout: float, poll: float = 0.5) -> None:
        """Wait until draining ends: nothing live, the timeout, or a second signal."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.phase is Phase.DRAINING and self.live() > 0 and loop.time() < deadline:
            try:
                await asyncio.wait_for(self._stop.wait(), poll)
            except asyncio.TimeoutError:
                pass
        if self.phase is Phase.DRAINING:
            live = self.live()
            logger.info("drain timeout: stopping with live work" if live else "drained: nothing live",
                        extra={"live": live})
        self.phase = Phase.STOPPING
        self._stop.set()

    async def wait_stop(self) -> None:
        await self._stop.wait()
