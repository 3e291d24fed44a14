"""axe-core on every page (landing, nurse, physician, admin, the sign-in problem screen):
no serious or critical violation. The pages in a call are checked by the clinic day
(test_clinic_day.py), which has calls running anyway."""

from __future__ import annotations

from tests.support import RunningServer
from tests.web_client.axe_check import axe_violations
from tests.web_client.conftest import open_page
from tests.web_client.test_consultation import check_in


async def test_pages_have_no_serious_accessibility_violations(server: RunningServer, chromium) -> None:  # type: ignore[no-untyped-def]
    found: dict[str, list[str]] = {}

    landing = await open_page(chromium, server.url + "/", locale="fr-FR")
    await landing.wait_for_function("document.querySelector('h1').textContent === 'Téléconsultation'")
    found["landing"] = await axe_violations(landing)
    await landing.context.close()

    admin_token = server.tokens.issue_access("admin", "admin-1", name="Admin One")
    admin = await open_page(chromium, f"{server.url}/admin#token={admin_token}")
    await admin.wait_for_function("window.teleconsult && window.teleconsult.signalling.state === 'open'")
    found["admin"] = await axe_violations(admin)
    await admin.context.close()

    physician_token = server.tokens.issue_access("physician", "dr-demo", specialties=["general"])
    physician = await open_page(chromium, f"{server.url}/physician#token={physician_token}", locale="fr-FR")
    await physician.wait_for_function("window.teleconsult && window.teleconsult.signalling.state === 'open'")
    await physician.locator("#precheck:not([data-verdict=pending])").wait_for(timeout=30000)
    found["physician lobby"] = await axe_violations(physician)

    nurse_token = server.tokens.issue_access("nurse", "nurse-1", site="cabin-demo", name="Claire Martin")
    nurse = await open_page(chromium, f"{server.url}/nurse#token={nurse_token}")
    await nurse.wait_for_function("window.teleconsult && window.teleconsult.signalling.state === 'open'")
    await nurse.locator("#precheck:not([data-verdict=pending])").wait_for(timeout=30000)
    found["nurse check-in"] = await axe_violations(nurse)
    # Required fields are marked (a red "*" the screen reader does not read: the field says "required").
    for selector in ("label[for=patient-ref]", "label[for=reason]", "label[for=specialty]"):
        marker = await nurse.evaluate(f"getComputedStyle(document.querySelector('{selector}'), '::after').content")
        assert "*" in marker, (selector, marker)
        assert await nurse.get_attribute(f"#{selector.split('=')[1][:-1]}", "aria-required") == "true"
    await physician.click("label[for=presence-available]")
    await check_in(nurse, "routine")
    await physician.locator("#offer").wait_for(timeout=15000)
    found["nurse waiting"] = await axe_violations(nurse)
    found["physician offer"] = await axe_violations(physician)
    await physician.click("#offer-decline")
    await nurse.click("#cancel-visit")
    await nurse.locator("#ended").wait_for(timeout=10000)
    found["nurse ended"] = await axe_violations(nurse)
    await nurse.context.close()
    await physician.context.close()

    signed_out = await open_page(chromium, f"{server.url}/nurse")
    await signed_out.locator("#signin-problem").wait_for(timeout=10000)
    found["signed out"] = await axe_violations(signed_out)
    await signed_out.context.close()

    problems = {page: lines for page, lines in found.items() if lines}
    assert not problems, problems
