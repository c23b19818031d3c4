"""What a running batching worker set itself up with: its prefetch, and its heap out of the
garbage collector's full collections."""

import re
from pathlib import Path

from django.conf import settings

from cs_portal.celery import app
from tests.conftest import WORKER_LANES, WORKER_NAME
from workers.main import prefetch


def test_the_worker_takes_two_batches_per_lane_and_froze_its_heap_once_consuming(worker):
    stats = app.control.inspect(destination=[WORKER_NAME], timeout=5).stats() or {}
    assert WORKER_NAME in stats, stats
    expected = prefetch(WORKER_LANES, settings.TRANSLATION_MAX_BATCH_SIZE)
    assert expected == 2 * WORKER_LANES * settings.TRANSLATION_MAX_BATCH_SIZE + 16
    assert stats[WORKER_NAME]["prefetch_count"] == expected
    assert stats[WORKER_NAME]["pool"]["max-concurrency"] == expected

    log = (Path(settings.DATA_DIR) / "test-worker.log").read_text()
    frozen = re.search(r"(\d+) objects kept out of the garbage collector's full collections", log)
    assert frozen is not None, log[-3000:]
    assert int(frozen.group(1)) > 10_000  # Django, Celery, kombu and the translation code
