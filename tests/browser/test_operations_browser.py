"""The admin's operations page in a real browser: it refreshes by itself as the ledger moves."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User

from cs_portal.portal.services import agent_create, conversation_create, message_create_from_customer
from tests.browser.test_workspace_browser import WAIT_MS, browser, screenshot_dir  # noqa: F401 (fixture)
from tests.conftest import wait_for
from translation.models import LanguageRoute, Translation

pytestmark = pytest.mark.django_db(transaction=True)


def translate(api_client, texts: list[str]) -> None:
    """Customer messages in Spanish, translated by the real worker into the agent's English."""
    conversation = conversation_create(api_client=api_client, customer_name="Lucía")
    ids = [message_create_from_customer(conversation=conversation, text=text, language="es").translations.get().pk
           for text in texts]
    wait_for(lambda: all(row.is_finished for row in Translation.objects.filter(pk__in=ids)), timeout=60,
             what="the translations")


def test_the_page_shows_new_jobs_without_a_reload(worker, browser, live_server, api_client_key):  # noqa: F811
    User.objects.create_superuser("ops", "ops@example.com", "ops-pass-123")
    agent_create(username="sam", password="agent-pass-123", working_language="en")
    api_client, _ = api_client_key
    translate(api_client, ["Hola, mi pedido no llegó.", "¿Dónde está mi paquete?", "Gracias por la ayuda."])
    route = LanguageRoute.objects.get(source_language="es", target_language="en", enabled=True)

    page = browser.new_page(viewport={"width": 1400, "height": 900}, locale="en-US")
    page.goto(f"{live_server.url}/admin/login/?next=/admin/operations/")
    page.fill("input[name=username]", "ops")
    page.fill("input[name=password]", "ops-pass-123")
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}/admin/operations/")
    jobs = page.locator(f'tr[data-route="{route.pk}"] td.jobs')
    assert jobs.inner_text() == "3"
    assert page.locator('tr[data-worker] td.state').first.inner_text() == "ready"

    translate(api_client, ["Mi factura tiene un error.", "Quiero cambiar la dirección."])
    page.wait_for_function(
        f"() => document.querySelector('tr[data-route=\"{route.pk}\"] td.jobs').textContent === '5'", timeout=WAIT_MS
    )
    page.screenshot(path=str(screenshot_dir() / "operations.png"), full_page=True)
