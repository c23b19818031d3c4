"""Pieces of the embedded run that the run-command test cannot reach on a machine with Redis."""

import pytest
import redis
from django.contrib.auth.models import User

from cs_portal import embedded
from cs_portal.portal.demo import DEMO_CLIENT, demo_data_ensure
from cs_portal.portal.models import ApiClient, Conversation
from cs_portal.portal.selectors import api_client_by_key
from cs_portal.portal.tokens import agent_token_matches


@pytest.fixture
def system(tmp_path, monkeypatch):
    """An embedded system that is never started; the broker settings it changes are restored."""
    from cs_portal.celery import app

    saved = app.conf.broker_url, dict(app.conf.broker_transport_options)
    for variable in ("CELERY_BROKER_URL", "BROKER_KEY_PREFIX"):
        monkeypatch.delenv(variable, raising=False)
    system = embedded.EmbeddedSystem(port=0, flower_port=0, say=lambda line: None, data_dir=tmp_path)
    yield system
    if system._broker_server is not None:
        system._broker_server.shutdown()
    app.conf.broker_url, app.conf.broker_transport_options = saved


class ChooseBrokerTests:
    def test_without_a_local_redis_an_embedded_server_is_started(self, system, monkeypatch):
        monkeypatch.setattr(embedded, "LOCAL_REDIS", "redis://127.0.0.1:1/0")  # nothing listens there
        url = system.choose_broker()
        assert url.startswith("redis+socket://")
        assert redis.Redis(unix_socket_path=url.removeprefix("redis+socket://")).ping()

    def test_the_local_redis_is_shared_under_a_key_prefix_of_this_data_directory(self, system):
        from cs_portal.celery import app

        assert system.choose_broker() == embedded.LOCAL_REDIS
        prefix = app.conf.broker_transport_options["global_keyprefix"]
        assert prefix.startswith("cs-portal-") and prefix.endswith(":")
        other = embedded.EmbeddedSystem(port=0, flower_port=0, say=lambda line: None, data_dir=system.data_dir / "other")
        import os

        del os.environ["BROKER_KEY_PREFIX"]
        other.choose_broker()
        assert app.conf.broker_transport_options["global_keyprefix"] != prefix

    def test_an_explicit_broker_url_wins(self, system, monkeypatch):
        monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:6379/9")
        assert system.choose_broker() == "redis://127.0.0.1:6379/9"
        assert system._broker_server is None


@pytest.mark.django_db
class DemoDataTests:
    def test_is_created_once_and_keeps_a_working_key(self, tiny_models, django_capture_on_commit_callbacks):
        with django_capture_on_commit_callbacks(execute=False):
            key, token = demo_data_ensure(admin_password="a-password", agent_password="b-password", api_key="")
            again_key, again_token = demo_data_ensure(admin_password="a-password", agent_password="b-password", api_key=key,
                                                      agent_token=token)
        assert (again_key, again_token) == (key, token)
        assert agent_token_matches(user=User.objects.get(username="agent"), key=token)
        assert api_client_by_key(key).name == DEMO_CLIENT
        assert Conversation.objects.count() == 1
        assert ApiClient.objects.count() == 1

    def test_a_lost_key_is_replaced(self, tiny_models, django_capture_on_commit_callbacks):
        with django_capture_on_commit_callbacks(execute=False):
            key, _ = demo_data_ensure(admin_password="a-password", agent_password="b-password", api_key="")
            new_key, _ = demo_data_ensure(admin_password="a-password", agent_password="b-password", api_key="")
        assert new_key != key
        assert api_client_by_key(key) is None
        assert api_client_by_key(new_key) is not None

    def test_a_lost_agent_token_is_replaced(self, tiny_models, django_capture_on_commit_callbacks):
        """Only a token's digest is kept: a token the credentials file no longer has is made anew."""
        with django_capture_on_commit_callbacks(execute=False):
            _, token = demo_data_ensure(admin_password="a-password", agent_password="b-password", api_key="")
            _, new_token = demo_data_ensure(admin_password="a-password", agent_password="b-password", api_key="")
        agent = User.objects.get(username="agent")
        assert new_token != token and agent_token_matches(user=agent, key=new_token)
        assert not agent_token_matches(user=agent, key=token)


@pytest.mark.django_db
class ApiKeyLastUsedTests:
    def test_last_used_is_written_at_most_once_a_minute(self):
        from datetime import timedelta

        from cs_portal.portal.services import api_client_create

        client, key = api_client_create(name="widget")
        first = api_client_by_key(key)
        client.refresh_from_db()
        stamp = client.last_used_at
        assert stamp is not None and first == client
        api_client_by_key(key)
        client.refresh_from_db()
        assert client.last_used_at == stamp  # within the minute: no write
        ApiClient.objects.filter(pk=client.pk).update(last_used_at=stamp - timedelta(minutes=2))
        api_client_by_key(key)
        client.refresh_from_db()
        assert client.last_used_at > stamp - timedelta(minutes=2)


class InstallationKeyTests:
    def test_without_secret_key_each_data_directory_signs_with_a_key_of_its_own(self, tmp_path):
        import stat

        from cs_portal.settings import _installation_key

        first = _installation_key(tmp_path / "one" / "secret_key")
        assert len(first) >= 50 and first == _installation_key(tmp_path / "one" / "secret_key")  # kept
        assert stat.S_IMODE((tmp_path / "one" / "secret_key").stat().st_mode) == 0o600  # its owner's only
        assert _installation_key(tmp_path / "two" / "secret_key") != first
        assert sorted(path.name for path in (tmp_path / "one").iterdir()) == ["secret_key"]  # nothing left beside

    def test_processes_starting_together_read_one_key(self, tmp_path):
        import subprocess
        import sys

        from tests.conftest import ROOT

        script = "from cs_portal.settings import _installation_key as k; import pathlib, sys; print(k(pathlib.Path(sys.argv[1])))"
        started = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "secret_key")], cwd=ROOT,
                                    stdout=subprocess.PIPE, text=True) for _ in range(6)]
        keys = {process.communicate(timeout=60)[0].strip() for process in started}
        assert keys == {(tmp_path / "secret_key").read_text().strip()}

    def test_a_data_directory_that_cannot_keep_one_asks_for_secret_key(self, tmp_path):
        from django.core.exceptions import ImproperlyConfigured

        from cs_portal.settings import _installation_key

        (tmp_path / "file").write_text("")
        with pytest.raises(ImproperlyConfigured, match="none can be kept in .*: set SECRET_KEY"):
            _installation_key(tmp_path / "file" / "secret_key")
        (tmp_path / "empty").write_text("\n")  # a key file a crash left empty
        with pytest.raises(ImproperlyConfigured, match="empty: delete it"):
            _installation_key(tmp_path / "empty")
