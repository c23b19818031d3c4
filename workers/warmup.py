"""Which models a worker loads at start, the language pair that proves each one works, and the
full batch each then computes."""

from __future__ import annotations

import dataclasses
import logging

from django.conf import settings

from translation.batching import estimate_tokens
from translation.engines import EngineSpec
from translation.routing import ANY, routes_for_queues
from workers.engine_models import FULL_BATCH_TEXT
from workers.engine_process import Warmup

logger = logging.getLogger(__name__)


def warmups_for_queues(queues: set[str], *, device: str, quiet: bool = False, batching: bool = True) -> list[Warmup]:
    """One warm-up per model named by a route on ``queues``, disabled routes included: switching
    one on (an A/B swap, a fallback taking over) then finds its model loaded, not loading.

    A many-to-many model serving several pairs is one spec, so it loads once, and computes the
    largest full batch of its routes (``full_batch_size``); none for a worker without
    ``batching``, whose batches hold one job.
    """
    warmups: dict[EngineSpec, Warmup] = {}
    for route in routes_for_queues(queues, include_disabled=True):
        spec = EngineSpec(engine=route.engine, model=route.model, precision=route.precision, device=device)
        batch = full_batch_size(route.max_batch_size) if batching else 1
        if spec not in warmups:
            source = route.source if route.source != ANY else ("es" if route.target != "es" else "en")
            warmups[spec] = Warmup(spec=spec, source=source, target=route.target, batch=batch)
        elif batch > warmups[spec].batch:
            warmups[spec] = dataclasses.replace(warmups[spec], batch=batch)
    if quiet:  # asked again while running (workers/loaded_models.py): said once, at the start
        return list(warmups.values())
    unrouted = queues - {route.queue for route in routes_for_queues(queues, include_disabled=True)}
    for queue in sorted(unrouted):
        logger.warning("Queue %s has no route: this worker will take no jobs from it", queue)
    return list(warmups.values())


def full_batch_size(route_batch_size: int) -> int:
    """The batch a model computes at start for a route of ``route_batch_size``: as large as the
    worker's batcher lets that route's batches grow (``TRANSLATION_MAX_BATCH_SIZE``, and the
    token budget for sentences of the warm-up's length); 1 with
    ``TRANSLATION_WARMUP_FULL_BATCH`` off."""
    if not settings.TRANSLATION_WARMUP_FULL_BATCH:
        return 1
    by_tokens = settings.TRANSLATION_MAX_BATCH_TOKENS // estimate_tokens(FULL_BATCH_TEXT)
    return max(1, min(route_batch_size, settings.TRANSLATION_MAX_BATCH_SIZE, by_tokens))
