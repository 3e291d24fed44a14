"""docs/interop.md's example Bundle is the one the code makes (regenerate: python -m interop.example docs/interop.md)."""

from __future__ import annotations

import json

from interop.example import BASE_URL, GENERATED_BEGIN, GENERATED_END, example_bundle, render_example
from tests.interop.fhir_checks import check_bundle
from tests.support import ROOT


def test_the_documented_bundle_is_the_codes() -> None:
    page = (ROOT / "docs" / "interop.md").read_text(encoding="utf-8")
    generated = page.split(GENERATED_BEGIN, 1)[1].split(GENERATED_END, 1)[0]
    assert generated.strip() == render_example().strip(), \
        "docs/interop.md is stale: run python -m interop.example docs/interop.md"
    documented = json.loads(generated.strip().removeprefix("```json").removesuffix("```"))
    assert documented == example_bundle()
    check_bundle(documented, BASE_URL + "/fhir")
