"""The report as PDF, rendered from a dossier: every field in the text pdftotext reads (French and English,
accents, typographic quotes, SpO₂), DejaVu embedded, the stills as images, and PNG pages for a person to see."""

from __future__ import annotations

import dataclasses
import io
import re
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from interop import report_pdf
from interop.dossier import Addendum, Dossier, Report, Still, Vital
from interop.example import EXAMPLE
from tests.interop.pdf_tools import pdf_fonts, pdf_pngs, pdf_text
from tests.support import ARTIFACTS

ISSUED = EXAMPLE.ended_at or 0.0


def lesion(size: tuple[int, int] = (480, 360), fmt: str = "PNG") -> bytes:
    """A skin-coloured still with a dark lesion (what a dermatoscope would show, roughly)."""
    image = Image.new("RGB", size, (222, 178, 150))
    draw = ImageDraw.Draw(image)
    w, h = size
    draw.ellipse((w * 0.35, h * 0.3, w * 0.62, h * 0.68), fill=(92, 52, 36), outline=(60, 30, 20), width=4)
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


REPORT = Report(status="final", saved_at=EXAMPLE.when + 1500,
                reason="« Douleur thoracique » depuis 2 jours, l’effort l’aggrave",
                findings="Cœur régulier, pas de souffle ; œdème discret des chevilles. Examen “rassurant”.",
                conclusion="Douleur pariétale probable — pas d’argument pour un syndrome coronarien",
                prescriptions=("Paracétamol 1 g, 3 fois par jour, 5 jours", "ECG de contrôle à J+7",
                               "Kinésithérapie : 10 séances"),
                follow_up="Revoir le médecin traitant sous 1 semaine ; urgences si la douleur s’étend au bras",
                addenda=(Addendum(author="dr-derma", name="Dr Derma", role="specialist",
                                  text="Lésion de l’avant-bras : pas d’argument dermoscopique pour un mélanome.",
                                  at=EXAMPLE.when + 1080),))

DOSSIER: Dossier = dataclasses.replace(
    EXAMPLE, report=REPORT,
    vitals=(*EXAMPLE.vitals, Vital("body_temperature", 98.2, "[degF]", None), Vital("systolic", 16.8, "kPa", None)),
    stills=(dataclasses.replace(EXAMPLE.stills[0], image=lesion(), width=480, height=360),
            Still(still_id="fedcba9876543210fedcba98", device="otoscope", label="tympan droit",
                  taken_at=EXAMPLE.when + 700, mime="image/jpeg", width=320, height=320,
                  image=lesion((320, 320), "JPEG")),
            Still(still_id="00000000000000000000abcd", device="dermatoscope", label="cicatrice",
                  taken_at=EXAMPLE.when + 800, missing=True)))


def flat(text: str) -> str:
    """pdftotext's text with the line breaks of wrapped paragraphs undone."""
    return re.sub(r"\s+", " ", text)


def test_every_field_in_french(tmp_path: Path) -> None:
    pdf = report_pdf.render(DOSSIER, "fr", issued_at=ISSUED)
    assert pdf.startswith(b"%PDF-")
    text = pdf_text(pdf, tmp_path)
    words = flat(text)
    expected = [
        "Compte rendu de téléconsultation", "Demo cabin", "Dr Cardio — RPPS 10000000009",
        "01/01/2026 à 15:00 (heure de Paris)", "cardiology", "Nurse Joy",
        "P-0042", "2 95 10 99 126 111 93 (NIR-TEST, OID 1.2.250.1.213.1.4.10)", "MARTIN", "MARIE ANNE",
        "21/10/1995", "féminin", "99126",
        REPORT.reason, REPORT.findings, REPORT.conclusion, REPORT.follow_up,
        "Compléments", "Dr Derma (spécialiste invité), le 01/01/2026 à 15:18", REPORT.addenda[0].text,
        "72 /min (mesurée le 01/01/2026 à 15:04)", "Saturation en oxygène (SpO₂)", "98 %",
        "126 mmHg", "78 mmHg", "36,8 °C", "98,2 °F", "16,8 kPa",
        "naevus, avant-bras gauche — dermatoscope, prise le 01/01/2026 à 15:10",
        "tympan droit — otoscope, prise le 01/01/2026 à 15:11",
        "cicatrice — dermatoscope, prise le 01/01/2026 à 15:13 : image supprimée",
        "Consultation enregistrée", "oui — du 01/01/2026 à 15:01 au 01/01/2026 à 15:19",
        "consentement du patient à l’enregistrement : oui",
        "Consultation c-0123456789abcdef — édité le 01/01/2026 à 15:20",
    ]
    for field in expected:
        assert field in words, field
    lines = [line.strip() for line in text.splitlines()]
    for line in REPORT.prescriptions:  # one per line
        assert f"• {line}" in lines
    assert "BROUILLON" not in words
    fonts = pdf_fonts(pdf, tmp_path)
    assert "+DejaVuSansBook " in fonts and "+DejaVuSansBold " in fonts and " yes yes yes " in fonts  # embedded, subset, ToUnicode
    pages = pdf_pngs(pdf, ARTIFACTS / "interop", "report-fr")
    assert len(pages) == 2 and all(p.stat().st_size > 5000 for p in pages)


def test_english_a_draft_and_a_reader_without_the_patient(tmp_path: Path) -> None:
    draft = dataclasses.replace(DOSSIER, patient=None, report=dataclasses.replace(REPORT, status="draft"),
                                recording=dataclasses.replace(DOSSIER.recording, recorded=False, consented=False))
    pdf = report_pdf.render(draft, "en", issued_at=ISSUED)
    words = flat(pdf_text(pdf, tmp_path))
    for field in ["Teleconsultation report", "DRAFT — report not final", "2026-01-01 15:00 (Paris time)",
                  "(patient data not shown to this reader)", "Reason for consultation", "Examination",
                  "Oxygen saturation (SpO₂)", "36.8 °C", "taken 2026-01-01 15:10", "Recorded no",
                  "patient’s consent to recording: no", REPORT.findings]:
        assert field in words, field
    for absent in ("MARTIN", "P-0042", "1.2.250.1.213.1.4.10"):
        assert absent not in words
    pdf_pngs(pdf, ARTIFACTS / "interop", "report-en-draft")


def test_an_empty_report_still_prints(tmp_path: Path) -> None:
    empty = dataclasses.replace(EXAMPLE, report=Report(status="empty", saved_at=None), vitals=(), stills=(),
                                patient=dataclasses.replace(EXAMPLE.patient, identity=None) if EXAMPLE.patient else None)
    words = flat(pdf_text(report_pdf.render(empty, "fr", issued_at=ISSUED), tmp_path))
    assert "Aucun compte rendu n’a été rédigé." in words and "BROUILLON" in words
    assert "douleur thoracique" in words  # the visit's reason stands in for the motive
    assert "INS 295109912611193" in words  # the check-in's ins string when there is no INS identity
    with pytest.raises(ValueError, match="lang"):
        report_pdf.render(empty, "de", issued_at=ISSUED)
