"""The workspace tests' agent, team, conversation and signed-in client (tests/portal/test_workspace*.py)."""

import pytest
from django.test import Client

from cs_portal.portal.services import agent_create, conversation_create, message_create_from_customer, team_create


@pytest.fixture
def team():
    return team_create(name="Tier 1")


@pytest.fixture
def agent(team):
    return agent_create(username="sam", password="secret-pass", working_language="en", team=team)



@pytest.fixture
def conversation(api_client_key, agent, django_capture_on_commit_callbacks):
    client, _ = api_client_key
    with django_capture_on_commit_callbacks(execute=False):
        conversation = conversation_create(api_client=client, customer_name="Lucía")
    assert conversation.team == agent.team and conversation.assignee == agent
    return conversation


@pytest.fixture
def signed_in(agent) -> Client:
    client = Client()
    client.force_login(agent.user)
    return client


def customer_says(conversation, text, language="es"):
    return message_create_from_customer(conversation=conversation, text=text, language=language)
