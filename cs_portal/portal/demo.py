"""Demo data of the embedded run: an admin, an agent, an API client and one conversation."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import transaction

from cs_portal.portal.models import ApiClient, Conversation
from cs_portal.portal.services import (
    agent_create,
    api_client_create,
    api_client_rotate_key,
    conversation_create,
    message_create_from_customer,
    team_create,
)
from cs_portal.portal.tokens import agent_token_issue, agent_token_matches

DEMO_CLIENT = "demo-widget"
DEMO_TEAM = "Support"
AGENT_VIEW_PERMISSIONS = ["view_conversation", "view_message", "view_customer", "view_translation"]
DEMO_MESSAGE = "Hola, necesito ayuda con mi pedido. El paquete no ha llegado."


@transaction.atomic
def demo_data_ensure(
    *, admin_password: str, agent_password: str, api_key: str, agent_token: str = "", reset_passwords: bool = False
) -> tuple[str, str]:
    """Create what is missing; returns the API key and the agent's API token (new or kept: the
    saved ``api_key`` and ``agent_token`` are kept while they still sign in).

    ``reset_passwords`` gives existing demo users the passwords passed in.
    """
    users = get_user_model().objects
    admin = users.filter(username="admin").first()
    if admin is None:
        admin = users.create_superuser(username="admin", password=admin_password, email="")
    agent_user = users.filter(username="agent").first()
    agent = agent_user.agent if agent_user else agent_create(
        username="agent", password=agent_password, working_language="en", is_staff=True,
        team=team_create(name=DEMO_TEAM),
    )
    if reset_passwords:
        for user, password in ((admin, admin_password), (agent.user, agent_password)):
            user.set_password(password)
            user.save(update_fields=["password"])
    client = ApiClient.objects.filter(name=DEMO_CLIENT).first()
    if client is None:
        client, api_key = api_client_create(name=DEMO_CLIENT)
    elif not api_key or client.key_hash != ApiClient.hash_key(api_key):
        api_key = api_client_rotate_key(client=client)  # the saved key was lost
    # The demo agent may look at conversations and translations in the admin.
    agent.user.user_permissions.add(*Permission.objects.filter(codename__in=AGENT_VIEW_PERMISSIONS))
    if not agent_token_matches(user=agent.user, key=agent_token):  # the saved key was lost (or never made)
        agent_token = agent_token_issue(user=agent.user)
    if not Conversation.objects.filter(customer__api_client=client).exists():
        conversation = conversation_create(
            api_client=client, customer_name="Lucía García", customer_email="lucia@example.com", external_id="demo-1"
        )
        message_create_from_customer(conversation=conversation, text=DEMO_MESSAGE)
    return api_key, agent_token
