"""Fixtures of the ledger's tests."""

import pytest
import redis

from tests.conftest import broker_url


@pytest.fixture
def translation(queued_translation):
    return queued_translation


@pytest.fixture
def empty_broker():
    """The test broker's database, empty before and after: the messages written here are no
    worker's (one left in the unacknowledged index would be a later test's, by its id)."""
    redis.Redis.from_url(broker_url(15)).flushdb()
    yield
    redis.Redis.from_url(broker_url(15)).flushdb()


@pytest.fixture
def sent(monkeypatch):
    """The ids sent to the broker, one message each (the send itself is the real one)."""
    import translation.sending as sending

    class Sent(list):
        urgent: list[bool]

    ids = Sent()
    ids.urgent = []
    real = sending._send_job

    def recording(translation, *, urgent, **kwargs):
        ids.append(translation.pk)
        ids.urgent.append(urgent)
        return real(translation, urgent=urgent, **kwargs)

    monkeypatch.setattr(sending, "_send_job", recording)
    return ids
