"""Pieces of the embedded run that the run-command test cannot reach on a machine with Redis."""

import pytest
import redis

from cs_portal import embedded
from cs_portal.portal.demo import DEMO_CLIENT, demo_data_ensure
from cs_portal.portal.models import ApiClient, Conversation
from cs_portal.portal.selectors import api_client_by_key


class ChooseBrokerTests:
    def test_without_a_local_redis_an_embedded_server_is_started(self, tmp_path, monkeypatch):
        monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
        monkeypatch.setattr(embedded, "LOCAL_REDIS", "redis://127.0.0.1:1/0")  # nothing listens there
        url, server = embedded.choose_broker(tmp_path, say=lambda line: None)
        try:
            assert url.startswith("redis+socket://")
            client = redis.Redis(unix_socket_path=url.removeprefix("redis+socket://"))
            assert client.ping()
        finally:
            server.shutdown()

    def test_an_explicit_broker_url_wins(self, tmp_path, monkeypatch):
        monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:6379/9")
        assert embedded.choose_broker(tmp_path, say=lambda line: None) == ("redis://127.0.0.1:6379/9", None)


@pytest.mark.django_db
class DemoDataTests:
    def test_is_created_once_and_keeps_a_working_key(self, tiny_models, django_capture_on_commit_callbacks):
        with django_capture_on_commit_callbacks(execute=False):
            key, token = demo_data_ensure(admin_password="a-password", agent_password="b-password", api_key="")
            again_key, again_token = demo_data_ensure(admin_password="a-password", agent_password="b-password", api_key=key)
        assert (again_key, again_token) == (key, token)
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
