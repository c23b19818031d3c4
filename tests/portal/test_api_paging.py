"""The customer API's message list, a page at a time: the latest first chosen, oldest first in
each page, the earlier pages through the `Link` header, and each bad page request answered."""

import re

import pytest
from django.test import Client
from django.urls import reverse

from cs_portal.portal.models import Message
from cs_portal.portal.services import (
    agent_create,
    conversation_create,
    message_create_from_customer,
    reply_draft_create,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def chat(api_client_key, django_capture_on_commit_callbacks):
    """A conversation of seven customer messages and one unsent draft, and a client with its key."""
    api_client, key = api_client_key
    with django_capture_on_commit_callbacks(execute=False):
        conversation = conversation_create(api_client=api_client, customer_name="Ana")
        said = [message_create_from_customer(conversation=conversation, text=f"Hola {n}", language="es").pk
                for n in range(7)]
        agent = agent_create(username="kim", password="x", working_language="en")
        reply_draft_create(conversation=conversation, agent=agent, text="Not sent yet")
    return conversation, said, Client(headers={"Authorization": f"Bearer {key}"})


def page(client, conversation, **query):
    response = client.get(reverse("api-messages", args=[conversation.pk]), query)
    link = response.headers.get("Link")
    earlier = re.fullmatch(r'<(http://testserver/[^>]+)>; rel="prev"', link).group(1) if link else None
    return response, earlier


def test_pages_run_from_the_latest_back_to_the_first(chat):
    conversation, said, client = chat
    response, earlier = page(client, conversation, limit=3)
    assert [m["id"] for m in response.json()] == said[4:]
    assert earlier == f"http://testserver/api/v1/conversations/{conversation.pk}/messages?before={said[4]}&limit=3"
    response = client.get(earlier)
    assert [m["id"] for m in response.json()] == said[1:4]
    last = client.get(re.search(r"<([^>]+)>", response.headers["Link"]).group(1))
    assert [m["id"] for m in last.json()] == said[:1] and "Link" not in last.headers


def test_the_default_page_is_the_latest_hundred_without_drafts(chat):
    conversation, said, client = chat
    response, earlier = page(client, conversation)
    assert [m["id"] for m in response.json()] == said and earlier is None  # the draft is not listed
    assert Message.objects.filter(conversation=conversation, delivered_at__isnull=True).count() == 1


def test_messages_delivered_at_the_same_instant_are_paged_by_id(chat):
    conversation, said, client = chat
    Message.objects.filter(pk__in=said).update(delivered_at=Message.objects.get(pk=said[0]).delivered_at)
    response, earlier = page(client, conversation, limit=4)
    assert [m["id"] for m in response.json()] == said[3:]
    assert [m["id"] for m in client.get(earlier).json()] == said[:3]


@pytest.mark.parametrize(("query", "said"), [
    ({"limit": 0}, "limit: Ensure this value is greater than or equal to 1."),
    ({"limit": 501}, "limit: Ensure this value is less than or equal to 500."),
    ({"limit": "ten"}, "limit: A valid integer is required."),
    ({"before": "x"}, "before: A valid integer is required."),
])
def test_a_bad_page_request_is_answered_with_what_is_wrong(chat, query, said):
    conversation, _, client = chat
    response, _ = page(client, conversation, **query)
    assert response.status_code == 400 and response.json()["error"] == {
        "code": "invalid", "message": said, "fields": {next(iter(query)): [said.split(": ", 1)[1]]}
    }


def test_before_takes_only_a_delivered_message_of_the_same_conversation(chat, api_client_key):
    conversation, said, client = chat
    draft = Message.objects.get(conversation=conversation, delivered_at__isnull=True)
    other = conversation_create(api_client=api_client_key[0], customer_name="Bo")
    elsewhere = message_create_from_customer(conversation=other, text="Hola", language="es")
    for before in (draft.pk, elsewhere.pk):
        response, _ = page(client, conversation, before=before)
        assert response.status_code == 400
        assert response.json()["error"] == {
            "code": "before_unknown",
            "message": f"Message {before} is not a delivered message of conversation {conversation.pk}: "
                       "`before` takes the id of a message the list returned.",
        }
