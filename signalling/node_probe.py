"""A killed media node, told by asking it: its port refuses connections.

A node that dies without a parent to see it exit (issue 19's hosts: a host's ``serve``
SIGKILLed) would lose its rooms only when its liveness key expires (three
``heartbeat_s``). Every signalling process also asks the other live nodes of the
registry, about once a second, for their ``/readyz``: a node that answered before and
whose port now *refuses* the connection (nothing listens there: the process that did is
gone) twice in a row, the second soon after the first, is known dead, and its rooms are
re-placed at once (``Rooms.node_gone``, which acts only when another live node can take
them). A node never heard answering is never known dead this way: one registered a
moment before it binds its port, or one this process cannot reach at its URL (a firewall
that rejects) is left to its heartbeat.

Only a refusal counts. Any HTTP answer, whatever its status, says a process listens; a
timeout, a reset, a name that does not resolve, a certificate refused, say nothing sure
(a slow or partitioned node is alive to the parties that still reach it): those are
left to the heartbeat, since moving a room off a live node is worse than waiting.

:class:`Refusals` is the rule, without I/O (probe outcomes in, verdicts out);
:class:`NodeProbe` is the thin I/O around it (the registry, the requests, the loop).
"""

from __future__ import annotations

import asyncio
import errno
import logging
from dataclasses import dataclass
from enum import Enum
from typing import Awaitable, Callable

import aiohttp

from signalling.context import Context

logger = logging.getLogger(__name__)

PROBE_INTERVAL_S = 1.0
"""How often each live node is asked (as often as the sweep)."""
CONFIRM_AFTER_S = 0.2
"""How soon a node that refused once is asked again."""
PROBE_TIMEOUT_S = 0.5
"""A probe without an answer within this is silent (not death: the heartbeat decides)."""
REFUSALS_TO_DEATH = 2
"""Refusals in a row that make a node known dead (one could be a port between two binds)."""
REFUSAL_WINDOW_S = 3.0
"""Refusals further apart than this (a stalled loop between them) do not make a row."""


class Probe(Enum):
    """What asking a node's ``/readyz`` got."""

    ANSWERED = "answered"
    """An HTTP answer, whatever its status: a process listens."""
    SILENT = "silent"
    """A timeout or any failure other than a refusal: nothing sure (slow, partitioned...)."""
    REFUSED = "refused"
    """The connection was refused: nothing listens on the node's port."""


class Verdict(Enum):
    """What the rule makes of a node after one probe."""

    NONE = "none"
    """Nothing to do: it answered, said nothing sure, or is not known dead yet."""
    SUSPECT = "suspect"
    """Refused, not enough times in a row yet: ask again soon (:data:`CONFIRM_AFTER_S`)."""
    DEAD = "dead"
    """Known dead now: re-place its rooms."""
    STILL_DEAD = "still_dead"
    """Known dead before, still refusing and still registered: re-place again (no other node may
    have been live the first time)."""


@dataclass
class _Row:
    count: int
    """Refusals in the row."""
    last: float
    """When the latest one came (the rule's clock)."""


class Refusals:
    """The rule, sans I/O: ``REFUSALS_TO_DEATH`` refusals of a node's URL in a row, each within
    ``window_s`` of the one before, make it known dead, once the URL has answered; any other
    outcome ends the row.

    ================================  ===========  ===========
    outcome, before                   row after    verdict
    ================================  ===========  ===========
    answered                          none, heard  NONE
    silent                            none         NONE
    refused, never heard              none         NONE
    refused, no row (or stale)        1            SUSPECT
    refused, row n, n+1 < limit       n+1          SUSPECT
    refused, row n, n+1 = limit       n+1          DEAD
    refused, row n >= limit           n+1          STILL_DEAD
    ================================  ===========  ===========
    """

    def __init__(self, refusals_to_death: int = REFUSALS_TO_DEATH, window_s: float = REFUSAL_WINDOW_S) -> None:
        self.refusals_to_death = refusals_to_death
        self.window_s = window_s
        self._rows: dict[str, _Row] = {}
        """Node URL -> its current row of refusals."""
        self._heard: set[str] = set()
        """Node URLs that answered (a process listened there)."""

    def observe(self, url: str, probe: Probe, now: float) -> Verdict:
        if probe is Probe.ANSWERED:
            self._heard.add(url)
        if probe is not Probe.REFUSED or url not in self._heard:
            self._rows.pop(url, None)
            return Verdict.NONE
        row = self._rows.get(url)
        if row is None or now - row.last > self.window_s:
            row = self._rows[url] = _Row(0, now)
        row.count += 1
        row.last = now
        if row.count < self.refusals_to_death:
            return Verdict.SUSPECT
        return Verdict.DEAD if row.count == self.refusals_to_death else Verdict.STILL_DEAD

    def keep(self, urls: set[str]) -> None:
        """Forget the rows of nodes no longer asked (left the registry, or its liveness expired)."""
        for url in [u for u in self._rows if u not in urls]:
            del self._rows[url]
        self._heard &= urls

    def heard(self, url: str) -> bool:
        """Whether ``url`` answered (while registered): only then can its refusals make it dead."""
        return url in self._heard

    def suspects(self) -> bool:
        """Some node refused and is not known dead yet: the next round should come soon."""
        return any(row.count < self.refusals_to_death for row in self._rows.values())


async def ask(http: aiohttp.ClientSession, url: str) -> Probe:
    """One ``GET <url>/readyz``: what it got."""
    try:
        async with http.get(url.rstrip("/") + "/readyz", allow_redirects=False):
            return Probe.ANSWERED
    except aiohttp.ClientConnectorError as exc:
        # The OS's answer to the SYN: a RST (ECONNREFUSED). Several addresses tried give a
        # combined error without that errno: not sure, so silent.
        return Probe.REFUSED if getattr(exc.os_error, "errno", None) == errno.ECONNREFUSED else Probe.SILENT
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError):
        return Probe.SILENT


class NodeProbe:
    """Asks the other live media nodes, about once a second, and tells ``gone(url)`` of those
    the rule finds dead. The loop runs from the service's start until its tasks close."""

    def __init__(self, ctx: Context, gone: Callable[[str], Awaitable[None]],
                 probe: Callable[[aiohttp.ClientSession, str], Awaitable[Probe]] = ask) -> None:
        self.ctx = ctx
        self.gone = gone
        self.probe = probe
        self.rule = Refusals()

    async def loop(self) -> None:
        # A fresh connection each time: only a connect can be refused (a kept-alive one to a killed
        # node would fail otherwise, as silence, one round late).
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S),
                                         connector=aiohttp.TCPConnector(force_close=True)) as http:
            while True:
                await asyncio.sleep(CONFIRM_AFTER_S if self.rule.suspects() else PROBE_INTERVAL_S)
                try:
                    await self.round(http)
                except Exception as exc:  # the store down: the sweep logs that already
                    logger.warning("media node probe failed", extra={"fault": type(exc).__name__})

    async def round(self, http: aiohttp.ClientSession) -> None:
        """Ask every other live node once, at the same time; re-place the rooms of dead ones."""
        nodes = await self.ctx.store.nodes()
        ids: dict[str, list[str]] = {}
        for node_id, info in nodes.items():
            url = str(info.get("url") or "")
            # Never this process's own node, nor another registered at the same URL (both at the
            # settings' URL for the moment before each binds its port): node_gone(url) takes
            # every node at that URL, this process's too.
            if info.get("alive") and url and node_id != self.ctx.node_id and url != self.ctx.node_url:
                ids.setdefault(url, []).append(node_id)
        self.rule.keep(set(ids))
        if not ids:
            return
        urls = sorted(ids)
        outcomes = await asyncio.gather(*(self.probe(http, url) for url in urls))
        now = asyncio.get_running_loop().time()
        for url, outcome in zip(urls, outcomes):
            verdict = self.rule.observe(url, outcome, now)
            if verdict is Verdict.DEAD:
                logger.warning("media node refuses connections: known dead, its rooms move",
                               extra={"node": ",".join(ids[url]), "url": url})
            if verdict in (Verdict.DEAD, Verdict.STILL_DEAD):
                await self.gone(url)


__all__ = ["NodeProbe", "Probe", "Refusals", "Verdict", "ask"]
