"""A killed media node told by its refused connections (``signalling.node_probe``): the rule's
table and rounds of the prober against a registry and answers made up here (no I/O), then what
``ask`` gets from real loopback sockets."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from typing import Any, cast

import aiohttp

from signalling.context import Context
from signalling.node_probe import REFUSAL_WINDOW_S, NodeProbe, Probe, Refusals, Verdict, ask

A = "http://10.204.0.2:8080"
B = "http://10.204.0.3:8080"


def heard(*urls: str) -> Refusals:
    """A rule that has heard each of ``urls`` answer."""
    rule = Refusals()
    for url in urls:
        assert rule.observe(url, Probe.ANSWERED, 0.0) is Verdict.NONE
        assert rule.heard(url)
    return rule


def test_two_refusals_in_a_row_make_a_node_dead() -> None:
    rule = heard(A)
    assert rule.observe(A, Probe.REFUSED, 10.0) is Verdict.SUSPECT
    assert rule.suspects()
    assert rule.observe(A, Probe.REFUSED, 10.2) is Verdict.DEAD
    assert not rule.suspects()  # known dead: nothing to confirm
    # Still refusing (its rooms could not move: no other node then): told again, not anew.
    assert rule.observe(A, Probe.REFUSED, 11.2) is Verdict.STILL_DEAD


def test_a_node_never_heard_answering_is_never_dead_by_refusals() -> None:
    # Registered a moment before it binds its port, or out of this process's reach (a firewall
    # that rejects): its heartbeat decides.
    rule = Refusals()
    for i in range(5):
        assert rule.observe(A, Probe.REFUSED, i * 0.2) is Verdict.NONE
    assert not rule.suspects() and not rule.heard(A)
    assert rule.observe(A, Probe.ANSWERED, 1.0) is Verdict.NONE  # bound now
    assert rule.observe(A, Probe.REFUSED, 2.0) is Verdict.SUSPECT


def test_an_answer_or_silence_ends_the_row() -> None:
    rule = heard(A)
    for outcome in (Probe.ANSWERED, Probe.SILENT):
        assert rule.observe(A, Probe.REFUSED, 1.0) is Verdict.SUSPECT
        assert rule.observe(A, outcome, 1.2) is Verdict.NONE
        assert not rule.suspects()
        assert rule.observe(A, Probe.REFUSED, 1.4) is Verdict.SUSPECT  # a new row starts
        rule.observe(A, Probe.ANSWERED, 1.5)


def test_silence_or_answers_never_make_a_node_dead() -> None:
    rule = Refusals()
    for i in range(20):  # a slow or partitioned node: left to its heartbeat
        assert rule.observe(A, Probe.SILENT if i % 2 else Probe.ANSWERED, float(i)) is Verdict.NONE
    assert not rule.suspects()


def test_refusals_too_far_apart_make_no_row() -> None:
    rule = heard(A)
    assert rule.observe(A, Probe.REFUSED, 0.0) is Verdict.SUSPECT
    assert rule.observe(A, Probe.REFUSED, REFUSAL_WINDOW_S + 0.1) is Verdict.SUSPECT
    assert rule.observe(A, Probe.REFUSED, REFUSAL_WINDOW_S + 0.3) is Verdict.DEAD


def test_nodes_have_rows_of_their_own_and_forgotten_ones_lose_theirs() -> None:
    rule = heard(A, B)
    assert rule.observe(A, Probe.REFUSED, 0.0) is Verdict.SUSPECT
    assert rule.observe(B, Probe.REFUSED, 0.1) is Verdict.SUSPECT
    assert rule.observe(B, Probe.ANSWERED, 0.2) is Verdict.NONE
    assert rule.observe(A, Probe.REFUSED, 0.2) is Verdict.DEAD
    rule.observe(B, Probe.REFUSED, 0.3)
    rule.keep({A})  # B left the registry
    assert not rule.suspects()
    assert rule.observe(B, Probe.REFUSED, 0.4) is Verdict.NONE  # back: a new node to hear first


@dataclass
class _Store:
    registry: dict[str, dict[str, Any]]

    async def nodes(self) -> dict[str, dict[str, Any]]:
        return self.registry


@dataclass
class _Ctx:
    store: _Store
    node_id: str = "self"
    node_url: str = "http://10.204.0.1:8080"


@dataclass
class _Answers:
    by_url: dict[str, Probe]
    asked: list[str] = field(default_factory=list)

    async def __call__(self, http: aiohttp.ClientSession, url: str) -> Probe:
        self.asked.append(url)
        return self.by_url.get(url, Probe.ANSWERED)


async def test_a_round_asks_the_other_live_nodes_and_tells_of_dead_ones() -> None:
    registry = {
        "self": {"url": "http://10.204.0.1:8080", "alive": True},
        "early": {"url": "http://10.204.0.1:8080", "alive": True},  # at this process's URL: never asked
        "b": {"url": A, "alive": True},
        "c": {"url": B, "alive": True},
        "expired": {"url": "http://10.204.0.4:8080", "alive": False},
    }
    answers = _Answers({})
    told: list[str] = []

    async def gone(url: str) -> None:
        told.append(url)

    probe = NodeProbe(cast(Context, _Ctx(_Store(registry))), gone, answers)
    http = cast(aiohttp.ClientSession, None)  # the made-up answers need none
    await probe.round(http)
    assert sorted(answers.asked) == [A, B] and told == []
    answers.by_url.update({A: Probe.REFUSED, B: Probe.SILENT})  # b killed, c slow
    await probe.round(http)
    assert told == []
    assert probe.rule.suspects()
    await probe.round(http)
    assert told == [A]
    # Its liveness expired (its rooms moved): no longer asked, its row forgotten.
    registry["b"]["alive"] = False
    answers.asked.clear()
    await probe.round(http)
    assert answers.asked == [B] and told == [A] and not probe.rule.suspects()


# -- ask(): what a real loopback socket gives ----------------------------------------------------
async def test_ask_tells_a_refusal_from_an_answer_and_from_silence() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    answering = await asyncio.start_server(answer, "127.0.0.1", 0)
    silent = socket.socket()  # listens, never accepts: the kernel completes the handshake, nobody answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    closed = socket.socket()  # bound, not listening: the kernel refuses connections to it
    closed.bind(("127.0.0.1", 0))
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.5)) as http:
            port = answering.sockets[0].getsockname()[1]
            assert await ask(http, f"http://127.0.0.1:{port}") is Probe.ANSWERED  # even a 503
            assert await ask(http, f"http://127.0.0.1:{silent.getsockname()[1]}/") is Probe.SILENT
            assert await ask(http, f"http://127.0.0.1:{closed.getsockname()[1]}") is Probe.REFUSED
    finally:
        answering.close()
        await answering.wait_closed()
        silent.close()
        closed.close()
