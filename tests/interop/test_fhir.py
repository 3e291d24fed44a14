"""The FHIR resources of a dossier: valid R4B, round-tripped, references resolved, and what each carries
(class VR, INS identifier, RPPS, LOINC + UCUM, Media per still, the PDF, the recording consent)."""

from __future__ import annotations

import dataclasses

import pytest
from pydantic import ValidationError

from interop import fhir
from interop.dossier import Report, Still
from interop.example import BASE_URL, EXAMPLE, ISSUED_AT
from interop.vital_codes import VITAL_CODES
from tests.interop.fhir_checks import check_bundle

FHIR_BASE = BASE_URL + "/fhir"


def test_the_bundle_of_a_finished_consultation() -> None:
    bundle = fhir.bundle(EXAMPLE, BASE_URL, issued_at=ISSUED_AT)
    by_type = check_bundle(bundle, FHIR_BASE)
    assert sorted((k, len(v)) for k, v in by_type.items()) == [
        ("Consent", 1), ("DocumentReference", 1), ("Encounter", 1), ("Location", 1), ("Media", 1),
        ("Observation", 5), ("Organization", 1), ("Patient", 1), ("Practitioner", 1)]
    (encounter,) = by_type["Encounter"]
    assert encounter["class"] == {"system": fhir.ACT_CODE, "code": "VR", "display": "virtual"}
    assert encounter["status"] == "finished" and encounter["id"] == EXAMPLE.consultation_id
    assert encounter["period"] == {"start": "2026-01-01T14:00:00Z", "end": "2026-01-01T14:20:00Z"}
    assert encounter["serviceType"]["coding"][0]["code"] == "394579002"  # cardiology (SNOMED CT)
    assert encounter["participant"][0]["individual"]["reference"] == "Practitioner/dr-cardio"
    assert encounter["subject"]["reference"] == "Patient/patient-c-0123456789abcdef"
    assert encounter["serviceProvider"]["reference"] == "Organization/site-cabin-demo"
    (patient,) = by_type["Patient"]
    ins = patient["identifier"][0]
    assert (ins["system"], ins["value"], ins["use"], ins["type"]["coding"][0]["code"]) == \
        ("urn:oid:1.2.250.1.213.1.4.10", "295109912611193", "official", "INS-NIR-TEST")
    assert patient["identifier"][1] == {"use": "usual", "system": "urn:teleconsult:site:cabin-demo:patient",
                                        "value": "P-0042"}
    assert patient["name"][0]["family"] == "MARTIN" and patient["name"][0]["given"] == ["MARIE"]
    assert patient["name"][0]["extension"][0]["valueString"] == "MARIE ANNE"
    assert (patient["gender"], patient["birthDate"]) == ("female", "1995-10-21")
    assert patient["extension"][0]["valueAddress"]["extension"][0]["valueCoding"]["code"] == "99126"
    (practitioner,) = by_type["Practitioner"]
    assert {i["system"]: i["value"] for i in practitioner["identifier"]} == {
        fhir.RPPS_SYSTEM: "10000000009", fhir.IDNPS_SYSTEM: "810000000009", "urn:teleconsult:clinician": "dr-cardio"}
    (organization,), (location,) = by_type["Organization"], by_type["Location"]
    assert organization["name"] == location["name"] == "Demo cabin"
    observations = {o["code"]["coding"][0]["code"]: o for o in by_type["Observation"]}
    assert set(observations) == {"8867-4", "59408-5", "8480-6", "8462-4", "8310-5"}
    for vital in EXAMPLE.vitals:
        obs = observations[VITAL_CODES[vital.quantity].loinc]
        assert obs["valueQuantity"]["value"] == vital.value
        assert (obs["valueQuantity"]["system"], obs["valueQuantity"]["code"]) == ("http://unitsofmeasure.org", vital.unit)
        assert obs["category"][0]["coding"][0]["code"] == "vital-signs" and obs["status"] == "final"
        assert obs["encounter"]["reference"] == f"Encounter/{EXAMPLE.consultation_id}"
    assert observations["8310-5"]["valueQuantity"]["unit"] == "°C"
    assert [c["code"] for c in observations["59408-5"]["code"]["coding"]] == ["59408-5", "2708-6"]
    (media,) = by_type["Media"]
    assert media["content"]["url"] == BASE_URL + EXAMPLE.stills[0].url
    assert (media["content"]["title"], media["createdDateTime"]) == ("naevus, avant-bras gauche", "2026-01-01T14:10:00Z")
    (document,) = by_type["DocumentReference"]
    assert document["content"][0]["attachment"]["url"] == f"{BASE_URL}/api/consultations/{EXAMPLE.consultation_id}/report.pdf"
    assert document["content"][0]["attachment"]["contentType"] == "application/pdf"
    assert document["docStatus"] == "final" and document["type"]["coding"][0]["code"] == "11488-4"
    (consent,) = by_type["Consent"]
    assert (consent["status"], consent["provision"]["type"]) == ("active", "permit")


def test_what_changes_with_the_consultation() -> None:
    refused = dataclasses.replace(
        EXAMPLE, state="active", ended_at=None, patient=None,
        report=Report(status="draft", saved_at=None), recording=dataclasses.replace(EXAMPLE.recording, consented=False),
        stills=(*EXAMPLE.stills, Still(still_id="gone", device="otoscope", label="", taken_at=None, missing=True)))
    by_type = check_bundle(fhir.bundle(refused, BASE_URL, issued_at=ISSUED_AT), FHIR_BASE)
    assert by_type["Encounter"][0]["status"] == "in-progress" and "end" not in by_type["Encounter"][0]["period"]
    assert by_type["Patient"] == [{"resourceType": "Patient", "id": "patient-c-0123456789abcdef"}]  # no patient data
    assert "reasonCode" not in by_type["Encounter"][0]
    assert len(by_type["Media"]) == 1  # a shredded still has no Media
    assert by_type["DocumentReference"][0]["docStatus"] == "preliminary"
    assert {o["status"] for o in by_type["Observation"]} == {"preliminary"}
    assert (by_type["Consent"][0]["status"], by_type["Consent"][0]["provision"]["type"]) == ("rejected", "deny")
    empty = dataclasses.replace(EXAMPLE, report=Report(status="empty", saved_at=None), vitals=(), stills=(),
                                physician=None, specialty="podiatry")
    by_type = check_bundle(fhir.bundle(empty, BASE_URL, issued_at=ISSUED_AT), FHIR_BASE)
    assert "DocumentReference" not in by_type and "Practitioner" not in by_type and "Observation" not in by_type
    assert by_type["Encounter"][0]["serviceType"] == {"text": "podiatry"}


def test_ids_and_the_models_guard() -> None:
    assert fhir.fhir_id("site_with_underscore") == "site-with-underscore"
    assert len(fhir.fhir_id("x" * 100)) == 64
    for broken in ({"resourceType": "Encounter", "id": "e", "class": {"code": "VR"}},  # no status
                   {"resourceType": "Encounter", "id": "e_1", "status": "finished", "class": {"code": "VR"}},
                   {"resourceType": "Encounter", "id": "e", "status": "finished", "class": "VR"},
                   {"resourceType": "Patient", "id": "p", "birthDate": "21/10/1995"},
                   {"resourceType": "Patient", "id": "p", "nickname": "x"}):
        with pytest.raises(ValidationError):
            fhir.validated(broken)
    assert fhir.operation_outcome(404, "no such consultation") == {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "not-found", "diagnostics": "no such consultation"}]}
    fhir.validated(fhir.operation_outcome(401, "token expired"))
