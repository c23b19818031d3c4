"""The reconciler's turns: how often it makes each look (the looks themselves are
tests/translation/test_recovery.py's)."""

import time

import pytest

from tests.conftest import wait_for
from workers import reconciler

pytestmark = pytest.mark.django_db(transaction=True)


def test_stale_beats_are_looked_for_at_every_turn_and_workers_that_never_beat_once_per_staleness_period(
    settings, monkeypatch
):
    settings.WORKER_HEARTBEAT_STALE_S = 0.2
    settings.TRANSLATION_RECOVERY_EVERY_S = 0.01
    looks: list[tuple[float, bool]] = []
    monkeypatch.setattr(reconciler, "dead_workers_handle",
                        lambda *, exclude, orphans: looks.append((time.monotonic(), orphans)) or {})
    thread = reconciler.Reconciler("me@h")
    thread.start()
    try:
        wait_for(lambda: sum(orphans for _, orphans in looks) >= 3, timeout=30, what="three full looks")
    finally:
        thread.stop()
        thread.join(10)
    full = [at for at, orphans in looks if orphans]
    assert len(looks) > len(full)  # the cheap look in between
    assert all(later - earlier >= 0.2 for earlier, later in zip(full, full[1:], strict=False))


def test_one_reconciler_of_the_fleet_looks_for_lost_jobs_until_it_stops(settings, monkeypatch):
    """The turn is in the broker's Redis: the reconciler that took it keeps it, look after look
    (so its last look's suspects are the fleet's), and gives it up when it stops."""
    import threading

    from translation.dispatch import broker_redis
    from translation.recovery import LOST_LOOK_KEY, Resent

    from cs_portal.celery import app

    # A key prefix of its own: the session's test worker takes turns under the plain key.
    options = {**(app.conf.get("broker_transport_options") or {}), "global_keyprefix": "reconciler-turn-test:"}
    monkeypatch.setitem(app.conf, "broker_transport_options", options)
    client, prefix = broker_redis()
    client.delete(prefix + LOST_LOOK_KEY)
    settings.TRANSLATION_RECOVERY_EVERY_S = 0.01
    settings.TRANSLATION_LOST_AFTER_S = 0.6  # a look every 0.3 s; the turn lasts 0.6 s
    looks: list[str] = []
    monkeypatch.setattr(reconciler, "dead_workers_handle", lambda **kwargs: {})
    monkeypatch.setattr(reconciler, "lost_jobs_resend",
                        lambda **kwargs: looks.append(threading.current_thread().worker) or Resent())
    first, second = reconciler.Reconciler("first@h"), reconciler.Reconciler("second@h")
    first.start()
    try:
        wait_for(lambda: looks, timeout=30, what="the first look")
        second.start()
        wait_for(lambda: len(looks) >= 5, timeout=30, what="five looks")
        assert set(looks) == {"first@h"}
        first.stop()
        first.join(10)
        before = len(looks)
        wait_for(lambda: "second@h" in looks[before:], timeout=30, what="the second reconciler to take over")
    finally:
        for thread in (first, second):
            thread.stop()
            thread.join(10)
    assert client.get(prefix + LOST_LOOK_KEY) is None  # given up at the stop
