"""A long conversation in the workspace: its latest messages, and the whole of it on demand."""

import pytest
from django.urls import reverse

from cs_portal.portal.services import reply_draft_create
from tests.portal.conftest import customer_says

pytestmark = pytest.mark.django_db


class LongThreadTests:
    def test_a_long_conversation_shows_its_latest_messages_and_a_link_to_the_whole(
        self, signed_in, conversation, settings
    ):
        settings.WORKSPACE_THREAD_MESSAGES = 3
        said = [customer_says(conversation, f"Mensaje número {i}") for i in range(5)]
        draft = reply_draft_create(conversation=conversation, agent=conversation.assignee, text="Working on it")
        page = signed_in.get(reverse("workspace:conversation", args=[conversation.pk])).content.decode()
        shown = [m.pk for m in said + [draft] if f'id="message-{m.pk}"' in page]
        assert shown == [said[3].pk, said[4].pk, draft.pk]  # the latest, in order, the draft among them
        assert "3 earlier messages not shown" in page and "?all=1" in page
        whole = signed_in.get(reverse("workspace:conversation", args=[conversation.pk]), {"all": "1"}).content.decode()
        assert all(f'id="message-{m.pk}"' in whole for m in said + [draft]) and "earlier message" not in whole
        assert "partial=1&amp;all=1" in whole  # its live refreshes keep the whole of it
        # Acting on an early message from the whole conversation comes back to the whole of it.
        back = signed_in.post(reverse("workspace:translate", args=[said[0].pk]),
                              {"next": f"/workspace/conversations/{conversation.pk}/?all=1"})
        assert back.status_code == 302 and back.url.endswith("?all=1")
        assert f'name="next" value="/workspace/conversations/{conversation.pk}/?all=1"' in whole
        settings.WORKSPACE_THREAD_MESSAGES = 6
        page = signed_in.get(reverse("workspace:conversation", args=[conversation.pk])).content.decode()
        assert "earlier message" not in page and all(f'id="message-{m.pk}"' in page for m in said + [draft])
