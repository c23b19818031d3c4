"""The agent workspace and the customer chat page in a real browser: Debian's Chromium, headless,
driven by Playwright, against the live server, a real worker, PostgreSQL and Redis.

Screenshots go to var/test-data/screenshots, or to docs/screenshots with SAVE_SCREENSHOTS=1
(how the README's pictures are made).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone

from cs_portal.portal.models import Conversation, ConversationStatus
from cs_portal.portal.services import agent_create, conversation_create, conversation_set_status, team_create
from tests.conftest import ROOT
from translation.models import Translation, TranslationStatus

pytestmark = pytest.mark.django_db(transaction=True)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PASSWORD = "agent-pass-123"
WAIT_MS = 20_000  # a generous ceiling: the tiny model, the worker and this browser share 2 cores


def screenshot_dir() -> Path:
    if os.environ.get("SAVE_SCREENSHOTS") == "1":
        return ROOT / "docs" / "screenshots"
    return Path(settings.DATA_DIR) / "screenshots"


@pytest.fixture
def browser():
    # Playwright's sync API keeps an event loop in this thread; the ORM calls of these tests
    # run between its calls, never inside it.
    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()
            # The server notices the closed event streams at its next keep-alive (0.25 s) and
            # gives back their database connections before the test database is dropped.
            time.sleep(1)



@pytest.fixture
def agent_page(browser, live_server):
    team = team_create(name="Tier 1")
    agent_create(username="sam", password=PASSWORD, working_language="en", team=team)
    page = browser.new_page(viewport={"width": 1200, "height": 820}, locale="en-US")
    page.goto(f"{live_server.url}/workspace/login/")
    page.fill("input[name=username]", "sam")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/workspace/")
    return page


@pytest.fixture
def customer_page(browser, live_server, api_client_key):
    _, key = api_client_key

    def open_chat(name: str, language: str):
        page = browser.new_page(viewport={"width": 800, "height": 700})
        page.goto(f"{live_server.url}/chat/#key={key}")
        page.fill("#name", name)
        page.select_option("#language", language)
        page.click("#start-button")
        page.wait_for_selector("#chat:not([hidden])")
        return page

    return open_chat


def say(customer, text: str) -> float:
    customer.fill("#text", text)
    customer.click("#send-form button[type=submit]")
    customer.wait_for_function("() => document.getElementById('text').value === ''")
    return time.monotonic()


def done_translation(**filters) -> Translation:
    deadline = time.monotonic() + WAIT_MS / 1000
    while time.monotonic() < deadline:
        row = Translation.objects.filter(**filters).order_by("-id").first()
        if row is not None and row.status == TranslationStatus.DONE:
            return row
        assert row is None or row.status != TranslationStatus.FAILED, row and row.failure_reason
        time.sleep(0.1)
    raise AssertionError(f"no done translation for {filters}")


class AgentWorkspaceBrowserTests:
    def test_a_customer_message_appears_translated_then_the_agent_replies_corrects_and_sends(
        self, worker, agent_page, customer_page
    ):
        agent = agent_page
        agent.evaluate("window.__sameDocument = true")  # gone if the page reloads
        customer = customer_page("Lucía", "es")
        said_at = say(customer, "Hola, mi pedido no ha llegado todavía.")

        # The inbox shows the new conversation without a reload.
        agent.wait_for_selector("#inbox-rows >> text=Lucía", timeout=WAIT_MS)
        print(f"inbox showed the new conversation {time.monotonic() - said_at:.2f}s after the customer's send")
        assert agent.evaluate("window.__sameDocument") is True
        agent.click("#inbox-rows >> text=Lucía")
        agent.wait_for_selector("#thread")
        agent.evaluate("window.__sameDocument = true")

        # A second message appears, and then its translation, without a reload.
        said_at = say(customer, "¿Me pueden ayudar, por favor?")
        # Attached, not necessarily visible: once translated, the original sits under "Original".
        agent.wait_for_selector("#thread >> text=¿Me pueden ayudar, por favor?", state="attached", timeout=WAIT_MS)
        print(f"the message appeared {time.monotonic() - said_at:.2f}s after the customer's send")
        translation = done_translation(message__text="¿Me pueden ayudar, por favor?", target_language="en")
        agent.wait_for_function(
            "text => [...document.querySelectorAll('#thread .translated .text')].some(e => e.textContent.trim() === text)",
            arg=translation.text.strip(), timeout=WAIT_MS,
        )
        assert agent.evaluate("window.__sameDocument") is True
        shots = screenshot_dir()
        shots.mkdir(parents=True, exist_ok=True)

        # The agent replies in English; the Spanish version and its back-translation come back.
        agent.fill("#reply-text", "Your parcel ships today.")
        agent.click("#reply-form button[type=submit]")
        outgoing = done_translation(message__text="Your parcel ships today.", target_language="es")
        back = done_translation(back_translation_of=outgoing)
        agent.wait_for_selector(f"#thread .back >> text={back.text.strip()[:20]}", timeout=WAIT_MS)
        agent.screenshot(path=str(shots / "conversation.png"), full_page=True)

        agent.fill(".correct textarea", "Su paquete se envía hoy mismo.")
        agent.click(".correct button[type=submit]")
        agent.wait_for_selector("text=corrected by sam")
        agent.click("button.send")
        agent.wait_for_selector(".message.agent:not(.draft)")

        # The customer reads the corrected text.
        customer.wait_for_selector(".bubble >> text=Su paquete se envía hoy mismo.", timeout=WAIT_MS)
        outgoing.refresh_from_db()
        assert outgoing.corrected_text == "Su paquete se envía hoy mismo."
        assert outgoing.text and outgoing.text != outgoing.corrected_text  # the machine's output is kept

        # More customers for the inbox picture: other languages, one closed.
        for name, language, text in [
            ("Amal", "ar", "طلبي لم يصل بعد"), ("Yuki", "ja", "注文がまだ届きません"), ("Jean", "fr", "Merci beaucoup !"),
        ]:
            other = customer_page(name, language)
            say(other, text)
            other.close()
        agent.goto(agent.url.split("/conversations/")[0] + "/")
        agent.wait_for_selector("#inbox-rows >> text=Yuki", timeout=WAIT_MS)
        agent.click("#inbox-rows tr:has-text('Jean') button:has-text('Close')")
        agent.wait_for_selector("#inbox-rows tr:has-text('Jean') .status.closed")
        agent.screenshot(path=str(shots / "inbox.png"), full_page=True)

    def test_an_xss_payload_renders_as_text_and_arabic_right_to_left(self, worker, agent_page, customer_page):
        agent = agent_page
        customer = customer_page("Mallory", "en")
        payload = '<img src=x onerror="window.__xss = 1"><script>window.__xss = 1</script>'
        say(customer, payload)
        arabic = customer_page("Amal", "ar")
        say(arabic, "طلبي لم يصل بعد")

        agent.wait_for_selector("#inbox-rows >> text=Mallory", timeout=WAIT_MS)
        agent.click("#inbox-rows >> text=Mallory")
        agent.wait_for_selector("#thread .message.customer")
        shown = agent.inner_text("#thread .message.customer .text")
        assert shown.strip() == payload
        assert agent.evaluate("window.__xss") is None
        assert customer.inner_text(".bubble.mine") == payload and customer.evaluate("window.__xss") is None

        done_translation(message__text="طلبي لم يصل بعد", target_language="en")  # the original is then under <details>
        agent.goto(agent.url.split("/conversations/")[0] + "/")
        agent.wait_for_selector("#inbox-rows >> text=Amal", timeout=WAIT_MS)
        agent.click("#inbox-rows >> text=Amal")
        # Translated: the original is under "Original", attached but not laid out until opened.
        # One synchronous call on the current page (a live refresh may have replaced any handle):
        # open it, then ask for its direction.
        agent.wait_for_selector('#thread .text[lang="ar"]', state="attached")
        direction, shown = agent.evaluate("""() => {
            const e = document.querySelector('#thread .text[lang="ar"]');
            const d = e.closest('details');
            if (d) d.open = true;
            return [getComputedStyle(e).direction, e.textContent.trim()];
        }""")
        assert (direction, shown) == ("rtl", "طلبي لم يصل بعد")


# Counts the server's "change" events and the live element's "refreshed" events (capture: they
# do not bubble), on every page the agent opens.
COUNT_LIVE_EVENTS = """
window.__changes = 0;
window.__refreshes = [];
const Stream = window.EventSource;
window.EventSource = class extends Stream {
  constructor(...args) {
    super(...args);
    this.addEventListener("change", () => { window.__changes += 1; });
  }
};
document.addEventListener("refreshed", (e) => window.__refreshes.push(e.detail.replaced), true);
"""


class LiveRefreshBrowserTests:
    """A live page re-renders on the server's word without taking anything from under the agent."""

    def open_inbox(self, agent, live_server, client):
        """The agent's inbox, showing one new conversation (returned)."""
        conversation = conversation_create(api_client=client, customer_name="Noor", language="es")
        agent.add_init_script(COUNT_LIVE_EVENTS)
        agent.goto(f"{live_server.url}/workspace/")
        # A first connection is always told to refresh; the page is already up to date.
        agent.wait_for_function("window.__refreshes.length === 1")
        assert agent.evaluate("window.__refreshes") == [False]
        return conversation

    def press_while_a_conversation_arrives(self, agent, client, target: str, *, x: float | None = None):
        """Holds the main button down on ``target`` (at ``x`` from its left, or its centre) while
        a new conversation arrives; returns it once the page was told and did not refresh."""
        box = agent.locator(target).bounding_box()
        agent.mouse.move(box["x"] + (box["width"] / 2 if x is None else x), box["y"] + box["height"] / 2)
        agent.mouse.down()
        changes = agent.evaluate("window.__changes")
        arrived = conversation_create(api_client=client, customer_name="Omar", language="ar")
        agent.wait_for_function(f"window.__changes > {changes}", timeout=WAIT_MS)
        agent.wait_for_timeout(500)  # time enough for a refresh that did not wait to land
        assert agent.evaluate("window.__refreshes.length") == 1
        return arrived

    def test_content_the_same_as_shown_stays_in_place_and_new_content_replaces_it(
        self, agent_page, live_server, api_client_key
    ):
        agent = agent_page
        conversation = self.open_inbox(agent, live_server, api_client_key[0])
        row = f'tr[data-conversation="{conversation.pk}"]'
        agent.evaluate(f"document.querySelector('{row}').__kept = true")

        # A change the inbox does not show (the conversation touched): the row stays the same node.
        Conversation.objects.filter(pk=conversation.pk).update(updated_at=timezone.now())
        agent.wait_for_function("window.__refreshes.length >= 2", timeout=WAIT_MS)
        assert agent.evaluate("window.__refreshes[1]") is False
        assert agent.evaluate(f"document.querySelector('{row}').__kept") is True

        # A change it shows replaces the rows.
        conversation_set_status(conversation=conversation, status=ConversationStatus.PENDING)
        agent.wait_for_selector(f"{row} .status.pending", timeout=WAIT_MS)
        assert agent.evaluate("window.__refreshes.at(-1)") is True
        assert agent.evaluate(f"document.querySelector('{row}').__kept") is None

    def test_a_change_while_a_button_is_held_down_waits_for_its_click(self, agent_page, live_server, api_client_key):
        agent, (client, _) = agent_page, api_client_key
        first = self.open_inbox(agent, live_server, client)
        second = self.press_while_a_conversation_arrives(
            agent, client, f'tr[data-conversation="{first.pk}"] button:has-text("Close")'
        )
        agent.mouse.up()

        # The click went to the button the agent pressed; the new conversation shows after it.
        agent.wait_for_selector(f'tr[data-conversation="{first.pk}"] .status.closed', timeout=WAIT_MS)
        agent.wait_for_selector(f'tr[data-conversation="{second.pk}"]', timeout=WAIT_MS)
        first.refresh_from_db()
        assert first.status == ConversationStatus.CLOSED

    def test_a_change_held_back_by_a_press_that_is_no_click_shows_once_released(
        self, agent_page, live_server, api_client_key
    ):
        agent, (client, _) = agent_page, api_client_key
        first = self.open_inbox(agent, live_server, client)
        # On a cell: pressed, and released without a click on anything.
        second = self.press_while_a_conversation_arrives(agent, client, f'tr[data-conversation="{first.pk}"] td.preview', x=2)
        agent.mouse.up()

        agent.wait_for_selector(f'tr[data-conversation="{second.pk}"]', timeout=WAIT_MS)
        assert agent.evaluate("window.__refreshes") == [False, True]  # the same page, refreshed


class SignInElsewhereBrowserTests:
    @staticmethod
    def sign_in(page, live_server) -> None:
        page.goto(f"{live_server.url}/workspace/login/")
        page.fill("input[name=username]", "sam")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{live_server.url}/workspace/")

    def test_a_page_opened_before_signing_in_again_in_another_tab_still_sends_its_forms(
        self, browser, live_server, api_client_key
    ):
        agent_create(username="sam", password=PASSWORD, working_language="en", team=team_create(name="Tier 1"))
        conversation = conversation_create(api_client=api_client_key[0], customer_name="Noor", language="es")
        context = browser.new_context(viewport={"width": 1200, "height": 820}, locale="en-US")
        agent = context.new_page()
        self.sign_in(agent, live_server)
        row = f'tr[data-conversation="{conversation.pk}"]'
        agent.wait_for_selector(row)
        rendered = agent.input_value(f"{row} input[name=csrfmiddlewaretoken]")
        before = {c["name"]: c["value"] for c in context.cookies(live_server.url)}["csrftoken"]

        # Signing in again, in another tab of the same browser, gives it a new CSRF secret: the
        # tokens rendered into the first tab were masked from the old one.
        self.sign_in(context.new_page(), live_server)
        assert {c["name"]: c["value"] for c in context.cookies(live_server.url)}["csrftoken"] != before
        assert agent.input_value(f"{row} input[name=csrfmiddlewaretoken]") == rendered  # the first tab as it was

        # The first tab's form goes with the browser's current secret, and is taken.
        agent.click(f'{row} button:has-text("Close")')
        agent.wait_for_selector(f"{row} .status.closed", timeout=WAIT_MS)
        conversation.refresh_from_db()
        assert conversation.status == ConversationStatus.CLOSED
        assert "Not sent" not in agent.content()
        context.close()
