"""One consultation's dossier: everything the PDF report and the FHIR export show, gathered once.

:func:`gather` reads it for a reader (their access was checked before): the
consultation as signalling keeps it, its report as ``Reports.read`` shows it (the
draft when newer than the final report), the vitals the report keeps, the stills
attached to the report with their images, the site and the physician from the
directory, whether it was recorded, and for clinical readers the patient: the
site's reference and, when the check-in carried one, the INS identity (sealed in
the records). Admins read the report without the patient (as ``report.get``).

The dataclasses are plain values: the renderers (:mod:`interop.report_pdf`,
:mod:`interop.fhir`) are pure functions of a :class:`Dossier`, and
:mod:`interop.example` builds one by hand for the documentation.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from typing import Any

from core.auth import Principal
from media.recording.stills import StillStore
from media.recording.store import RecordingNotFound
from media.recording.vault import IntegrityError
from signalling.consultation import Consultation
from signalling.patient_identity import InsIdentity, parse_ins_identity
from signalling.protocol import REPORT_FIELDS
from signalling.service import SignallingService

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Vital:
    quantity: str
    """A key of ``signalling.protocol.VITAL_UNITS`` (``heart_rate``, ``spo2``...)."""
    value: float
    unit: str
    """UCUM (``/min``, ``%``, ``mm[Hg]``, ``kPa``, ``Cel``, ``[degF]``)."""
    measured_at: float | None


@dataclass(frozen=True)
class Still:
    still_id: str
    device: str
    label: str
    taken_at: float | None
    mime: str = ""
    width: int = 0
    height: int = 0
    size: int = 0
    url: str = ""
    image: bytes | None = None
    """The image (None: not loaded, or shredded by retention: ``missing``)."""
    missing: bool = False


@dataclass(frozen=True)
class Place:
    id: str
    name: str
    kind: str = ""
    region: str = ""


@dataclass(frozen=True)
class Physician:
    id: str
    name: str
    rpps: str = ""
    specialties: tuple[str, ...] = ()


@dataclass(frozen=True)
class Patient:
    ref: str
    """The site's pseudonymous reference."""
    ins: str | None = None
    """The ``ins`` string of the check-in."""
    identity: InsIdentity | None = None


@dataclass(frozen=True)
class Recording:
    recorded: bool
    consented: bool
    started_at: float | None = None
    stopped_at: float | None = None


@dataclass(frozen=True)
class Addendum:
    author: str
    """Who signs it: a clinician's directory id, or a guest's invitation id."""
    name: str
    role: str
    text: str
    at: float


@dataclass(frozen=True)
class Report:
    status: str
    """``empty``, ``draft`` or ``final`` (``signalling.reports.ReportStatus``)."""
    saved_at: float | None
    reason: str = ""
    findings: str = ""
    conclusion: str = ""
    prescriptions: tuple[str, ...] = ()
    follow_up: str = ""
    addenda: tuple[Addendum, ...] = ()
    """By the physician or an admitted specialist (issue 14), oldest first."""


@dataclass(frozen=True)
class Dossier:
    consultation_id: str
    state: str
    specialty: str
    site: Place
    physician: Physician | None
    nurse_name: str
    patient: Patient | None
    """None for a reader who sees no patient data (admins)."""
    visit_reason: str
    created_at: float
    started_at: float | None
    ended_at: float | None
    report: Report
    vitals: tuple[Vital, ...]
    stills: tuple[Still, ...]
    recording: Recording

    @property
    def when(self) -> float:
        """When the consultation took place (its start, else its check-in)."""
        return self.started_at if self.started_at is not None else self.created_at


def _report(read: dict[str, Any]) -> Report:
    body = read.get("report") or {}
    text = {name: body.get(name, [] if name == "prescriptions" else "") for name in REPORT_FIELDS}
    return Report(status=str(read.get("status", "empty")), saved_at=read.get("saved_at"),
                  reason=text["reason"], findings=text["findings"], conclusion=text["conclusion"],
                  prescriptions=tuple(text["prescriptions"]), follow_up=text["follow_up"],
                  addenda=tuple(Addendum(author=str(a.get("author", "")), name=str(a.get("name", "")),
                                         role=str(a.get("role", "")), text=str(a.get("text", "")),
                                         at=float(a.get("at", 0.0))) for a in read.get("addenda") or ()))


def _vitals(read: dict[str, Any]) -> tuple[Vital, ...]:
    vitals = (read.get("report") or {}).get("vitals") or {}
    return tuple(Vital(quantity=name, value=float(v["value"]), unit=str(v["unit"]), measured_at=v.get("measured_at"))
                 for name, v in vitals.items())


async def _stills(store: StillStore | None, cid: str, read: dict[str, Any], images: bool) -> tuple[Still, ...]:
    out: list[Still] = []
    for item in (read.get("report") or {}).get("stills") or []:
        still = Still(still_id=item["still_id"], device=item.get("device", ""), label=item.get("label", ""),
                      taken_at=item.get("taken_at"), mime=item.get("mime", ""), width=item.get("width", 0),
                      height=item.get("height", 0), size=item.get("size", 0), url=item.get("url", ""),
                      missing=bool(item.get("missing")))
        if images and store is not None and not still.missing:
            try:
                _, data = await asyncio.to_thread(store.get, cid, still.still_id)
                still = replace(still, image=data)
            except (RecordingNotFound, ValueError):
                still = replace(still, missing=True)
            except IntegrityError:
                logger.error("still failed its integrity check", extra={"consultation": cid, "still": still.still_id})
                still = replace(still, missing=True)
        out.append(still)
    return tuple(out)


async def gather(svc: SignallingService, stills: StillStore | None, principal: Principal, c: Consultation, *,
                 images: bool) -> Dossier:
    """``c``'s dossier as ``principal`` may read it (checked before); ``images``: load the stills' images."""
    read = await svc.reports.read(principal, c)
    directory = svc.directory
    site = directory.sites.get(c.site)
    clinician = directory.clinicians.get(c.physician or "")
    physician = None
    if c.physician:
        physician = Physician(id=c.physician, name=clinician.name if clinician else (c.physician_name or c.physician),
                              rpps=clinician.rpps if clinician else "",
                              specialties=clinician.specialties if clinician else ())
    patient = None
    if svc.clinical_for(principal):
        kept = await svc.records.get_identity(c.id)
        patient = Patient(ref=c.patient_ref, ins=c.ins, identity=parse_ins_identity(kept) if kept else None)
    recording = c.recording or {}
    return Dossier(
        consultation_id=c.id, state=c.state.value, specialty=c.specialty,
        site=Place(id=c.site, name=c.site_name or (site.name if site else c.site),
                   kind=site.kind.value if site else "", region=site.region if site else ""),
        physician=physician, nurse_name=c.nurse_name, patient=patient,
        visit_reason=c.reason if patient is not None else "",
        created_at=c.created_at, started_at=c.started_at, ended_at=c.ended_at,
        report=_report(read), vitals=_vitals(read), stills=await _stills(stills, c.id, read, images),
        recording=Recording(recorded=recording.get("started_at") is not None, consented=c.consent_recording,
                            started_at=recording.get("started_at"), stopped_at=recording.get("stopped_at")))
