"""The example consultation of docs/interop.md, and the Bundle the code makes of it.

``python -m interop.example docs/interop.md`` rewrites the generated part of the page
(between the markers) with :func:`example_bundle`, built by the same functions as
``GET /fhir/Bundle/{id}``; ``tests/interop/test_example.py`` fails when the page drifts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from interop import fhir
from interop.dossier import Dossier, Patient, Physician, Place, Recording, Report, Still, Vital
from signalling.patient_identity import parse_ins_identity

BASE_URL = "https://teleconsult.example"
ISSUED_AT = 1767279600.0
"""2026-01-01 15:00 UTC, when the example Bundle is said to be made."""
_T0 = 1767276000.0

EXAMPLE = Dossier(
    consultation_id="c-0123456789abcdef", state="ended", specialty="cardiology",
    site=Place(id="cabin-demo", name="Demo cabin", kind="cabin", region="demo"),
    physician=Physician(id="dr-cardio", name="Dr Cardio", rpps="10000000009", specialties=("cardiology",)),
    nurse_name="Nurse Joy",
    patient=Patient(ref="P-0042", ins="295109912611193", identity=parse_ins_identity({
        "matricule": "295109912611193", "oid": "1.2.250.1.213.1.4.10", "birth_names": "MARTIN",
        "first_names": "MARIE ANNE", "birth_date": "1995-10-21", "sex": "F", "birth_place_code": "99126"})),
    visit_reason="douleur thoracique", created_at=_T0 - 300, started_at=_T0, ended_at=_T0 + 1200,
    report=Report(status="final", saved_at=_T0 + 1500, reason="Douleur thoracique depuis 2 jours",
                  findings="Auscultation normale, pas de souffle", conclusion="Douleur pariétale probable",
                  prescriptions=("Paracétamol 1 g, 3 fois par jour, 5 jours",), follow_up="Médecin traitant sous 1 semaine"),
    vitals=(Vital("heart_rate", 72.0, "/min", _T0 + 240), Vital("spo2", 98.0, "%", _T0 + 240),
            Vital("systolic", 126.0, "mm[Hg]", _T0 + 300), Vital("diastolic", 78.0, "mm[Hg]", _T0 + 300),
            Vital("body_temperature", 36.8, "Cel", _T0 + 360)),
    stills=(Still(still_id="0123456789abcdef01234567", device="dermatoscope", label="naevus, avant-bras gauche",
                  taken_at=_T0 + 600, mime="image/png", width=640, height=480, size=48213,
                  url="/api/consultations/c-0123456789abcdef/stills/0123456789abcdef01234567"),),
    recording=Recording(recorded=True, consented=True, started_at=_T0 + 60, stopped_at=_T0 + 1180),
)


def example_bundle() -> dict[str, Any]:
    return fhir.validated(fhir.bundle(EXAMPLE, BASE_URL, issued_at=ISSUED_AT))


GENERATED_BEGIN = "<!-- BEGIN GENERATED: python -m interop.example -->"
GENERATED_END = "<!-- END GENERATED -->"


def render_example() -> str:
    return "```json\n" + json.dumps(example_bundle(), indent=2, ensure_ascii=False) + "\n```\n"


def update_doc(path: str) -> bool:
    """Rewrite the generated part of ``path``; True when it changed."""
    page = Path(path)
    text = page.read_text(encoding="utf-8")
    head, found, rest = text.partition(GENERATED_BEGIN)
    if not found:
        raise ValueError(f"{path} has no {GENERATED_BEGIN!r} marker")
    _, _, tail = rest.partition(GENERATED_END)
    new = f"{head}{GENERATED_BEGIN}\n\n{render_example()}\n{GENERATED_END}{tail}"
    if new != text:
        page.write_text(new, encoding="utf-8")
        return True
    return False


if __name__ == "__main__":  # pragma: no cover
    target = sys.argv[1] if len(sys.argv) > 1 else "docs/interop.md"
    print(f"{target} {'updated' if update_doc(target) else 'up to date'}")
