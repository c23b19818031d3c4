"""Who may use the workspace, through Django's test client: a form Django's CSRF check refuses, a
form posted after the session ended, and the page an action goes back to."""

import pytest
from django.test import Client
from django.urls import reverse

from cs_portal.portal.models import ConversationStatus, Message
from cs_portal.portal.services import agent_create
from cs_portal.portal.workspace import access

pytestmark = pytest.mark.django_db


class RefusedFormTests:
    def test_a_refused_form_gets_a_page_saying_why(self, agent, conversation):
        from django.middleware.csrf import _get_new_csrf_string

        client = Client(enforce_csrf_checks=True)
        client.force_login(agent.user)
        page = reverse("workspace:conversation", args=[conversation.pk])
        assert client.get(page).status_code == 200  # sets the CSRF cookie
        reply = reverse("workspace:reply", args=[conversation.pk])
        # A token of another secret: a page opened before the browser signed in again.
        stale = client.post(reply, {"text": "Hello", "csrfmiddlewaretoken": _get_new_csrf_string()},
                            HTTP_REFERER=f"http://testserver{page}")
        text = stale.content.decode()
        assert stale.status_code == 403 and "older than this browser's sign-in" in text
        assert f'href="{page}">Open the page again' in text  # back to the page the form was on
        # A request from an address the portal does not trust (a proxy missing from the settings).
        token = client.cookies["csrftoken"].value
        foreign = client.post(reply, {"text": "Hello", "csrfmiddlewaretoken": token}, HTTP_ORIGIN="http://elsewhere.example",
                              HTTP_REFERER="http://elsewhere.example/")
        text = foreign.content.decode()
        assert foreign.status_code == 403 and "CSRF_TRUSTED_ORIGINS" in text and "elsewhere.example" in text
        assert f'href="{reverse("workspace:inbox")}">Open the page again' in text  # not back to a foreign page
        assert not Message.objects.filter(conversation=conversation).exists()
        # No token at all (a page changed by an extension): said as such.
        bare = client.post(reply, {"text": "Hello"}, HTTP_REFERER=f"http://testserver{page}")
        assert bare.status_code == 403 and "without a valid security token" in bare.content.decode()
        # Over HTTPS a browser that sends no Referer is told so, not sent to the administrator.
        hidden = client.post(reply, {"text": "Hello", "csrfmiddlewaretoken": token}, secure=True)
        assert hidden.status_code == 403 and "without saying which page it came from" in hidden.content.decode()
        # The cookie's secret itself is a valid token (what forms.js sends).
        sent = client.post(reply, {"text": "Hello", "csrfmiddlewaretoken": token})
        assert sent.status_code == 302 and Message.objects.filter(conversation=conversation, text="Hello").exists()


class SignedOutPostTests:
    """A form posted after the session ended is not done, leads back to its page after the
    sign-in, and a reply's text comes back into the reply box, for the agent who typed it."""

    @staticmethod
    def signed_out_browser(agent, page: str) -> Client:
        """A browser in which ``agent`` worked (the page opened), and whose session then ended."""
        client = Client()
        client.force_login(agent.user)
        assert client.get(page).status_code == 200
        from django.conf import settings

        del client.cookies[settings.SESSION_COOKIE_NAME]  # the session ended (expired), its other cookies kept
        return client

    @staticmethod
    def sign_in(client, next_page: str, username: str = "sam", password: str = "secret-pass"):
        page = client.get(f"{reverse('workspace:login')}?next={next_page}")
        return page, client.post(reverse("workspace:login"), {"username": username, "password": password,
                                                               "next": next_page}, follow=True)

    def test_a_reply_typed_while_signed_out_comes_back_after_the_sign_in(self, agent, conversation):
        page = reverse("workspace:conversation", args=[conversation.pk])
        client = self.signed_out_browser(agent, page)
        response = client.post(reverse("workspace:reply", args=[conversation.pk]), {"text": "We are on it, Lucía"},
                               HTTP_REFERER=f"http://testserver{page}")
        assert response.status_code == 302 and response.url == f"{reverse('workspace:login')}?next={page}"
        assert not Message.objects.filter(conversation=conversation).exists()

        login_page, landed = self.sign_in(client, page)
        assert "your reply was not sent" in login_page.content.decode()
        assert landed.redirect_chain[-1][0] == page and landed.status_code == 200
        text = landed.content.decode()
        assert 'id="unsent-reply"' in text and ">We are on it, Lucía</textarea>" in text
        # Once: the next visit shows an empty box.
        again = client.get(page).content.decode()
        assert 'id="unsent-reply"' not in again and "We are on it" not in again

    def test_a_live_refresh_or_a_head_request_leaves_the_reply_for_the_page(self, agent, conversation):
        page = reverse("workspace:conversation", args=[conversation.pk])
        client = self.signed_out_browser(agent, page)
        client.post(reverse("workspace:reply", args=[conversation.pk]), {"text": "Still here"}, HTTP_REFERER=page)
        client.force_login(agent.user)
        assert "Still here" not in client.get(f"{page}?partial=1").content.decode()
        assert client.head(page).status_code == 200
        assert ">Still here</textarea>" in client.get(page).content.decode()

    def test_another_agent_signing_in_on_the_same_browser_never_sees_it(self, agent, team, conversation):
        agent_create(username="kim", password="kim-pass", working_language="en", team=team)
        page = reverse("workspace:conversation", args=[conversation.pk])
        client = self.signed_out_browser(agent, page)
        client.post(reverse("workspace:reply", args=[conversation.pk]), {"text": "Sam's words"}, HTTP_REFERER=page)
        _, landed = self.sign_in(client, page, "kim", "kim-pass")
        assert landed.status_code == 200 and "Sam's words" not in landed.content.decode()
        assert access.UNSENT_REPLY not in client.session  # dropped at kim's first page, not left waiting

    def test_a_reply_kept_longer_than_an_hour_is_dropped(self, agent, conversation):
        page = reverse("workspace:conversation", args=[conversation.pk])
        client = self.signed_out_browser(agent, page)
        client.post(reverse("workspace:reply", args=[conversation.pk]), {"text": "Old words"}, HTTP_REFERER=page)
        session = client.session
        kept = session[access.UNSENT_REPLY]
        assert kept["text"] == "Old words"
        session[access.UNSENT_REPLY] = {**kept, "at": kept["at"] - access.UNSENT_REPLY_KEPT_S - 1}
        session.save()
        _, landed = self.sign_in(client, page)
        assert landed.status_code == 200 and "Old words" not in landed.content.decode()

    def test_a_browser_no_agent_used_keeps_nothing(self, agent, conversation):
        page = reverse("workspace:conversation", args=[conversation.pk])
        client = Client()  # no agent signed in here before: whose words they are is unknown
        client.post(reverse("workspace:reply", args=[conversation.pk]), {"text": "Whose?"}, HTTP_REFERER=page)
        login_page, landed = self.sign_in(client, page)
        assert "that was not done" in login_page.content.decode()
        assert landed.status_code == 200 and "Whose?" not in landed.content.decode()

    def test_another_form_leads_back_to_its_page_not_to_the_form_address(self, agent, conversation):
        page = reverse("workspace:conversation", args=[conversation.pk])
        client = self.signed_out_browser(agent, page)
        response = client.post(reverse("workspace:status", args=[conversation.pk]), {"status": "closed"},
                               HTTP_REFERER=f"http://testserver{page}")
        assert response.url == f"{reverse('workspace:login')}?next={page}"
        login_page, landed = self.sign_in(client, page)
        assert "that was not done" in login_page.content.decode()
        assert landed.status_code == 200 and landed.redirect_chain[-1][0] == page  # not a 405 on the form's address
        conversation.refresh_from_db()
        assert conversation.status != ConversationStatus.CLOSED

    @pytest.mark.parametrize("referer", [
        "http://elsewhere.example/x",  # another site
        "",  # none sent
        "/workspace/conversations/1/reply/",  # an address that answers only posts
        "/\\elsewhere.example/x",  # read by browsers as //elsewhere.example
    ])
    def test_a_referer_that_is_no_page_of_this_site_leads_to_the_inbox(self, agent, conversation, referer):
        extra = {"HTTP_REFERER": referer} if referer else {}
        response = Client().post(reverse("workspace:take", args=[conversation.pk]), **extra)
        assert response.url == f"{reverse('workspace:login')}?next={reverse('workspace:inbox')}"


class BackAfterAnActionTests:
    @pytest.mark.parametrize("next_page, expected", [
        ("/workspace/?status=open", "/workspace/?status=open"),  # a page of the workspace, query kept
        ("reply", None),  # an address that answers only posts: the conversation instead
        ("http://elsewhere.example/", None),  # another site: the conversation instead
    ])
    def test_an_action_goes_back_to_its_next_page_if_it_is_one(self, agent, conversation, next_page, expected):
        client = Client()
        client.force_login(agent.user)
        page = reverse("workspace:conversation", args=[conversation.pk])
        if next_page == "reply":
            next_page = reverse("workspace:reply", args=[conversation.pk])
        response = client.post(reverse("workspace:status", args=[conversation.pk]), {"status": "pending", "next": next_page})
        assert response.status_code == 302 and response.url == (expected or page)

    def test_a_signed_out_form_goes_back_to_its_next_page_before_the_referer(self, agent, conversation):
        response = Client().post(reverse("workspace:take", args=[conversation.pk]), {"next": "/workspace/?status=open"},
                                 HTTP_REFERER=reverse("workspace:conversation", args=[conversation.pk]))
        assert response.url == f"{reverse('workspace:login')}?next=/workspace/%3Fstatus%3Dopen"
