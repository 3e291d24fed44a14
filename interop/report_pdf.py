"""The consultation report (compte rendu) as a PDF document, in French or English.

Pure: :func:`render` turns a :class:`~interop.dossier.Dossier` into PDF bytes with
fpdf2. The text is set in DejaVu Sans, embedded (subset) from the TTF files
shipped in ``interop/fonts`` with their licence: fpdf2's core fonts are Latin-1
only and cannot print ``œ``, ``’``, ``“ ”`` or ``SpO₂``; shipping the files with the
package makes the output the same on every machine, whatever fonts it has.

Layout, top to bottom: title (and a DRAFT line when the report is not final),
the header (site, physician with RPPS, date and time, specialty, nurse), the
patient (site reference, INS identity when the check-in carried it), the report
(reason, examination, conclusion, prescriptions one per line, follow-up), the
vitals with units and times, the attached stills as images with their labels and
times, and whether the consultation was recorded. Times are Paris time.
"""

from __future__ import annotations

import datetime
import io
import logging
from dataclasses import dataclass
from importlib import resources
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fpdf import FPDF
from fpdf.enums import XPos, YPos

from core.vocabulary import Language
from interop.dossier import Dossier, Still
from interop.vital_codes import UNIT_DISPLAY, vital_label

logger = logging.getLogger(__name__)

LANGUAGES = tuple(language.value for language in Language)
FONT = "DejaVu"
TIMEZONE = "Europe/Paris"
"""Reports are read in France: their times are Paris time (UTC when the system has no time zone data)."""
IMAGE_MAX_MM = 80.0
MARGIN_MM = 18.0
LABEL_MM = 64.0

WORDS: dict[str, dict[str, str]] = {
    "title": {"fr": "Compte rendu de téléconsultation", "en": "Teleconsultation report"},
    "draft": {"fr": "BROUILLON — compte rendu non validé", "en": "DRAFT — report not final"},
    "empty": {"fr": "Aucun compte rendu n’a été rédigé.", "en": "No report was written."},
    "site": {"fr": "Lieu", "en": "Site"},
    "physician": {"fr": "Médecin", "en": "Physician"},
    "date": {"fr": "Date et heure", "en": "Date and time"},
    "specialty": {"fr": "Spécialité", "en": "Specialty"},
    "nurse": {"fr": "Soignant sur place", "en": "Nurse on site"},
    "consultation": {"fr": "Consultation", "en": "Consultation"},
    "patient": {"fr": "Patient", "en": "Patient"},
    "patient_ref": {"fr": "Référence du site", "en": "Site reference"},
    "ins": {"fr": "INS", "en": "INS"},
    "birth_names": {"fr": "Nom de naissance", "en": "Birth name"},
    "first_names": {"fr": "Prénoms", "en": "First names"},
    "birth_date": {"fr": "Date de naissance", "en": "Date of birth"},
    "sex": {"fr": "Sexe", "en": "Sex"},
    "sex_M": {"fr": "masculin", "en": "male"},
    "sex_F": {"fr": "féminin", "en": "female"},
    "birth_place": {"fr": "Lieu de naissance (code INSEE)", "en": "Place of birth (INSEE code)"},
    "no_patient": {"fr": "(données du patient non communiquées à ce lecteur)",
                   "en": "(patient data not shown to this reader)"},
    "reason": {"fr": "Motif", "en": "Reason for consultation"},
    "findings": {"fr": "Examen", "en": "Examination"},
    "conclusion": {"fr": "Conclusion", "en": "Conclusion"},
    "prescriptions": {"fr": "Prescriptions", "en": "Prescriptions"},
    "follow_up": {"fr": "Suivi", "en": "Follow-up"},
    "addenda": {"fr": "Compléments", "en": "Addenda"},
    "addendum_by": {"fr": "{name} ({role}), le {at}", "en": "{name} ({role}), {at}"},
    "role_physician": {"fr": "médecin", "en": "physician"},
    "role_specialist": {"fr": "spécialiste invité", "en": "invited specialist"},
    "vitals": {"fr": "Constantes", "en": "Vital signs"},
    "measured_at": {"fr": "mesurée le", "en": "measured"},
    "stills": {"fr": "Images", "en": "Stills"},
    "taken_at": {"fr": "prise le", "en": "taken"},
    "still_missing": {"fr": "image supprimée (durée de conservation échue)",
                      "en": "image removed (retention period over)"},
    "still_unreadable": {"fr": "image illisible", "en": "unreadable image"},
    "recording": {"fr": "Enregistrement", "en": "Recording"},
    "was_recorded": {"fr": "Consultation enregistrée", "en": "Recorded"},
    "recorded": {"fr": "oui", "en": "yes"},
    "not_recorded": {"fr": "non", "en": "no"},
    "from_to": {"fr": "du {start} au {stop}", "en": "from {start} to {stop}"},
    "since": {"fr": "depuis le {start}", "en": "since {start}"},
    "consent": {"fr": "consentement du patient à l’enregistrement : {answer}",
                "en": "patient’s consent to recording: {answer}"},
    "none": {"fr": "non renseigné", "en": "not given"},
    "page": {"fr": "Page {n}/{total}", "en": "Page {n}/{total}"},
    "generated": {"fr": "édité le {at}", "en": "issued {at}"},
    "time_note": {"fr": "heure de Paris", "en": "Paris time"},
}


def _zone() -> datetime.tzinfo:
    try:
        return ZoneInfo(TIMEZONE)
    except ZoneInfoNotFoundError:
        return datetime.timezone.utc


def format_time(ts: float, lang: str) -> str:
    """``12/03/2026 à 14:05`` or ``2026-03-12 14:05`` (Paris time)."""
    at = datetime.datetime.fromtimestamp(ts, _zone())
    return at.strftime("%d/%m/%Y à %H:%M") if lang == "fr" else at.strftime("%Y-%m-%d %H:%M")


def format_date(iso: str, lang: str) -> str:
    day = datetime.date.fromisoformat(iso)
    return day.strftime("%d/%m/%Y") if lang == "fr" else iso


def format_vital(value: float, unit: str, lang: str) -> str:
    """``36,8 °C`` / ``36.8 °C``: one decimal at most, none when whole."""
    text = f"{value:.1f}".rstrip("0").rstrip(".")
    if lang == "fr":
        text = text.replace(".", ",")
    return f"{text} {UNIT_DISPLAY.get(unit, unit)}"


def format_matricule(matricule: str) -> str:
    """A NIR as it is printed on a carte Vitale: ``2 95 10 99 126 111 93``."""
    parts = (matricule[0], matricule[1:3], matricule[3:5], matricule[5:7], matricule[7:10], matricule[10:13],
             matricule[13:])
    return " ".join(parts)


@dataclass(frozen=True)
class _Fonts:
    regular: str
    bold: str


def _fonts() -> _Fonts:
    base = resources.files("interop").joinpath("fonts")
    return _Fonts(str(base.joinpath("DejaVuSans.ttf")), str(base.joinpath("DejaVuSans-Bold.ttf")))


class _Document(FPDF):
    def __init__(self, lang: str, footer_text: str) -> None:
        super().__init__(format="A4")
        self.lang = lang
        self.footer_text = footer_text

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font(FONT, size=7.5)
        self.set_text_color(90, 90, 90)
        page = WORDS["page"][self.lang].format(n=self.page_no(), total="{nb}")
        self.cell(0, 4, f"{self.footer_text} — {page}", align="C")
        self.set_text_color(0, 0, 0)


def _image_size(still: Still) -> tuple[float, float]:
    """A still's printed size in mm: at most ``IMAGE_MAX_MM`` either way, its proportions kept."""
    scale = min(IMAGE_MAX_MM / still.width, IMAGE_MAX_MM / still.height)
    return still.width * scale, still.height * scale


class _Writer:
    def __init__(self, pdf: _Document, lang: str) -> None:
        self.pdf = pdf
        self.lang = lang

    def w(self, key: str) -> str:
        return WORDS[key][self.lang]

    def heading(self, text: str, keep_mm: float = 20.0) -> None:
        """A section title, on a new page when what must follow it (``keep_mm``) would not fit."""
        pdf = self.pdf
        if pdf.get_y() + 12 + keep_mm > pdf.page_break_trigger:
            pdf.add_page()
        pdf.ln(3)
        pdf.set_font(FONT, "B", 11.5)
        pdf.cell(0, 7, text, new_x=XPos.LMARGIN, new_y=YPos.NEXT, align="L")
        pdf.set_draw_color(150, 150, 150)
        pdf.line(pdf.l_margin, pdf.get_y(), pdf.w - pdf.r_margin, pdf.get_y())
        pdf.ln(1.5)
        pdf.set_font(FONT, size=10)

    def field(self, label: str, value: str) -> None:
        pdf = self.pdf
        pdf.set_font(FONT, "B", 9.5)
        pdf.cell(LABEL_MM, 5.5, label)
        pdf.set_font(FONT, size=10)
        pdf.multi_cell(0, 5.5, value or self.w("none"), new_x=XPos.LMARGIN, new_y=YPos.NEXT, align="L")

    def paragraph(self, text: str) -> None:
        self.pdf.set_font(FONT, size=10)
        self.pdf.multi_cell(0, 5.5, text or self.w("none"), new_x=XPos.LMARGIN, new_y=YPos.NEXT, align="L")

    def section(self, key: str, text: str) -> None:
        self.section_text(self.w(key), text)

    def section_text(self, title: str, text: str) -> None:
        self.pdf.set_font(FONT, "B", 10)
        self.pdf.cell(0, 6, title, new_x=XPos.LMARGIN, new_y=YPos.NEXT, align="L")
        self.paragraph(text)
        self.pdf.ln(1)

    def still(self, still: Still) -> None:
        pdf = self.pdf
        taken = format_time(still.taken_at, self.lang) if still.taken_at is not None else self.w("none")
        caption = f"{still.label} — {still.device}" if still.label else still.device
        caption += f", {self.w('taken_at')} {taken}"
        if still.image is None or still.missing or not still.width or not still.height:
            self.paragraph(f"{caption} : {self.w('still_missing')}" if self.lang == "fr"
                           else f"{caption}: {self.w('still_missing')}")
            return
        width, height = _image_size(still)
        if pdf.get_y() + height + 12 > pdf.page_break_trigger:
            pdf.add_page()
        try:
            pdf.image(io.BytesIO(still.image), x=pdf.l_margin, w=width, h=height)
        except Exception as exc:  # a format fpdf2/Pillow cannot read: say so, keep the report
            logger.warning("still not printable: %s", type(exc).__name__, extra={"still": still.still_id})
            self.paragraph(f"{caption} — {self.w('still_unreadable')}")
            return
        pdf.set_font(FONT, size=8.5)
        pdf.multi_cell(0, 4.5, caption, new_x=XPos.LMARGIN, new_y=YPos.NEXT, align="L")
        pdf.ln(2)


def render(dossier: Dossier, lang: str = "fr", *, issued_at: float) -> bytes:
    """The report of ``dossier`` as PDF bytes; ``issued_at``: when it is printed (the footer, metadata)."""
    if lang not in LANGUAGES:
        raise ValueError(f"lang must be one of {', '.join(LANGUAGES)}")
    fonts = _fonts()
    footer = f"{dossier.site.name} — {WORDS['consultation'][lang]} {dossier.consultation_id} — " \
             + WORDS["generated"][lang].format(at=format_time(issued_at, lang))
    pdf = _Document(lang, footer)
    pdf.set_margins(MARGIN_MM, MARGIN_MM, MARGIN_MM)
    pdf.set_auto_page_break(True, MARGIN_MM)
    pdf.add_font(FONT, "", fonts.regular)
    pdf.add_font(FONT, "B", fonts.bold)
    pdf.set_lang(lang)
    pdf.set_title(WORDS["title"][lang])
    pdf.set_creator("teleconsult")
    pdf.set_creation_date(datetime.datetime.fromtimestamp(issued_at, datetime.timezone.utc))
    pdf.alias_nb_pages("{nb}")
    pdf.add_page()
    out = _Writer(pdf, lang)

    pdf.set_font(FONT, "B", 16)
    pdf.cell(0, 9, out.w("title"), new_x=XPos.LMARGIN, new_y=YPos.NEXT, align="L")
    if dossier.report.status != "final":
        pdf.set_font(FONT, "B", 10)
        pdf.set_text_color(170, 40, 40)
        pdf.cell(0, 6, out.w("draft"), new_x=XPos.LMARGIN, new_y=YPos.NEXT, align="L")
        pdf.set_text_color(0, 0, 0)
    pdf.ln(2)

    physician = dossier.physician
    who = ""
    if physician is not None:
        who = physician.name + (f" — RPPS {physician.rpps}" if physician.rpps else "")
    out.field(out.w("site"), dossier.site.name)
    out.field(out.w("physician"), who)
    out.field(out.w("date"), f"{format_time(dossier.when, lang)} ({out.w('time_note')})")
    out.field(out.w("specialty"), dossier.specialty)
    out.field(out.w("nurse"), dossier.nurse_name)

    out.heading(out.w("patient"))
    patient = dossier.patient
    if patient is None:
        out.paragraph(out.w("no_patient"))
    else:
        out.field(out.w("patient_ref"), patient.ref)
        identity = patient.identity
        if identity is not None:
            kind = identity.kind.value
            out.field(out.w("ins"), f"{format_matricule(identity.matricule)} ({kind}, OID {identity.oid})")
            out.field(out.w("birth_names"), identity.birth_names)
            out.field(out.w("first_names"), identity.first_names)
            out.field(out.w("birth_date"), format_date(identity.birth_date, lang))
            out.field(out.w("sex"), out.w(f"sex_{identity.sex}"))
            out.field(out.w("birth_place"), identity.birth_place_code)
        elif patient.ins:
            out.field(out.w("ins"), patient.ins)

    report = dossier.report
    out.heading(out.w("consultation"))
    if report.status == "empty":
        out.paragraph(out.w("empty"))
    out.section("reason", report.reason or dossier.visit_reason)
    out.section("findings", report.findings)
    out.section("conclusion", report.conclusion)
    pdf.set_font(FONT, "B", 10)
    pdf.cell(0, 6, out.w("prescriptions"), new_x=XPos.LMARGIN, new_y=YPos.NEXT, align="L")
    if report.prescriptions:
        for line in report.prescriptions:
            out.paragraph(f"• {line}")
    else:
        out.paragraph("")
    pdf.ln(1)
    out.section("follow_up", report.follow_up)
    if report.addenda:
        out.heading(out.w("addenda"))
        for addendum in report.addenda:
            role = WORDS.get(f"role_{addendum.role}", {}).get(lang, addendum.role)
            out.section_text(out.w("addendum_by").format(name=addendum.name or addendum.author, role=role,
                                                         at=format_time(addendum.at, lang)), addendum.text)

    out.heading(out.w("vitals"))
    if not dossier.vitals:
        out.paragraph("")
    for vital in dossier.vitals:
        value = format_vital(vital.value, vital.unit, lang)
        if vital.measured_at is not None:
            value += f" ({out.w('measured_at')} {format_time(vital.measured_at, lang)})"
        out.field(vital_label(vital.quantity, lang), value)

    first = next((s for s in dossier.stills if s.image is not None and s.width and s.height), None)
    out.heading(out.w("stills"), keep_mm=_image_size(first)[1] + 12 if first is not None else 20.0)
    if not dossier.stills:
        out.paragraph("")
    for still in dossier.stills:
        out.still(still)

    out.heading(out.w("recording"))
    rec = dossier.recording
    answer = out.w("recorded") if rec.recorded else out.w("not_recorded")
    if rec.recorded and rec.started_at is not None:
        start = format_time(rec.started_at, lang)
        answer += " — " + (out.w("from_to").format(start=start, stop=format_time(rec.stopped_at, lang))
                           if rec.stopped_at is not None else out.w("since").format(start=start))
    out.field(out.w("was_recorded"), answer)
    consent = out.w("recorded") if rec.consented else out.w("not_recorded")
    out.paragraph(out.w("consent").format(answer=consent))
    return bytes(pdf.output())

