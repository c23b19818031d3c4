"""Password guessing: the sign-in lockout (django-axes), and the address it counts."""

import pytest
from django.test import Client
from django.urls import reverse

pytestmark = pytest.mark.django_db


class LockoutTests:
    def test_guessing_a_password_pauses_that_accounts_sign_ins_from_that_address(self, agent, settings):
        from django.core.management import call_command

        from cs_portal.portal.services import agent_create

        agent_create(username="kim", password="kim-password", working_language="en")
        login, admin_login = reverse("workspace:login"), reverse("admin:login")

        def sign_in(username, password, url=login, address="203.0.113.7"):
            return Client(REMOTE_ADDR=address).post(url, {"username": username, "password": password})

        for _ in range(settings.AXES_FAILURE_LIMIT - 1):
            assert sign_in("sam", "guess").status_code == 200  # the form again, with its error
        paused = sign_in("sam", "guess")
        assert paused.status_code == 429 and "Sign-in paused" in paused.content.decode()
        assert f"refused for {round(settings.AXES_COOLOFF_TIME.total_seconds() / 60)} minutes" in paused.content.decode()
        assert sign_in("sam", "secret-pass").status_code == 429  # the right password too, for now
        assert sign_in("sam", "secret-pass", url=admin_login).status_code == 429  # the admin's form counts alike
        assert sign_in("sam", "secret-pass", address="198.51.100.9").status_code == 302  # another address
        assert sign_in("kim", "kim-password").status_code == 302  # another account
        call_command("axes_reset_username", "sam")  # an administrator lifts the pause
        assert sign_in("sam", "secret-pass").status_code == 302

    def test_behind_a_tls_proxy_the_address_is_the_one_the_proxy_added(self, settings, rf):
        from cs_portal.portal.workspace.access import client_address

        request = rf.get("/", REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="1.2.3.4, 203.0.113.7")
        settings.BEHIND_TLS_PROXY = False
        assert client_address(request) == "10.0.0.2"
        settings.BEHIND_TLS_PROXY = True  # "1.2.3.4" is the client's to write: not trusted
        assert client_address(request) == "203.0.113.7"
        assert client_address(rf.get("/", REMOTE_ADDR="10.0.0.2")) == "10.0.0.2"
        for forwarded, seen in [("203.0.113.7:5678", "203.0.113.7"), ("[2001:db8::1]:443", "2001:db8::1"),
                                ("2001:db8::2", "2001:db8::2"), ("unknown", "10.0.0.2"), ("1.2.3.4, ", "10.0.0.2"),
                                ("'; DROP TABLE", "10.0.0.2")]:
            request = rf.get("/", REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR=forwarded)
            assert client_address(request) == seen, forwarded
