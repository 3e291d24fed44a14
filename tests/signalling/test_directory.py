"""The directory's ``rpps`` field: 11 digits with a Luhn key, unique, optional, found by number; over the admin API
too. Its optional ``email``: one plain address, read by admins only."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from signalling.directory import Directory, DirectoryError, load_directory, luhn_ok, parse_clinician, parse_site
from signalling.appkeys import SIGNALLING
from tests.support import RunningServer

DR = {"id": "dr-psc", "name": "Dr PSC", "specialties": ["general"], "rpps": "10000000009"}


def test_luhn() -> None:
    assert luhn_ok("10000000009") and luhn_ok("79927398713")
    assert not luhn_ok("10000000008")


def test_rpps_is_optional_checked_and_unique() -> None:
    clinician = parse_clinician(DR)
    assert clinician.rpps == "10000000009" and clinician.to_dict()["rpps"] == "10000000009"
    assert "rpps" not in parse_clinician({**DR, "rpps": ""}).to_dict()  # unknown: the entry reads as before
    for bad in ("1000000000", "10000000008", "1000000000a", 10000000009):
        with pytest.raises(DirectoryError, match="rpps"):
            parse_clinician({**DR, "rpps": bad})
    directory = Directory.from_dict({"sites": [], "clinicians": [DR]})
    assert directory.by_rpps("10000000009") == clinician and directory.by_rpps("10000123454") is None
    assert directory.by_rpps("") is None
    with pytest.raises(DirectoryError, match="duplicate"):
        Directory.from_dict({"sites": [], "clinicians": [DR, {**DR, "id": "dr-other"}]})
    with pytest.raises(DirectoryError, match="already"):
        directory.with_clinician(parse_clinician({**DR, "id": "dr-other"}))
    assert directory.with_clinician(parse_clinician({**DR, "name": "Dr PSC (renamed)"})).by_rpps("10000000009")
    assert all(not c.rpps for c in load_directory().clinicians.values())


def test_sites_and_clinicians_must_be_lists() -> None:
    """``{"sites": true}`` was iterated as it came: a TypeError, a 500 (bench.fuzz rest, PUT /api/directory)."""
    for bad in ({"sites": True}, {"clinicians": 5}, {"sites": {"a": 1}}, {"clinicians": "dr"}):
        with pytest.raises(DirectoryError, match="a list"):
            Directory.from_dict(bad)


async def test_admins_set_an_rpps(server: RunningServer) -> None:
    admin = {"Authorization": f"Bearer {server.tokens.issue_access('admin', 'admin-1')}"}
    async with aiohttp.ClientSession() as http:
        url = f"{server.url}/api/directory/clinicians/dr-psc"
        async with http.put(url, json={k: v for k, v in DR.items() if k != "id"}, headers=admin) as r:
            assert r.status == 200, await r.text()
        async with http.put(url, json={"name": "x", "specialties": ["general"], "rpps": "12345"}, headers=admin) as r:
            assert r.status == 400 and "rpps" in (await r.json())["reason"]
        async with http.put(f"{server.url}/api/directory/clinicians/dr-twin",
                            json={"name": "Twin", "specialties": ["general"], "rpps": DR["rpps"]}, headers=admin) as r:
            assert r.status == 400 and "already" in (await r.json())["reason"]
        async with http.get(f"{server.url}/api/directory", headers=admin) as r:
            entry = next(c for c in (await r.json())["clinicians"] if c["id"] == "dr-psc")
    assert entry["rpps"] == DR["rpps"]


def test_email_is_optional_checked_and_kept() -> None:
    clinician = parse_clinician({**DR, "email": "dr.psc@chu.example.org"})
    assert clinician.email == "dr.psc@chu.example.org" and clinician.to_dict()["email"] == clinician.email
    assert "email" not in parse_clinician(DR).to_dict()  # none: the entry reads as before
    for bad in ("dr.psc", "dr psc@chu.example.org", "Dr <dr@chu.example.org>", "dr@chu", "dr@chu.example.org\n",
                "a@b.org\r\nBcc: c@d.org", 5, "x" * 250 + "@example.org"):
        with pytest.raises(DirectoryError, match=r"clinician\.email"):
            parse_clinician({**DR, "email": bad})
    site = parse_site({"id": "ehpad-x", "name": "EHPAD", "kind": "ehpad", "email": "soins@ehpad.example.org"})
    assert site.email == "soins@ehpad.example.org"
    with pytest.raises(DirectoryError, match=r"site\.email"):
        parse_site({"id": "ehpad-x", "name": "EHPAD", "kind": "ehpad", "email": "soins"})
    directory = Directory.from_dict({"sites": [site.to_dict()], "clinicians": [clinician.to_dict()]})
    assert Directory.from_dict(directory.to_dict()) == directory  # what the store keeps
    public = directory.public_dict()
    assert "email" not in public["sites"][0] and "email" not in public["clinicians"][0]
    assert directory.clinicians["dr-psc"].email  # public_dict copies, never changes the directory


async def test_only_admins_read_addresses(server: RunningServer) -> None:
    admin = {"Authorization": f"Bearer {server.tokens.issue_access('admin', 'admin-1')}"}
    nurse = {"Authorization": f"Bearer {server.tokens.issue_access('nurse', 'nurse-1', site='ehpad-demo')}"}
    async with aiohttp.ClientSession() as http:
        url = f"{server.url}/api/directory/clinicians/dr-mail"
        body = {"name": "Dr Mail", "specialties": ["dermatology"], "email": "dr.mail@chu.example.org"}
        async with http.put(url, json=body, headers=admin) as r:
            assert r.status == 200, await r.text()
        async with http.put(url, json={**body, "email": "not an address"}, headers=admin) as r:
            assert r.status == 400 and (await r.json())["reason"].startswith("clinician.email:")
        async with http.get(f"{server.url}/api/directory", headers=admin) as r:
            assert next(c for c in (await r.json())["clinicians"] if c["id"] == "dr-mail")["email"]
        async with http.get(f"{server.url}/api/directory", headers=nurse) as r:
            entry = next(c for c in (await r.json())["clinicians"] if c["id"] == "dr-mail")
    assert "email" not in entry


async def test_a_slow_reload_never_puts_an_older_directory_back(server: RunningServer) -> None:
    """Two changes in a row make two reload notes; their reads run concurrently, and the first may
    answer last. The process keeps the newer directory (a process left with an old one refused the
    check-ins of a site just added)."""
    svc = server.app[SIGNALLING]
    old = load_directory().to_dict()
    new = {**old, "sites": old["sites"] + [{"id": "site-new", "name": "New site", "kind": "cabin",
                                            "region": "BFC"}]}
    first_asked, answers = asyncio.Event(), [old, new]
    store = svc.ctx.store

    async def slow_then_fast() -> dict[str, Any]:
        doc = answers.pop(0)
        if doc is old:  # the first read: it answers after the second one
            first_asked.set()
            await asyncio.sleep(0.2)
        return doc

    store.get_directory = slow_then_fast  # type: ignore[method-assign]
    first = asyncio.create_task(svc._reload_directory())
    await first_asked.wait()
    await svc._reload_directory()
    await first
    assert "site-new" in svc.directory.sites
    # A change this process makes is not undone by a reload that started before it.
    answers[:] = [old]
    first_asked.clear()
    late = asyncio.create_task(svc._reload_directory())
    await first_asked.wait()
    await svc.set_directory(Directory.from_dict(new))
    await late
    assert "site-new" in svc.directory.sites
