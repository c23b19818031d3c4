"""Data migrations run against the real PostgreSQL, on rows made as the release before made them."""

import importlib

import pytest
from django.apps import apps

from cs_portal.portal.models import Message, Sender
from cs_portal.portal.services import agent_create, message_create_from_customer, reply_draft_create, reply_send
from translation.claims import translation_claim
from translation.execution import translations_complete

pytestmark = pytest.mark.django_db


def test_delivered_language_is_filled_in_as_the_customer_was_shown_each_reply(conversation, agent, settings):
    """0004's backfill: a reply sent in the conversation's language, or before it was known, as
    written; a reply translated into the conversation's language, in it; a reply whose
    translation went to another language (the language learned later), as written, not failed."""
    backfill = importlib.import_module("cs_portal.portal.migrations.0004_message_delivered_language").delivered_languages

    settings.DEFAULT_AGENT_LANGUAGE = "en"
    before = reply_send(message=reply_draft_create(conversation=conversation, agent=agent, text="Hello!"), agent=agent)
    message_create_from_customer(conversation=conversation, text="Hola, ¿dónde está mi pedido?", language="es")
    draft = reply_draft_create(conversation=conversation, agent=agent, text="It leaves today.")
    outgoing = draft.translations.get()
    translations_complete([(translation_claim(translation_id=outgoing.pk, worker="w1", consumed_from="q"), "Sale hoy.")])
    translated = reply_send(message=draft, agent=agent)
    german = agent_create(username="lea", password="secret-pass", working_language="de", team=agent.team)
    other = reply_draft_create(conversation=conversation, agent=german, text="Guten Tag")
    Message.objects.filter(pk=other.pk).update(delivered_at=translated.delivered_at)  # sent, its es translation pending
    conversation.refresh_from_db()
    conversation.language = "fr"  # corrected later: no reply has a French translation
    conversation.save()
    Message.objects.update(delivered_language="")  # as the release before left them

    backfill(apps, None)
    languages = dict(Message.objects.values_list("pk", "delivered_language"))
    assert languages[before.pk] == "en"  # as written (the conversation's language was unknown)
    assert languages[translated.pk] == "en"  # its translation went to es, the language now is fr: as written
    assert languages[other.pk] == "de"
    customer = Message.objects.get(sender=Sender.CUSTOMER)
    assert languages[customer.pk] == ""

    conversation.language = "es"
    conversation.save()
    Message.objects.update(delivered_language="")
    backfill(apps, None)
    assert Message.objects.get(pk=translated.pk).delivered_language == "es"  # shown in its translation
    assert Message.objects.get(pk=other.pk).delivered_language == "es"


def test_the_admins_history_no_longer_names_a_token_by_its_key(admin_user):
    """0007: entries the admin wrote when tokens were named by their keys name their kind now;
    other entries are left as they were."""
    from django.contrib.admin.models import ADDITION, LogEntry
    from django.contrib.contenttypes.models import ContentType
    from rest_framework.authtoken.models import Token, TokenProxy

    token = Token.objects.create(user=admin_user)
    for model, named in ((TokenProxy, token.key), (Token, token.key), (Message, "customer message 7 (es)")):
        LogEntry.objects.create(user=admin_user, content_type=ContentType.objects.get_for_model(model, for_concrete_model=False),
                                object_id=str(admin_user.pk), object_repr=named, action_flag=ADDITION)
    importlib.import_module("cs_portal.portal.migrations.0007_token_log_entries").keys_out_of_the_log(apps, None)
    assert sorted(LogEntry.objects.values_list("object_repr", flat=True)) == [
        "API token", "API token", "customer message 7 (es)"]


def test_staff_agents_of_the_release_before_keep_seeing_every_team(team):
    """0008: being staff showed every team's conversations before the permission existed; staff
    agents get the permission, other agents and users do not."""
    from django.contrib.auth import get_user_model

    keep = importlib.import_module("cs_portal.portal.migrations.0008_every_team_permission").staff_agents_keep_every_team
    lead = agent_create(username="lead", password="x", working_language="en", team=team, is_staff=True)
    plain = agent_create(username="ana", password="x", working_language="en", team=team)
    admin_only = get_user_model().objects.create_user("ops", password="x", is_staff=True)  # no agent profile

    keep(apps, None)
    users = get_user_model().objects
    assert users.get(pk=lead.user.pk).has_perm("portal.view_every_team")
    assert not users.get(pk=plain.user.pk).has_perm("portal.view_every_team")
    assert not users.get(pk=admin_only.pk).has_perm("portal.view_every_team")
