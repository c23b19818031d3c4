import pytest
from django.urls import reverse

from translation.models import TranslationStatus
from translation.execution import translation_fail

pytestmark = pytest.mark.django_db


@pytest.fixture
def failed_translation(queued_translation):
    translation_fail(translation_id=queued_translation.pk, reason="CUDA error: device lost")
    return queued_translation


class TranslationAdminTests:
    def test_list_shows_the_failure_reason_filterable_by_status(self, admin_client, failed_translation):
        url = reverse("admin:translation_translation_changelist")
        response = admin_client.get(url, {"status__exact": TranslationStatus.FAILED})
        assert response.status_code == 200
        assert "CUDA error: device lost" in response.content.decode()
        done = admin_client.get(url, {"status__exact": TranslationStatus.DONE})
        assert "CUDA error: device lost" not in done.content.decode()

    def test_the_ledger_keeps_its_rows_no_delete_from_the_admin(self, admin_client, queued_translation):
        from translation.models import Translation

        url = reverse("admin:translation_translation_changelist")
        assert 'value="delete_selected"' not in admin_client.get(url).content.decode()
        response = admin_client.post(url, {"action": "delete_selected", "_selected_action": [queued_translation.pk],
                                           "post": "yes"})
        assert response.status_code in (200, 302)
        delete = admin_client.post(reverse("admin:translation_translation_delete", args=[queued_translation.pk]),
                                   {"post": "yes"})
        assert delete.status_code == 403
        assert Translation.objects.filter(pk=queued_translation.pk).exists()
        # A conversation erased in the portal's admin still takes its messages' translations along.
        conversation = queued_translation.message.conversation
        erased = admin_client.post(reverse("admin:portal_conversation_delete", args=[conversation.pk]), {"post": "yes"})
        assert erased.status_code == 302
        assert not Translation.objects.filter(pk=queued_translation.pk).exists()

    def test_retry_action_queues_the_failed_translation_again(self, admin_client, failed_translation, django_capture_on_commit_callbacks):
        url = reverse("admin:translation_translation_changelist")
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            response = admin_client.post(url, {"action": "retry_failed", "_selected_action": [failed_translation.pk]}, follow=True)
        assert response.status_code == 200
        assert "1 translation(s) sent again." in response.content.decode()
        failed_translation.refresh_from_db()
        assert failed_translation.status == TranslationStatus.QUEUED
        assert len(callbacks) == 1

    def test_a_retry_of_many_sends_a_bounded_number_and_says_what_is_left(self, admin_client, many_translations,
                                                                          monkeypatch, django_capture_on_commit_callbacks):
        import translation.admin as translation_admin
        from translation.models import Translation

        monkeypatch.setattr(translation_admin, "ADMIN_RETRY_LIMIT", 2)
        for row in many_translations[:3]:
            translation_fail(translation_id=row.pk, reason="CUDA error: device lost")
        url = reverse("admin:translation_translation_changelist")
        with django_capture_on_commit_callbacks(execute=False):
            page = admin_client.post(url, {"action": "retry_failed", "_selected_action": [r.pk for r in many_translations]},
                                     follow=True).content.decode()
        assert "2 translation(s) sent again." in page and "1 more selected failed translation(s) were left" in page
        assert Translation.objects.filter(status=TranslationStatus.FAILED).count() == 1

    def test_an_admin_who_may_only_view_translations_cannot_retry_or_send_them(self, client, failed_translation):
        from django.contrib.auth.models import Permission, User

        viewer = User.objects.create_user("viewer", password="viewer-pass", is_staff=True)
        viewer.user_permissions.add(Permission.objects.get(codename="view_translation"))
        client.force_login(viewer)
        url = reverse("admin:translation_translation_changelist")
        page = client.get(url).content.decode()
        assert 'value="retry_failed"' not in page and 'value="send_unsent"' not in page
        for action in ("retry_failed", "send_unsent"):
            client.post(url, {"action": action, "_selected_action": [failed_translation.pk]})
        failed_translation.refresh_from_db()
        assert failed_translation.status == TranslationStatus.FAILED

    def test_send_unsent_action_sends_the_queued_unsent_translations_and_counts_them(self, admin_client, many_translations,
                                                                                     broker):
        from translation.models import Translation
        from translation.sending import PRIORITY_NORMAL

        url = reverse("admin:translation_translation_changelist")
        unsent = [row.pk for row in many_translations[:4]]
        Translation.objects.filter(pk__in=unsent).update(enqueued_at=None)
        selected = unsent + [many_translations[4].pk]  # one sent already: left alone
        response = admin_client.post(url, {"action": "send_unsent", "_selected_action": selected}, follow=True)
        assert "4 unsent translation(s) sent." in response.content.decode()
        assert not Translation.objects.filter(pk__in=unsent, enqueued_at__isnull=True).exists()
        again = admin_client.post(url, {"action": "send_unsent", "_selected_action": selected}, follow=True)
        assert "None of the selected translations is queued and unsent." in again.content.decode()
        keys = {f"{row.queue}\x06\x16{PRIORITY_NORMAL}" for row in many_translations[:4]}
        assert sum(broker.llen(key) for key in keys) == 4  # sent once each, not again
        broker.delete(*keys)  # rows of this test's transaction: no worker is to take them


class AgentTokenAdminTests:
    def test_a_token_is_shown_once_to_whoever_makes_it_and_kept_as_its_digest(self, admin_client):
        import re

        from django.contrib.auth.models import User
        from rest_framework.authtoken.models import Token

        from cs_portal.portal.tokens import token_digest

        agent = User.objects.create_user("maria", password="maria-password")
        made = admin_client.post(reverse("admin:portal_agenttoken_add"), {"user": agent.pk})
        assert made.status_code == 302 and "messages" not in made.cookies  # the notice waits in the session
        shown = admin_client.get(made["Location"]).content.decode()
        key = re.search(r"API token of maria: ([0-9a-f]{40}) \(shown this once", shown).group(1)
        token = Token.objects.get(user=agent)
        assert token.key == token_digest(key) != key  # the database holds nothing that signs in
        listed = admin_client.get(reverse("admin:portal_agenttoken_changelist")).content.decode()
        assert "maria" in listed and key not in listed
        edit = admin_client.get(reverse("admin:portal_agenttoken_change", args=[agent.pk])).content.decode()
        assert key not in edit and "API token of maria" in edit
        other = User.objects.create_user("kim", password="kim-password")
        admin_client.post(reverse("admin:portal_agenttoken_change", args=[agent.pk]), {"user": other.pk})
        assert Token.objects.get(key=token.key).user == agent  # a key stays with its agent
        admin_client.post(reverse("admin:portal_agenttoken_delete", args=[agent.pk]), {"post": "yes"})
        assert not Token.objects.filter(user=agent).exists()  # revoked


class PortalAdminTests:
    @pytest.mark.parametrize("model", ["conversation", "message", "customer", "agentprofile", "apiclient"])
    def test_changelists_render(self, admin_client, failed_translation, model):
        assert admin_client.get(reverse(f"admin:portal_{model}_changelist")).status_code == 200
