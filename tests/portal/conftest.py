"""The workspace tests' agent, team and conversation (tests/portal/test_workspace*.py)."""

import pytest

from cs_portal.portal.services import agent_create, conversation_create, team_create


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
