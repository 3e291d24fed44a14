"""The patient's INS identity: format and NIR key checks (Corsica too), and at check-in: kept sealed in the
records, never in the live store, the journal, the consultation views or the logs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from core.vocabulary import ConsultationId
from signalling.appkeys import SIGNALLING
from signalling.patient_identity import InsKind, check_matricule, nir_key, parse_ins_identity
from tests.signalling.test_flow import VISIT, nurse
from tests.support import RunningServer

IDENTITY: dict[str, Any] = {"matricule": "2 95 10 99 126 111 93", "oid": "1.2.250.1.213.1.4.8",
                            "birth_names": "DE LA FONTAINE-D'ARC", "first_names": "MARIE ANNE",
                            "birth_date": "1995-10-21", "sex": "F", "birth_place_code": "99126"}


def test_nir_keys_including_corsica() -> None:
    assert nir_key("2951099126111") == 93
    # Corsica: 2A reads as 19, 2B as 18 (the keys python-stdnum computes too).
    assert nir_key("185052A004123") == 56 and nir_key("185052a004123") == 56
    assert nir_key("291112B012345") == 52
    assert nir_key("185052A004123") != 97 - int("1850520004123") % 97  # the naive "2A → 20" is wrong
    assert check_matricule("185052a00412356") == "185052A00412356"
    with pytest.raises(ValueError, match="check key"):
        check_matricule("185052A00412357")


def test_a_valid_identity_is_normalised() -> None:
    identity = parse_ins_identity(IDENTITY)
    assert identity.matricule == "295109912611193" and identity.kind is InsKind.NIR
    assert identity.first_name == "MARIE"
    assert parse_ins_identity({**IDENTITY, "oid": "1.2.250.1.213.1.4.9"}).kind is InsKind.NIA
    assert parse_ins_identity({**IDENTITY, "oid": "1.2.250.1.213.1.4.10"}).kind is InsKind.NIR_TEST
    assert parse_ins_identity({**IDENTITY, "birth_place_code": "2A004"}).birth_place_code == "2A004"


@pytest.mark.parametrize("change,message", [
    ({"matricule": "295109912611194"}, "check key"),
    ({"matricule": "29510991261119"}, "NIR or NIA"),
    ({"matricule": "995109912611193"}, "NIR or NIA"),
    ({"matricule": 295109912611193}, "must be a string"),
    ({"oid": "1.2.3"}, "oid"),
    ({"birth_names": "Martin"}, "birth_names"),
    ({"birth_names": "MARTÈNE"}, "birth_names"),
    ({"first_names": ""}, "first_names"),
    ({"first_names": "MARIE  ANNE"}, "first_names"),
    ({"birth_date": "21/10/1995"}, "YYYY-MM-DD"),
    ({"birth_date": "1995-02-30"}, "not a date"),
    ({"sex": "X"}, "sex"),
    ({"birth_place_code": "1234"}, "INSEE"),
    ({"birth_place_code": "2C004"}, "INSEE"),
    ({"nickname": "MIMI"}, "unknown key"),
])
def test_bad_identities_say_what_is_wrong(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_ins_identity({**IDENTITY, **change})


def test_every_trait_is_required() -> None:
    with pytest.raises(ValueError, match="missing birth_date"):
        parse_ins_identity({k: v for k, v in IDENTITY.items() if k != "birth_date"})


async def test_check_in_keeps_the_identity_sealed_and_nowhere_else(sig: RunningServer, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    n = await nurse(sig)
    try:
        ok = await n.request("visit.request", **VISIT, ins="295109912611193", ins_identity=IDENTITY)
        cid = ok["consultation"]["id"]
        assert "ins_identity" not in ok["consultation"] and ok["consultation"]["ins"] == "295109912611193"
        service = sig.app[SIGNALLING]
        kept = await service.records.get_identity(cid)
        assert kept == {**IDENTITY, "matricule": "295109912611193"}
        # Refused: a wrong key, a mismatch with ins, a bad trait; nothing is kept for them.
        await n.error("visit.request", "bad_message", **VISIT, ins_identity={**IDENTITY, "matricule": "295109912611194"})
        await n.error("visit.request", "bad_message", **VISIT, ins="185052A00412356", ins_identity=IDENTITY)
        await n.error("visit.request", "bad_message", **VISIT, ins_identity={**IDENTITY, "sex": "W"})
        await n.error("visit.request", "bad_message", **VISIT, ins_identity="295109912611193")
    finally:
        await n.close()
    # Sealed at rest; never in the live store, the journal or a log line.
    secrets = ("FONTAINE", "MARIE ANNE", "1995-10-21")
    data_dir = Path(sig.settings.server.data_dir)
    if sig.settings.store.backend == "memory":
        on_disk = b"".join(p.read_bytes() for p in data_dir.rglob("*") if p.is_file())
        for text in secrets:
            assert text.encode() not in on_disk, text
        assert b"identities" in on_disk
    else:
        redis = aioredis.from_url(sig.settings.store.redis_url, decode_responses=True)
        try:
            for key in await redis.keys("*"):
                kind = await redis.type(key)
                dump = repr(await redis.hgetall(key)) if kind == "hash" else \
                    repr(await redis.get(key)) if kind == "string" else ""
                for text in secrets:
                    assert text not in dump, (key, text)
            assert await redis.hexists("tc:rec:identities", cid)
        finally:
            await redis.aclose()
    entries = await sig.app[SIGNALLING].journal.read(ConsultationId(cid))
    for text in (*secrets, "295109912611193"):
        assert text not in repr(entries)
        assert text not in caplog.text
