"""Fixtures of the ledger's tests."""

import pytest


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
