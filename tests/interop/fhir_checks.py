"""Checks every FHIR test makes of a Bundle: each resource valid for its R4B model, the Bundle round-trips
through the models unchanged, and every reference resolves to one of its entries."""

from __future__ import annotations

import json
from typing import Any, Iterator

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle


def references(value: Any) -> Iterator[str]:
    """Every ``reference`` anywhere in a resource."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "reference" and isinstance(item, str):
                yield item
            else:
                yield from references(item)
    elif isinstance(value, list):
        for item in value:
            yield from references(item)


def check_bundle(bundle: dict[str, Any], fhir_base: str) -> dict[str, list[dict[str, Any]]]:
    """``bundle`` checked; its resources by type."""
    model = Bundle.model_validate_json(json.dumps(bundle))
    assert json.loads(model.model_dump_json(exclude_none=True)) == bundle, "the Bundle does not round-trip"
    assert bundle["type"] == "collection"
    by_type: dict[str, list[dict[str, Any]]] = {}
    urls = set()
    for entry in bundle["entry"]:
        resource = entry["resource"]
        kind = resource["resourceType"]
        get_fhir_model_class(kind).model_validate(resource)
        assert entry["fullUrl"] == f"{fhir_base}/{kind}/{resource['id']}"
        assert entry["fullUrl"] not in urls, "two entries with one fullUrl"
        urls.add(entry["fullUrl"])
        by_type.setdefault(kind, []).append(resource)
    for entry in bundle["entry"]:
        for reference in references(entry["resource"]):
            assert f"{fhir_base}/{reference}" in urls, f"{entry['fullUrl']}: {reference} is not in the Bundle"
    return by_type
