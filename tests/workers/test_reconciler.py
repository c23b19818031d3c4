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
