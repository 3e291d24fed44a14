"""A consultation as FHIR R4 resources: the Encounter, and a collection Bundle of everything.

Pure: the builders turn a :class:`~interop.dossier.Dossier` into JSON-ready dicts, one
function per resource, and :func:`validated` checks them with ``fhir.resources``' R4B
models (R4B is R4 with the same Encounter, Patient, Media... and ``fhir.resources`` 7+
defaults to R5, which has no ``Media``). The Bundle holds, with their references:

* ``Encounter`` (class ``VR``, virtual): status from the consultation's state, period,
  the physician as primary performer, service type from the specialty, the site;
* ``Patient``: the site's reference as an identifier and, for a check-in with an
  INS identity, the INS matricule (``urn:oid:1.2.250.1.213.1.4.8`` and kin, FR Core's
  identifier types), the birth name, first names, sex, birth date and place;
* ``Practitioner``: the physician, with the RPPS and national (IDNPS) identifiers;
* ``Organization`` and ``Location``: the site;
* one ``Observation`` per vital sign (category ``vital-signs``, LOINC, UCUM);
* one ``Media`` per still attached to the report (its image at the REST URL);
* ``DocumentReference``: the PDF report (``/api/consultations/{id}/report.pdf``);
* ``Consent``: the patient's answer about recording.

Every entry's ``fullUrl`` is ``<base>/<type>/<id>`` and references are relative
(``Patient/<id>``), resolved against the Bundle as FHIR says. Errors are an
``OperationOutcome`` (:func:`operation_outcome`).
"""

from __future__ import annotations

import datetime
import re
from typing import Any

from fhir.resources.R4B import get_fhir_model_class

from interop.dossier import Dossier, Still, Vital
from interop.report_pdf import WORDS
from interop.vital_codes import LOINC, UCUM, UNIT_DISPLAY, VITAL_CODES
from signalling.patient_identity import InsIdentity, InsKind

FHIR_JSON = "application/fhir+json"
FHIR_VERSION = "4.0.1"

ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
MEDIA_TYPE = "http://terminology.hl7.org/CodeSystem/media-type"
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
SNOMED = "http://snomed.info/sct"
FR_V2_0203 = "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0203"
FR_BIRTH_GIVEN_NAMES = "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-patient-birth-list-given-name"
FR_INSEE_CODE = "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-address-insee-code"
INSEE_COMMUNES = "https://mos.esante.gouv.fr/NOS/TRE_R13-CommuneOM/FHIR/TRE-R13-CommuneOM"
BIRTH_PLACE = "http://hl7.org/fhir/StructureDefinition/patient-birthPlace"
RPPS_SYSTEM = "https://rpps.esante.gouv.fr"
IDNPS_SYSTEM = "urn:oid:1.2.250.1.71.4.2.1"
OUR_IDS = "urn:teleconsult"
"""Our own identifier systems: ``urn:teleconsult:consultation``, ``...:site``, ``...:clinician``,
``...:site:<site>:patient`` (the site's pseudonymous reference)."""

INS_TYPES: dict[InsKind, tuple[str, str]] = {
    InsKind.NIR: ("INS-NIR", "official"),
    InsKind.NIA: ("INS-NIA", "temp"),
    InsKind.NIR_TEST: ("INS-NIR-TEST", "official"),
    InsKind.NIR_DEMO: ("INS-NIR-DEMO", "official"),
}
"""FR Core's identifier type and use of each kind of INS matricule."""

SPECIALTY_SNOMED: dict[str, tuple[str, str]] = {
    "general": ("394814009", "General practice"),
    "cardiology": ("394579002", "Cardiology"),
    "dermatology": ("394582007", "Dermatology"),
    "geriatrics": ("394811001", "Geriatric medicine"),
    "psychiatry": ("394587001", "Psychiatry"),
    "neurology": ("394591006", "Neurology"),
    "ophthalmology": ("394594003", "Ophthalmology"),
    "endocrinology": ("394583002", "Endocrinology"),
    "pediatrics": ("394537008", "Paediatric specialty"),
}
"""The directory's specialty names with a SNOMED CT practice setting (others go as text)."""

ENCOUNTER_STATUS = {"accepted": "arrived", "active": "in-progress", "ended": "finished"}
"""FHIR Encounter status of each state that has a report (``signalling.reports.REPORTABLE``)."""

_NOT_ID = re.compile(r"[^A-Za-z0-9.\-]")


def fhir_id(text: str) -> str:
    """``text`` as a FHIR id (letters, digits, ``-`` and ``.``; at most 64)."""
    return _NOT_ID.sub("-", text)[:64] or "x"


def instant(ts: float) -> str:
    """A FHIR dateTime / instant in UTC, to the second (``2026-01-01T14:00:00Z``)."""
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Ids:
    """The resources' ids of one dossier (stable: the same consultation, the same ids)."""

    def __init__(self, d: Dossier) -> None:
        cid = fhir_id(d.consultation_id)
        self.encounter = cid
        self.patient = fhir_id(f"patient-{d.consultation_id}")
        self.practitioner = fhir_id(d.physician.id) if d.physician else ""
        self.organization = fhir_id(f"site-{d.site.id}")
        self.location = fhir_id(f"location-{d.site.id}")
        self.report = fhir_id(f"{d.consultation_id}-report")
        self.consent = fhir_id(f"{d.consultation_id}-recording-consent")

    @staticmethod
    def observation(d: Dossier, vital: Vital) -> str:
        return fhir_id(f"{d.consultation_id}-{vital.quantity.replace('_', '-')}")

    @staticmethod
    def media(still: Still) -> str:
        return fhir_id(f"still-{still.still_id}")


def ref(kind: str, rid: str, display: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"reference": f"{kind}/{rid}"}
    if display:
        out["display"] = display
    return out


def _coding(system: str, code: str, display: str = "") -> dict[str, Any]:
    out = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def service_type(specialty: str) -> dict[str, Any]:
    known = SPECIALTY_SNOMED.get(specialty)
    if known is None:
        return {"text": specialty}
    return {"coding": [_coding(SNOMED, known[0], known[1])], "text": specialty}


def encounter(d: Dossier) -> dict[str, Any]:
    ids = Ids(d)
    out: dict[str, Any] = {
        "resourceType": "Encounter", "id": ids.encounter,
        "identifier": [{"system": f"{OUR_IDS}:consultation", "value": d.consultation_id}],
        "status": ENCOUNTER_STATUS.get(d.state, "unknown"),
        "class": _coding(ACT_CODE, "VR", "virtual"),
        "serviceType": service_type(d.specialty),
        "subject": ref("Patient", ids.patient),
        "period": {"start": instant(d.when), **({"end": instant(d.ended_at)} if d.ended_at else {})},
        "serviceProvider": ref("Organization", ids.organization, d.site.name),
        "location": [{"location": ref("Location", ids.location, d.site.name)}],
    }
    if d.physician is not None:
        out["participant"] = [{
            "type": [{"coding": [_coding(PARTICIPATION, "PPRF", "primary performer")]}],
            "individual": ref("Practitioner", ids.practitioner, d.physician.name),
        }]
    reason = d.report.reason or d.visit_reason
    if reason and d.patient is not None:
        out["reasonCode"] = [{"text": reason}]
    return out


def _ins_identifier(identity: InsIdentity) -> dict[str, Any]:
    code, use = INS_TYPES[identity.kind]
    return {"use": use, "type": {"coding": [_coding(FR_V2_0203, code)]}, "system": f"urn:oid:{identity.oid}",
            "value": identity.matricule}


def patient(d: Dossier) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "Patient", "id": Ids(d).patient}
    if d.patient is None:  # a reader who sees no patient data: the subject, unnamed
        return out
    identifiers: list[dict[str, Any]] = [{"use": "usual", "system": f"{OUR_IDS}:site:{d.site.id}:patient",
                                          "value": d.patient.ref}]
    identity = d.patient.identity
    if identity is not None:
        identifiers.insert(0, _ins_identifier(identity))
        out["name"] = [{"extension": [{"url": FR_BIRTH_GIVEN_NAMES, "valueString": identity.first_names}],
                        "use": "official", "family": identity.birth_names, "given": [identity.first_name]}]
        out["gender"] = {"M": "male", "F": "female"}[identity.sex]
        out["birthDate"] = identity.birth_date
        out["extension"] = [{"url": BIRTH_PLACE, "valueAddress": {"extension": [
            {"url": FR_INSEE_CODE, "valueCoding": _coding(INSEE_COMMUNES, identity.birth_place_code)}]}}]
    elif d.patient.ins:
        identifiers.insert(0, {"use": "official", "type": {"text": "INS"}, "value": d.patient.ins})
    out["identifier"] = identifiers
    return out


def practitioner(d: Dossier) -> dict[str, Any] | None:
    physician = d.physician
    if physician is None:
        return None
    identifiers: list[dict[str, Any]] = [{"system": f"{OUR_IDS}:clinician", "value": physician.id}]
    if physician.rpps:
        identifiers = [
            {"type": {"coding": [_coding(FR_V2_0203, "IDNPS")]}, "system": IDNPS_SYSTEM, "value": "8" + physician.rpps},
            {"type": {"coding": [_coding(FR_V2_0203, "RPPS")]}, "system": RPPS_SYSTEM, "value": physician.rpps},
            *identifiers]
    return {"resourceType": "Practitioner", "id": Ids(d).practitioner, "identifier": identifiers,
            "name": [{"text": physician.name}]}


def organization(d: Dossier) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "Organization", "id": Ids(d).organization,
                           "identifier": [{"system": f"{OUR_IDS}:site", "value": d.site.id}],
                           "active": True, "name": d.site.name}
    if d.site.kind:
        out["type"] = [{"text": d.site.kind}]
    return out


def location(d: Dossier) -> dict[str, Any]:
    ids = Ids(d)
    out: dict[str, Any] = {"resourceType": "Location", "id": ids.location, "status": "active", "name": d.site.name,
                           "mode": "instance", "managingOrganization": ref("Organization", ids.organization)}
    if d.site.region:
        out["description"] = d.site.region
    return out


def observation(d: Dossier, vital: Vital) -> dict[str, Any]:
    ids = Ids(d)
    code = VITAL_CODES[vital.quantity]
    codings = [_coding(LOINC, code.loinc, code.display)] + [_coding(LOINC, c, t) for c, t in code.also]
    at = vital.measured_at if vital.measured_at is not None else (d.report.saved_at or d.when)
    out: dict[str, Any] = {
        "resourceType": "Observation", "id": ids.observation(d, vital),
        "status": "final" if d.report.status == "final" else "preliminary",
        "category": [{"coding": [_coding(OBSERVATION_CATEGORY, "vital-signs", "Vital Signs")]}],
        "code": {"coding": codings, "text": code.en},
        "subject": ref("Patient", ids.patient), "encounter": ref("Encounter", ids.encounter),
        "effectiveDateTime": instant(at),
        "valueQuantity": {"value": vital.value, "unit": UNIT_DISPLAY.get(vital.unit, vital.unit), "system": UCUM,
                          "code": vital.unit},
    }
    if d.physician is not None:
        out["performer"] = [ref("Practitioner", ids.practitioner)]
    return out


def media(d: Dossier, still: Still, base_url: str) -> dict[str, Any]:
    ids = Ids(d)
    content: dict[str, Any] = {"contentType": still.mime or "application/octet-stream",
                               "url": base_url + still.url}
    if still.size:
        content["size"] = still.size
    if still.label:
        content["title"] = still.label
    out: dict[str, Any] = {
        "resourceType": "Media", "id": ids.media(still), "status": "completed",
        "type": {"coding": [_coding(MEDIA_TYPE, "image", "Image")]},
        "modality": {"text": still.device},
        "subject": ref("Patient", ids.patient), "encounter": ref("Encounter", ids.encounter),
        "deviceName": still.device, "content": content,
    }
    if still.taken_at is not None:
        out["createdDateTime"] = instant(still.taken_at)
        content["creation"] = instant(still.taken_at)
    if still.width and still.height:
        out["width"], out["height"] = still.width, still.height
    if d.physician is not None:
        out["operator"] = ref("Practitioner", ids.practitioner)
    return out


def report_document(d: Dossier, base_url: str, lang: str = "fr") -> dict[str, Any]:
    ids = Ids(d)
    out: dict[str, Any] = {
        "resourceType": "DocumentReference", "id": ids.report, "status": "current",
        "docStatus": "final" if d.report.status == "final" else "preliminary",
        "type": {"coding": [_coding(LOINC, "11488-4", "Consult note")], "text": WORDS["title"][lang]},
        "subject": ref("Patient", ids.patient),
        "custodian": ref("Organization", ids.organization),
        "description": WORDS["title"][lang],
        "content": [{"attachment": {"contentType": "application/pdf", "language": lang,
                                    "url": f"{base_url}/api/consultations/{d.consultation_id}/report.pdf",
                                    "title": f"{WORDS['title'][lang]} — {d.consultation_id}"}}],
        "context": {"encounter": [ref("Encounter", ids.encounter)],
                    "period": encounter(d)["period"], "practiceSetting": service_type(d.specialty)},
    }
    if d.report.saved_at is not None:
        out["date"] = instant(d.report.saved_at)
        out["content"][0]["attachment"]["creation"] = instant(d.report.saved_at)
    if d.physician is not None:
        out["author"] = [ref("Practitioner", ids.practitioner, d.physician.name)]
    return out


def recording_consent(d: Dossier) -> dict[str, Any]:
    ids = Ids(d)
    given = d.recording.consented
    return {
        "resourceType": "Consent", "id": ids.consent, "status": "active" if given else "rejected",
        "scope": {"coding": [_coding(CONSENT_SCOPE, "patient-privacy", "Privacy Consent")]},
        "category": [{"coding": [_coding(LOINC, "59284-0", "Patient Consent")]},
                     {"text": "recording of the teleconsultation"}],
        "patient": ref("Patient", ids.patient), "dateTime": instant(d.created_at),
        "organization": [ref("Organization", ids.organization)],
        "policyRule": {"coding": [_coding(ACT_CODE, "OPTIN" if given else "OPTOUT")]},
        "provision": {"type": "permit" if given else "deny",
                      "action": [{"text": "record the teleconsultation's audio and video"}],
                      "data": [{"meaning": "related", "reference": ref("Encounter", ids.encounter)}]},
    }


def resources_of(d: Dossier, base_url: str) -> list[dict[str, Any]]:
    """Every resource of the Bundle, in its order."""
    out = [encounter(d), patient(d)]
    pract = practitioner(d)
    if pract is not None:
        out.append(pract)
    out += [organization(d), location(d)]
    out += [observation(d, v) for v in d.vitals]
    out += [media(d, s, base_url) for s in d.stills if not s.missing]
    if d.report.status != "empty":
        out.append(report_document(d, base_url))
    out.append(recording_consent(d))
    return out


def bundle(d: Dossier, base_url: str, *, issued_at: float) -> dict[str, Any]:
    """The collection Bundle of ``d``; ``base_url``: the server's (the FHIR base is ``<base_url>/fhir``)."""
    fhir_base = f"{base_url}/fhir"
    return {
        "resourceType": "Bundle", "id": fhir_id(d.consultation_id),
        "meta": {"lastUpdated": instant(issued_at)},
        "identifier": {"system": f"{OUR_IDS}:consultation", "value": d.consultation_id},
        "type": "collection", "timestamp": instant(issued_at),
        "entry": [{"fullUrl": f"{fhir_base}/{r['resourceType']}/{r['id']}", "resource": r}
                  for r in resources_of(d, base_url)],
    }


def validated(resource: dict[str, Any]) -> dict[str, Any]:
    """``resource`` checked against its R4B model (``pydantic.ValidationError`` when it breaks one)."""
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    return resource


ISSUE_CODES = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found", 409: "conflict", 500: "exception",
               503: "transient"}


def operation_outcome(status: int, text: str) -> dict[str, Any]:
    """The FHIR error body for an HTTP ``status``."""
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": ISSUE_CODES.get(status, "processing"), "diagnostics": text}]}
