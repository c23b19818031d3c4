"""Agents' API tokens kept as digests: a key signs in to the agent API, its digest does not; the
command that makes one; the migration that turned stored keys into digests."""

import importlib
import io

import pytest
from django.apps import apps
from django.core.management import CommandError, call_command, get_commands
from django.test import Client
from django.urls import reverse
from rest_framework.authtoken.models import Token

from cs_portal.portal.services import agent_create
from cs_portal.portal.tokens import agent_token_issue, token_digest

pytestmark = pytest.mark.django_db


def reply(conversation, key: str) -> int:
    return Client().post(
        reverse("api-agent-messages", args=[conversation.pk]), {"text": "Hello"}, content_type="application/json",
        headers={"Authorization": f"Token {key}"},
    ).status_code


def test_the_key_signs_in_and_what_the_database_holds_does_not(agent, conversation):
    key = agent_token_issue(user=agent.user)
    stored = Token.objects.get(user=agent.user).key
    assert stored == token_digest(key) and key != stored
    assert reply(conversation, key) == 201
    assert reply(conversation, stored) == 401  # a copy of the table is no way in
    new_key = agent_token_issue(user=agent.user)
    assert reply(conversation, key) == 401 and reply(conversation, new_key) == 201  # replaced


class CommandTests:
    def test_it_is_the_portals_and_shows_a_key_only_when_it_makes_one(self, agent, conversation):
        assert get_commands()["drf_create_token"] == "cs_portal.portal"  # not DRF's, which stored the key
        out = io.StringIO()
        call_command("drf_create_token", "sam", stdout=out)
        key = out.getvalue().split()[2]
        assert out.getvalue() == f"Generated token {key} for user sam (shown this once).\n"
        assert reply(conversation, key) == 201
        with pytest.raises(CommandError, match="User 'sam' has a token already; it cannot be shown again"):
            call_command("drf_create_token", "sam")
        call_command("drf_create_token", "sam", "--reset", stdout=out)
        new_key = out.getvalue().splitlines()[-1].split()[2]
        assert reply(conversation, key) == 401 and reply(conversation, new_key) == 201

    def test_an_unknown_user_is_said(self):
        with pytest.raises(CommandError, match="Cannot create the token: user 'nobody' does not exist."):
            call_command("drf_create_token", "nobody")


def test_keys_made_before_the_digests_go_on_signing_in(agent, conversation, team):
    """0009: each stored key becomes its digest, its agent and creation time kept."""
    to_digests = importlib.import_module("cs_portal.portal.migrations.0009_token_digests").keys_to_digests
    other = agent_create(username="ana", password="x", working_language="en", team=team)
    old = [Token.objects.create(user=user, key=f"{n:040x}") for n, user in enumerate([agent.user, other.user])]

    to_digests(apps, None)
    for token in old:
        kept = Token.objects.get(user=token.user)
        assert kept.key == token_digest(token.key) and kept.created == token.created
    assert reply(conversation, old[0].key) == 201  # the key the agent was given still works
    assert Token.objects.count() == 2
