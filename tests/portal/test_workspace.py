"""The agent workspace through Django's test client: sign-in, teams, inbox, thread, replies."""

import pytest
from django.test import Client
from django.urls import reverse

from cs_portal.portal.models import ConversationStatus, Message
from cs_portal.portal.services import (
    agent_create,
    conversation_create,
    reply_correct,
    reply_draft_create,
    reply_send,
    team_create,
)
from translation.claims import translation_claim
from translation.execution import translations_complete
from tests.portal.conftest import customer_says
from translation.models import Translation, TranslationStatus

pytestmark = pytest.mark.django_db


def finish(translation: Translation, text: str) -> None:
    """Store ``text`` as the translation's result, as a worker would."""
    job = translation_claim(translation_id=translation.pk, worker="w1", consumed_from=translation.queue)
    translations_complete([(job, text)], batch_size=1)


class SignInTests:
    def test_pages_need_a_signed_in_agent(self, client, conversation):
        for url in (reverse("workspace:inbox"), reverse("workspace:conversation", args=[conversation.pk])):
            response = client.get(url)
            assert response.status_code == 302 and response.url.startswith(reverse("workspace:login"))

    def test_an_agent_signs_in_with_username_and_password(self, agent):
        client = Client(enforce_csrf_checks=True)
        page = client.get(reverse("workspace:login"))
        token = page.cookies["csrftoken"].value
        response = client.post(
            reverse("workspace:login"), {"username": "sam", "password": "secret-pass", "csrfmiddlewaretoken": token}
        )
        assert response.status_code == 302 and response.url == reverse("workspace:inbox")
        assert client.get(reverse("workspace:inbox")).status_code == 200

    def test_a_post_without_the_csrf_token_is_refused(self, agent, conversation):
        client = Client(enforce_csrf_checks=True)
        client.force_login(agent.user)
        response = client.post(reverse("workspace:reply", args=[conversation.pk]), {"text": "Hello"})
        assert response.status_code == 403
        assert not Message.objects.filter(conversation=conversation).exists()
        # No CSRF cookie at all (no page was opened): said as a browser that sends no cookies.
        assert "did not send the portal's cookies" in response.content.decode()

    def test_a_user_without_an_agent_profile_is_told_so(self, admin_client):
        response = admin_client.get(reverse("workspace:inbox"))
        assert response.status_code == 403 and "has no agent profile" in response.content.decode()


class TeamTests:
    def test_an_agent_cannot_open_another_teams_conversation(self, conversation):
        outsider = agent_create(username="kim", password="x", working_language="en", team=team_create(name="Tier 2"))
        client = Client()
        client.force_login(outsider.user)
        assert client.get(reverse("workspace:conversation", args=[conversation.pk])).status_code == 404
        assert client.post(reverse("workspace:reply", args=[conversation.pk]), {"text": "Hi"}).status_code == 404
        assert "Lucía" not in client.get(reverse("workspace:inbox")).content.decode()

    def test_being_staff_is_not_seeing_every_team(self, conversation):
        """The staff flag lets an agent into the admin; it does not open other teams' conversations."""
        lead = agent_create(username="kim", password="x", working_language="en", team=team_create(name="Tier 2"),
                            is_staff=True)
        client = Client()
        client.force_login(lead.user)
        assert client.get(reverse("workspace:conversation", args=[conversation.pk])).status_code == 404
        assert "Lucía" not in client.get(reverse("workspace:inbox")).content.decode()
        api = reverse("api-agent-messages", args=[conversation.pk])
        assert client.post(api, {"text": "Hi"}, content_type="application/json").status_code == 404

    @pytest.mark.parametrize("given", ["to the agent", "to a group", "superuser"])
    def test_the_every_team_permission_opens_every_teams_conversations(self, conversation, given):
        from django.contrib.auth.models import Group, Permission

        supervisor = agent_create(username="kim", password="x", working_language="en", team=team_create(name="Tier 2"),
                                  every_team=given == "to the agent")
        if given == "to a group":
            group = Group.objects.create(name="Supervisors")
            group.permissions.add(Permission.objects.get(codename="view_every_team"))
            supervisor.user.groups.add(group)
        elif given == "superuser":
            supervisor.user.is_superuser = True
            supervisor.user.save()
        client = Client()
        client.force_login(supervisor.user)
        assert client.get(reverse("workspace:conversation", args=[conversation.pk])).status_code == 200
        assert "Lucía" in client.get(reverse("workspace:inbox")).content.decode()
        response = client.post(reverse("workspace:reply", args=[conversation.pk]), {"text": "Hi"})
        assert response.status_code in (200, 302)
        assert Message.objects.filter(conversation=conversation, text="Hi").exists()
        api = reverse("api-agent-messages", args=[conversation.pk])
        assert client.post(api, {"text": "Hello"}, content_type="application/json").status_code == 201

    def test_another_teams_message_is_answered_as_one_that_does_not_exist(self, conversation):
        """The answer names what was asked for, not the conversation it belongs to."""
        message = customer_says(conversation, "¿Dónde está mi pedido?")
        translation = Translation.objects.get(message=message)  # into the team's working language
        outsider = agent_create(username="kim", password="x", working_language="en", team=team_create(name="Tier 2"))
        client = Client()
        client.force_login(outsider.user)
        gone = Message.objects.order_by("-pk").first().pk + 1000
        for url, what in [
            (reverse("workspace:translate", args=[message.pk]), f"Message {message.pk}"),
            (reverse("workspace:translate", args=[gone]), f"Message {gone}"),
            (reverse("workspace:retry", args=[translation.pk]), f"Translation {translation.pk}"),
            (reverse("workspace:retry", args=[10**12]), f"Translation {10**12}"),
        ]:
            response = client.post(url)
            page = response.content.decode()
            assert response.status_code == 404 and f"{what} does not exist" in page, (url, page[-500:])
            assert f"Conversation {conversation.pk}" not in page

    def test_a_message_is_translated_once_per_distinct_working_language_of_the_team(self, conversation, team):
        agent_create(username="ana", password="x", working_language="fr", team=team)
        agent_create(username="joe", password="x", working_language="en", team=team)  # en again: no second job
        agent_create(username="eva", password="x", working_language="de", team=team, native_languages=["es"])
        message = customer_says(conversation, "Mi pedido no llegó")
        assert sorted(message.translations.values_list("target_language", flat=True)) == ["en", "fr"]


    def test_a_conversation_without_a_team_is_translated_for_every_agent_who_may_open_it(self, api_client_key, team):
        agent_create(username="ana", password="x", working_language="fr", team=team)
        agent_create(username="joe", password="x", working_language="de")  # no team
        conversation = conversation_create(api_client=api_client_key[0], customer_name="Lea")
        conversation.team = conversation.assignee = None
        conversation.save()
        message = customer_says(conversation, "Hola")
        assert sorted(message.translations.values_list("target_language", flat=True)) == ["de", "fr"]


class InboxTests:
    def test_lists_filters_searches_and_marks_unread(self, signed_in, conversation, api_client_key):
        customer_says(conversation, "¿Dónde está mi paquete?")
        other = conversation_create(api_client=api_client_key[0], customer_name="Jean", language="fr")
        other.status = ConversationStatus.CLOSED
        other.save()
        url = reverse("workspace:inbox")
        page = signed_in.get(url).content.decode()
        assert "Lucía" in page and "Jean" in page and "¿Dónde está mi paquete?" in page
        assert 'class="unread"' in page
        assert "Jean" not in signed_in.get(url, {"status": "open"}).content.decode()
        assert "Lucía" not in signed_in.get(url, {"language": "fr"}).content.decode()
        assert "Jean" not in signed_in.get(url, {"q": "paquete"}).content.decode()
        assert "Lucía" in signed_in.get(url, {"q": "lucí"}).content.decode()
        signed_in.get(reverse("workspace:conversation", args=[conversation.pk]))  # opening it reads it
        assert 'class="unread"' not in signed_in.get(url, {"q": "Lucía"}).content.decode()

    def test_take_and_close(self, signed_in, conversation, team):
        mate = agent_create(username="ana", password="x", working_language="fr", team=team)
        conversation.assignee = mate
        conversation.save()
        signed_in.post(reverse("workspace:take", args=[conversation.pk]))
        conversation.refresh_from_db()
        assert conversation.assignee.user.username == "sam"
        signed_in.post(reverse("workspace:status", args=[conversation.pk]), {"status": "closed"})
        conversation.refresh_from_db()
        assert conversation.status == ConversationStatus.CLOSED

    def test_a_bad_status_is_refused_with_a_message(self, signed_in, conversation):
        response = signed_in.post(reverse("workspace:status", args=[conversation.pk]), {"status": "done"}, follow=True)
        assert "Unknown status &#x27;done&#x27;" in response.content.decode()

    def test_filters_and_ids_the_inbox_does_not_offer_are_dropped_not_searched(self, signed_in, conversation):
        """A NUL, a digit that is not ASCII, a number beyond any id: PostgreSQL or int() would
        refuse them with an error page; the inbox ignores such a filter instead."""
        customer_says(conversation, "¿Dónde está mi paquete?")
        url = reverse("workspace:inbox")
        for bad in ({"q": "paq\x00uete"}, {"language": "es\x00"}, {"assignee": "²"}, {"assignee": "9" * 40}):
            response = signed_in.get(url, bad)
            assert response.status_code == 200 and "Lucía" in response.content.decode(), bad
        assert signed_in.get(reverse("workspace:events"), {"conversation": "²"}).status_code == 404
        assigned = signed_in.post(reverse("workspace:assign", args=[conversation.pk]), {"assignee": "abc"}, follow=True)
        assert assigned.status_code == 200 and "Choose an agent to assign the conversation to." in assigned.content.decode()


class ConversationViewTests:
    def test_shows_the_translation_with_the_original_one_click_away(self, signed_in, conversation):
        message = customer_says(conversation, "Hola, mi pedido no llegó")
        finish(message.translations.get(), "Hello, my order did not arrive")
        page = signed_in.get(reverse("workspace:conversation", args=[conversation.pk])).content.decode()
        assert "Hello, my order did not arrive" in page
        assert "<summary>Original (es)</summary>" in page and "Hola, mi pedido no llegó" in page

    def test_a_failed_back_translation_is_retried_from_the_thread(self, signed_in, conversation, agent):
        from translation.execution import translation_fail

        customer_says(conversation, "Hola")
        draft = reply_draft_create(conversation=conversation, agent=agent, text="Thanks!")
        finish(draft.translations.get(), "¡Gracias!")
        back = draft.translations.get().back_translations.get()
        translation_fail(translation_id=back.pk, reason="device lost")
        page = signed_in.get(reverse("workspace:conversation", args=[conversation.pk])).content.decode()
        assert reverse("workspace:retry", args=[back.pk]) in page
        assert signed_in.post(reverse("workspace:retry", args=[back.pk])).status_code == 302
        back.refresh_from_db()
        assert back.status == TranslationStatus.QUEUED

    def test_shows_a_failed_translation_with_its_reason_and_a_retry_button(self, signed_in, conversation):
        from translation.execution import translation_fail

        message = customer_says(conversation, "Hola")
        translation = message.translations.get()
        translation_fail(translation_id=translation.pk, reason="CUDA error: device lost")
        page = signed_in.get(reverse("workspace:conversation", args=[conversation.pk])).content.decode()
        assert "translation failed" in page and "CUDA error: device lost" in page
        assert reverse("workspace:retry", args=[translation.pk]) in page
        signed_in.post(reverse("workspace:retry", args=[translation.pk]))
        translation.refresh_from_db()
        assert translation.status == TranslationStatus.QUEUED

    def test_customer_text_is_escaped(self, signed_in, conversation):
        customer_says(conversation, "<script>alert('x')</script>", language="en")
        page = signed_in.get(reverse("workspace:conversation", args=[conversation.pk])).content.decode()
        assert "<script>alert" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
        inbox = signed_in.get(reverse("workspace:inbox")).content.decode()
        assert "<script>alert" not in inbox

    def test_arabic_renders_right_to_left_and_japanese_carries_its_language(self, signed_in, conversation):
        customer_says(conversation, "طلبي لم يصل بعد", language="ar")
        customer_says(conversation, "注文がまだ届きません", language="ja")
        page = signed_in.get(reverse("workspace:conversation", args=[conversation.pk])).content.decode()
        assert '<div class="text" lang="ar" dir="rtl">طلبي لم يصل بعد</div>' in page
        assert '<div class="text" lang="ja" dir="auto">注文がまだ届きません</div>' in page

    def test_overriding_the_language_translates_again_from_it(self, signed_in, conversation):
        message = customer_says(conversation, "Bom dia, o meu pedido", language="es")
        old = message.translations.get()
        signed_in.post(reverse("workspace:language", args=[message.pk]), {"language": "pt"})
        message.refresh_from_db()
        assert (message.language, message.language_source) == ("pt", "override")
        new = message.translations.get()
        assert new.pk != old.pk and new.source_language == "pt" and new.status == TranslationStatus.QUEUED

    def test_an_unknown_override_language_is_refused(self, signed_in, conversation):
        message = customer_says(conversation, "Hola")
        response = signed_in.post(reverse("workspace:language", args=[message.pk]), {"language": "xx"}, follow=True)
        assert "Unknown language code &#x27;xx&#x27;" in response.content.decode()


class ReplyTests:
    def test_draft_translation_back_translation_correction_and_send(self, signed_in, conversation, agent, http_client_for):
        customer_says(conversation, "Hola")
        signed_in.post(reverse("workspace:reply", args=[conversation.pk]), {"text": "Your parcel ships today."})
        draft = conversation.messages.get(sender="agent")
        assert draft.delivered_at is None
        outgoing = draft.translations.get()
        assert (outgoing.target_language, outgoing.back_translate) == ("es", True)
        customer_api = http_client_for(conversation)
        assert [m["sender"] for m in customer_api()] == ["customer"]  # a draft is not the customer's yet

        finish(outgoing, "Su paquete sale hoy.")
        back = outgoing.back_translations.get()
        assert (back.source_language, back.target_language, back.input_text) == ("es", "en", "Su paquete sale hoy.")
        finish(back, "Your package leaves today.")
        page = signed_in.get(reverse("workspace:conversation", args=[conversation.pk])).content.decode()
        assert "Su paquete sale hoy." in page and "Your package leaves today." in page

        signed_in.post(reverse("workspace:correct", args=[draft.pk]), {"text": "Su paquete se envía hoy."})
        outgoing.refresh_from_db()
        assert (outgoing.text, outgoing.corrected_text, outgoing.corrected_by) == (
            "Su paquete sale hoy.", "Su paquete se envía hoy.", agent,
        )
        assert outgoing.back_translations.get().input_text == "Su paquete se envía hoy."  # checked again

        signed_in.post(reverse("workspace:send", args=[draft.pk]))
        reply = customer_api()[-1]
        assert (reply["sender"], reply["text"], reply["delivery"]) == ("agent", "Su paquete se envía hoy.", "delivered")
        conversation.refresh_from_db()
        assert conversation.status == ConversationStatus.PENDING

    def test_a_failed_back_translation_can_be_retried(self, conversation, agent):
        from translation.execution import translation_fail
        from translation.services import translation_retry

        customer_says(conversation, "Hola")
        draft = reply_draft_create(conversation=conversation, agent=agent, text="Thanks!")
        outgoing = draft.translations.get()
        finish(outgoing, "¡Gracias!")
        back = outgoing.back_translations.get()
        translation_fail(translation_id=back.pk, reason="device lost")
        back.refresh_from_db()
        retried = translation_retry(translation=back)
        assert retried.status == TranslationStatus.QUEUED and retried.input_text == "¡Gracias!"

    def test_a_sent_reply_cannot_be_corrected_or_sent_again(self, conversation, agent):
        draft = reply_draft_create(conversation=conversation, agent=agent, text="Thanks!")
        reply_send(message=draft, agent=agent)
        from translation.errors import ApplicationError

        with pytest.raises(ApplicationError, match="was already sent"):
            reply_send(message=draft, agent=agent)
        with pytest.raises(ApplicationError, match="was already sent"):
            reply_correct(message=draft, agent=agent, text="Gracias")

    def test_an_empty_reply_is_refused_with_a_message(self, signed_in, conversation):
        response = signed_in.post(reverse("workspace:reply", args=[conversation.pk]), {"text": "   "}, follow=True)
        assert "Message text is empty." in response.content.decode()
        assert not conversation.messages.exists()

    def test_a_refused_reply_comes_back_to_the_reply_box_with_the_reason(self, signed_in, conversation, settings):
        settings.MESSAGE_MAX_CHARS = 40
        long_reply = "Gracias por esperar; su pedido sale mañana por la mañana."
        page = signed_in.post(reverse("workspace:reply", args=[conversation.pk]), {"text": long_reply}, follow=True)
        text = page.content.decode()
        assert f"has {len(long_reply)} characters; the limit is 40" in text
        assert 'id="unsent-reply"' in text and "see why above" in text and f">{long_reply}</textarea>" in text
        assert 'maxlength="40"' in text
        assert not conversation.messages.exists()
        # Once: the next visit shows an empty box.
        assert long_reply not in signed_in.get(reverse("workspace:conversation", args=[conversation.pk])).content.decode()

    def test_a_refused_correction_stays_in_its_box_until_it_is_saved(self, signed_in, conversation, agent, settings):
        customer_says(conversation, "¿Dónde está mi paquete?")  # the customer's language: Spanish
        draft = reply_draft_create(conversation=conversation, agent=agent, text="Your parcel leaves today.")
        finish(draft.translations.get(), "Su paquete sale hoy.")
        page = reverse("workspace:conversation", args=[conversation.pk])
        settings.MESSAGE_MAX_CHARS = 30
        long_text = "Su paquete sale hoy por la mañana, sin falta."
        refused = signed_in.post(reverse("workspace:correct", args=[draft.pk]), {"text": long_text}, follow=True)
        text = refused.content.decode()
        assert "the limit is 30" in text and f">{long_text}</textarea>" in text and "was not saved" in text
        # The thread refreshes live: the text stays in its box at each rendering, not once.
        assert f">{long_text}</textarea>" in signed_in.get(page, {"partial": "1"}).content.decode()
        saved = signed_in.post(reverse("workspace:correct", args=[draft.pk]), {"text": "Sale hoy."}, follow=True)
        text = saved.content.decode()
        assert ">Sale hoy.</textarea>" in text and long_text not in text and "was not saved" not in text

    def test_a_nul_character_is_refused_with_a_message_and_the_reply_kept(self, signed_in, conversation):
        page = signed_in.post(reverse("workspace:reply", args=[conversation.pk]), {"text": "Hola\x00 Lucía"}, follow=True)
        text = page.content.decode()
        assert page.status_code == 200 and "contains a NUL character (U+0000)" in text and 'id="unsent-reply"' in text
        assert not conversation.messages.exists()


class SettingsTests:
    def test_an_agent_sets_their_languages_and_the_next_message_follows(self, signed_in, agent, conversation):
        response = signed_in.post(
            reverse("workspace:settings"),
            {"working_language": "fr", "native_languages": ["es", "pt"], "translation_enabled": "on"},
        )
        assert response.status_code == 302
        agent.refresh_from_db()
        assert (agent.working_language, agent.native_languages, agent.translation_enabled) == ("fr", ["es", "pt"], True)
        assert not customer_says(conversation, "Hola").translations.exists()  # read natively
        assert list(customer_says(conversation, "Hallo", language="de").translations.values_list("target_language", flat=True)) == ["fr"]

    def test_an_unknown_language_is_refused_with_a_message(self, signed_in, agent):
        response = signed_in.post(reverse("workspace:settings"), {"working_language": "xx"}, follow=True)
        assert "Unknown language code &#x27;xx&#x27;" in response.content.decode()
        agent.refresh_from_db()
        assert agent.working_language == "en"


class LiveEventsTests:
    """Streams shortened to under a second, and read to their end (as a browser's would end)."""

    @pytest.fixture(autouse=True)
    def short_streams(self, monkeypatch):
        from cs_portal.portal.workspace import views

        monkeypatch.setattr(views, "STREAM_SECONDS", 0.6)

    def test_the_stream_says_change_when_a_message_arrives(self, signed_in, conversation):
        response = signed_in.get(reverse("workspace:events"), {"conversation": conversation.pk})
        assert response["Content-Type"] == "text/event-stream"
        chunks = iter(response.streaming_content)
        assert next(chunks) == b"retry: 500\n\n"
        first = next(chunks).decode()  # a first connection always refreshes: the page may be older
        assert first.startswith("id: ") and first.endswith("event: change\ndata: {}\n\n")
        seen = first.split("\n")[0][len("id: "):]
        customer_says(conversation, "¿Hola?")
        changed = next(chunks).decode()
        assert changed.endswith("event: change\ndata: {}\n\n") and not changed.startswith(f"id: {seen}\n")
        assert set(chunks) == {b": keep-alive\n\n"}  # nothing new since, to the end of the stream

    def test_a_reconnecting_browser_hears_of_a_change_made_while_it_was_away(self, signed_in, conversation):
        url = reverse("workspace:events")
        events = list(signed_in.get(url, {"conversation": conversation.pk}).streaming_content)
        seen = events[1].decode().split("\n")[0][len("id: "):]
        again = list(signed_in.get(url, {"conversation": conversation.pk}, HTTP_LAST_EVENT_ID=seen).streaming_content)
        assert not any(b"event: change" in event for event in again)  # up to date: nothing to announce
        customer_says(conversation, "¿Sigue ahí?")  # while no stream is open
        later = list(signed_in.get(url, {"conversation": conversation.pk}, HTTP_LAST_EVENT_ID=seen).streaming_content)
        assert later[1].decode().endswith("event: change\ndata: {}\n\n")


class DraftSendingTests:
    def test_a_draft_is_not_sent_before_its_translation_is_done(self, conversation, agent):
        from translation.errors import ApplicationError

        customer_says(conversation, "Hola")
        draft = reply_draft_create(conversation=conversation, agent=agent, text="On its way.")
        with pytest.raises(ApplicationError, match="translation into 'es' is queued"):
            reply_send(message=draft, agent=agent)
        finish(draft.translations.get(), "En camino.")
        assert reply_send(message=draft, agent=agent).delivered_at is not None

    def test_a_draft_follows_a_corrected_customer_language(self, signed_in, conversation, agent):
        first = customer_says(conversation, "Bom dia", language="es")
        draft = reply_draft_create(conversation=conversation, agent=agent, text="Good morning!")
        finish(draft.translations.get(), "¡Buenos días!")
        signed_in.post(reverse("workspace:language", args=[first.pk]), {"language": "pt"})
        assert list(draft.translations.values_list("target_language", "status")) == [("pt", TranslationStatus.QUEUED)]


@pytest.fixture
def http_client_for(api_client_key):
    """The customer API's message list of a conversation, as the customer channel reads it."""
    from rest_framework.test import APIClient

    _, key = api_client_key

    def read(conversation):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")

        def messages():
            response = client.get(f"/api/v1/conversations/{conversation.pk}/messages")
            assert response.status_code == 200
            return response.json()

        return messages

    return read
