"""The customer API over real HTTP: what it accepts, and each bad input's specific answer."""

import time

import pytest

from cs_portal.portal.api.auth import INVALID_KEY, MALFORMED_HEADER
from cs_portal.portal.models import Conversation, Customer, Message
from cs_portal.portal.services import agent_create, api_client_create, conversation_create
from cs_portal.portal.tokens import agent_token_issue
from translation import errors
from translation.models import Translation

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def conversation(api_client_key):
    client, _ = api_client_key
    return conversation_create(api_client=client, customer_name="Ana")


def counts() -> tuple[int, int, int, int]:
    return Customer.objects.count(), Conversation.objects.count(), Message.objects.count(), Translation.objects.count()


class ConversationCreateTests:
    def test_creates_a_conversation_assigned_to_an_available_agent(self, http, api_client_key):
        agent_create(username="lea", password="secret-pass", working_language="de")
        _, key = api_client_key
        status, body = http.call(
            "POST", "/api/v1/conversations", {"customer": {"name": "Ana", "external_id": "c-1"}, "language": "es"}, key=key
        )
        assert status == 201
        assert body["language"] == "es"
        assert body["customer"]["external_id"] == "c-1"
        assert Conversation.objects.get(pk=body["id"]).assignee.user.username == "lea"

    def test_same_external_id_reuses_the_customer(self, http, api_client_key):
        _, key = api_client_key
        for _ in range(2):
            http.call("POST", "/api/v1/conversations", {"customer": {"name": "Ana", "external_id": "c-1"}}, key=key)
        assert Customer.objects.count() == 1
        assert Conversation.objects.count() == 2

    def test_same_external_id_at_once_makes_one_customer(self, api_client_key):
        """Two requests for a new customer at once (a widget's double submit): the second waits
        for the first's customer and uses it, instead of failing on the unique id."""
        import threading

        from django.db import connection, transaction

        client, _ = api_client_key
        opened, failures = [], []
        in_first = threading.Event()

        def request(hold: bool) -> None:
            try:
                with transaction.atomic():
                    opened.append(conversation_create(api_client=client, customer_name="Ana", external_id="c-7"))
                    if hold:  # the first keeps its new customer uncommitted while the second asks
                        in_first.set()
                        time.sleep(0.5)
            except BaseException as error:
                failures.append(error)
            finally:
                connection.close()

        first = threading.Thread(target=request, args=(True,))
        first.start()
        assert in_first.wait(10)
        second = threading.Thread(target=request, args=(False,))
        second.start()
        first.join(10)
        second.join(10)
        assert not failures, failures
        assert len(opened) == 2 and Customer.objects.filter(external_id="c-7").count() == 1
        assert opened[0].customer_id == opened[1].customer_id

    def test_optional_fields_may_come_empty_or_null(self, http, api_client_key):
        _, key = api_client_key
        status, body = http.call("POST", "/api/v1/conversations", {
            "customer": {"name": "Ana", "email": "", "external_id": ""}, "subject": "", "language": None,
        }, key=key)
        assert status == 201 and body["language"] in ("", None)
        status, _ = http.call("POST", "/api/v1/conversations", {"customer": {"name": "Ana"}, "language": ""}, key=key)
        assert status == 201

    def test_an_email_longer_than_the_column_is_refused_with_a_message(self, http, api_client_key):
        _, key = api_client_key
        email = "a" * 64 + "@" + ".".join(["b" * 60] * 4) + ".com"  # valid, 312 characters
        status, body = http.call("POST", "/api/v1/conversations", {"customer": {"name": "A", "email": email}}, key=key)
        assert status == 400 and "customer.email: Ensure this field has no more than 254 characters." == body["error"]["message"]
        assert counts() == (0, 0, 0, 0)

    def test_customer_name_is_required(self, http, api_client_key):
        _, key = api_client_key
        status, body = http.call("POST", "/api/v1/conversations", {"customer": {}}, key=key)
        assert status == 400
        assert body["error"]["message"] == "customer.name: This field is required."
        assert counts() == (0, 0, 0, 0)

    def test_unknown_language_is_refused(self, http, api_client_key):
        _, key = api_client_key
        status, body = http.call("POST", "/api/v1/conversations", {"customer": {"name": "A"}, "language": "xx"}, key=key)
        assert (status, body["error"]["code"]) == (400, "language_unknown")
        assert counts() == (0, 0, 0, 0)


class MessageCreateTests:
    def test_language_is_detected_and_a_translation_queued(self, http, api_client_key, conversation):
        _, key = api_client_key
        status, body = http.call(
            "POST", f"/api/v1/conversations/{conversation.pk}/messages", {"text": "  Hola, necesito ayuda con mi pedido "}, key=key
        )
        assert status == 201
        assert body["text"] == "Hola, necesito ayuda con mi pedido"
        assert (body["language"], body["language_source"]) == ("es", "detected")
        [translation] = body["translations"]
        assert translation["target_language"] == "en"
        assert translation["status"] in ("queued", "running", "done")
        assert Translation.objects.get(pk=translation["id"]).queue == "translate.en"
        assert "model" not in translation and "queue" not in translation  # internals stay in the ledger
        conversation.refresh_from_db()
        assert conversation.language == "es"

    def test_list_shows_messages_with_their_translations(self, http, api_client_key, conversation):
        _, key = api_client_key
        http.call("POST", f"/api/v1/conversations/{conversation.pk}/messages", {"text": "Bonjour", "language": "fr"}, key=key)
        status, body = http.call("GET", f"/api/v1/conversations/{conversation.pk}/messages", key=key)
        assert status == 200
        assert [m["text"] for m in body] == ["Bonjour"]
        assert body[0]["translations"][0]["target_language"] == "en"


BAD_MESSAGES = [
    ({"text": ""}, 400, "text_empty", errors.TEXT_EMPTY),
    ({"text": " \n\t "}, 400, "text_empty", errors.TEXT_EMPTY),
    ({"text": "x" * 5001}, 400, "text_too_long", errors.TEXT_TOO_LONG.format(length=5001, limit=5000)),
    ({"text": "Hola", "language": "xx"}, 400, "language_unknown", errors.LANGUAGE_UNKNOWN.format(code="xx")),
    ({"text": "Hej", "language": "sv"}, 400, "language_unsupported", None),
    ({}, 400, "invalid", "text: This field is required."),
    ({"text": ["not", "a", "string"]}, 400, "invalid", "text: Not a valid string."),
    ({"text": "12345 ??? !!!"}, 400, "language_undetected", errors.LANGUAGE_UNDETECTED),
]


class AgentReplyBeforeLanguageTests:
    @pytest.fixture(autouse=True)
    def remember_key(self, api_client_key):
        self.key = api_client_key

    def test_a_reply_before_the_customer_wrote_is_delivered_as_written(self, http, conversation):
        agent = agent_create(username="kim", password="secret-pass", working_language="en")
        token = agent_token_issue(user=agent.user)
        status, body = http.call(
            "POST", f"/api/v1/agent/conversations/{conversation.pk}/messages", {"text": "Hello, how can I help?"},
            headers={"Authorization": f"Token {token}"},
        )
        assert status == 201
        assert (body["text"], body["language"], body["delivery"]) == ("Hello, how can I help?", "en", "delivered")
        assert body["translations"] == []

        # The customer then writes in Spanish: the earlier reply stays delivered as it was.
        _, key = self.key
        http.call("POST", f"/api/v1/conversations/{conversation.pk}/messages", {"text": "Hola", "language": "es"}, key=key)
        _, listed = http.call("GET", f"/api/v1/conversations/{conversation.pk}/messages", key=key)
        assert (listed[0]["text"], listed[0]["delivery"]) == ("Hello, how can I help?", "delivered")


    def test_a_reply_goes_on_showing_as_it_was_sent_when_the_customers_language_is_learned(self, http, conversation):
        """An agent writing German replies before the customer's language is known: the reply goes
        out in DEFAULT_AGENT_LANGUAGE's translation. The customer then writes French, and an agent
        corrects that message's language: neither turns the sent reply into a failed one."""
        from cs_portal.portal.services import message_language_override
        from translation.claims import translation_claim
        from translation.execution import translations_complete

        from tests.conftest import route_update

        route_update("*", "en", queue="translate.en.unconsumed")  # this test plays the worker
        agent = agent_create(username="lea", password="secret-pass", working_language="de")
        token = agent_token_issue(user=agent.user)
        status, body = http.call(
            "POST", f"/api/v1/agent/conversations/{conversation.pk}/messages", {"text": "Hallo, wie kann ich helfen?"},
            headers={"Authorization": f"Token {token}"},
        )
        assert status == 201 and (body["text"], body["language"], body["delivery"]) == (None, "en", "pending")
        translation = Translation.objects.get(message_id=body["id"])
        from datetime import timedelta

        from django.utils import timezone

        from workers.models import WorkerHeartbeat

        alive = timezone.now() + timedelta(hours=1)  # through the test: no reconciler takes its claim
        WorkerHeartbeat.objects.create(name="w1", hostname="h", pid=1, device="cpu", started_at=alive, beat_at=alive,
                                       ready=True)
        job = translation_claim(translation_id=translation.pk, worker="w1", consumed_from=translation.queue)
        translations_complete([(job, "Hello, how can I help?")], batch_size=1)

        _, key = self.key
        http.call("POST", f"/api/v1/conversations/{conversation.pk}/messages", {"text": "Bonjour", "language": "fr"}, key=key)
        _, listed = http.call("GET", f"/api/v1/conversations/{conversation.pk}/messages", key=key)
        assert (listed[0]["text"], listed[0]["language"], listed[0]["delivery"]) == ("Hello, how can I help?", "en", "delivered")

        message_language_override(message=Message.objects.get(pk=listed[1]["id"]), agent=agent, language="it")
        _, listed = http.call("GET", f"/api/v1/conversations/{conversation.pk}/messages", key=key)
        assert Conversation.objects.get(pk=conversation.pk).language == "it"
        assert (listed[0]["text"], listed[0]["language"], listed[0]["delivery"]) == ("Hello, how can I help?", "en", "delivered")


    def test_a_reply_to_a_conversation_closed_meanwhile_is_refused_and_leaves_it_closed(self, conversation):
        """The API's view read the conversation before another agent closed it: the reply is
        refused, and the close stands (not written over with the view's older copy)."""
        from cs_portal.portal.models import ConversationStatus
        from cs_portal.portal.services import message_create_from_agent

        agent = agent_create(username="lea", password="secret-pass", working_language="en")
        seen = Conversation.objects.get(pk=conversation.pk)  # what the view read
        Conversation.objects.filter(pk=conversation.pk).update(status=ConversationStatus.CLOSED)
        with pytest.raises(errors.ApplicationError) as refused:
            message_create_from_agent(conversation=seen, agent=agent, text="Hello again")
        assert refused.value.code == "conversation_closed"
        assert Conversation.objects.get(pk=conversation.pk).status == ConversationStatus.CLOSED
        assert not Message.objects.filter(conversation=conversation).exists()


class MessageBadInputTests:
    @pytest.mark.parametrize(("body", "status", "code", "message"), BAD_MESSAGES)
    def test_bad_message_gets_a_specific_4xx_and_writes_nothing(self, http, api_client_key, conversation, body, status, code, message):
        _, key = api_client_key
        before = counts()
        got_status, got = http.call("POST", f"/api/v1/conversations/{conversation.pk}/messages", body, key=key)
        assert got_status == status
        assert got["error"]["code"] == code
        if message:
            assert got["error"]["message"] == message
        assert counts() == before

    def test_text_limit_is_configurable(self, http, api_client_key, conversation, settings):
        settings.MESSAGE_MAX_CHARS = 10
        _, key = api_client_key
        status, body = http.call("POST", f"/api/v1/conversations/{conversation.pk}/messages", {"text": "Hola amigos de"}, key=key)
        assert (status, body["error"]["message"]) == (400, errors.TEXT_TOO_LONG.format(length=14, limit=10))

    def test_malformed_json_is_refused(self, http, api_client_key, conversation):
        _, key = api_client_key
        before = counts()
        status, body = http.call("POST", f"/api/v1/conversations/{conversation.pk}/messages", raw=b'{"text": "Hola', key=key)
        assert status == 400
        assert body["error"]["code"] == "malformed_json"
        assert body["error"]["message"].startswith("Request body is not valid JSON")
        assert counts() == before

    def test_unknown_conversation_is_404(self, http, api_client_key):
        _, key = api_client_key
        status, body = http.call("POST", "/api/v1/conversations/424242/messages", {"text": "Hola"}, key=key)
        assert status == 404
        assert body["error"]["message"] == errors.CONVERSATION_NOT_FOUND.format(id=424242)
        assert counts() == (0, 0, 0, 0)

    def test_another_clients_conversation_is_404(self, http, conversation):
        _, other_key = api_client_create(name="other-channel")
        status, _ = http.call("GET", f"/api/v1/conversations/{conversation.pk}/messages", key=other_key)
        assert status == 404

    def test_wrong_key_is_401(self, http, conversation):
        before = counts()
        status, body = http.call("POST", f"/api/v1/conversations/{conversation.pk}/messages", {"text": "Hola"}, key="wrong")
        assert (status, body["error"]["message"]) == (401, INVALID_KEY)
        assert counts() == before

    def test_missing_key_is_401(self, http, conversation):
        status, body = http.call("GET", f"/api/v1/conversations/{conversation.pk}/messages")
        assert (status, body["error"]["code"]) == (401, "unauthenticated")

    def test_malformed_authorization_header_is_401(self, http, conversation):
        status, body = http.call(
            "GET", f"/api/v1/conversations/{conversation.pk}/messages", headers={"Authorization": "Bearer a b"}
        )
        assert (status, body["error"]["message"]) == (401, MALFORMED_HEADER)

    def test_the_bearer_scheme_is_case_insensitive(self, http, api_client_key, conversation):
        _, key = api_client_key
        status, _ = http.call("GET", f"/api/v1/conversations/{conversation.pk}/messages",
                              headers={"Authorization": f"bearer {key}"})
        assert status == 200

    def test_closed_conversation_takes_no_messages(self, http, api_client_key, conversation):
        conversation.status = "closed"
        conversation.save()
        _, key = api_client_key
        status, body = http.call("POST", f"/api/v1/conversations/{conversation.pk}/messages", {"text": "Hola"}, key=key)
        assert (status, body["error"]["code"]) == (400, "conversation_closed")

    def test_unknown_api_path_answers_json_404(self, http, api_client_key):
        _, key = api_client_key
        status, body = http.call("GET", "/api/v1/nothing-here", key=key)
        assert (status, body["error"]["code"]) == (404, "not_found")


class OpenApiSchemaTests:
    def test_schema_lists_the_customer_endpoints(self, http):
        status, schema = http.call("GET", "/api/schema/?format=json")
        assert status == 200
        assert "/api/v1/conversations/{conversation_id}/messages" in schema["paths"]
        assert "post" in schema["paths"]["/api/v1/conversations"]
