"""The directory's ``rpps`` field: 11 digits with a Luhn key, unique, optional, found by number; over the admin API too."""

from __future__ import annotations

import aiohttp
import pytest

from signalling.directory import Directory, DirectoryError, load_directory, luhn_ok, parse_clinician
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
