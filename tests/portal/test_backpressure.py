"""Backpressure: past a route's limit of waiting jobs its fallback takes them, else the API
answers 429 with Retry-After and stores nothing; a database outage answers 503 likewise."""

import pytest

from cs_portal.portal.models import Message
from cs_portal.portal.services import agent_create, conversation_create
from tests.conftest import route_update
from translation.models import LanguageRoute, Translation

pytestmark = pytest.mark.django_db


@pytest.fixture
def conversation(api_client_key):
    agent_create(username="sam", password="secret-pass", working_language="en")
    client, key = api_client_key
    return conversation_create(api_client=client, customer_name="Ana"), key


def post(client, conversation, key, text):
    # The test client's transaction never commits: the jobs stay queued, as behind a slow queue.
    return client.post(
        f"/api/v1/conversations/{conversation.pk}/messages", {"text": text, "language": "es"},
        content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {key}",
    )


def test_past_the_limit_the_api_answers_429_and_stores_nothing(client, conversation):
    conversation, key = conversation
    route = route_update("es", "en", max_queued=3)
    for n in range(3):
        assert post(client, conversation, key, f"Hola {n}").status_code == 201
    messages, translations = Message.objects.count(), Translation.objects.count()

    response = post(client, conversation, key, "Hola otra vez")
    assert response.status_code == 429
    assert 1 <= int(response["Retry-After"]) <= 60
    error = response.json()["error"]
    assert error["code"] == "overloaded" and error["retry_after"] == int(response["Retry-After"])
    assert f"3 jobs wait on route {route}" in error["message"] and "Nothing was stored" in error["message"]
    assert (Message.objects.count(), Translation.objects.count()) == (messages, translations)


def test_past_the_limit_the_fallback_takes_the_job(client, conversation):
    conversation, key = conversation
    fallback = LanguageRoute.objects.get(source_language="*", target_language="en", enabled=True)
    route_update("es", "en", max_queued=1, fallback=fallback)
    assert post(client, conversation, key, "Hola").status_code == 201
    assert post(client, conversation, key, "Hola otra vez").status_code == 201
    routes = list(Translation.objects.order_by("pk").values_list("route__source_language", flat=True))
    assert routes == ["es", "*"]


def test_a_database_outage_answers_503_with_retry_after(client, conversation, monkeypatch):
    from django.db import OperationalError

    import cs_portal.portal.services as services

    conversation, key = conversation

    def unreachable(**kwargs):  # what the ORM raises while PostgreSQL is stopped
        raise OperationalError("connection refused")

    monkeypatch.setattr(services, "message_create_from_customer", unreachable)
    response = post(client, conversation, key, "Hola")
    assert response.status_code == 503 and response["Retry-After"] == "5"
    assert response.json()["error"]["code"] == "unavailable"
